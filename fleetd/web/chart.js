/* Small SVG charts drawn by the page itself (no library, nothing from a CDN): stacked bars
   over time buckets (usage) and lines over evenly spaced samples (the fleet's last hour). */

const NS = "http://www.w3.org/2000/svg";

function s(tag, attrs, ...children) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  for (const c of children) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

function shortTime(ms, step) {
  const d = new Date(ms);
  const opts = step >= 86400 ? { month: "short", day: "numeric" } : { hour: "2-digit", minute: "2-digit" };
  return d.toLocaleString(undefined, opts);
}

/* series: [{label, cls}] drawn bottom to top; points: Map(bucket start in seconds -> [values]);
   from/to/step in seconds. */
export function barChart({ title, series, points, from, to, step, unit }) {
  const W = 640;
  const H = 160;
  const pad = { l: 48, r: 8, t: 10, b: 22 };
  const n = Math.max(1, Math.ceil((to - from) / step));
  const slot = (W - pad.l - pad.r) / n;
  let max = 0;
  for (const values of points.values()) max = Math.max(max, values.reduce((a, b) => a + b, 0));
  const scale = max > 0 ? (H - pad.t - pad.b) / max : 0;
  const svg = s("svg", {
    class: "chart",
    viewBox: `0 0 ${W} ${H}`,
    role: "img",
    "aria-label": title,
  });
  svg.append(
    s("line", { class: "axis", x1: pad.l, y1: H - pad.b, x2: W - pad.r, y2: H - pad.b }),
    s("text", { class: "tick", x: pad.l - 4, y: pad.t + 8, "text-anchor": "end" }, max.toLocaleString()),
    s("text", { class: "tick", x: pad.l - 4, y: H - pad.b, "text-anchor": "end" }, "0"),
    s("text", { class: "tick", x: pad.l, y: H - 6 }, shortTime(from * 1000, step)),
    s("text", { class: "tick", x: W - pad.r, y: H - 6, "text-anchor": "end" }, shortTime(to * 1000, step)),
  );
  for (const [bucket, values] of points) {
    const i = Math.floor((bucket - from) / step);
    if (i < 0 || i >= n) continue;
    let y = H - pad.b;
    const g = s("g", { class: "bar-group", "data-bucket": bucket });
    values.forEach((v, k) => {
      if (!v) return;
      const hgt = Math.max(1, v * scale);
      y -= hgt;
      g.append(
        s("rect", {
          class: series[k].cls,
          x: (pad.l + i * slot + slot * 0.1).toFixed(1),
          y: y.toFixed(1),
          width: Math.max(1, slot * 0.8).toFixed(1),
          height: hgt.toFixed(1),
        }),
      );
    });
    const lines = values.map((v, k) => `${series[k].label}: ${v.toLocaleString()}`).join(", ");
    g.append(s("title", null, `${new Date(bucket * 1000).toLocaleString()} — ${lines} ${unit}`));
    svg.append(g);
  }
  const legend = document.createElement("div");
  legend.className = "chart-legend";
  for (const x of series) {
    const sw = document.createElement("span");
    sw.className = `swatch ${x.cls}`;
    legend.append(sw, ` ${x.label} `);
  }
  const fig = document.createElement("figure");
  fig.className = "chart-box";
  const cap = document.createElement("figcaption");
  cap.textContent = title;
  fig.append(cap, svg, legend);
  return fig;
}

/* The smallest 1, 2 or 5 × 10^n at or above v: a round top for an axis. */
function niceCeil(v) {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  return [1, 2, 5, 10].map((m) => m * p).find((x) => x >= v * (1 - 1e-9));
}

/* One path through evenly spaced points from index `from` on, broken where a value is null
   (no sample); a point alone is a dot (round caps on a zero-length segment). */
function linePath(values, from, xAt, yAt) {
  let d = "";
  let open = false;
  const missing = (v) => v === null || v === undefined;
  for (let i = Math.max(0, from); i < values.length; i += 1) {
    const v = values[i];
    if (missing(v)) {
      open = false;
      continue;
    }
    const p = `${xAt(i).toFixed(1)} ${yAt(v).toFixed(1)}`;
    d += open ? ` L ${p}` : ` M ${p}${missing(values[i + 1]) ? " h 0" : ""}`;
    open = true;
  }
  return d.trim();
}

