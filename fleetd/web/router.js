/* Routes are hash fragments: #/agents, #/agents/{id}, #/models, #/models/matrix, #/tasks,
   #/tasks/{status}. Mounting a view builds its frame once and returns its update function. */

import { agentView, agentsView } from "./agents.js";
import { byId } from "./dom.js";
import { modelsView } from "./models.js";
import { currentView, setCurrentView } from "./render.js";
import { tasksView } from "./tasks.js";

function parseRoute() {
  const parts = location.hash.replace(/^#\/?/, "").split("/").filter(Boolean).map(decodeURIComponent);
  const view = ["agents", "models", "tasks"].includes(parts[0]) ? parts[0] : "agents";
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
  const mount =
    view === "agents" ? (arg ? agentView : agentsView) : view === "models" ? modelsView : tasksView;
  const mounted = { key, update: mount(root, arg) };
  setCurrentView(mounted);
  mounted.update();
  window.scrollTo(0, 0);
}
