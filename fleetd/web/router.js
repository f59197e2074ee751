/* Routes are hash fragments: #/agents, #/agents/{id}, #/models, #/models/matrix, #/tasks,
   #/tasks/{status}, #/keys, #/usage, #/usage/{key id}, #/charts, #/charts/{agent id}. Mounting a view builds its frame once
   and returns its update function. */

import { agentView, agentsView } from "./agents.js";
import { chartsView } from "./charts.js";
import { byId } from "./dom.js";
import { keysView } from "./keys.js";
import { modelsView } from "./models.js";
import { currentView, setCurrentView } from "./render.js";
import { tasksView } from "./tasks.js";
import { usageView } from "./usage.js";

const VIEWS = { models: modelsView, tasks: tasksView, keys: keysView, usage: usageView, charts: chartsView };

function parseRoute() {
  const parts = location.hash.replace(/^#\/?/, "").split("/").filter(Boolean).map(decodeURIComponent);
  const view = parts[0] === "agents" || parts[0] in VIEWS ? parts[0] : "agents";
  return { view, arg: parts[1] || "" };
}

export function mountRoute() {
  if (byId("view").hidden) return;
  const { view, arg } = parseRoute();
  const key = `${view}/${arg}`;
  const current = currentView();
  if (current && current.key === key) return;
  if (byId("dialog").open) byId("dialog").close(); // e.g. its "All tasks" link was followed
  for (const a of document.querySelectorAll("[data-nav]")) {
    a.classList.toggle("active", a.dataset.nav === view);
  }
  const root = byId("view");
  root.replaceChildren();
  const mount = view === "agents" ? (arg ? agentView : agentsView) : VIEWS[view];
  const mounted = { key, update: mount(root, arg) };
  setCurrentView(mounted);
  mounted.update();
  window.scrollTo(0, 0);
}
