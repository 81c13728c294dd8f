// SVG drawings: a workflow's DAG and line charts over time.
import { s } from "./dom.js";

// steps: the execution's step states; definition: the workflow's steps (id, depends_on).
export function dag(steps, definition) {
  const deps = new Map(definition.map((d) => [d.id, d.depends_on || []]));
  const depth = new Map();
  const depthOf = (id, seen = new Set()) => {
    if (depth.has(id)) return depth.get(id);
    if (seen.has(id)) return 0;
    seen.add(id);
    const parents = deps.get(id) || [];
    const d = parents.length ? 1 + Math.max(...parents.map((p) => depthOf(p, seen))) : 0;
    depth.set(id, d);
    return d;
  };
  const columns = new Map();
  for (const st of steps) {
    const d = depthOf(st.step_id);
    if (!columns.has(d)) columns.set(d, []);
    columns.get(d).push(st);
  }
  const W = 210, H = 74, GAP_X = 50, GAP_Y = 20;
  const at = new Map();
  for (const [d, list] of columns) list.forEach((st, i) => at.set(st.step_id, [20 + d * (W + GAP_X), 20 + i * (H + GAP_Y)]));
  const width = 40 + Math.max(1, columns.size) * (W + GAP_X) - GAP_X;
  const height = 40 + Math.max(1, ...[...columns.values()].map((l) => l.length)) * (H + GAP_Y) - GAP_Y;
  const edges = [];
  for (const st of steps) for (const p of deps.get(st.step_id) || []) {
    if (!at.has(p)) continue;
    const [x1, y1] = at.get(p), [x2, y2] = at.get(st.step_id);
    edges.push(s("path", { class: "edge", d: `M${x1 + W},${y1 + H / 2} C${x1 + W + GAP_X / 2},${y1 + H / 2} ${x2 - GAP_X / 2},${y2 + H / 2} ${x2},${y2 + H / 2}`, "marker-end": "url(#arrow)" }));
  }
  return s("svg", { viewBox: `0 0 ${width} ${height}`, width, role: "img", "aria-label": "workflow steps" },
    s("defs", {}, s("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 8, markerHeight: 8, orient: "auto" }, s("path", { d: "M0,0 L10,5 L0,10 z", class: "arrow" }))),
    edges,
    steps.map((st) => {
      const [x, y] = at.get(st.step_id);
      const state = String(st.state || "").replace("STEP_STATE_", "");
      return s("g", { class: `step ${state.toLowerCase()}`, "data-step": st.step_id, "data-state": state, transform: `translate(${x},${y})` },
        s("rect", { width: W, height: H, rx: 8 }),
        s("text", { x: 10, y: 22, class: "title" }, st.step_id),
        s("text", { x: 10, y: 42 }, `${st.domain_id || st.capability || ""}.${st.action}`),
        s("text", { x: 10, y: 62, class: "state" }, `${state}${st.attempts > 1 ? ` (attempt ${st.attempts})` : ""}`));
    }));
}

const COLOURS = ["#2563eb", "#16a34a", "#dc2626", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777", "#4b5563", "#65a30d", "#7c3aed", "#0d9488"];

// series: {name: [{t, v}]}, drawn on one time axis, with a legend.
export function lineChart(series) {
  const W = 640, H = 200, L = 44, B = 22;
  const points = Object.values(series).flat();
  const t0 = Math.min(...points.map((p) => p.t), Date.now()), t1 = Math.max(...points.map((p) => p.t), t0 + 1000);
  const vmax = Math.max(1e-9, ...points.map((p) => p.v));
  const x = (t) => L + ((t - t0) / (t1 - t0)) * (W - L - 10);
  const y = (v) => H - B - (v / vmax) * (H - B - 10);
  const names = Object.keys(series);
  return s("svg", { viewBox: `0 0 ${W} ${H + 18 * Math.ceil(names.length / 4)}`, class: "chart", role: "img", "aria-label": names.join(", ") },
    s("line", { x1: L, y1: H - B, x2: W - 10, y2: H - B, class: "axis" }),
    s("line", { x1: L, y1: 10, x2: L, y2: H - B, class: "axis" }),
    s("text", { x: L - 4, y: 16, "text-anchor": "end", class: "small" }, vmax >= 10 ? vmax.toFixed(0) : vmax.toFixed(2)),
    s("text", { x: L - 4, y: H - B, "text-anchor": "end", class: "small" }, "0"),
    s("text", { x: W - 10, y: H - 6, "text-anchor": "end", class: "small" }, new Date(t1).toLocaleTimeString()),
    s("text", { x: L, y: H - 6, class: "small" }, new Date(t0).toLocaleTimeString()),
    names.map((n, i) => s("polyline", { fill: "none", stroke: COLOURS[i % COLOURS.length], "stroke-width": 2, points: series[n].map((p) => `${x(p.t).toFixed(1)},${y(p.v).toFixed(1)}`).join(" ") })),
    names.map((n, i) => s("text", { x: L + (i % 4) * 150, y: H + 12 + 18 * Math.floor(i / 4), fill: COLOURS[i % COLOURS.length], class: "small" }, `● ${n}`)));
}
