/* API keys: create one (its secret is shown once, here), list them, revoke one. Keys are not
   in the live state (no events carry them): the view reads /api/keys when mounted and after
   each change it makes. */

import { api } from "./api.js";
import { byId, fmtCount, h, notice, pageHead, table, timeEl } from "./dom.js";
import { render } from "./render.js";

const K = { keys: null, error: "", secret: null };

async function loadKeys() {
  try {
    K.keys = (await api("/api/keys")).keys;
    K.error = "";
  } catch (e) {
    K.error = e.message;
  }
  render();
}

function limitText(k) {
  const parts = [];
  if (k.limits.requests_per_minute) parts.push(`${fmtCount(k.limits.requests_per_minute)} req/min`);
  if (k.limits.tokens_per_day) parts.push(`${fmtCount(k.limits.tokens_per_day)} tokens/day`);
  return parts.length ? parts.join(", ") : "none";
}

function positive(input) {
  const v = input.value.trim();
  return v === "" ? null : Number(v);
}

function createForm() {
  const name = h("input", { name: "name", required: true, maxlength: 64, placeholder: "team-search", "aria-label": "Name" });
  const models = h("input", { name: "models", placeholder: "every model", "aria-label": "Models (comma-separated)" });
  const rpm = h("input", { name: "rpm", type: "number", min: 1, placeholder: "no limit", "aria-label": "Requests per minute" });
  const tpd = h("input", { name: "tpd", type: "number", min: 1, placeholder: "no limit", "aria-label": "Tokens per day" });
  const error = h("p", { class: "form-error", role: "alert", hidden: true });
  const submit = h("button", { class: "primary", type: "submit" }, "Create key");
  const field = (label, input) => h("label", { class: "field" }, h("span", null, label), input);
  const form = h(
    "form",
    { class: "card key-form", "aria-label": "New API key" },
    h("h2", null, "New key"),
    h(
      "div",
      { class: "key-fields" },
      field("Name", name),
      field("Models (comma-separated)", models),
      field("Requests per minute", rpm),
      field("Tokens per day", tpd),
    ),
    error,
    h("div", { class: "actions" }, submit),
  );
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const body = { name: name.value };
    const list = models.value.split(",").map((m) => m.trim()).filter(Boolean);
    if (list.length) body.models = list;
    const limits = { requests_per_minute: positive(rpm), tokens_per_day: positive(tpd) };
    if (limits.requests_per_minute !== null || limits.tokens_per_day !== null) body.limits = limits;
    submit.disabled = true;
    error.hidden = true;
    try {
      const made = await api("/api/keys", { method: "POST", body });
      K.secret = { name: made.name, key: made.key };
      form.reset();
      await loadKeys();
    } catch (e) {
      error.textContent = e.message;
      error.hidden = false;
    } finally {
      submit.disabled = false;
    }
  });
  return form;
}

function secretBox() {
  if (!K.secret) return null;
  const value = h("code", { class: "secret mono", "data-secret": "" }, K.secret.key);
  const copy = h("button", { type: "button", class: "ghost small" }, "Copy");
  copy.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(K.secret.key);
      copy.textContent = "Copied";
    } catch {
      copy.textContent = "Select and copy it by hand";
    }
  });
  const done = h("button", { type: "button", class: "ghost small" }, "I have saved it");
  done.addEventListener("click", () => {
    K.secret = null;
    render();
  });
  return notice(
    "ok secret-box",
    h("b", null, `Key "${K.secret.name}" created. `),
    "Copy its secret now: it is stored hashed and never shown again. ",
    h("div", { class: "secret-line" }, value, copy, done),
  );
}

function confirmRevoke(k) {
  const dlg = byId("dialog");
  const error = h("p", { class: "form-error", role: "alert", hidden: true });
  const yes = h("button", { class: "primary danger", type: "button" }, "Revoke");
  yes.addEventListener("click", async () => {
    yes.disabled = true;
    try {
      await api(`/api/keys/${encodeURIComponent(k.id)}`, { method: "DELETE" });
      dlg.close();
      await loadKeys();
    } catch (e) {
      error.textContent = e.message;
      error.hidden = false;
      yes.disabled = false;
    }
  });
  dlg.replaceChildren(
    h("h2", { id: "dialog-title" }, `Revoke ${k.name}?`),
    h("p", { class: "desc" }, `Clients using ${k.prefix}… get 401 at once. This cannot be undone.`),
    error,
    h("div", { class: "actions" }, h("button", { class: "ghost", type: "button", onclick: () => dlg.close() }, "Cancel"), yes),
  );
  if (!dlg.open) dlg.showModal();
}

function keysTable() {
  if (K.error) return notice("error", `Cannot load the keys: ${K.error}`);
  if (K.keys === null) return h("p", { class: "empty" }, "Loading…");
  const rows = K.keys.map((k) =>
    h(
      "tr",
      { "data-key": k.id },
      h("td", null, h("span", { class: "strong" }, k.name)),
      h("td", null, h("code", { class: "mono" }, `${k.prefix}…`)),
      h("td", null, k.models ? k.models.join(", ") : h("span", { class: "muted" }, "every model")),
      h("td", null, limitText(k)),
      h("td", null, timeEl(k.created_at)),
      h("td", null, timeEl(k.last_used_at)),
      h(
        "td",
        { class: "row-actions" },
        h("a", { href: `#/usage/${encodeURIComponent(k.id)}` }, "Usage"),
        h("button", { type: "button", class: "ghost small", onclick: () => confirmRevoke(k) }, "Revoke"),
      ),
    ),
  );
  return table(
    "keys",
    ["Name", "Prefix", "Models", "Limits", "Created", "Last used", ""],
    rows,
    "No API keys yet. While there is none (and FLEETD_API_KEYS is empty), inference is open to everyone.",
  );
}

export function keysView(root) {
  const secret = h("div");
  const list = h("div", { class: "card flush" });
  root.append(pageHead("API keys"), secret, createForm(), list);
  document.title = "API keys · fleetd";
  K.keys = null;
  K.secret = null;
  loadKeys();
  let shown = null; // rebuilt only when it changes, so a selection in it survives live redraws
  return () => {
    if (shown !== K.secret) {
      shown = K.secret;
      secret.replaceChildren(...[secretBox()].filter(Boolean));
    }
    list.replaceChildren(keysTable());
  };
}
