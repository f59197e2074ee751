/* Redrawing: the mounted view and any live widgets are rebuilt from state in one animation
   frame; plus the list helpers every view shares (pager, filter box, loading state). */

import { h, notice } from "./dom.js";
import { S } from "./state.js";

// Lists show PAGE_ROWS rows at a time: laying out a table of thousands of rows blocks the page
// for seconds (3,000 agents: one frame every 2 s), and live events redraw it every second.
const PAGE_ROWS = 200;

let current = null; // the mounted view: {key, update}
let renderQueued = false;
let lastRender = 0;
let liveTimer = null;

/* Extra renderers outside the view (the distribute dialog's task list). */
export const liveWidgets = new Set();

export function currentView() {
  return current;
}

export function setCurrentView(view) {
  current = view;
}

export function render() {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => {
    renderQueued = false;
    lastRender = performance.now();
    if (current) current.update();
    for (const fn of liveWidgets) fn();
  });
}

// Every heartbeat of every agent is an SSE event: 1,000 a second with 5,000 agents. Views are
// rebuilt whole, so live updates are paced (a large fleet is redrawn once a second) while
// what the user does still renders at once.
export function renderLive() {
  if (liveTimer !== null) return;
  const gap = S.agents.size > 500 ? 1000 : 250;
  liveTimer = setTimeout(
    () => {
      liveTimer = null;
      render();
    },
    Math.max(0, lastRender + gap - performance.now()),
  );
}

// One list shown PAGE_ROWS at a time: page() cuts the items, more() is the "Show N more" line
// (null when all are shown), reset() starts over when the list's filter changes.
export function pager() {
  let limit = PAGE_ROWS;
  return {
    page: (items) => items.slice(0, limit),
    reset() {
      limit = PAGE_ROWS;
    },
    more(total) {
      const shown = Math.min(limit, total);
      if (shown >= total) return null;
      const next = () => {
        limit += PAGE_ROWS;
        render();
      };
      return h(
        "div",
        { class: "more-rows" },
        h("span", { class: "muted" }, `Showing ${shown} of ${total}.`),
        h("button", { type: "button", class: "ghost", onclick: next }, `Show ${Math.min(PAGE_ROWS, total - shown)} more`),
      );
    },
  };
}

export function filterInput(placeholder, label, pages) {
  return h("input", {
    type: "search",
    placeholder,
    "aria-label": label,
    oninput: () => {
      pages.reset();
      render();
    },
  });
}

export function loadingOr(content) {
  if (S.loadError) return notice("error", `Cannot load the fleet: ${S.loadError}`);
  if (!S.loaded) return h("p", { class: "empty" }, "Loading…");
  return content();
}
