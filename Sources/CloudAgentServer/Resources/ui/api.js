// The console's only way to the server: the public API with the bearer token kept in
// sessionStorage (gone when the tab closes).
const KEY = "cloud-agent.token";

export const token = () => sessionStorage.getItem(KEY);
export const signIn = (value) => sessionStorage.setItem(KEY, value);

// Whether the server accepts `value` (200 on a one-session list), without keeping it.
export async function tokenAccepted(value) {
  const response = await fetch("/v1/sessions?limit=1", { headers: { Authorization: `Bearer ${value}` } });
  if (response.status === 401) return false;
  if (!response.ok) throw new Error(`HTTP ${response.status}`);
  return true;
}
export const signOut = () => sessionStorage.removeItem(KEY);

// Server clock minus local clock, from the `Date` header of each answer. The header has
// one-second resolution, so differences under a second are treated as none.
let skewMs = 0;
export const serverNow = () => Date.now() + skewMs;

export class ApiError extends Error {
  constructor(status, body) {
    const error = (body && body.error) || {};
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.code = error.code || "";
    this.field = error.field || "";
  }
}

// Called when the server refuses the token (401): the app goes back to sign-in.
let onUnauthorized = () => {};
export const whenUnauthorized = (handler) => { onUnauthorized = handler; };

export async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${token() || ""}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const sent = Date.now();
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const date = Date.parse(response.headers.get("Date") || "");
  if (!Number.isNaN(date)) {
    const skew = date + 500 - (sent + Date.now()) / 2;
    skewMs = Math.abs(skew) < 1000 ? 0 : skew;
  }
  const text = await response.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch { json = null; }
  if (response.status === 401) onUnauthorized();
  if (!response.ok) throw new ApiError(response.status, json);
  return json;
}
