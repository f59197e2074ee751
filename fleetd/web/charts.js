/* Charts of the fleet's last hour (#/charts, #/charts/{agent id}, and an agent's page):
   requests and tokens per second, GPU memory and utilization, download throughput. A history
   is read from /api/history when first shown, then kept live by `history` events: the event
   carries the fleet's values; a shown agent's series are read on from their last point. */

import { api } from "./api.js";
import { lineChart } from "./chart.js";
import { fmtBytes, h, notice, pageHead } from "./dom.js";
import { currentView, render } from "./render.js";
import { S, sortedAgents } from "./state.js";

const FLEET = ""; // the fleet's scope; any other scope is an agent id
const KEEP = 8; // agents' histories held at most (those last shown)

const held = new Map(); // scope -> {data, error, loading, version}
let versions = 0; // one counter for every scope's version, so a scope read again is drawn

function entry(scope) {
  let e = held.get(scope);
  if (!e) {
    e = { data: null, error: "", loading: false, version: 0 };
    held.set(scope, e);
    for (const old of held.keys()) {
      if (held.size <= KEEP + 1) break;
      if (old !== FLEET && old !== scope) held.delete(old);
    }
  }
  return e;
}

function lastTime(d) {
  return d.start + (d.series.requests.length - 1) * d.interval_s;
}

/* Points in `got` (read from `since`, or values of one event) appended to `d`; a gap between
   them is filled with nulls, and the window keeps its length. */
function append(d, start, values) {
  const count = Math.max(0, ...Object.values(values).map((v) => v.length));
  const missing = Math.max(0, Math.round((start - lastTime(d)) / d.interval_s) - 1);
  for (const [name, list] of Object.entries(d.series)) {
    for (let i = 0; i < missing; i += 1) list.push(null);
    list.push(...(values[name] || new Array(count).fill(null)));
  }
  const over = d.series.requests.length - d.window_s / d.interval_s;
  if (over > 0) {
    for (const list of Object.values(d.series)) list.splice(0, over);
    d.start += over * d.interval_s;
  }
}

async function load(scope, since) {
  const e = entry(scope);
  if (e.loading) return; // the next event reads on from wherever this one ends
  e.loading = true;
  const q = new URLSearchParams();
  if (scope) q.set("agent", scope);
  if (since !== undefined) q.set("since", String(since));
  try {
    const got = await api(`/api/history?${q}`);
    if (since !== undefined && e.data) {
      append(e.data, got.start, got.series);
      Object.assign(e.data, { agent: got.agent, gpu_memory_bytes: got.gpu_memory_bytes, tracked: got.tracked });
    } else {
      e.data = got;
    }
    e.error = "";
  } catch (err) {
    e.error = err.message;
  }
  e.loading = false;
  e.version = ++versions;
  render();
}

/* The agent whose charts the mounted view shows, if any. */
function shownAgent() {
  const key = (currentView() && currentView().key) || "";
  const [view, arg] = key.split("/");
  return (view === "charts" || view === "agents") && arg ? arg : null;
}

/* A `history` event: one interval's values of the fleet. One that does not follow the last
   point held (an event missed, or the history read just before it) has the fleet read again. */
export function onHistory(ev) {
  const fleet = held.get(FLEET);
  if (fleet && fleet.data && !fleet.loading) {
    const d = fleet.data;
    if (ev.t === lastTime(d) + d.interval_s) {
      const values = Object.fromEntries(Object.keys(d.series).map((k) => [k, [ev.fleet[k] ?? null]]));
      append(d, ev.t, values);
      fleet.version = ++versions;
    } else if (ev.t > lastTime(d)) {
      load(FLEET);
    }
  }
  const id = shownAgent();
  const mine = id && held.get(id);
  if (mine && mine.data && lastTime(mine.data) < ev.t) load(id, lastTime(mine.data));
  render();
}

/* After the event stream reconnected: what is shown is read again, the rest forgotten. */
export function historyStale() {
  const shown = shownAgent();
  for (const [scope, e] of held) {
    if (scope === FLEET || scope === shown) {
      if (e.data) load(scope);
    } else {
      held.delete(scope);
    }
  }
}

function total(values) {
  return values.reduce((sum, v) => sum + (v || 0), 0);
}

function peak(values) {
  return Math.max(0, ...values);
}

function fmtRate(v) {
  if (Number.isInteger(v)) return v.toLocaleString();
  if (v < 10) return String(Number(v.toFixed(v < 0.1 ? 3 : 2)));
  if (v < 100) return v.toFixed(1);
  return Math.round(v).toLocaleString();
}

function fmtWindow(s) {
  if (s === 3600) return "hour";
  return s % 3600 === 0 ? `${s / 3600} hours` : `${Math.round(s / 60)} min`;
}

const fmtPct = (v) => `${Math.round(v * 100)}%`;
const fmtBps = (v) => `${fmtBytes(v)}/s`;

