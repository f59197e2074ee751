/* The agents list and an agent's page: its facts, a download form, its downloads and its
   installed models. */

import { chartsWidget } from "./charts.js";
import { distribute } from "./distribute.js";
import { badge, bar, fact, fmtBytes, fmtGiB, h, notice, pageHead, stat, table, timeEl } from "./dom.js";
import { loadCatalog, loadInstalled } from "./load.js";
import { filterInput, loadingOr, pager } from "./render.js";
import { S, agentState, sortedAgents, supportedSet } from "./state.js";
import { sortTasks, taskTable } from "./tasks.js";

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

export function agentsView(root) {
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

export function agentView(root, id) {
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
  const charts = chartsWidget(id);
  root.append(
    h("a", { href: "#/agents", class: "back" }, "← Agents"),
    head,
    facts,
    h("section", { class: "card" }, h("h2", null, "Download a model"), form, result),
    h("section", { class: "card flush" }, h("h2", null, "Downloads"), tasksBox),
    h("section", { class: "card flush" }, h("h2", null, "Installed models"), installedBox),
    h("section", { class: "card" }, h("h2", null, "Activity"), charts.el),
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
    charts.update();
  };
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
