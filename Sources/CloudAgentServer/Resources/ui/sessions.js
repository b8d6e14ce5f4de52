// The sessions list: newest first, a page at a time, each runtime's state with a live idle
// countdown or its stop reason.
import { api } from "./api.js";
import { el } from "./dom.js";
import { deadlinePassed, runtimeText } from "./runtime-state.js";

const PAGE = 20;

export function renderSessions(main) {
  const cursors = [null]; // the cursor of each page seen; the last one is shown
  let views = [];
  const list = el("ul", { class: "sessions", "aria-label": "Sessions list" });
  const status = el("p", { role: "status" });
  const older = el("button", { type: "button", text: "Older", hidden: true, onclick: () => { cursors.push(older.dataset.cursor); load(); } });
  const newer = el("button", { type: "button", text: "Newer", hidden: true, onclick: () => { cursors.pop(); load(); } });
  main.append(
    el("div", { class: "title-row" },
      el("h1", { text: "Sessions" }),
      el("button", { type: "button", class: "primary", text: "New session", onclick: () => { location.hash = "#/new"; } })),
    status, list, el("div", { class: "pager" }, newer, older));

  async function load() {
    const cursor = cursors[cursors.length - 1];
    try {
      const page = await api("GET", `/v1/sessions?limit=${PAGE}` + (cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""));
      views = page.sessions || [];
      status.textContent = views.length ? "" : (cursor ? "No older sessions." : "No sessions yet. Start one with New session.");
      older.hidden = !page.nextCursor;
      older.dataset.cursor = page.nextCursor || "";
      newer.hidden = cursors.length < 2;
      draw();
    } catch (failure) {
      status.textContent = `Could not load the sessions: ${failure.message}`;
    }
  }

  // Rebuilt only when the list is re-read (keeping a focused link focused); a tick changes the
  // state texts alone.
  let states = [];
  function draw() {
    const focused = list.contains(document.activeElement) ? document.activeElement.getAttribute("href") : null;
    states = views.map((view) => el("span", { class: "state", "data-state": view.runtime.state, text: runtimeText(view) }));
    list.replaceChildren(...views.map((view, index) => el("li", { class: "session-row" },
      el("a", { href: `#/sessions/${view.sessionId}`, class: "mono", text: view.sessionId }),
      el("span", { class: "agent", text: view.agent }),
      el("span", { class: "repo", text: view.repo ? `${view.repo.url}${view.repo.branch ? " @ " + view.repo.branch : ""}` : "no repository" }),
      states[index],
      view.pendingInput > 0 ? el("span", { class: "waiting", text: "waiting for input" }) : null)));
    if (focused) { const link = list.querySelector(`a[href="${CSS.escape(focused)}"]`); if (link) link.focus(); }
  }
  const tick = () => views.forEach((view, index) => { states[index].textContent = runtimeText(view); });

  load();
  // The countdowns tick each second; the list is re-read every 5 s and when a deadline passes.
  let ticks = 0;
  const timer = setInterval(() => {
    ticks += 1;
    if (ticks % 5 === 0 || views.some(deadlinePassed)) load(); else tick();
  }, 1000);
  return () => clearInterval(timer);
}