function figures(scope, d) {
  const step = d.interval_s;
  const base = { start: d.start, step, slots: d.window_s / step };
  const s = d.series;
  const per = (values) => values.map((v) => (v === null ? null : v / step));
  const last = `in the last ${fmtWindow(d.window_s)}`;
  const requests = [{ label: "requests/s", cls: "c-requests", values: per(s.requests) }];
  let said = `${total(s.requests).toLocaleString()} requests`;
  if (s.errors) {
    requests.push({ label: "failed/s", cls: "c-errors", values: per(s.errors) });
    said += `, ${total(s.errors).toLocaleString()} failed`;
  }
  const prompt = total(s.prompt_tokens);
  const completion = total(s.completion_tokens);
  const used = s.gpu_memory_used_bytes;
  const memory = [{ label: "used", cls: "c-used", values: used }];
  let capacity = d.gpu_memory_bytes;
  if (s.gpu_memory_bytes) {
    memory.push({ label: "total", cls: "c-total", values: s.gpu_memory_bytes });
    capacity = peak(s.gpu_memory_bytes);
  }
  const gpuNone = scope ? "no figures from this agent's GPUs" : "no agent reports GPU figures";
  const latest = (values) => [...values].reverse().find((v) => v !== null);
  const nowUsed = latest(used);
  const nowUtil = latest(s.gpu_utilization);
  return [
    lineChart({ ...base, title: "Requests", name: "requests", series: requests, fmt: fmtRate, summary: `${said} ${last}` }),
    lineChart({
      ...base,
      title: "Tokens",
      name: "tokens",
      series: [
        { label: "prompt/s", cls: "c-prompt", values: per(s.prompt_tokens) },
        { label: "completion/s", cls: "c-completion", values: per(s.completion_tokens) },
      ],
      fmt: fmtRate,
      summary: `${prompt.toLocaleString()} prompt and ${completion.toLocaleString()} completion tokens ${last}`,
    }),
    lineChart({
      ...base,
      title: "GPU memory",
      name: "gpu-memory",
      series: memory,
      fmt: fmtBytes,
      max: capacity,
      summary: nowUsed === undefined ? gpuNone : `${fmtBytes(nowUsed)} used of ${fmtBytes(capacity)}`,
    }),
    lineChart({
      ...base,
      title: "GPU utilization",
      name: "gpu-utilization",
      series: [{ label: "utilization", cls: "c-util", values: s.gpu_utilization }],
      fmt: fmtPct,
      max: 1,
      summary: nowUtil === undefined ? gpuNone : `${fmtPct(nowUtil)} now`,
    }),
    lineChart({
      ...base,
      title: "Downloads",
      name: "downloads",
      series: [{ label: "throughput", cls: "c-download", values: s.download_bps }],
      fmt: fmtBps,
      summary: `peak ${fmtBps(peak(s.download_bps))} ${last}`,
    }),
  ];
}

function body(scope, e) {
  if (e.error) return [notice("error", `Cannot load the charts: ${e.error}`)];
  if (!e.data) return [h("p", { class: "empty" }, "Loading…")];
  const out = [];
  if (scope && e.data.tracked === false) {
    out.push(
      notice(
        "warn",
        "The coordinator keeps per-agent history for coordinator.history_max_agents agents, and " +
          "this one is beyond that: its charts stay empty until a slot frees.",
      ),
    );
  }
  out.push(h("div", { class: "charts" }, figures(scope, e.data)));
  return out;
}

/* The charts of the fleet (scope "") or of one agent, redrawn when new points arrived. */
export function chartsWidget(scope) {
  const el = h("div", { class: "history" });
  let drawn = -1;
  return {
    el,
    update() {
      const e = entry(scope);
      if (!e.data && !e.error) load(scope);
      if (e.version === drawn) return;
      drawn = e.version;
      el.replaceChildren(...body(scope, e));
    },
  };
}

export function chartsView(root, scope) {
  const select = h("select", {
    "aria-label": "Charts of",
    onchange: () => {
      location.hash = select.value ? `#/charts/${encodeURIComponent(select.value)}` : "#/charts";
    },
  });
  const widget = chartsWidget(scope);
  root.append(pageHead("Charts", h("div", { class: "toolbar" }, select)), widget.el);
  document.title = "Charts · fleetd";
  let listed = null;
  return () => {
    const agents = sortedAgents();
    const names = agents.map((a) => `${a.id}\u0000${a.name}`).join("\u0001");
    if (names !== listed) {
      listed = names;
      select.replaceChildren(
        h("option", { value: "" }, "The fleet"),
        ...agents.map((a) => h("option", { value: a.id }, a.name)),
      );
      if (scope && !S.agents.has(scope)) select.append(h("option", { value: scope }, scope));
      select.value = scope;
    }
    widget.update();
  };
}
