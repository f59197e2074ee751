/* DOM building and formatting, with no state of their own. Every string from the server goes
   into the DOM as text, never as HTML. */

export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "style") Object.assign(el.style, v);
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

export const byId = (id) => document.getElementById(id);

export function fmtBytes(n) {
  if (n === null || n === undefined || !Number.isFinite(n)) return "—";
  const units = ["B", "KB", "MB", "GB", "TB", "PB"];
  let i = 0;
  while (Math.abs(n) >= 1000 && i < units.length - 1) {
    n /= 1000;
    i += 1;
  }
  const digits = i === 0 || n >= 100 ? 0 : 1;
  return `${n.toFixed(digits)} ${units[i]}`;
}

export function fmtGiB(n) {
  return `${Math.round(n / 1024 ** 3)} GiB`;
}

export function fmtSpeed(bps) {
  return bps > 0 ? `${fmtBytes(bps)}/s` : "—";
}

export function fmtEta(s) {
  if (s === null || s === undefined || !Number.isFinite(s) || s < 0) return "—";
  if (s < 60) return `${Math.max(1, Math.round(s))} s left`;
  if (s < 3600) return `${Math.round(s / 60)} min left`;
  const hours = Math.floor(s / 3600);
  const min = Math.round((s % 3600) / 60);
  return min ? `${hours} h ${min} min left` : `${hours} h left`;
}

export function fmtPct(p) {
  const v = Math.max(0, Math.min(1, p || 0)) * 100;
  return `${v >= 100 ? 100 : Math.floor(v * 10) / 10}%`;
}

export function fmtCount(n) {
  if (!Number.isFinite(n)) return "—";
  if (n >= 1e6) return `${(n / 1e6).toFixed(n >= 1e7 ? 0 : 1)}M`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(n >= 1e4 ? 0 : 1)}K`;
  return String(n);
}

export function fmtAgo(iso) {
  if (!iso) return "—";
  const t = Date.parse(iso);
  if (Number.isNaN(t)) return "—";
  const s = Math.round((Date.now() - t) / 1000);
  if (s < 5) return "just now";
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}

export function timeEl(iso) {
  if (!iso) return h("span", { class: "muted" }, "—");
  return h("time", { datetime: iso, title: new Date(iso).toLocaleString() }, fmtAgo(iso));
}

export function badge(state, text) {
  return h("span", { class: `badge s-${state}`, "data-state": state }, text || state);
}

export function bar(progress, state) {
  const fill = h("span", { style: { width: fmtPct(progress) } });
  return h(
    "span",
    {
      class: `bar s-${state || "downloading"}`,
      role: "progressbar",
      "aria-valuemin": 0,
      "aria-valuemax": 100,
      "aria-valuenow": Math.round((progress || 0) * 100),
    },
    fill,
  );
}

/* A table whose cells carry their column's name, so narrow windows can stack them as cards. */
export function table(cls, headers, rows, empty) {
  if (!rows.length && empty) return h("p", { class: "empty" }, empty);
  const labels = headers.map((x) => (Array.isArray(x) ? x[0] : x));
  for (const tr of rows) {
    [...tr.children].forEach((td, i) => {
      if (!td.hasAttribute("colspan") && labels[i]) td.dataset.label = labels[i];
    });
  }
  return h(
    "div",
    { class: "table-wrap" },
    h(
      "table",
      { class: `${cls} stack` },
      h(
        "thead",
        null,
        h(
          "tr",
          null,
          headers.map((x) => (Array.isArray(x) ? h("th", { class: x[1] }, x[0]) : h("th", null, x))),
        ),
      ),
      h("tbody", null, rows),
    ),
  );
}

export function notice(kind, ...children) {
  return h("div", { class: `notice ${kind}`, role: kind === "error" ? "alert" : "status" }, ...children);
}

export function pageHead(title, ...extra) {
  return h("div", { class: "page-head" }, h("h1", null, title), ...extra);
}

export function stat(value, label) {
  return h("div", { class: "stat" }, h("b", null, String(value)), h("span", null, label));
}

export function fact(label, value) {
  return h("div", null, h("dt", null, label), h("dd", null, value));
}

export function withTag(name) {
  const slash = name.lastIndexOf("/");
  return name.indexOf(":", slash + 1) < 0 ? `${name}:latest` : name;
}
