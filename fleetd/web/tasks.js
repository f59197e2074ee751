/* Download tasks: the table the agent page and the tasks view share, its Retry and Cancel
   buttons, and the tasks view with its status chips. */

import { api } from "./api.js";
import { badge, bar, byId, fmtBytes, fmtEta, fmtPct, fmtSpeed, h, notice, pageHead, table, timeEl } from "./dom.js";
import { filterInput, loadingOr, pager, render } from "./render.js";
import { mirrorCard } from "./mirror.js";
import { ACTIVE, S, TASK_STATES, agentName, mergeTask } from "./state.js";

export function sortTasks(tasks) {
  const rank = (t) =>
    t.status === "downloading" ? 0 : ACTIVE.has(t.status) ? 1 : t.status === "failed" ? 2 : 3;
  return tasks.sort((x, y) => rank(x) - rank(y) || (y.created_at || "").localeCompare(x.created_at || ""));
}

async function taskAction(task, action, button) {
  button.disabled = true;
  try {
    mergeTask(await api(`/api/tasks/${encodeURIComponent(task.id)}/${action}`, { method: "POST" }));
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

export function taskTable(tasks, { agent = true, empty = "No downloads." } = {}) {
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

export function tasksView(root, filter) {
  const chips = h("div", { class: "chips", role: "tablist" });
  const pages = pager();
  const search = filterInput("Filter by model or agent", "Filter by model or agent", pages);
  const body = h("div", { class: "card flush" });
  const mirror = h("div", { id: "mirror" });
  root.append(pageHead("Tasks", h("div", { class: "toolbar" }, chips, search)), mirror, body);
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
    mirror.replaceChildren(mirrorCard());
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
