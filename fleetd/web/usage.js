/* Usage: what each key spent per model over a chosen range, as totals and as one chart per key
   and model (tokens per time bucket). Read from /api/usage when mounted, when the range
   changes and on Refresh. #/usage/{key id} shows one key. */

import { api } from "./api.js";
import { fmtCount, h, notice, pageHead, table } from "./dom.js";
import { barChart } from "./chart.js";
import { render } from "./render.js";

const RANGES = [
  { id: "1h", label: "Last hour", seconds: 3600, step: 60 },
  { id: "24h", label: "Last 24 hours", seconds: 86400, step: 3600 },
  { id: "7d", label: "Last 7 days", seconds: 7 * 86400, step: 6 * 3600 },
  { id: "30d", label: "Last 30 days", seconds: 30 * 86400, step: 86400 },
];
const SERIES = [
  { label: "prompt tokens", cls: "c-prompt" },
  { label: "completion tokens", cls: "c-completion" },
];

const U = { rows: null, error: "", from: 0, to: 0, step: 60 };

async function loadUsage(range, key) {
  const now = Math.floor(Date.now() / 1000);
  const from = Math.floor((now - range.seconds) / range.step) * range.step;
  const q = new URLSearchParams({ since: String(from), interval: String(range.step) });
  if (key) q.set("key", key);
  try {
    const data = await api(`/api/usage?${q}`);
    Object.assign(U, { rows: data.usage, error: "", from, to: now, step: range.step });
  } catch (e) {
    U.error = e.message;
  }
  render();
}

/* Rows per bucket -> one entry per key and model, with totals and points by bucket. */
function group(rows) {
  const out = new Map();
  for (const r of rows) {
    const id = `${r.key_id}\u0000${r.model}`;
    let g = out.get(id);
    if (!g) {
      g = { key_id: r.key_id, key_name: r.key_name, model: r.model, requests: 0, errors: 0, prompt: 0, completion: 0, points: new Map() };
      out.set(id, g);
    }
    g.requests += r.requests;
    g.errors += r.errors;
    g.prompt += r.prompt_tokens;
    g.completion += r.completion_tokens;
    const t = Math.floor(Date.parse(r.time) / 1000);
    const p = g.points.get(t) || [0, 0];
    p[0] += r.prompt_tokens;
    p[1] += r.completion_tokens;
    g.points.set(t, p);
  }
  return [...out.values()].sort((a, b) => a.key_name.localeCompare(b.key_name) || a.model.localeCompare(b.model));
}

function body() {
  if (U.error) return [notice("error", `Cannot load usage: ${U.error}`)];
  if (U.rows === null) return [h("p", { class: "empty" }, "Loading…")];
  const groups = group(U.rows);
  const totals = table(
    "usage",
    ["Key", "Model", ["Requests", "num"], ["Errors", "num"], ["Prompt tokens", "num"], ["Completion tokens", "num"]],
    groups.map((g) =>
      h(
        "tr",
        { "data-key": g.key_id, "data-model": g.model },
        h("td", null, h("span", { class: "strong" }, g.key_name)),
        h("td", null, g.model),
        h("td", { class: "num" }, fmtCount(g.requests)),
        h("td", { class: "num" }, fmtCount(g.errors)),
        h("td", { class: "num" }, fmtCount(g.prompt)),
        h("td", { class: "num" }, fmtCount(g.completion)),
      ),
    ),
    "No requests in this range.",
  );
  const charts = groups.map((g) =>
    barChart({
      title: `${g.key_name} · ${g.model}`,
      series: SERIES,
      points: g.points,
      from: U.from,
      to: U.to,
      step: U.step,
      unit: "tokens",
    }),
  );
  return [h("div", { class: "card flush" }, totals), h("div", { class: "charts" }, charts)];
}

export function usageView(root, key) {
  const select = h(
    "select",
    { "aria-label": "Range" },
    RANGES.map((r) => h("option", { value: r.id }, r.label)),
  );
  const range = () => RANGES.find((r) => r.id === select.value) || RANGES[0];
  select.value = "24h";
  select.addEventListener("change", () => loadUsage(range(), key));
  const refresh = h("button", { type: "button", class: "ghost", onclick: () => loadUsage(range(), key) }, "Refresh");
  const content = h("div");
  const title = key ? "Usage of one key" : "Usage";
  const all = key ? h("a", { href: "#/usage" }, "All keys") : null;
  root.append(pageHead(title, h("div", { class: "toolbar" }, all, select, refresh)), content);
  document.title = "Usage · fleetd";
  U.rows = null;
  loadUsage(range(), key);
  let drawn = null; // redrawn only when new figures arrived, not on every live event
  return () => {
    if (drawn === U.rows && U.rows !== null) return;
    drawn = U.rows;
    content.replaceChildren(...body());
  };
}
