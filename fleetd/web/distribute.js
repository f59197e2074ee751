/* Sending a model to agents: the distribute dialog, the request, and what came of it (tasks
   followed live, already-installed and offline targets with what the user can do next). */

import { api } from "./api.js";
import { badge, bar, byId, fmtAgo, fmtBytes, fmtPct, h, notice } from "./dom.js";
import { loadDetail } from "./load.js";
import { liveWidgets, render } from "./render.js";
import { S, agentName, agentState, mergeTask, sortedAgents, supportedSet, tagList } from "./state.js";

function defaultTag(m, tags) {
  const names = tags.map((t) => t.name);
  const supported = [...supportedSet()].find((s) => names.includes(s));
  const latest = `${m.name}:latest`;
  return supported || (names.includes(latest) ? latest : names[0]);
}

export function openDistribute(m, tag) {
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

export async function distribute(req, panel) {
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
  for (const t of res.tasks || []) mergeTask(t);
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
    const who = w.agent_id ? `${agentName(w.agent_id)}: ` : ""; // fleet-wide: registry_unreachable, no_agent_left
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

