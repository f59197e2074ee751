/* The live stream: one EventSource on /api/events (no polling). Each message is merged into
   the store; on every (re)connect the full lists are read again, for whatever happened while
   the stream was down. */

import { historyStale, onHistory } from "./charts.js";
import { byId } from "./dom.js";
import { loadSnapshot } from "./load.js";
import { renderLive } from "./render.js";
import { loadMirror } from "./mirror.js";
import { S, mergeAgent, mergeTask } from "./state.js";

let es = null;
let retryTimer = 0;

function setLive(state) {
  const el = byId("live");
  el.dataset.state = state;
  el.textContent = { on: "live", connecting: "connecting…", off: "reconnecting…" }[state];
}

/* Opens the stream; when the server ends it, ``recheck()`` (is the session still valid?)
   decides whether to try again. */
export function connectEvents(recheck) {
  closeEvents();
  setLive("connecting");
  const source = new EventSource("/api/events");
  es = source;
  source.addEventListener("open", () => {
    setLive("on");
    loadSnapshot();
    loadMirror();
    historyStale();
  });
  source.addEventListener("agent", (e) => {
    mergeAgent(JSON.parse(e.data));
    renderLive();
  });
  source.addEventListener("task", (e) => {
    mergeTask(JSON.parse(e.data));
    renderLive();
  });
  source.addEventListener("mirror", (e) => {
    S.mirror = JSON.parse(e.data);
    renderLive();
  });
  source.addEventListener("history", (e) => onHistory(JSON.parse(e.data)));
  source.addEventListener("error", () => {
    setLive("off");
    if (source.readyState === EventSource.CLOSED) {
      // The server refused the stream (session gone?) or is down: check, then try again.
      retryTimer = setTimeout(async () => {
        if (es !== source) return;
        if (await recheck()) connectEvents(recheck);
      }, 3000);
    }
  });
}

export function closeEvents() {
  if (es) es.close();
  es = null;
  clearTimeout(retryTimer);
}
