/* A small SVG bar chart drawn by the page itself (no library, nothing from a CDN): stacked
   bars over evenly spaced time buckets, an axis with the largest value and the range's ends,
   and a tooltip per bar (the SVG <title>). */

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
