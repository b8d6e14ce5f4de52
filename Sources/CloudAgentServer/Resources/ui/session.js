// One session: its runtime (countdown or stop reason), its budget and usage, its executions,
// its live events, and the controls to follow up, interrupt, change the idle timeout and delete it.
import { api, serverNow } from "./api.js";
import { el, formatDuration, parseDuration, timeOf } from "./dom.js";
import { budgetText, renderEvent, stopReasonText, usageText } from "./events.js";
import { deadlinePassed, runtimeText } from "./runtime-state.js";
import { openStream } from "./stream.js";

export function renderSession(main, id) {
  let view = null;
  let executions = [];
  const state = el("p", { id: "runtime-state", class: "state" });
  const reason = el("dl", { class: "reason", hidden: true });
  const heartbeat = el("p", { class: "hint" });
  // The budget and what the session has spent, when it has either.
  const spend = el("dl", { id: "spend", class: "reason", "aria-label": "Budget and usage", hidden: true });
  const execList = el("ul", { class: "executions", "aria-label": "Executions" });
  const log = el("ol", { class: "events", role: "log", "aria-live": "polite", "aria-label": "Event log" });
  const streamStatus = el("span", { class: "hint" });
  const notice = el("p", { class: "notice", role: "status" });
  const message = el("textarea", { id: "message", rows: 3, "aria-keyshortcuts": "Control+Enter",
    // Ctrl+Enter (⌘+Enter) sends; Enter alone makes a new line.
    onkeydown: (event) => { if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) event.target.form.requestSubmit(); } });
  // "Queue": a message sent while the agent works waits its turn instead of being refused.
  const queue = el("input", { id: "queue", type: "checkbox" });
  const queueList = el("ol", { class: "executions queued", "aria-label": "Queued messages" });
  const queueCard = el("section", { id: "queue-card", class: "card", "aria-labelledby": "queue-h", hidden: true },
    el("h2", { id: "queue-h", text: "Queued messages" }), queueList);
  const idle = el("input", { id: "idle-timeout", type: "text" });
  const idleError = el("span", { class: "error", "aria-live": "polite" });
  const inputs = el("section", { id: "input-requests", class: "card attention", "aria-labelledby": "input-h", hidden: true });
  let shownRequests = "";

  const act = (label, handler, cls) => el("button", { type: "button", class: cls, text: label, onclick: async () => {
    notice.textContent = "";
    try { await handler(); } catch (failure) { notice.textContent = failure.message; }
  } });

  main.append(
    el("h1", { class: "mono", text: id }),
    el("section", { "aria-labelledby": "runtime-h", class: "card" },
      el("h2", { id: "runtime-h", text: "Runtime" }), state, reason, heartbeat, spend,
      el("form", { class: "inline", onsubmit: changeIdle },
        el("label", { for: "idle-timeout", text: "Idle timeout" }), idle, el("button", { type: "submit", text: "Change" }), idleError)),
    // What the agent waits for: a permission (Allow / Deny), a question (Answer) or a go-ahead
    // past the budget (Continue / Stop).
    inputs,
    el("section", { "aria-labelledby": "send-h", class: "card" },
      el("h2", { id: "send-h", text: "Follow up" }),
      el("form", { onsubmit: send },
        el("label", { for: "message", text: "Message" }), message,
        el("div", { class: "actions" }, el("button", { type: "submit", class: "primary", text: "Send" }),
          el("label", { class: "check", for: "queue" }, queue, " Queue"),
          act("Interrupt", interrupt), act("Delete", remove, "danger"))),
      notice),
    queueCard,
    el("section", { "aria-labelledby": "exec-h", class: "card" }, el("h2", { id: "exec-h", text: "Executions" }), execList),
    el("section", { "aria-labelledby": "events-h", class: "card" },
      el("h2", { id: "events-h", text: "Events" }), streamStatus, log));

  // Refreshes can overlap (an event's, the timer's): only the latest one started is drawn, so an
  // older answer that arrives late never puts back a state the page has moved past.
  let generation = 0;
  let stopped = false;
  async function refresh() {
    if (stopped) return;
    const mine = ++generation;
    try {
      const nextView = await api("GET", `/v1/sessions/${id}`);
      if (stopped) return; // left or deleted meanwhile: ask nothing more
      const nextExecutions = ((await api("GET", `/v1/sessions/${id}/executions`)) || {}).executions || [];
      if (stopped) return;
      const requests = nextView.pendingInput > 0
        ? (((await api("GET", `/v1/sessions/${id}/input-requests`)) || {}).requests || []).filter((r) => r.status === "pending") : [];
      if (mine !== generation) return;
      view = nextView;
      executions = nextExecutions;
      if (document.activeElement !== idle) idle.value = formatDuration(view.idleTimeoutMs);
      drawRequests(requests);
      draw();
    } catch (failure) {
      if (failure.status === 404) { state.textContent = "This session does not exist (or was deleted)."; stop(); }
    }
  }

  // The parts of the page that follow the clock: the countdown and the heartbeat's age.
  function draw() {
    if (!view) return;
    state.textContent = runtimeText(view);
    const stop = view.runtime.state === "stopped" && view.runtime.stopReason;
    reason.hidden = !stop;
    if (stop) {
      const r = view.runtime.stopReason;
      reason.replaceChildren(...[["Stop reason", stopReasonText(r)], ["Rule", r.rule], ["Last activity", timeOf(r.lastActivityAt)],
        ["Idle", r.idleMs != null ? `${r.idleMs} ms` : "—"], ["Timeout", formatDuration(r.idleTimeoutMs) || "—"], ["Stopped at", timeOf(r.at)]]
        .flatMap(([term, value]) => [el("dt", { text: term }), el("dd", { text: value })]));
    }
    const budget = budgetText(view.budget);
    const usage = usageText(view.usage);
    spend.hidden = !budget && !usage;
    spend.replaceChildren(...[["Budget", budget], ["Used", usage]].filter(([, value]) => value)
      .flatMap(([term, value]) => [el("dt", { text: term }), el("dd", { text: value })]));
    const active = executions.find((e) => e.executionId === view.activeExecutionId);
    heartbeat.textContent = active && active.lastHeartbeat
      ? `Agent alive: last heartbeat ${Math.max(0, Math.round((serverNow() - Date.parse(active.lastHeartbeat)) / 1000))}s ago` : "";
    // The queue in the order it runs; each queued message can be cancelled before its turn.
    const queued = executions.filter((e) => e.status === "queued").sort((a, b) => (a.position || 0) - (b.position || 0));
    queueCard.hidden = queued.length === 0;
    queueList.replaceChildren(...queued.map((e) => el("li", { "data-execution": e.executionId },
      el("span", { class: "hint", text: (e.prompt || "").split("\n")[0] }), " ",
      el("button", { type: "button", text: "Cancel", "aria-label": `Cancel queued message ${e.position || ""}`.trim(), onclick: async () => {
        notice.textContent = "";
        try { await api("DELETE", `/v1/sessions/${id}/executions/${e.executionId}`); notice.textContent = "Queued message cancelled."; }
        catch (failure) { notice.textContent = failure.message; }
        refresh();
      } }))));
    execList.replaceChildren(...executions.filter((e) => e.status !== "queued").map((e) => el("li", {},
      el("span", { class: "mono", text: e.executionId }), " ",
      el("strong", { class: `outcome ${e.status}`, text: e.status }),
      e.interruptReason ? ` (reason: ${e.interruptReason})` : "", e.error ? ` — ${e.error}` : "",
      el("div", { class: "hint", text: (e.prompt || "").split("\n")[0] }))));
  }

  // The pending requests, each with its answer controls. Rebuilt only when they change, so that
  // an answer being typed is not lost to a refresh.
  function drawRequests(requests) {
    const key = requests.map((r) => r.requestId).join(",");
    if (key === shownRequests) return;
    shownRequests = key;
    inputs.hidden = requests.length === 0;
    inputs.replaceChildren(el("h2", { id: "input-h", text: "The agent is waiting for you" }), ...requests.map(requestCard));
  }

  function requestCard(request) {
    const status = el("p", { class: "notice", role: "status" });
    const answer = async (body) => {
      status.textContent = "";
      try {
        await api("POST", `/v1/sessions/${id}/input-requests/${request.requestId}`, body);
        status.textContent = "Answered.";
        refresh();
      } catch (failure) { status.textContent = failure.message; }
    };
    const card = el("div", { class: "request", "data-request": request.requestId });
    if (request.kind === "question") {
      const field = `answer-${request.requestId}`;
      const text = el("input", { id: field, type: "text", list: request.choices ? `${field}-choices` : null });
      card.append(el("p", { class: "question", text: request.question || "The agent asks a question." }),
        request.choices ? el("datalist", { id: `${field}-choices` }, ...request.choices.map((c) => el("option", { value: c }))) : null,
        el("form", { class: "inline", onsubmit: (event) => { event.preventDefault(); if (text.value.trim()) answer({ answer: text.value }); } },
          el("label", { for: field, text: "Answer" }), text, el("button", { type: "submit", class: "primary", text: "Answer" }),
          el("button", { type: "button", text: "Decline", onclick: () => answer({ decision: "deny" }) })));
    } else if (request.kind === "budget") {
      // The control plane's own request: the agent is held until the answer.
      card.append(el("p", { class: "question", text: request.question || "The session's budget is reached. Continue?" }),
        el("div", { class: "actions" },
          el("button", { type: "button", class: "primary", text: "Continue", onclick: () => answer({ decision: "allow" }) }),
          el("button", { type: "button", class: "danger", text: "Stop", onclick: () => answer({ decision: "deny" }) })));
    } else {
      const input = request.input == null ? "" : (typeof request.input === "string" ? request.input : (request.input.command || JSON.stringify(request.input)));
      card.append(el("p", {}, "Permission to use ", el("strong", { text: request.tool || "a tool" }), input ? ": " : ""),
        input ? el("pre", { class: "mono", text: input }) : null,
        el("div", { class: "actions" },
          el("button", { type: "button", class: "primary", text: "Allow", onclick: () => answer({ decision: "allow" }) }),
          el("button", { type: "button", text: "Always allow", onclick: () => answer({ decision: "allow", always: true }) }),
          el("button", { type: "button", class: "danger", text: "Deny", onclick: () => answer({ decision: "deny" }) })));
    }
    if (request.deadline) {
      card.append(el("p", { class: "hint", text: request.kind === "budget" ? `The agent is stopped if there is no answer by ${timeOf(request.deadline)}.`
        : `Denied for want of an answer at ${timeOf(request.deadline)}.` }));
    }
    card.append(status);
    return card;
  }

  async function send(event) {
    event.preventDefault();
    notice.textContent = "";
    if (!message.value.trim()) { notice.textContent = "Write a message first."; message.focus(); return; }
    try {
      const answer = await api("POST", `/v1/sessions/${id}/messages`, queue.checked ? { prompt: message.value, queue: true } : { prompt: message.value });
      message.value = "";
      notice.textContent = answer && answer.status === "queued" ? `Queued (position ${answer.position}).` : "Sent.";
      refresh();
    } catch (failure) {
      notice.textContent = failure.code === "EXECUTION_IN_PROGRESS"
        ? "The agent is still working on the previous message: wait for it to finish, tick Queue to send it after, or interrupt it."
        : `Not sent: ${failure.message}`;
    }
  }

  async function interrupt() {
    const answer = await api("POST", `/v1/sessions/${id}/interrupt`);
    notice.textContent = answer.interrupted ? "Interrupting…" : "Nothing is running.";
    refresh();
  }

  async function remove() {
    if (!window.confirm(`Delete session ${id}? Its runtime is stopped and its workspace and events are removed.`)) return;
    stop(); // no re-read or reconnect races the deletion
    await api("DELETE", `/v1/sessions/${id}`);
    location.hash = "#/";
  }

  async function changeIdle(event) {
    event.preventDefault();
    idleError.textContent = "";
    const ms = parseDuration(idle.value);
    if (ms === null) { idleError.textContent = "Write a duration like 30s, 15m or 2h."; return; }
    try {
      view = await api("PATCH", `/v1/sessions/${id}`, { idleTimeoutMs: ms });
      idle.value = formatDuration(view.idleTimeoutMs);
      notice.textContent = `Idle timeout is now ${idle.value}.`;
      draw();
    } catch (failure) { idleError.textContent = failure.message; }
  }

  // What a lifecycle event says, applied to the page at once (the view re-read soon after
  // confirms it): the runtime's state and the execution's status follow the event log.
  function apply(event) {
    if (!view) return;
    const ended = { "execution.completed": "completed", "execution.failed": "failed", "execution.interrupted": "interrupted" }[event.type];
    const execution = executions.find((e) => e.executionId === event.executionId);
    if (ended) {
      if (execution) execution.status = ended;
      if (view.activeExecutionId === event.executionId) view.activeExecutionId = null;
    } else if (event.type === "execution.running" && execution && execution.status === "pending") {
      execution.status = "running";
    } else if (event.type === "runtime.stopped") {
      view.runtime = { ...view.runtime, state: "stopped", stopReason: { ...event.data, at: event.at } };
    } else if (event.type === "runtime.started") {
      view.runtime = { ...view.runtime, state: "running", stopReason: null };
    } else {
      return;
    }
    draw();
  }

  // Each event is appended as text; a change of runtime or execution re-reads the view soon.
  let pending = null;
  const closeStream = openStream(id, (event) => {
    log.append(renderEvent(event));
    apply(event);
    if (event.type !== "agent" && event.type !== "output") {
      // The latest event decides when: a burst of them is one re-read, after it.
      clearTimeout(pending);
      pending = setTimeout(() => { pending = null; refresh(); }, 150);
    }
  }, (status) => { streamStatus.textContent = status === "live" ? "(live)" : status === "gone" ? "" : "(reconnecting…)"; });

  refresh();
  let ticks = 0;
  const timer = setInterval(() => {
    ticks += 1;
    // Re-read every 2 s while an execution runs (its heartbeats), else every 5 s.
    const every = view && view.activeExecutionId ? 2 : 5;
    if (ticks % every === 0 || (view && deadlinePassed(view))) refresh(); else draw();
  }, 1000);
  function stop() { stopped = true; clearInterval(timer); clearTimeout(pending); closeStream(); }
  return stop;
}
