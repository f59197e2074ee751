"use strict";
/* The fleetd dashboard: vanilla JS, no build step. State is loaded from the admin API once,
   then kept live by one EventSource on /api/events (no polling); views re-render from state.
   Every string from the server goes into the DOM as text, never as HTML. */

// ---------------------------------------------------------------- state

// Lists show PAGE_ROWS rows at a time: laying out a table of thousands of rows blocks the page
// for seconds (3,000 agents: one frame every 2 s), and live events redraw it every second.
const PAGE_ROWS = 200;

const S = {
  agents: new Map(), // id -> agent, as GET /api/agents/{id} returns it
  tasks: new Map(), // id -> task, as GET /api/tasks/{id} returns it
  loaded: false, // agents and tasks snapshot received
  loadError: "",
  catalog: null, // GET /api/models/catalog
  catalogError: "",
  catalogPromise: null,
  details: new Map(), // model name -> GET /api/models/catalog/{name}, or {error}
  matrix: null, // GET /api/models/matrix
  matrixError: "",
  matrixStale: true,
  installed: new Map(), // agent id -> GET /api/agents/{id}/models, or {error}
  installedStale: new Set(),
  es: null,
  retryTimer: 0,
};

const ACTIVE = new Set(["downloading", "queued", "waiting"]);
const TASK_STATES = ["downloading", "queued", "waiting", "failed", "completed", "cancelled"];

// ---------------------------------------------------------------- DOM and formatting helpers

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "style") Object.assign(el.style, v);
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

const byId = (id) => document.getElementById(id);

function fmtBytes(n) {
  if (n === null || n === undefined || !Number.isFinite(n)) return "—";
  const units = ["B", "KB", "MB", "GB", "TB", "PB"];
  let i = 0;
  while (Math.abs(n) >= 1000 && i < units.length - 1) {
    n /= 1000;
    i += 1;
  }
  const digits = i === 0 || n >= 100 ? 0 : 1;
  return `${n.toFixed(digits)} ${units[i]}`;
}

function fmtGiB(n) {
  return `${Math.round(n / 1024 ** 3)} GiB`;
}

function fmtSpeed(bps) {
  return bps > 0 ? `${fmtBytes(bps)}/s` : "—";
}

function fmtEta(s) {
  if (s === null || s === undefined || !Number.isFinite(s) || s < 0) return "—";
  if (s < 60) return `${Math.max(1, Math.round(s))} s left`;
  if (s < 3600) return `${Math.round(s / 60)} min left`;
  const hours = Math.floor(s / 3600);
  const min = Math.round((s % 3600) / 60);
  return min ? `${hours} h ${min} min left` : `${hours} h left`;
}

function fmtPct(p) {
  const v = Math.max(0, Math.min(1, p || 0)) * 100;
  return `${v >= 100 ? 100 : Math.floor(v * 10) / 10}%`;
}

