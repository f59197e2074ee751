/* The page's one store: agents and tasks as the admin API returns them, plus what views load
   on demand (catalog, matrix, installed lists). Agents and tasks change only through the merge
   functions below, whichever way a copy arrived (snapshot, SSE message, REST reply). */

export const ACTIVE = new Set(["downloading", "queued", "waiting"]);
export const TASK_STATES = ["downloading", "queued", "waiting", "failed", "completed", "cancelled"];

export const S = {
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
};

export function upsertTask(t) {
  if (!t || !t.id) return;
  const prev = S.tasks.get(t.id);
  S.tasks.set(t.id, t);
  if (!prev || prev.status !== t.status) {
    S.matrixStale = true;
    if (t.status === "completed") S.installedStale.add(t.agent_id);
  }
}

export function upsertAgent(a) {
  if (!a || !a.id) return;
  const prev = S.agents.get(a.id);
  S.agents.set(a.id, a);
  if (!prev || prev.status !== a.status || prev.name !== a.name) S.matrixStale = true;
}

/* The full lists, read again after (re)connecting the event stream. */
export function setSnapshot(agents, tasks) {
  S.agents = new Map();
  S.tasks = new Map();
  for (const a of agents) S.agents.set(a.id, a);
  for (const t of tasks) S.tasks.set(t.id, t);
  S.loaded = true;
  S.loadError = "";
  S.matrixStale = true;
  for (const id of S.installed.keys()) S.installedStale.add(id);
}

/* Signed out: nothing of the fleet stays in memory. */
export function clearState() {
  S.agents = new Map();
  S.tasks = new Map();
  S.installed = new Map();
  S.matrix = null;
  S.catalog = null;
  S.catalogPromise = null;
  S.loaded = false;
}

export function agentState(a) {
  if (!a || a.status === "offline") return "offline";
  return a.initializing ? "initializing" : "online";
}

export function agentName(id) {
  const a = S.agents.get(id);
  return a ? a.name : id;
}

export function sortedAgents() {
  return [...S.agents.values()].sort((x, y) => x.name.localeCompare(y.name) || x.id.localeCompare(y.id));
}

export function supportedSet() {
  const names = (S.matrix && S.matrix.supported) || (S.catalog && S.catalog.supported_models) || [];
  return new Set(names);
}

/* A model's tags as {name: "model:tag", short: "tag", size}, from its detail when loaded. */
export function tagList(m) {
  const tags = (S.details.get(m.name) || {}).tags || m.tags || [];
  return tags
    .map((t) => (typeof t === "string" ? { name: t } : t))
    .filter((t) => t && t.name)
    .map((t) => {
      const name = t.name.slice(t.name.lastIndexOf("/") + 1).includes(":") ? t.name : `${m.name}:${t.name}`;
      return { ...t, name, short: name.slice(name.lastIndexOf(":") + 1) };
    });
}
