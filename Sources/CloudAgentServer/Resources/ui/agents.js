// What the server can run, and why not.
import { api } from "./api.js";
import { el } from "./dom.js";

export async function loadAgents() {
  return ((await api("GET", "/v1/agents")) || {}).agents || [];
}

export function agentLabel(agent) {
  return agent.available ? agent.name : `${agent.name} — unavailable: ${agent.reason || "binary not found"}`;
}

export function renderAgents(main) {
  const body = el("tbody");
  const status = el("p", { role: "status" }, "Loading…");
  main.append(el("h1", { text: "Agents" }), status,
    el("table", {}, el("caption", { text: "The agents this server can run" }),
      el("thead", {}, el("tr", {}, ["Name", "Kind", "Available", "Binary", "Version"].map((t) => el("th", { scope: "col", text: t })))),
      body));
  loadAgents().then((agents) => {
    status.textContent = "";
    for (const agent of agents) {
      body.append(el("tr", {},
        el("td", { text: agent.name }), el("td", { text: agent.kind }),
        el("td", { text: agent.available ? "yes" : `no — ${agent.reason || "binary not found"}` }),
        el("td", { text: agent.binary || "—" }), el("td", { text: agent.version || "—" })));
    }
  }, (failure) => { status.textContent = `Could not load the agents: ${failure.message}`; });
}
