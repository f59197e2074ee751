/* Signing in and out: the page shows either the login form or the app, never fleet data
   without a session. */

import { setUnauthorizedHandler } from "./api.js";
import { byId } from "./dom.js";
import { closeEvents, connectEvents } from "./events.js";
import { setCurrentView } from "./render.js";
import { mountRoute } from "./router.js";
import { clearState } from "./state.js";

export async function checkSession() {
  try {
    const r = await fetch("/api/session", { credentials: "same-origin" });
    const data = await r.json();
    if (!data.authenticated) {
      showLogin("");
      return false;
    }
    return true;
  } catch {
    return true; // coordinator unreachable: keep the page, the stream retries
  }
}

export function showLogin(message) {
  closeEvents();
  clearState();
  setCurrentView(null); // signing in again mounts the view afresh
  byId("view").replaceChildren();
  byId("view").hidden = true;
  byId("nav").hidden = true;
  byId("live").hidden = true;
  byId("logout").hidden = true;
  byId("login").hidden = false;
  const err = byId("login-error");
  err.textContent = message;
  err.hidden = !message;
  document.title = "Sign in · fleetd";
  byId("token").focus();
}

setUnauthorizedHandler(showLogin);

export function showApp() {
  byId("login").hidden = true;
  byId("view").hidden = false;
  byId("nav").hidden = false;
  byId("live").hidden = false;
  byId("logout").hidden = false;
  connectEvents(checkSession);
  mountRoute();
}

export async function login(event) {
  event.preventDefault();
  const input = byId("token");
  const err = byId("login-error");
  const button = event.target.querySelector("button");
  button.disabled = true;
  try {
    const r = await fetch("/api/session", {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify({ token: input.value.trim() }),
      credentials: "same-origin",
    });
    if (!r.ok) {
      err.textContent =
        r.status === 401 ? "That token is not the admin token." : `Sign-in failed (${r.status}).`;
      err.hidden = false;
      input.select();
      return;
    }
    input.value = "";
    showApp();
  } catch {
    err.textContent = "Cannot reach the coordinator.";
    err.hidden = false;
  } finally {
    button.disabled = false;
  }
}

export async function logout() {
  try {
    await fetch("/api/session", { method: "DELETE", credentials: "same-origin" });
  } finally {
    showLogin("");
  }
}