function fmtCount(n) {
  if (!Number.isFinite(n)) return "—";
  if (n >= 1e6) return `${(n / 1e6).toFixed(n >= 1e7 ? 0 : 1)}M`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(n >= 1e4 ? 0 : 1)}K`;
  return String(n);
}

function fmtAgo(iso) {
  if (!iso) return "—";
  const t = Date.parse(iso);
  if (Number.isNaN(t)) return "—";
  const s = Math.round((Date.now() - t) / 1000);
  if (s < 5) return "just now";
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}

function timeEl(iso) {
  if (!iso) return h("span", { class: "muted" }, "—");
  return h("time", { datetime: iso, title: new Date(iso).toLocaleString() }, fmtAgo(iso));
}

function agentState(a) {
  if (!a || a.status === "offline") return "offline";
  return a.initializing ? "initializing" : "online";
}

function agentName(id) {
  const a = S.agents.get(id);
  return a ? a.name : id;
}

function badge(state, text) {
  return h("span", { class: `badge s-${state}`, "data-state": state }, text || state);
}

function bar(progress, state) {
  const fill = h("span", { style: { width: fmtPct(progress) } });
  return h(
    "span",
    {
      class: `bar s-${state || "downloading"}`,
      role: "progressbar",
      "aria-valuemin": 0,
      "aria-valuemax": 100,
      "aria-valuenow": Math.round((progress || 0) * 100),
    },
    fill,
  );
}

/* A table whose cells carry their column's name, so narrow windows can stack them as cards. */
function table(cls, headers, rows, empty) {
  if (!rows.length && empty) return h("p", { class: "empty" }, empty);
  const labels = headers.map((x) => (Array.isArray(x) ? x[0] : x));
  for (const tr of rows) {
    [...tr.children].forEach((td, i) => {
      if (!td.hasAttribute("colspan") && labels[i]) td.dataset.label = labels[i];
    });
  }
  return h(
    "div",
    { class: "table-wrap" },
    h(
      "table",
      { class: `${cls} stack` },
      h(
        "thead",
        null,
        h(
          "tr",
          null,
          headers.map((x) => (Array.isArray(x) ? h("th", { class: x[1] }, x[0]) : h("th", null, x))),
        ),
      ),
      h("tbody", null, rows),
    ),
  );
}

function notice(kind, ...children) {
  return h("div", { class: `notice ${kind}`, role: kind === "error" ? "alert" : "status" }, ...children);
}

function withTag(name) {
  const slash = name.lastIndexOf("/");
  return name.indexOf(":", slash + 1) < 0 ? `${name}:latest` : name;
}

// ---------------------------------------------------------------- API

class ApiError extends Error {
  constructor(message, status, code, data) {
    super(message);
    this.status = status;
    this.code = code;
    this.data = data;
  }
}

async function api(path, { method = "GET", body } = {}) {
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
    if (resp.status === 401) showLogin("Your session has ended; sign in again.");
    throw new ApiError(String(message), resp.status, err && err.code, data);
  }
  return data;
}

function upsertTask(t) {
  if (!t || !t.id) return;
  const prev = S.tasks.get(t.id);
  S.tasks.set(t.id, t);
  if (!prev || prev.status !== t.status) {
    S.matrixStale = true;
    if (t.status === "completed") S.installedStale.add(t.agent_id);
  }
}

function upsertAgent(a) {
  if (!a || !a.id) return;
  const prev = S.agents.get(a.id);
  S.agents.set(a.id, a);
  if (!prev || prev.status !== a.status || prev.name !== a.name) S.matrixStale = true;
}

async function loadSnapshot() {
  try {
    const [agents, tasks] = await Promise.all([api("/api/agents"), api("/api/tasks")]);
    S.agents = new Map();
    S.tasks = new Map();
    for (const a of agents.agents || []) S.agents.set(a.id, a);
    for (const t of tasks.tasks || []) S.tasks.set(t.id, t);
    S.loaded = true;
    S.loadError = "";
    S.matrixStale = true;
    for (const id of S.installed.keys()) S.installedStale.add(id);
  } catch (e) {
    S.loadError = e.message;
  }
  render();
}

function loadCatalog(force) {
  if (S.catalogPromise && !force) return S.catalogPromise;
  S.catalogPromise = api("/api/models/catalog")
    .then((c) => {
      S.catalog = c;
      S.catalogError = "";
      fillModelOptions();
    })
    .catch((e) => {
      S.catalogError = e.message;
      S.catalogPromise = null;
    })
    .finally(render);
  return S.catalogPromise;
}

async function loadDetail(name) {
  if (S.details.has(name)) return S.details.get(name);
  S.details.set(name, { loading: true });
  render();
  let d;
  try {
    d = await api(`/api/models/catalog/${encodeURIComponent(name)}`);
  } catch (e) {
    d = { error: e.message };
  }
  S.details.set(name, d);
  fillModelOptions();
  render();
  return d;
}

let matrixInFlight = false;
async function loadMatrix() {
  if (matrixInFlight) return;
  matrixInFlight = true;
  S.matrixStale = false;
  try {
    S.matrix = await api("/api/models/matrix");
    S.matrixError = "";
  } catch (e) {
    S.matrixError = e.message;
  } finally {
    matrixInFlight = false;
  }
  render();
}

async function loadInstalled(agentId) {
  S.installedStale.delete(agentId);
  try {
    S.installed.set(agentId, await api(`/api/agents/${encodeURIComponent(agentId)}/models`));
  } catch (e) {
    S.installed.set(agentId, { error: e.message });
  }
  render();
}

function supportedSet() {
  const names = (S.matrix && S.matrix.supported) || (S.catalog && S.catalog.supported_models) || [];
  return new Set(names);
}

function fillModelOptions() {
  const names = new Set((S.catalog && S.catalog.supported_models) || []);
  for (const m of (S.catalog && S.catalog.models) || []) {
    names.add(m.name);
    for (const tag of tagList(m)) names.add(tag.name);
  }
  byId("model-options").replaceChildren(...[...names].sort().map((n) => h("option", { value: n })));
}

/* A model's tags as {name: "model:tag", short: "tag", size}, from its detail when loaded. */
function tagList(m) {
  const tags = (S.details.get(m.name) || {}).tags || m.tags || [];
  return tags
    .map((t) => (typeof t === "string" ? { name: t } : t))
    .filter((t) => t && t.name)
    .map((t) => {
      const name = t.name.slice(t.name.lastIndexOf("/") + 1).includes(":") ? t.name : `${m.name}:${t.name}`;
      return { ...t, name, short: name.slice(name.lastIndexOf(":") + 1) };
    });
}

// ---------------------------------------------------------------- live events

function setLive(state) {
  const el = byId("live");
  el.dataset.state = state;
  el.textContent = { on: "live", connecting: "connecting…", off: "reconnecting…" }[state];
}

function connectEvents() {
  if (S.es) S.es.close();
  clearTimeout(S.retryTimer);
  setLive("connecting");
  const es = new EventSource("/api/events");
  S.es = es;
  es.addEventListener("open", () => {
    setLive("on");
    loadSnapshot(); // whatever happened while disconnected
  });
  es.addEventListener("agent", (e) => {
    upsertAgent(JSON.parse(e.data));
    renderLive();
  });
  es.addEventListener("task", (e) => {
    upsertTask(JSON.parse(e.data));
    renderLive();
  });
  es.addEventListener("error", () => {
    setLive("off");
    if (es.readyState === EventSource.CLOSED) {
      // The server refused the stream (session gone?) or is down: check, then try again.
      S.retryTimer = setTimeout(async () => {
        if (S.es !== es) return;
        if (await checkSession()) connectEvents();
      }, 3000);
    }
  });
}

// ---------------------------------------------------------------- session

async function checkSession() {
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

function showLogin(message) {
  if (S.es) S.es.close();
  S.es = null;
  clearTimeout(S.retryTimer);
  S.agents = new Map();
  S.tasks = new Map();
  S.installed = new Map();
  S.matrix = null;
  S.catalog = null;
  S.catalogPromise = null;
  S.loaded = false;
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

function showApp() {
  byId("login").hidden = true;
  byId("view").hidden = false;
  byId("nav").hidden = false;
  byId("live").hidden = false;
  byId("logout").hidden = false;
  connectEvents();
  mountRoute();
}

async function login(event) {
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

async function logout() {
  try {
    await fetch("/api/session", { method: "DELETE", credentials: "same-origin" });
  } finally {
    showLogin("");
  }
}

// ---------------------------------------------------------------- rendering and routes

let current = null; // {key, update}
let renderQueued = false;
const liveWidgets = new Set(); // extra renderers outside the view (the distribute dialog)

let lastRender = 0;
let liveTimer = null;

function render() {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => {
    renderQueued = false;
    lastRender = performance.now();
    if (current) current.update();
    for (const fn of liveWidgets) fn();
  });
}

// Every heartbeat of every agent is an SSE event: 1,000 a second with 5,000 agents. Views are
// rebuilt whole, so live updates are paced (a large fleet is redrawn once a second) while
// what the user does still renders at once.
function renderLive() {
  if (liveTimer !== null) return;
  const gap = S.agents.size > 500 ? 1000 : 250;
  liveTimer = setTimeout(() => {
    liveTimer = null;
    render();
  }, Math.max(0, lastRender + gap - performance.now()));
}

function parseRoute() {
  const parts = location.hash.replace(/^#\/?/, "").split("/").filter(Boolean).map(decodeURIComponent);
  const view = ["agents", "models", "tasks"].includes(parts[0]) ? parts[0] : "agents";
  return { view, arg: parts[1] || "" };
}

function mountRoute() {
  if (byId("view").hidden) return;
  const { view, arg } = parseRoute();
  const key = `${view}/${arg}`;
  if (current && current.key === key) return;
  if (byId("dialog").open) byId("dialog").close(); // e.g. its "All tasks" link was followed
  for (const a of document.querySelectorAll("[data-nav]")) {
    a.classList.toggle("active", a.dataset.nav === view);
  }
  const root = byId("view");
  root.replaceChildren();
  const mount =
    view === "agents" ? (arg ? agentView : agentsView) : view === "models" ? modelsView : tasksView;
  current = { key, update: mount(root, arg) };
  current.update();
  window.scrollTo(0, 0);
}

// One list shown PAGE_ROWS at a time: page() cuts the items, more() is the "Show N more" line
// (null when all are shown), reset() starts over when the list's filter changes.
function pager() {
  let limit = PAGE_ROWS;
  return {
    page: (items) => items.slice(0, limit),
    reset() {
      limit = PAGE_ROWS;
    },
    more(total) {
      const shown = Math.min(limit, total);
      if (shown >= total) return null;
      const next = () => {
        limit += PAGE_ROWS;
        render();
      };
      return h(
        "div",
        { class: "more-rows" },
        h("span", { class: "muted" }, `Showing ${shown} of ${total}.`),
        h("button", { type: "button", class: "ghost", onclick: next }, `Show ${Math.min(PAGE_ROWS, total - shown)} more`),
      );
    },
  };
}

function filterInput(placeholder, label, pages) {
  return h("input", {
    type: "search",
    placeholder,
    "aria-label": label,
    oninput: () => {
      pages.reset();
      render();
    },
  });
}

function pageHead(title, ...extra) {
  return h("div", { class: "page-head" }, h("h1", null, title), ...extra);
}

function loadingOr(content) {
  if (S.loadError) return notice("error", `Cannot load the fleet: ${S.loadError}`);
  if (!S.loaded) return h("p", { class: "empty" }, "Loading…");
  return content();
}

// ---------------------------------------------------------------- Agents

function gpuSummary(gpus) {
  if (!gpus || !gpus.length) return h("span", { class: "muted" }, "none");
  const groups = new Map();
  for (const g of gpus) {
    const key = `${g.name}|${g.memory_bytes}`;
    groups.set(key, [...(groups.get(key) || []), g]);
  }
  return h(
    "span",
    { class: "gpus" },
    [...groups.values()].map((gs) => {
      const g = gs[0];
      const used = gs.filter((x) => Number.isFinite(x.memory_used_bytes));
      const util = gs.filter((x) => Number.isFinite(x.utilization));
      const parts = [];
      if (used.length)
        parts.push(`${fmtGiB(used.reduce((s, x) => s + x.memory_used_bytes, 0) / used.length)} used`);
      if (util.length)
        parts.push(`${Math.round((util.reduce((s, x) => s + x.utilization, 0) / util.length) * 100)}% util`);
      return h(
        "span",
        { class: "gpu", title: parts.join(", ") },
        `${gs.length > 1 ? `${gs.length}× ` : ""}${g.name}`,
        h("span", { class: "muted" }, ` · ${fmtGiB(g.memory_bytes)}`),
      );
    }),
  );
}

function loadSummary(a) {
  const parts = [`${a.requests_in_flight || 0} in flight`];
  const util = (a.gpus || []).filter((g) => Number.isFinite(g.utilization));
  if (util.length)
    parts.push(`GPU ${Math.round((util.reduce((s, g) => s + g.utilization, 0) / util.length) * 100)}%`);
  if (Number.isFinite(a.cpu_percent)) parts.push(`CPU ${Math.round(a.cpu_percent)}%`);
  return parts.join(" · ");
}

function readiness(a) {
  const total = a.total_models || 0;
  const ready = a.ready_models || 0;
  return h(
    "span",
    { class: "ready", title: `${ready} of ${total} supported models downloaded and resident` },
    h("span", { class: "ready-num" }, `${ready}/${total}`),
    bar(total ? ready / total : 0, ready === total && total ? "completed" : "queued"),
  );
}

function sortedAgents() {
  return [...S.agents.values()].sort((x, y) => x.name.localeCompare(y.name) || x.id.localeCompare(y.id));
}

function agentsView(root) {
  const stats = h("div", { class: "stats" });
  const pages = pager();
  const search = filterInput("Filter by name, URL or status", "Filter agents", pages);
  const body = h("div", { class: "card flush" });
  root.append(pageHead("Agents", h("div", { class: "toolbar" }, stats, search)), body);
  document.title = "Agents · fleetd";
  return () => {
    const agents = sortedAgents();
    const online = agents.filter((a) => a.status === "online");
    const ready = online.filter((a) => !a.initializing);
    const active = [...S.tasks.values()].filter((t) => t.status === "downloading");
    stats.replaceChildren(
      stat(agents.length, "agents"),
      stat(online.length, "online"),
      stat(ready.length, "ready"),
      stat(active.length, active.length === 1 ? "download" : "downloads"),
    );
    body.replaceChildren(
      loadingOr(() => {
        if (!agents.length) {
          return h(
            "div",
            { class: "empty" },
            h(
              "p",
              null,
              "No agents yet. Start one on a GPU host and it appears here as soon as it registers:",
            ),
            h("pre", null, `FLEETD_AGENT_TOKEN=… fleetd --role agent --coordinator ${location.origin}`),
          );
        }
        const q = search.value.trim().toLowerCase();
        const shown = q
          ? agents.filter(
              (a) =>
                a.name.toLowerCase().includes(q) ||
                a.url.toLowerCase().includes(q) ||
                a.id.startsWith(q) ||
                agentState(a).startsWith(q),
            )
          : agents;
        if (!shown.length) return h("p", { class: "empty" }, `No agent matches “${search.value.trim()}”.`);
        const rows = table(
          "agents",
          ["Name", "URL", "Status", "GPUs", "Ready", "Load", "Last seen"],
          pages.page(shown).map((a) =>
            h(
              "tr",
              { "data-agent": a.id },
              h(
                "td",
                { class: "nowrap" },
                h("a", { href: `#/agents/${encodeURIComponent(a.id)}`, class: "strong" }, a.name),
              ),
              h("td", { class: "mono muted" }, a.url),
              h(
                "td",
                null,
                badge(agentState(a)),
                a.status_message
                  ? h("div", { class: "sub clip", title: a.status_message }, a.status_message)
                  : null,
              ),
              h("td", null, gpuSummary(a.gpus)),
              h("td", null, readiness(a)),
              h("td", { class: "muted" }, loadSummary(a)),
              h("td", null, timeEl(a.last_seen)),
            ),
          ),
        );
        const more = pages.more(shown.length);
        return more ? h("div", null, rows, more) : rows;
      }),
    );
  };
}

