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
  mirror: null, // GET /api/mirror, then its `mirror` events
};

/* Copies of one agent or task arrive by several ways and out of order: the reply to the POST
   that created a download can come after the SSE message saying it already failed. Each copy
   carries the server's `revision`, which grows with every change of the object, so a copy
   replaces the one held only when it is not older. */
function notOlder(next, prev) {
  return !prev || !(next.revision < prev.revision);
}

// When each held copy was merged (a count of merges), so that a snapshot read before a copy
// arrived cannot drop it.
let merges = 0;
const mergedAt = new WeakMap();

function take(map, obj) {
  const prev = map.get(obj.id);
  if (!notOlder(obj, prev)) return null;
  map.set(obj.id, obj);
  merges += 1;
  mergedAt.set(obj, merges);
  return { prev };
}

/* Merges a task copy; false when the held copy is newer. */
export function mergeTask(t) {
  if (!t || !t.id) return false;
  const took = take(S.tasks, t);
  if (!took) return false;
  if (!took.prev || took.prev.status !== t.status) {
    S.matrixStale = true;
    if (t.status === "completed") S.installedStale.add(t.agent_id);
  }
  return true;
}

/* Merges an agent copy; false when the held copy is newer. */
export function mergeAgent(a) {
  if (!a || !a.id) return false;
  const took = take(S.agents, a);
  if (!took) return false;
  const prev = took.prev;
  if (!prev || prev.status !== a.status || prev.name !== a.name) S.matrixStale = true;
  return true;
}

/* Taken just before the full lists are requested; passed to setSnapshot with them. */
export function snapshotMark() {
  return merges;
}

function fromSnapshot(held, fresh, mark) {
  const out = new Map();
  for (const obj of fresh) {
    const prev = held.get(obj.id);
    out.set(obj.id, notOlder(obj, prev) ? obj : prev);
  }
  for (const [id, obj] of held) {
    if (!out.has(id) && mergedAt.get(obj) > mark) out.set(id, obj); // newer than the snapshot
  }
  return out;
}

/* The full lists, read again after (re)connecting the event stream: they replace what is held,
   except copies newer than they are. */
export function setSnapshot(mark, agents, tasks) {
  S.agents = fromSnapshot(S.agents, agents, mark);
  S.tasks = fromSnapshot(S.tasks, tasks, mark);
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
