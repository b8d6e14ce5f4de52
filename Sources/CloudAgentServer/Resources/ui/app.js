// The console's shell: the sign-in gate, the navigation and hash routing to one page module each.
import { signOut, token, whenUnauthorized } from "./api.js";
import { renderSignIn } from "./signin.js";
import { renderSessions } from "./sessions.js";
import { renderNewSession } from "./new-session.js";
import { renderSession } from "./session.js";
import { renderAgents } from "./agents.js";

const main = document.getElementById("main");
const nav = document.getElementById("nav");
let cleanup = () => {};

function route() {
  cleanup();
  cleanup = () => {};
  main.replaceChildren();
  const signedIn = Boolean(token());
  nav.hidden = !signedIn;
  if (!signedIn) {
    renderSignIn(main, () => { location.hash = "#/"; route(); });
    return;
  }
  const hash = location.hash.replace(/^#/, "") || "/";
  const session = /^\/sessions\/(agent_[A-Za-z0-9-]+)$/.exec(hash);
  if (session) cleanup = renderSession(main, session[1]) || cleanup;
  else if (hash === "/new") cleanup = renderNewSession(main) || cleanup;
  else if (hash === "/agents") cleanup = renderAgents(main) || cleanup;
  else cleanup = renderSessions(main) || cleanup;
  // Keyboard and screen-reader users land on the new page's heading.
  const heading = main.querySelector("h1");
  if (heading) { heading.tabIndex = -1; heading.focus({ preventScroll: true }); }
}

document.getElementById("sign-out").addEventListener("click", () => {
  signOut();
  location.hash = "#/";
  route();
});
whenUnauthorized(() => { signOut(); route(); });
window.addEventListener("hashchange", route);
route();