function stat(value, label) {
  return h("div", { class: "stat" }, h("b", null, String(value)), h("span", null, label));
}

// ---------------------------------------------------------------- Agent detail

function agentView(root, id) {
  const head = h("div", { class: "page-head" });
  const facts = h("dl", { class: "facts" });
  const result = h("div", { class: "dist-result" });
  const input = h("input", {
    type: "text",
    name: "model",
    list: "model-options",
    placeholder: "model:tag, typed or picked from the catalog",
    autocomplete: "off",
    spellcheck: "false",
    required: true,
    "aria-label": "Model to download",
  });
  const form = h(
    "form",
    {
      class: "inline-form",
      onsubmit: (e) => {
        e.preventDefault();
        const model = input.value.trim();
        if (model) distribute({ model, agents: [id] }, result);
      },
    },
    input,
    h("button", { type: "submit", class: "primary" }, "Download"),
  );
  const tasksBox = h("div");
  const installedBox = h("div");
  root.append(
    h("a", { href: "#/agents", class: "back" }, "← Agents"),
    head,
    facts,
    h("section", { class: "card" }, h("h2", null, "Download a model"), form, result),
    h("section", { class: "card flush" }, h("h2", null, "Downloads"), tasksBox),
    h("section", { class: "card flush" }, h("h2", null, "Installed models"), installedBox),
  );
  loadCatalog();
  loadInstalled(id);
  return () => {
    const a = S.agents.get(id);
    if (!a) {
      head.replaceChildren(h("h1", null, S.loaded ? "Unknown agent" : "Loading…"));
      facts.replaceChildren();
      if (S.loaded) tasksBox.replaceChildren(notice("error", `No agent with id ${id}.`));
      return;
    }
    document.title = `${a.name} · fleetd`;
    head.replaceChildren(
      h("h1", null, a.name),
      badge(agentState(a)),
      h("span", { class: "mono muted" }, a.url),
      a.status_message ? h("p", { class: "status-line" }, a.status_message) : "",
    );
    facts.replaceChildren(
      fact("GPUs", gpuSummary(a.gpus)),
      fact("Ready", readiness(a)),
      fact("Load", loadSummary(a)),
      fact("Last seen", timeEl(a.last_seen)),
      fact("Registered", timeEl(a.registered_at)),
      fact("Version", [
        a.version || "—",
        (a.ollama_versions || []).length ? ` · Ollama ${a.ollama_versions.join(", ")}` : "",
      ]),
    );
    const tasks = sortTasks([...S.tasks.values()].filter((t) => t.agent_id === id));
    tasksBox.replaceChildren(taskTable(tasks, { agent: false, empty: "No downloads for this agent yet." }));
    if (S.installedStale.has(id)) loadInstalled(id);
    installedBox.replaceChildren(installedTable(S.installed.get(id)));
  };
}

