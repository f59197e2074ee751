/* An operator's actions: drain, undrain and remove an agent, clear finished tasks, edit the
   supported list, delete a model from the fleet. Each answers in place: a short line next to
   the control, the error's own message when the coordinator refuses. */

import { api } from "./api.js";
import { h } from "./dom.js";
import { loadMatrix } from "./load.js";
import { render } from "./render.js";
import { S, forgetAgent, forgetTasks, mergeAgent } from "./state.js";

async function act(out, fn) {
  out.textContent = "";
  out.className = "op-result";
  try {
    const said = await fn();
    if (said) out.textContent = said;
  } catch (e) {
    out.textContent = e.message;
    out.className = "op-result error";
  }
  render();
}

/* Drain or undrain, and remove (offline only, or forced after a second confirmation). */
export function agentActions(a) {
  const out = h("span", { class: "op-result" });
  const path = `/api/agents/${encodeURIComponent(a.id)}`;
  const toggle = h(
    "button",
    {
      class: "small",
      "data-action": a.draining ? "undrain" : "drain",
      title: a.draining
        ? "Put it back in service"
        : "No new requests or automatic downloads; what it runs finishes",
      onclick: () =>
        act(out, async () => {
          mergeAgent(await api(`${path}/${a.draining ? "undrain" : "drain"}`, { method: "POST" }));
        }),
    },
    a.draining ? "Undrain" : "Drain",
  );
  const remove = h(
    "button",
    {
      class: "small danger",
      "data-action": "remove",
      onclick: () =>
        act(out, async () => {
          const online = a.status === "online";
          const ask = online
            ? `${a.name} is online: remove it anyway? It registers again as a new agent if it keeps running.`
            : `Remove ${a.name}? Its unfinished tasks are cancelled.`;
          if (!confirm(ask)) return "";
          await api(`${path}${online ? "?force=true" : ""}`, { method: "DELETE" });
          forgetAgent(a.id);
          location.hash = "#/agents";
          return "";
        }),
    },
    "Remove",
  );
  return h("span", { class: "op-actions" }, toggle, remove, out);
}

/* "Clear finished" on the tasks page: every finished task, or those of the chosen state. */
export function clearTasksButton(status) {
  const out = h("span", { class: "op-result" });
  const finished = ["completed", "failed", "cancelled"];
  if (status && !finished.includes(status)) return h("span");
  return h(
    "span",
    { class: "op-actions" },
    h(
      "button",
      {
        class: "small",
        "data-action": "clear-tasks",
        onclick: () =>
          act(out, async () => {
            const q = status ? `?status=${encodeURIComponent(status)}` : "";
            const r = await api(`/api/tasks${q}`, { method: "DELETE" });
            forgetTasks(r.removed || []);
            return `removed ${(r.removed || []).length}`;
          }),
      },
      status ? `Clear ${status}` : "Clear finished",
    ),
    out,
  );
}

/* Ollama's DELETE /api/delete through the coordinator: a delete task per agent that has it. */
export function deleteModelButton(model) {
  return h(
    "button",
    {
      class: "small danger",
      "data-action": "delete-model",
      title: `Delete ${model} from every agent that has it`,
      onclick: async () => {
        if (!confirm(`Delete ${model} from every agent that has it?`)) return;
        try {
          await api("/api/delete", { method: "DELETE", body: { model } });
          S.matrixStale = true;
          loadMatrix();
        } catch (e) {
          alert(e.message);
        }
      },
    },
    "Delete",
  );
}

export async function loadSupported() {
  try {
    const r = await api("/api/supported-models");
    S.supported = r.models;
    S.placement = r.placement || [];
  } catch (e) {
    S.supportedError = e.message;
  }
  render();
}

/* The supported list as chips (× takes one off) and a box to add one; each change is one PUT
   of the whole list. Built once per view so the box keeps what is being typed. */
export function supportedEditor() {
  const chips = h("div", { class: "tag-list", id: "supported-list" });
  const out = h("span", { class: "op-result" });
  const input = h("input", {
    type: "text",
    name: "supported-model",
    list: "model-options",
    placeholder: "model:tag",
    autocomplete: "off",
    spellcheck: "false",
    "aria-label": "Model to add to the supported list",
  });
  const put = (models) =>
    act(out, async () => {
      const r = await api("/api/supported-models", { method: "PUT", body: { models } });
      S.supported = r.models;
      S.matrixStale = true;
      return "saved: agents follow at their next heartbeat";
    });
  const form = h(
    "form",
    {
      class: "inline-form",
      onsubmit: (e) => {
        e.preventDefault();
        const name = input.value.trim();
        if (!name || !S.supported) return;
        put([...S.supported, name]).then(() => {
          if (!out.classList.contains("error")) input.value = "";
        });
      },
    },
    input,
    h("button", { type: "submit", class: "primary" }, "Add"),
    out,
  );
  const card = h(
    "section",
    { class: "card", id: "supported" },
    h("h2", null, "Supported models"),
    h(
      "p",
      { class: "muted" },
      "Every agent holds these (unless a placement rule gives it its own set): missing ones are downloaded, " +
        "and all are kept loaded. A model taken off stays installed.",
    ),
    chips,
    form,
  );
  loadSupported();
  const update = () => {
    if (!S.supported) {
      chips.replaceChildren(h("span", { class: "muted" }, S.supportedError || "Loading…"));
      return;
    }
    chips.replaceChildren(
      ...S.supported.map((m) =>
        h(
          "span",
          { class: "tag-chip", "data-model": m },
          h("b", null, m),
          h(
            "button",
            {
              class: "chip-x",
              title: `Take ${m} off the supported list`,
              "aria-label": `Remove ${m}`,
              onclick: () => put(S.supported.filter((x) => x !== m)),
            },
            "×",
          ),
        ),
      ),
    );
  };
  return { card, update };
}
