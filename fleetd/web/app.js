/* The fleetd dashboard: vanilla JS as ES modules, no build step. State is loaded from the admin
   API once, then kept live by one EventSource on /api/events (no polling); views re-render from
   state. This module only wires the page's fixed controls and starts it. */

import { byId } from "./dom.js";
import { currentView, render } from "./render.js";
import { mountRoute } from "./router.js";
import { checkSession, login, logout, showApp, showLogin } from "./session.js";

byId("login-form").addEventListener("submit", login);
byId("logout").addEventListener("click", logout);
window.addEventListener("hashchange", mountRoute);
setInterval(() => currentView() && render(), 10000); // relative times ("5 s ago"); no network
if (location.hash === "#bad-token") {
  history.replaceState(null, "", location.pathname);
  showLogin("That token is not the admin token.");
} else if (await checkSession()) {
  showApp();
}