function fact(label, value) {
  return h("div", null, h("dt", null, label), h("dd", null, value));
}

function installedTable(data) {
  if (!data) return h("p", { class: "empty" }, "Loading…");
  if (data.error) return notice("error", `Cannot load installed models: ${data.error}`);
  const models = [...(data.models || [])].sort((x, y) => x.name.localeCompare(y.name));
  const supported = supportedSet();
  const stale = data.source === "cache";
  const asOf = data.as_of ? ` as of ${new Date(data.as_of).toLocaleString()}` : "";
  return h(
    "div",
    null,
    stale
      ? notice(
          "warn",
          `Showing the last known list${asOf}: ${data.stale_reason || "the agent did not answer"}.`,
        )
      : null,
    table(
      "installed",
      ["Model", ["Size", "num"], "Installed"],
      models.map((m) =>
        h(
          "tr",
          null,
          h(
            "td",
            null,
            h("span", { class: "strong" }, m.name),
            supported.has(m.name) ? h("span", { class: "tag supported" }, "supported") : null,
          ),
          h("td", { class: "num" }, fmtBytes(m.size)),
          h("td", null, timeEl(m.installed_at)),
        ),
      ),
      "No models installed.",
    ),
  );
}

// ---------------------------------------------------------------- Tasks

function sortTasks(tasks) {
  const rank = (t) =>
    t.status === "downloading" ? 0 : ACTIVE.has(t.status) ? 1 : t.status === "failed" ? 2 : 3;
  return tasks.sort((x, y) => rank(x) - rank(y) || (y.created_at || "").localeCompare(x.created_at || ""));
}

