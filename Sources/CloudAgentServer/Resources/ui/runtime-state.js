// A session's runtime in words: "idle stop in 12s" while up and idle (from the view's
// activity.idleDeadline and the server's clock), "stopped · RULE" once stopped.
import { serverNow } from "./api.js";

export function runtimeText(view) {
  const runtime = view.runtime || {};
  if (runtime.state === "stopped") return `stopped · ${(runtime.stopReason && runtime.stopReason.rule) || "unknown"}`;
  const deadline = view.activity && view.activity.idleDeadline;
  if (runtime.state === "running" && deadline) {
    const seconds = Math.max(0, Math.ceil((Date.parse(deadline) - serverNow()) / 1000));
    return `running · idle stop in ${seconds}s`;
  }
  if (runtime.state === "running" && view.pendingInput > 0) return "running · waiting for input";
  if (runtime.state === "running" && view.activeExecutionId) return "running · working";
  return runtime.state || "unknown";
}

// True once the countdown has run out: the caller re-reads the view to see the stop.
export const deadlinePassed = (view) => {
  const deadline = view.activity && view.activity.idleDeadline;
  return view.runtime && view.runtime.state === "running" && deadline && Date.parse(deadline) <= serverNow();
};
