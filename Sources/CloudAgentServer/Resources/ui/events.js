// One event as the CLI renders it (Sources/CloudAgentCLI/EventRenderer.swift): the agent's
// text, one line per tool call with its outcome (its output expandable), a line per runtime
// and execution change. Event data only ever becomes text (textContent), never HTML.
import { el, formatDuration, timeOf } from "./dom.js";

const oneLine = (text, limit) => {
  const flat = String(text).replace(/\r?\n/g, "⏎");
  return flat.length > limit ? flat.slice(0, limit - 1) + "…" : flat;
};
const asText = (value) => (typeof value === "string" ? value : value === undefined || value === null ? "" : JSON.stringify(value));

export function stopReasonText(reason) {
  const parts = [];
  if (reason.idleMs != null) parts.push(`idle ${reason.idleMs}ms` + (reason.idleTimeoutMs != null ? ` ≥ timeout ${formatDuration(reason.idleTimeoutMs)}` : ""));
  if (reason.lastActivityAt) parts.push(`last activity ${timeOf(reason.lastActivityAt)}`);
  if (reason.detail) parts.push(reason.detail);
  return `rule ${reason.rule || "unknown"}` + (parts.length ? ` (${parts.join(", ")})` : "");
}

// Amounts as the CLI writes them: `$1.00`, `10,000 tokens`.
const dollars = (value) => (value > 0 && value < 0.01 ? `$${value.toFixed(4)}`
  : "$" + value.toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 }));
const tokens = (value) => `${Math.trunc(value).toLocaleString("en-US")} tokens`;

// A session's `budget`: "$1.00, 10,000 tokens", then "(allowed $2.00, 20,000 tokens after 1 raise)"
// once raised; "" without one.
export function budgetText(budget) {
  if (!budget) return "";
  const limits = [], allowed = [];
  if (budget.maxCostUsd != null) { limits.push(dollars(budget.maxCostUsd)); allowed.push(dollars(budget.allowedCostUsd ?? budget.maxCostUsd)); }
  if (budget.maxTokens != null) { limits.push(tokens(budget.maxTokens)); allowed.push(tokens(budget.allowedTokens ?? budget.maxTokens)); }
  const raises = budget.raises || 0;
  return limits.join(", ") + (raises > 0 ? ` (allowed ${allowed.join(", ")} after ${raises} raise${raises === 1 ? "" : "s"})` : "");
}

// A session's `usage`: "$0.42, 12,345 tokens" (every kind of token); "" without one.
export function usageText(usage) {
  if (!usage) return "";
  const total = ["inputTokens", "outputTokens", "cacheReadTokens", "cacheWriteTokens"].reduce((sum, key) => sum + (usage[key] || 0), 0);
  return (usage.costUsd != null ? `${dollars(usage.costUsd)}, ` : "") + tokens(total);
}

function toolLine(data) {
  const input = oneLine(asText(data.input), 160);
  const outcome = data.exitCode != null ? `exit ${data.exitCode}` : data.status || "done";
  const failed = data.exitCode != null ? data.exitCode !== 0 : data.status === "error";
  const output = asText(data.output).trim();
  const line = el("div", { class: "line" }, "● ", el("strong", { text: data.name || "tool" }), `: ${input} → `,
    el("span", { class: failed ? "bad" : "good", text: outcome }));
  if (!output) return line;
  const lines = output.split("\n").filter(Boolean);
  return el("details", {}, el("summary", {}, [...line.childNodes],
    el("span", { class: "dim", text: `  └ ${oneLine(lines[0] || "", 80)}${lines.length > 1 ? ` (+${lines.length - 1} lines)` : ""}` })),
  el("pre", { text: output }));
}

function agentNode(data) {
  switch (data.kind) {
    case "text": return el("div", { class: "line text", text: data.text || "" });
    case "tool": return toolLine(data);
    case "error": return el("div", { class: "line bad", text: `✗ agent error: ${data.message || ""}` });
    default: return el("div", { class: "line dim", text: data.message || asText(data.raw) });
  }
}

export function renderEvent(event) {
  const data = event.data || {};
  const exc = event.executionId ? ` ${event.executionId}` : "";
  let body;
  switch (event.type) {
    case "agent": body = agentNode(data); break;
    case "output": body = el("div", { class: data.stream === "stderr" ? "line warn" : "line dim", text: `│ ${data.line || ""}` }); break;
    case "runtime.started": body = el("div", { class: "line info", text: "◇ runtime started" + (data.cold ? " (cold start: workspace restored)" : "") }); break;
    case "runtime.stopped": body = el("div", { class: "line info", text: `◇ runtime stopped: ${stopReasonText(data)}` }); break;
    case "execution.started":
      body = el("div", {}, el("div", { class: "line strong", text: `▶ execution${exc} started${data.followUp ? " (follow-up)" : ""}` }),
        data.prompt ? el("div", { class: "line dim", text: `  prompt: ${oneLine(data.prompt, 100)}` }) : null);
      break;
    case "execution.running": body = el("div", { class: "line dim", text: "▶ agent running" }); break;
    case "execution.completed": body = el("div", { class: "line good", text: `✓ execution completed${exc} (exit ${data.exitCode ?? 0})` }); break;
    case "execution.failed": body = el("div", { class: "line bad", text: `✗ execution failed${exc}: ${data.error || "failed"}` + (data.exitCode != null ? ` (exit ${data.exitCode})` : "") }); break;
    case "execution.interrupted": body = el("div", { class: "line warn", text: `■ execution interrupted${exc} (reason: ${data.reason || "unknown"})` }); break;
    case "execution.stuck": body = el("div", { class: "line warn", text: `⚠ no progress for ${formatDuration(data.sinceLastProgressMs)} (the agent still heartbeats; it is not stopped)` }); break;
    case "input.requested": {
      const input = data.input == null ? "" : oneLine(typeof data.input === "string" ? data.input : (data.input.command || JSON.stringify(data.input)), 120);
      const what = data.kind === "question" ? `the agent asks: ${oneLine(data.question || "?", 200)}`
        : data.kind === "budget" ? `budget: ${oneLine(data.question || "the session's budget is reached: continue?", 200)}`
        : `the agent asks permission to use ${data.tool || "a tool"}${input ? ": " + input : ""}`;
      body = el("div", { class: "line warn", text: `? ${what}` });
      break;
    }
    case "input.resolved": {
      const answer = data.answer == null ? "" : ` ${oneLine(asText(data.answer), 80)}`;
      const good = data.decision === "allow" || data.decision === "answer";
      body = el("div", { class: good ? "line good" : "line warn", text: `  ↳ ${data.decision}${answer} (by ${data.by})` });
      break;
    }
    default: {
      const summary = Object.keys(data).filter((k) => k !== "raw").sort().map((k) => `${k}=${oneLine(asText(data[k]), 80)}`).join(" ");
      body = el("div", { class: "line dim", text: `· ${event.type}${summary ? " " + summary : ""}` });
    }
  }
  return el("li", { "data-id": event.id, "data-type": event.type }, body);
}