async function taskAction(task, action, button) {
  button.disabled = true;
  try {
    upsertTask(await api(`/api/tasks/${encodeURIComponent(task.id)}/${action}`, { method: "POST" }));
  } catch (e) {
    alertBox(`Could not ${action} the download of ${task.model}: ${e.message}`);
  } finally {
    button.disabled = false;
    render();
  }
}

function alertBox(message) {
  const dlg = byId("dialog");
  dlg.replaceChildren(
    h("h2", { id: "dialog-title" }, "Something went wrong"),
    notice("error", message),
    h("div", { class: "actions" }, h("button", { class: "primary", onclick: () => dlg.close() }, "OK")),
  );
  if (!dlg.open) dlg.showModal();
}

function taskTable(tasks, { agent = true, empty = "No downloads." } = {}) {
  const rows = [];
  for (const t of tasks) {
    const active = ACTIVE.has(t.status);
    const retry = t.status === "failed" || t.status === "cancelled";
    const progress = t.status === "completed" ? 1 : t.progress || 0;
    const sizes = t.total_bytes ? `${fmtBytes(t.completed_bytes)} of ${fmtBytes(t.total_bytes)}` : "";
    rows.push(
      h(
        "tr",
        { "data-task": t.id, "data-status": t.status, class: t.status === "failed" ? "has-error" : null },
        h("td", null, h("span", { class: "strong" }, t.model)),
        agent
          ? h(
              "td",
              null,
              h(
                "a",
                { href: `#/agents/${encodeURIComponent(t.agent_id)}` },
                t.agent_name || agentName(t.agent_id),
              ),
            )
          : null,
        h("td", null, badge(t.status)),
        h(
          "td",
          { class: "progress-cell" },
          h(
            "div",
            { class: "progress" },
            bar(progress, t.status),
            h("span", { class: "pct num" }, fmtPct(progress)),
          ),
          sizes ? h("div", { class: "sub" }, sizes) : null,
        ),
        h("td", { class: "num" }, t.status === "downloading" ? fmtSpeed(t.speed_bps) : "—"),
        h(
          "td",
          { class: "eta" },
          t.status === "downloading"
            ? fmtEta(t.eta_s)
            : t.finished_at
              ? timeEl(t.finished_at)
              : t.status === "waiting"
                ? "when online"
                : "—",
        ),
        h("td", null, timeEl(t.created_at)),
        h(
          "td",
          { class: "row-actions" },
          retry
            ? h(
                "button",
                { class: "small", onclick: (e) => taskAction(t, "retry", e.currentTarget) },
                "Retry",
              )
            : null,
          active
            ? h(
                "button",
                { class: "small ghost", onclick: (e) => taskAction(t, "cancel", e.currentTarget) },
                "Cancel",
              )
            : null,
        ),
      ),
    );
    if (t.status === "failed" && t.error) {
      rows.push(
        h(
          "tr",
          { class: "error-row", "data-error-for": t.id },
          h("td", { colspan: agent ? 8 : 7 }, h("pre", { class: "error-text" }, t.error)),
        ),
      );
    }
  }
  const headers = [
    "Model",
    agent ? "Agent" : null,
    "Status",
    "Progress",
    ["Speed", "num"],
    "ETA / finished",
    "Created",
    "",
  ].filter((x) => x !== null);
  return table("tasks", headers, rows, empty);
}

function tasksView(root, filter) {
  const chips = h("div", { class: "chips", role: "tablist" });
  const pages = pager();
  const search = filterInput("Filter by model or agent", "Filter by model or agent", pages);
  const body = h("div", { class: "card flush" });
  root.append(pageHead("Tasks", h("div", { class: "toolbar" }, chips, search)), body);
  document.title = "Tasks · fleetd";
  const status = TASK_STATES.includes(filter) ? filter : "";
  return () => {
    const all = [...S.tasks.values()];
    const counts = Object.fromEntries(TASK_STATES.map((s) => [s, 0]));
    for (const t of all) counts[t.status] = (counts[t.status] || 0) + 1;
    chips.replaceChildren(
      chip("", "All", all.length, status),
      ...TASK_STATES.map((s) => chip(s, s[0].toUpperCase() + s.slice(1), counts[s], status)),
    );
    const q = search.value.trim().toLowerCase();
    const shown = all.filter(
      (t) =>
        (!status || t.status === status) &&
        (!q ||
          t.model.toLowerCase().includes(q) ||
          (t.agent_name || agentName(t.agent_id)).toLowerCase().includes(q)),
    );
    body.replaceChildren(
      loadingOr(() => {
        const rows = taskTable(pages.page(sortTasks(shown)), {
          empty: status ? `No ${status} downloads.` : "No downloads yet.",
        });
        const more = pages.more(shown.length);
        return more ? h("div", null, rows, more) : rows;
      }),
    );
  };
}

function chip(value, label, count, active) {
  return h(
    "a",
    {
      class: `chip${value === active ? " active" : ""}`,
      href: value ? `#/tasks/${value}` : "#/tasks",
      role: "tab",
      "aria-selected": value === active ? "true" : "false",
      "data-filter": value || "all",
    },
    label,
    h("span", { class: "count" }, String(count)),
  );
}

// ---------------------------------------------------------------- Models: catalog and matrix

