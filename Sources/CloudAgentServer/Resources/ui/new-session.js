// The new-session form: "Start" creates the session (POST /v1/sessions), runs its prompt
// (POST …/initiate) and opens its page. An API 400 is shown next to the field it names.
import { api } from "./api.js";
import { el, parseDuration } from "./dom.js";
import { agentLabel, loadAgents } from "./agents.js";

// A field of the form: its label, control and error line (tied by aria-describedby).
function field(id, label, control, hint) {
  control.id = id;
  const error = el("p", { id: `${id}-error`, class: "error", "aria-live": "polite" });
  control.setAttribute("aria-describedby", `${id}-error` + (hint ? ` ${id}-hint` : ""));
  return { control, error, node: el("div", { class: "field" },
    el("label", { for: id, text: label }), control, hint ? el("p", { id: `${id}-hint`, class: "hint", text: hint }) : null, error) };
}

// NAME=value lines → an object; a line without "=" is an error naming it.
function pairs(text) {
  const result = {};
  for (const line of text.split("\n").map((l) => l.trim()).filter(Boolean)) {
    const at = line.indexOf("=");
    if (at < 1) throw new Error(`"${line}" is not NAME=value`);
    result[line.slice(0, at).trim()] = line.slice(at + 1);
  }
  return result;
}

export function renderNewSession(main) {
  const f = {
    prompt: field("prompt", "Prompt", el("textarea", { rows: 6, required: true }), "What the agent should do; several lines are fine."),
    repo: field("repo", "Repository", el("input", { type: "text", placeholder: "https://… or a local path (optional)" })),
    branch: field("branch", "Branch", el("input", { type: "text" }), "An existing branch; empty: a new branch session/<id>."),
    agent: field("agent", "Agent", el("select", {})),
    mode: field("mode", "Mode", el("input", { type: "text" }), "Handed to the agent (optional)."),
    idle: field("idle", "Idle timeout", el("input", { type: "text", placeholder: "15m" }), "Like 30s, 15m or 2h; empty: the server's default."),
    cost: field("max-cost", "Max cost (USD)", el("input", { type: "text", inputmode: "decimal", placeholder: "5.00" }),
      "A budget (optional): past it the agent waits for your go-ahead (with \"Ask before…\" ticked) or is stopped."),
    tokens: field("max-tokens", "Max tokens", el("input", { type: "text", inputmode: "numeric", placeholder: "1000000" }),
      "A budget in tokens (optional), like the cost; with both, the first reached counts."),
    env: field("env", "Environment variables", el("textarea", { rows: 3, placeholder: "NAME=value" }), "One NAME=value a line."),
    secrets: field("secrets", "Secrets", el("textarea", { rows: 3, placeholder: "NAME=value", autocomplete: "off" }), "Like environment variables, stored encrypted and never shown again."),
  };
  const autoCommit = el("input", { type: "checkbox", id: "auto-commit" });
  const ask = el("input", { type: "checkbox", id: "approvals-ask" });
  const general = el("p", { class: "error", role: "alert" });
  const start = el("button", { type: "submit", class: "primary", text: "Start" });
  const form = el("form", { class: "card", novalidate: true },
    Object.values(f).map((x) => x.node),
    el("div", { class: "field check" }, autoCommit, el("label", { for: "auto-commit", text: "Auto-commit after each execution" })),
    el("div", { class: "field check" }, ask, el("label", { for: "approvals-ask", text: "Ask before the agent uses a tool" })),
    general, start);
  main.append(el("h1", { text: "New session" }), form);

  loadAgents().then((agents) => {
    f.agent.control.replaceChildren(...agents.map((agent) =>
      el("option", { value: agent.name, disabled: !agent.available, selected: agent.name === "scripted", text: agentLabel(agent) })));
  }, (failure) => { f.agent.error.textContent = `Could not load the agents: ${failure.message}`; });

  // Which form field an API error's `field` (e.g. "repo.url", "envVars.FOO") belongs to.
  const fieldFor = (name) => ({ prompt: f.prompt, agent: f.agent, mode: f.mode, idleTimeoutMs: f.idle,
    "repo.branch": f.branch, repo: f.repo, envVars: f.env, secrets: f.secrets,
    "budget.maxCostUsd": f.cost, "budget.maxTokens": f.tokens })[name]
    || ({ repo: f.repo, envVars: f.env, secrets: f.secrets, budget: f.cost.control.value.trim() ? f.cost : f.tokens })[name.split(".")[0]];

  function showError(target, message) {
    target.error.textContent = message;
    target.control.setAttribute("aria-invalid", "true");
    target.control.focus();
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    general.textContent = "";
    for (const x of Object.values(f)) { x.error.textContent = ""; x.control.removeAttribute("aria-invalid"); }
    const body = { prompt: f.prompt.control.value, agent: f.agent.control.value || "scripted", autoCommit: autoCommit.checked,
      approvals: ask.checked ? "ask" : "auto" };
    if (f.repo.control.value.trim()) body.repo = { url: f.repo.control.value.trim() };
    if (body.repo && f.branch.control.value.trim()) body.repo.branch = f.branch.control.value.trim();
    if (f.mode.control.value.trim()) body.mode = f.mode.control.value.trim();
    if (f.idle.control.value.trim()) {
      body.idleTimeoutMs = parseDuration(f.idle.control.value);
      if (body.idleTimeoutMs === null) return showError(f.idle, "Write a duration like 30s, 15m or 2h.");
    }
    const cost = f.cost.control.value.trim().replace(/^\$/, "");
    const tokens = f.tokens.control.value.trim().replace(/[_,]/g, "");
    if (cost || tokens) {
      body.budget = {};
      if (cost) {
        if (!/^(\d+\.?\d*|\.\d+)$/.test(cost) || !(Number(cost) > 0)) return showError(f.cost, "Write an amount of US dollars above 0, like 5 or 0.50.");
        body.budget.maxCostUsd = Number(cost);
      }
      if (tokens) {
        if (!/^\d+$/.test(tokens) || !(Number(tokens) >= 1)) return showError(f.tokens, "Write a whole number of tokens, like 100000.");
        body.budget.maxTokens = Number(tokens);
      }
    }
    for (const [key, target] of [["envVars", f.env], ["secrets", f.secrets]]) {
      try { body[key] = pairs(target.control.value); } catch (failure) { return showError(target, failure.message); }
    }
    start.disabled = true;
    general.textContent = "Starting…";
    try {
      const view = await api("POST", "/v1/sessions", body);
      await api("POST", `/v1/sessions/${view.sessionId}/initiate`, {});
      location.hash = `#/sessions/${view.sessionId}`;
    } catch (failure) {
      general.textContent = "";
      const target = failure.field && fieldFor(failure.field);
      if (target) showError(target, failure.message);
      else general.textContent = `Could not start: ${failure.message}`;
    } finally {
      start.disabled = false;
    }
  });
  f.prompt.control.focus();
}
