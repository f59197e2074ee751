/* Loading state from the admin API: the fleet snapshot, and what views need on demand. Each
   loader records its result (or error) in the store and asks for a redraw. */

import { api } from "./api.js";
import { byId, h } from "./dom.js";
import { render } from "./render.js";
import { S, setSnapshot, snapshotMark, tagList } from "./state.js";

export async function loadSnapshot() {
  const mark = snapshotMark();
  try {
    const [agents, tasks] = await Promise.all([api("/api/agents"), api("/api/tasks")]);
    setSnapshot(mark, agents.agents || [], tasks.tasks || []);
  } catch (e) {
    S.loadError = e.message;
  }
  render();
}

export function loadCatalog(force) {
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

export async function loadDetail(name) {
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
export async function loadMatrix() {
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

export async function loadInstalled(agentId) {
  S.installedStale.delete(agentId);
  try {
    S.installed.set(agentId, await api(`/api/agents/${encodeURIComponent(agentId)}/models`));
  } catch (e) {
    S.installed.set(agentId, { error: e.message });
  }
  render();
}

/* The model box's suggestions: supported models, catalog models and their known tags. */
function fillModelOptions() {
  const names = new Set((S.catalog && S.catalog.supported_models) || []);
  for (const m of (S.catalog && S.catalog.models) || []) {
    names.add(m.name);
    for (const tag of tagList(m)) names.add(tag.name);
  }
  byId("model-options").replaceChildren(...[...names].sort().map((n) => h("option", { value: n })));
}