function modelsView(root, tab) {
  const isMatrix = tab === "matrix";
  const tabs = h(
    "div",
    { class: "tabs", role: "tablist" },
    h(
      "a",
      { href: "#/models", role: "tab", class: isMatrix ? "" : "active", "aria-selected": String(!isMatrix) },
      "Available models",
    ),
    h(
      "a",
      {
        href: "#/models/matrix",
        role: "tab",
        class: isMatrix ? "active" : "",
        "aria-selected": String(isMatrix),
      },
      "Who has what",
    ),
  );
  const search = h("input", {
    type: "search",
    placeholder: "Filter models",
    "aria-label": "Filter models",
    oninput: render,
  });
  const banner = h("div");
  const body = h("div", { class: "card flush" });
  root.append(pageHead("Models", tabs, h("div", { class: "toolbar" }, search)), banner, body);
  document.title = `${isMatrix ? "Who has what" : "Available models"} · fleetd`;
  loadCatalog(true); // cheap when warm, and picks up a library that came back
  if (isMatrix) loadMatrix();
  return () => {
    banner.replaceChildren(...[catalogBanner()].filter(Boolean));
    const q = search.value.trim().toLowerCase();
    if (isMatrix) {
      if (S.matrixStale) loadMatrix();
      body.replaceChildren(matrixTable(q));
    } else {
      body.replaceChildren(catalogTable(q));
    }
  };
}

function catalogBanner() {
  const c = S.catalog;
  if (!c || !c.degraded) return null;
  return notice(
    "warn degraded",
    h("b", null, "Catalog degraded. "),
    `The Ollama library could not be read${c.reason ? ` (${c.reason})` : ""}. `,
    "This list is built from the models installed on the agents.",
  );
}

function modelSize(m) {
  if (Number.isFinite(m.size) && m.size > 0) return fmtBytes(m.size);
  const d = S.details.get(m.name);
  const sized = ((d && d.tags) || []).filter((t) => Number.isFinite(t.size));
  if (sized.length) {
    const sizes = sized.map((t) => t.size);
    const lo = Math.min(...sizes);
    const hi = Math.max(...sizes);
    return lo === hi ? fmtBytes(lo) : `${fmtBytes(lo)} – ${fmtBytes(hi)}`;
  }
  return "";
}

function catalogTable(q) {
  if (S.catalogError && !S.catalog) return notice("error", `Cannot load the catalog: ${S.catalogError}`);
  if (!S.catalog) return h("p", { class: "empty" }, "Loading the catalog…");
  const supported = supportedSet();
  const models = (S.catalog.models || []).filter(
    (m) => !q || m.name.toLowerCase().includes(q) || (m.description || "").toLowerCase().includes(q),
  );
  models.sort((x, y) => Number(Boolean(y.supported)) - Number(Boolean(x.supported)));
  const rows = [];
  for (const m of models) {
    const sizes = m.sizes || m.parameter_sizes || [];
    const caps = m.capabilities || [];
    const detail = S.details.get(m.name);
    const open = openDetails.has(m.name);
    const isSupported = m.supported || supported.has(m.name);
    rows.push(
      h(
        "tr",
        { "data-model": m.name, class: isSupported ? "is-supported" : null },
        h(
          "td",
          { class: "model-cell" },
          h(
            "div",
            null,
            h(
              "button",
              {
                class: "linklike strong",
                title: "Show tags and exact sizes",
                "aria-expanded": String(open),
                onclick: () => toggleDetail(m.name),
              },
              m.name,
            ),
            isSupported
              ? h(
                  "span",
                  { class: "tag supported", title: "One of the coordinator's supported models" },
                  "supported",
                )
              : null,
          ),
          m.description ? h("div", { class: "desc" }, m.description) : null,
        ),
        h(
          "td",
          { class: "num" },
          modelSize(m)
            ? [modelSize(m), sizes.length ? h("div", { class: "sub" }, sizes.join(" · ")) : null]
            : sizes.join(" · ") || h("span", { class: "muted" }, "—"),
        ),
        h(
          "td",
          null,
          caps.map((c) => h("span", { class: "tag" }, c)),
        ),
        h(
          "td",
          { class: "num" },
          Number.isFinite(m.pulls)
            ? fmtCount(m.pulls)
            : Number.isFinite(m.pull_count)
              ? fmtCount(m.pull_count)
              : "—",
        ),
        h(
          "td",
          { class: "row-actions" },
          h(
            "button",
            { class: "primary small", "data-action": "distribute", onclick: () => openDistribute(m) },
            "Distribute",
          ),
        ),
      ),
    );
    if (open) rows.push(h("tr", { class: "detail-row" }, h("td", { colspan: 5 }, tagsDetail(m, detail))));
  }
  const source = S.catalog.source === "fleet" ? "models installed on the agents" : "the Ollama library";
  return h(
    "div",
    null,
    table(
      "catalog",
      ["Model", ["Size", "num"], "Capabilities", ["Pulls", "num"], ""],
      rows,
      q ? "No model matches." : "The catalog is empty.",
    ),
    h(
      "p",
      { class: "foot muted" },
      `${models.length} model${models.length === 1 ? "" : "s"} from ${source}.`,
    ),
  );
}

const openDetails = new Set();

function toggleDetail(name) {
  if (openDetails.has(name)) openDetails.delete(name);
  else {
    openDetails.add(name);
    if (S.catalog && S.catalog.source !== "fleet") loadDetail(name);
  }
  render();
}

function tagsDetail(m, d) {
  const tags = tagList(m);
  if (d && d.loading) return h("span", { class: "muted" }, "Loading tags…");
  if (d && d.error) return notice("error", `Cannot load the tags of ${m.name}: ${d.error}`);
  if (!tags.length) return h("span", { class: "muted" }, "No tags known.");
  return h(
    "div",
    { class: "tag-list" },
    tags.map((t) =>
      h(
        "button",
        { class: "tag-chip", title: `Distribute ${t.name}`, onclick: () => openDistribute(m, t.name) },
        h("b", null, t.short),
        Number.isFinite(t.size) ? ` ${fmtBytes(t.size)}` : "",
      ),
    ),
  );
}

