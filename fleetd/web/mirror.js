/* The registry mirror's card on the Tasks page: cache fill, bytes from upstream against bytes
   served (what the fleet did not fetch from the internet), blobs arriving, and each model's
   state in the cache. Loaded with the snapshot, then kept live by `mirror` events. */

import { api } from "./api.js";
import { badge, bar, fmtBytes, h, stat } from "./dom.js";
import { render } from "./render.js";
import { S } from "./state.js";

export async function loadMirror() {
  try {
    S.mirror = await api("/api/mirror");
  } catch {
    S.mirror = null; // the card is simply not shown
  }
  render();
}

export function mirrorCard() {
  const m = S.mirror;
  if (!m || !m.enabled) return "";
  const budget = m.max_bytes ? `of ${fmtBytes(m.max_bytes)}` : "cached";
  const fetching = (m.fetching || []).map((f) =>
    h(
      "div",
      { class: "mirror-fetch", "data-digest": f.digest },
      h("code", null, f.digest.slice(7, 19)),
      bar(f.size ? f.have / f.size : 0),
      h("span", { class: "muted" }, f.size ? `${fmtBytes(f.have)} of ${fmtBytes(f.size)}` : fmtBytes(f.have)),
    ),
  );
  const models = (m.models || []).map((x) =>
    h(
      "span",
      { class: "mirror-model", "data-model": x.name },
      x.name,
      " ",
      badge(x.complete ? "completed" : "queued", x.complete ? "cached" : "partial"),
    ),
  );
  return h(
    "div",
    { class: "card mirror-card" },
    h(
      "div",
      { class: "stats" },
      h("span", { class: "strong" }, "Registry mirror"),
      stat(fmtBytes(m.bytes_cached), budget),
      stat(fmtBytes(m.upstream_bytes), "from upstream"),
      stat(fmtBytes(m.served_bytes), "served to agents"),
    ),
    fetching.length ? h("div", null, ...fetching) : "",
    models.length ? h("div", { class: "mirror-models" }, ...models) : "",
  );
}