function lastValue(values) {
  for (let i = values.length - 1; i >= 0; i -= 1) {
    if (values[i] !== null && values[i] !== undefined) return values[i];
  }
  return undefined;
}

/* series: [{label, cls, values}], values[i] at start + i * step seconds (null: no sample);
   the x axis spans `slots` steps ending at the last point. fmt formats a value; max, when
   given, is the top of the y axis (a GPU's memory, 100 %). The legend shows the latest
   values; hovering shows those at a time under it. */
export function lineChart({ title, name, series, start, step, slots, fmt, max, summary }) {
  // About the width a chart gets in the grid, so that its text is drawn near its CSS size.
  const W = 360;
  const H = 150;
  const pad = { l: 52, r: 6, t: 10, b: 22 };
  const n = Math.max(0, ...series.map((ser) => ser.values.length));
  const first = n - slots; // index at the axis' left end (negative: fewer samples so far)
  const end = start + (n - 1) * step;
  let top = max;
  if (!(top > 0)) top = niceCeil(Math.max(0, ...series.map((ser) => Math.max(0, ...ser.values))));
  const xAt = (i) => pad.l + ((i - first) / Math.max(1, slots - 1)) * (W - pad.l - pad.r);
  const yAt = (v) => H - pad.b - (Math.min(v, top) / top) * (H - pad.t - pad.b);
  const clock = (t) => new Date(t * 1000).toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit" });
  const svg = s("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": title });
  svg.append(
    s("line", { class: "axis", x1: pad.l, y1: H - pad.b, x2: W - pad.r, y2: H - pad.b }),
    s("line", { class: "grid", x1: pad.l, y1: pad.t, x2: W - pad.r, y2: pad.t }),
    s("text", { class: "tick", x: pad.l - 4, y: pad.t + 8, "text-anchor": "end" }, fmt(top)),
    s("text", { class: "tick", x: pad.l - 4, y: H - pad.b, "text-anchor": "end" }, fmt(0)),
  );
  if (n) {
    svg.append(
      s("text", { class: "tick", x: pad.l, y: H - 6 }, clock(end - (slots - 1) * step)),
      s("text", { class: "tick", x: W - pad.r, y: H - 6, "text-anchor": "end" }, clock(end)),
    );
  }
  for (const ser of series) {
    const d = linePath(ser.values, first, xAt, yAt);
    if (d) svg.append(s("path", { class: `line ${ser.cls}`, d }));
  }
  const cursor = s("line", { class: "cursor", x1: 0, y1: pad.t, x2: 0, y2: H - pad.b, visibility: "hidden" });
  svg.append(cursor);

  const legend = document.createElement("div");
  legend.className = "chart-legend";
  for (const ser of series) {
    const sw = document.createElement("span");
    sw.className = `swatch ${ser.cls}`;
    const now = document.createElement("b");
    const last = lastValue(ser.values);
    now.textContent = last === undefined ? "—" : fmt(last);
    legend.append(sw, ` ${ser.label} `, now);
  }
  const readout = document.createElement("div");
  readout.className = "chart-readout";
  svg.addEventListener("mousemove", (e) => {
    const box = svg.getBoundingClientRect();
    const px = ((e.clientX - box.left) / box.width) * W;
    const i = Math.round(first + ((px - pad.l) / (W - pad.l - pad.r)) * Math.max(1, slots - 1));
    if (i < Math.max(0, first) || i >= n) return;
    cursor.setAttribute("x1", xAt(i).toFixed(1));
    cursor.setAttribute("x2", xAt(i).toFixed(1));
    cursor.setAttribute("visibility", "visible");
    const at = new Date((start + i * step) * 1000).toLocaleTimeString();
    const parts = series.map((ser) => `${ser.label} ${ser.values[i] === null ? "—" : fmt(ser.values[i])}`);
    readout.textContent = `${at}: ${parts.join(", ")}`;
  });
  svg.addEventListener("mouseleave", () => {
    cursor.setAttribute("visibility", "hidden");
    readout.textContent = "";
  });

  const fig = document.createElement("figure");
  fig.className = "chart-box";
  fig.dataset.chart = name;
  const cap = document.createElement("figcaption");
  cap.textContent = title;
  if (summary) {
    const sub = document.createElement("span");
    sub.className = "chart-summary";
    sub.textContent = summary;
    cap.append(" ", sub);
  }
  fig.append(cap, svg, legend, readout);
  return fig;
}