const matrixColumns = pager(); // the matrix's agent columns, paged as lists' rows are

function matrixTable(q) {
  if (S.matrixError && !S.matrix) return notice("error", `Cannot load the matrix: ${S.matrixError}`);
  if (!S.matrix) return h("p", { class: "empty" }, "Loading…");
  const supported = supportedSet();
  const all = [...(S.matrix.agents || [])].sort((x, y) => x.name.localeCompare(y.name));
  const agents = matrixColumns.page(all);
  const models = (S.matrix.models || []).filter((m) => !q || m.toLowerCase().includes(q));
  models.sort((x, y) => Number(supported.has(y)) - Number(supported.has(x)) || x.localeCompare(y));
  if (!all.length) return h("p", { class: "empty" }, "No agents yet.");
  const live = new Map();
  for (const t of S.tasks.values()) {
    if (t.status === "downloading") live.set(`${t.agent_id}|${t.model}`, t);
  }
  const head = h(
    "tr",
    null,
    h("th", { class: "sticky" }, "Model"),
    agents.map((a) =>
      h(
        "th",
        { class: "agent-col", title: a.status },
        h("a", { href: `#/agents/${encodeURIComponent(a.id)}` }, a.name),
        h("span", { class: `dot s-${a.status}` }),
      ),
    ),
    h("th", null, ""),
  );
  const rows = models.map((m) =>
    h(
      "tr",
      { "data-model": m, class: supported.has(m) ? "is-supported" : null },
      h(
        "th",
        { class: "sticky", scope: "row" },
        h("span", { class: "strong" }, m),
        supported.has(m)
          ? h("span", { class: "tag supported", title: "Supported model" }, "supported")
          : null,
      ),
      agents.map((a) => {
        const state = (a.models || {})[m] || "missing";
        const t = live.get(`${a.id}|${withTag(m)}`) || live.get(`${a.id}|${m}`);
        const label = state === "downloading" ? (t ? fmtPct(t.progress) : "downloading") : state;
        return h(
          "td",
          { class: "cell", "data-agent": a.id },
          h(
            "span",
            { class: `cell-state s-${state}`, "data-state": state },
            state === "installed" ? "✓ installed" : label,
          ),
        );
      }),
      h(
        "td",
        { class: "row-actions" },
        h(
          "button",
          { class: "small", "data-action": "distribute", onclick: () => openDistribute({ name: m }) },
          "Distribute",
        ),
      ),
    ),
  );
  return h(
    "div",
    null,
    h(
      "div",
      { class: "table-wrap" },
      h("table", { class: "matrix" }, h("thead", null, head), h("tbody", null, rows)),
    ),
    matrixColumns.more(all.length),
    h(
      "p",
      { class: "foot muted legend" },
      ["installed", "downloading", "queued", "failed", "missing"].map((s) =>
        h("span", { class: `cell-state s-${s}` }, s),
      ),
    ),
  );
}

// ---------------------------------------------------------------- Distribute

function defaultTag(m, tags) {
  const names = tags.map((t) => t.name);
  const supported = [...supportedSet()].find((s) => names.includes(s));
  const latest = `${m.name}:latest`;
  return supported || (names.includes(latest) ? latest : names[0]);
}

function openDistribute(m, tag) {
  const dlg = byId("dialog");
  const hasTag = m.name.slice(m.name.lastIndexOf("/") + 1).includes(":");
  const tagSelect = h("select", { name: "tag", "aria-label": "Tag" });
  const tagRow = h("label", { class: "field" }, h("span", null, "Tag"), tagSelect);
  const fillTags = () => {
    const tags = tagList(m);
    if (hasTag || !tags.length) {
      tagRow.hidden = true;
      return;
    }
    const chosen = tagSelect.value || tag || defaultTag(m, tags);
    tagSelect.replaceChildren(
      ...tags.map((t) =>
        h(
          "option",
          { value: t.name, selected: t.name === chosen },
          Number.isFinite(t.size) ? `${t.short} — ${fmtBytes(t.size)}` : t.short,
        ),
      ),
    );
    tagRow.hidden = false;
  };
  fillTags();
  if (!hasTag && S.catalog && S.catalog.source !== "fleet" && !S.details.has(m.name)) {
    loadDetail(m.name).then(() => dlg.open && fillTags());
  }
  const targets = h("fieldset", { class: "targets" }, h("legend", null, "Send to"));
  const online = sortedAgents().filter((a) => a.status === "online");
  targets.append(
    h(
      "label",
      { class: "target" },
      h("input", {
        type: "radio",
        name: "target",
        value: "all",
        checked: online.length > 0,
        disabled: online.length === 0,
      }),
      h(
        "span",
        null,
        h("b", null, "All online agents"),
        h("span", { class: "muted" }, ` (${online.length})`),
      ),
    ),
    ...sortedAgents().map((a, i) =>
      h(
        "label",
        { class: "target" },
        h("input", { type: "radio", name: "target", value: a.id, checked: online.length === 0 && i === 0 }),
        h("span", null, a.name, " ", badge(agentState(a))),
      ),
    ),
  );
  const result = h("div", { class: "dist-result" });
  const confirm = h("button", { type: "submit", class: "primary", "data-action": "confirm" }, "Distribute");
  const close = () => dlg.close();
  const form = h(
    "form",
    {
      onsubmit: (e) => {
        e.preventDefault();
        const target = form.querySelector("input[name=target]:checked");
        if (!target) {
          result.replaceChildren(notice("error", "Pick where to send it."));
          return;
        }
        const model = hasTag || tagRow.hidden ? m.name : tagSelect.value;
        confirm.disabled = true;
        distribute({ model, agents: target.value === "all" ? "all" : [target.value] }, result).finally(() => {
          confirm.disabled = false;
          confirm.textContent = "Distribute again";
        });
      },
    },
    h("h2", { id: "dialog-title" }, "Distribute ", h("span", { class: "mono" }, m.name)),
    m.description ? h("p", { class: "muted desc" }, m.description) : null,
    tagRow,
    targets,
    result,
    h(
      "div",
      { class: "actions" },
      h("button", { type: "button", class: "ghost", onclick: close }, "Close"),
      confirm,
    ),
  );
  dlg.replaceChildren(form);
  dlg.addEventListener("close", () => liveWidgets.clear(), { once: true });
  dlg.showModal();
  confirm.focus();
}

