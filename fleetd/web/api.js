/* Calls to the admin API with the session cookie: JSON in and out, errors as ApiError. */

export class ApiError extends Error {
  constructor(message, status, code, data) {
    super(message);
    this.status = status;
    this.code = code;
    this.data = data;
  }
}

let onUnauthorized = () => {};

/* What to do when a call answers 401 (the session ended): set by the session module. */
export function setUnauthorizedHandler(fn) {
  onUnauthorized = fn;
}

export async function api(path, { method = "GET", body } = {}) {
  const init = { method, headers: { Accept: "application/json" }, credentials: "same-origin" };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let resp;
  try {
    resp = await fetch(path, init);
  } catch {
    throw new ApiError("cannot reach the coordinator", 0, "network");
  }
  let data = null;
  try {
    data = await resp.json();
  } catch {
    data = null;
  }
  if (!resp.ok) {
    const err = data && data.error;
    const message = (err && (err.message || err)) || `${resp.status} ${resp.statusText}`;
    if (resp.status === 401) onUnauthorized("Your session has ended; sign in again.");
    throw new ApiError(String(message), resp.status, err && err.code, data);
  }
  return data;
}
