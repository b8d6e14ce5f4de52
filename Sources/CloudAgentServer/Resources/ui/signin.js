// Sign-in: the bearer token printed by `cloud-agent serve`, kept in sessionStorage once the
// server accepts it.
import { signIn, tokenAccepted } from "./api.js";
import { el } from "./dom.js";

export function renderSignIn(main, done) {
  const input = el("input", { id: "token", type: "password", autocomplete: "off", required: true, "aria-describedby": "token-help" });
  const error = el("p", { class: "error", role: "alert" });
  const form = el("form", { class: "card narrow" },
    el("h1", { text: "Sign in" }),
    el("label", { for: "token", text: "API token" }),
    input,
    el("p", { id: "token-help", class: "hint", text: "The token `cloud-agent serve` printed at start, or one from `cloud-agent tokens create`." }),
    error,
    el("button", { type: "submit", class: "primary", text: "Sign in" }));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.textContent = "";
    try {
      if (await tokenAccepted(input.value.trim())) {
        signIn(input.value.trim());
        done();
        return;
      }
      error.textContent = "That token is not valid.";
    } catch (failure) {
      error.textContent = `Could not sign in: ${failure.message}`;
    }
    input.focus();
  });
  main.append(form);
  input.focus();
}