async function distribute(req, panel) {
  const only = Array.isArray(req.agents) && req.agents.length === 1 ? S.agents.get(req.agents[0]) : null;
  if (only && only.status === "offline" && req.if_offline !== "retry-when-online") {
    // Known to be offline: say so at once and offer to queue it for the agent's return.
    const message = `${only.name} is offline (last seen ${fmtAgo(only.last_seen)}).`;
    panel.replaceChildren(
      ...distResult(req, { errors: [{ agent_id: only.id, code: "agent_offline", message }] }),
    );
    return;
  }
  panel.replaceChildren(h("p", { class: "muted" }, "Sending…"));
  let res;
  try {
    res = await api("/api/distributions", { method: "POST", body: req });
  } catch (e) {
    if (!(e.data && Array.isArray(e.data.errors) && e.data.errors.length)) {
      panel.replaceChildren(notice("error", e.message));
      return;
    }
    res = e.data; // refused for every target (offline agents): show why, and what to do
  }
  for (const t of res.tasks || []) upsertTask(t);
  panel.replaceChildren(...distResult(req, res));
  render();
}

function distResult(req, res) {
  const out = [];
  const tasks = res.tasks || [];
  const warnings = res.warnings || [];
  const errors = res.errors || [];
  if (tasks.length) {
    const ids = new Set(tasks.map((t) => t.id));
    const list = h("div", { class: "mini-tasks" });
    const update = () => {
      if (started && !list.isConnected) {
        liveWidgets.delete(update);
        return;
      }
      const current = [...ids].map((id) => S.tasks.get(id)).filter(Boolean);
      list.replaceChildren(
        ...current.map((t) =>
          h(
            "div",
            { class: "mini-task", "data-task": t.id, "data-status": t.status },
            h("span", { class: "strong" }, t.agent_name || agentName(t.agent_id)),
            badge(t.status),
            bar(t.status === "completed" ? 1 : t.progress, t.status),
            h("span", { class: "num" }, fmtPct(t.status === "completed" ? 1 : t.progress)),
            t.status === "failed" && t.error ? h("div", { class: "mini-error" }, t.error) : null,
          ),
        ),
      );
    };
    let started = false;
    update();
    started = true;
    liveWidgets.add(update);
    out.push(
      notice(
        "ok",
        `Sent ${tasks[0].model} to ${tasks.length} agent${tasks.length === 1 ? "" : "s"}. `,
        h("a", { href: "#/tasks" }, "All tasks →"),
      ),
      list,
    );
  }
  const installed = warnings.filter((w) => w.code === "already_installed").map((w) => w.agent_id);
  if (installed.length) {
    const box = h("div");
    const sub = h("div", { class: "dist-result" });
    box.append(
      notice(
        "warn",
        h("span", null, `${req.model} is already installed on ${installed.map(agentName).join(", ")}.`),
        h(
          "span",
          { class: "inline-actions" },
          h(
            "button",
            {
              type: "button",
              class: "small ghost",
              "data-action": "skip",
              onclick: () =>
                box.replaceChildren(
                  h("p", { class: "muted" }, `Skipped ${installed.map(agentName).join(", ")}.`),
                ),
            },
            "Skip",
          ),
          h(
            "button",
            {
              type: "button",
              class: "small",
              "data-action": "redownload",
              onclick: (e) => {
                e.currentTarget.parentElement.remove();
                distribute({ ...req, agents: installed, if_installed: "redownload" }, sub);
              },
            },
            "Re-download",
          ),
        ),
      ),
      sub,
    );
    out.push(box);
  }
  for (const w of warnings.filter((x) => x.code !== "already_installed")) {
    const who = w.agent_id ? `${agentName(w.agent_id)}: ` : ""; // registry_unreachable: the fleet's
    out.push(notice("warn", `${who}${w.message || w.code}`));
  }
  const offline = errors.filter((x) => x.code === "agent_offline");
  if (offline.length) {
    const sub = h("div", { class: "dist-result" });
    out.push(
      notice(
        "error offline",
        h("span", null, offline.map((x) => x.message || `${agentName(x.agent_id)} is offline`).join(" ")),
        h(
          "span",
          { class: "inline-actions" },
          h(
            "button",
            {
              type: "button",
              class: "small",
              "data-action": "retry-when-online",
              onclick: (e) => {
                e.currentTarget.parentElement.remove();
                distribute(
                  { ...req, agents: offline.map((x) => x.agent_id), if_offline: "retry-when-online" },
                  sub,
                );
              },
            },
            "Retry when online",
          ),
        ),
      ),
      sub,
    );
  }
  for (const x of errors.filter((y) => y.code !== "agent_offline")) {
    out.push(notice("error", `${agentName(x.agent_id)}: ${x.message || x.code}`));
  }
  if (!out.length) out.push(notice("warn", "No online agent to send it to."));
  return out;
}

// ---------------------------------------------------------------- start

document.addEventListener("DOMContentLoaded", async () => {
  byId("login-form").addEventListener("submit", login);
  byId("logout").addEventListener("click", logout);
  window.addEventListener("hashchange", mountRoute);
  setInterval(() => current && render(), 10000); // relative times ("5 s ago"); no network
  if (location.hash === "#bad-token") {
    history.replaceState(null, "", location.pathname);
    showLogin("That token is not the admin token.");
    return;
  }
  if (await checkSession()) showApp();
});
