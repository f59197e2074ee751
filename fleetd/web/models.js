/* Models: the catalog ("Available models", with each model's tags on demand) and the matrix
   of which agent has which model ("Who has what"). */

import { openDistribute } from "./distribute.js";
import { fmtBytes, fmtCount, fmtPct, h, notice, pageHead, table, withTag } from "./dom.js";
import { loadCatalog, loadDetail, loadMatrix } from "./load.js";
import { deleteModelButton, supportedEditor } from "./operate.js";
import { pager, render } from "./render.js";
import { S, supportedSet, tagList } from "./state.js";
export function modelsView(root, tab) {
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
  const editor = supportedEditor();
  root.append(pageHead("Models", tabs, h("div", { class: "toolbar" }, search)), banner, body);
  if (isMatrix) root.append(editor.card);
  document.title = `${isMatrix ? "Who has what" : "Available models"} · fleetd`;
  loadCatalog(true); // cheap when warm, and picks up a library that came back
  if (isMatrix) loadMatrix();
  return () => {
    banner.replaceChildren(...[catalogBanner()].filter(Boolean));
    const q = search.value.trim().toLowerCase();
    editor.update();
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
        const why = (a.reasons || {})[m];
        return h(
          "td",
          { class: "cell", "data-agent": a.id },
          h(
            "span",
            { class: `cell-state s-${state}`, "data-state": state, title: why || null },
            state === "installed" ? "✓ installed" : state === "too_large" ? "too large" : label,
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
        supported.has(m) ? null : deleteModelButton(m),
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
      ["installed", "downloading", "queued", "failed", "missing", "too_large", "deleting"].map((s) =>
        h("span", { class: `cell-state s-${s}` }, s),
      ),
    ),
  );
}

