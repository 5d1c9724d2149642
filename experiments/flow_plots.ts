// Figures of an attention flow (attention_flow.json, written by studies/outputs.ts) as standalone SVG text: a heatmap
// of query group × key group per block and step, and the mass each query group sends to the reference tokens over
// the blocks. No library and no script; every cell and point carries a <title> (hover text) and data- attributes, so
// a page and its tests can read the numbers back. The same figures of a cell's mean over tasks (aggregate.ts): small
// multiples of the heatmap, one per block, and the mass to the reference over the blocks with its 95% band.

import type { AttentionFlowJson } from "../interventions/attention_flow.ts";
import type { FlowAggregate, FlowAggregateTable } from "./aggregate.ts";
import { type MeanInterval, meanIntervalMethodText } from "./stats.ts";
import { ATTENTION_FLOW_FORMAT } from "../interventions/attention_flow.ts";
import { parseOutputJson } from "./files.ts";
import { printable } from "../runtime/printable.ts";

/** Colour-blind-safe palette (Okabe–Ito), then repeated. */
const PALETTE = ["#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9", "#000000", "#f0e442"];

const esc = (s: string) => s.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]!);
const num = (v: number) => Number(v.toFixed(2)).toString();

/** Read attention_flow.json text, checking what the figures rely on (format, groups, table shapes); errors name the
 * file and the field. */
export function parseAttentionFlowJson(text: string, where = "attention_flow.json"): AttentionFlowJson {
  const { raw, fail } = parseOutputJson(text, where, ATTENTION_FLOW_FORMAT, 1);
  const j = raw as unknown as AttentionFlowJson;
  for (const side of ["queryGroups", "keyGroups"] as const) {
    const groups = j[side];
    if (!Array.isArray(groups) || groups.some((g) => typeof g?.name !== "string" || !Number.isInteger(g?.tokens))) {
      fail(side, "expected a list of {name, tokens}");
    }
  }
  if (!Array.isArray(j.heads) || !Number.isInteger(j.totalHeads)) fail("heads", "expected a list of head indices and totalHeads");
  if (!Array.isArray(j.tables)) fail("tables", "expected a list");
  const gq = j.queryGroups.length, gk = j.keyGroups.length;
  j.tables.forEach((t, i) => {
    const f = `tables[${i}]`;
    if (typeof t?.block !== "string" || !Number.isInteger(t.blockIndex) || !Number.isInteger(t.step)) {
      fail(f, "expected block, blockIndex and step");
    }
    const ok = Array.isArray(t.mass) && t.mass.length === j.heads.length + 1 &&
      t.mass.every((s) =>
        Array.isArray(s) && s.length === gq && s.every((r) => Array.isArray(r) && r.length === gk && r.every(Number.isFinite))
      );
    if (!ok) fail(`${f}.mass`, `expected [${j.heads.length + 1}][${gq}][${gk}] numbers`);
  });
  return j;
}

/** Which slice of a table: a kept head's number, or the mean over all heads. */
export type FlowHead = number | "mean";

function sliceOf(flow: AttentionFlowJson, head: FlowHead): number {
  if (head === "mean") return flow.heads.length;
  const i = flow.heads.indexOf(head);
  if (i < 0) throw new Error(`attention flow: head ${head} was not kept (kept: ${flow.heads.join(", ")})`);
  return i;
}

function headLabel(flow: AttentionFlowJson, head: FlowHead): string {
  return head === "mean" ? `mean over ${flow.totalHeads} heads` : `head ${head}`;
}

/** White → dark blue for 0 → 1. */
function cellColour(v: number): string {
  const t = Math.min(1, Math.max(0, v));
  const [a, b] = [[247, 251, 255], [8, 48, 107]];
  const c = a.map((x, i) => Math.round(x + (b[i] - x) * Math.sqrt(t)));
  return `rgb(${c.join(",")})`;
}

/** Heatmap of one table: rows are query groups (with their token counts), columns key groups; each cell the mean
 * mass a query-group row puts on the key group. */
export function flowHeatmapSvg(flow: AttentionFlowJson, block: string, step: number, head: FlowHead = "mean"): string {
  const table = flow.tables.find((t) => t.block === block && t.step === step);
  if (!table) throw new Error(`attention flow: no table of block ${printable(block)} at step ${step}`);
  const m = table.mass[sliceOf(flow, head)];
  const cell = 44, labelW = 150, labelH = 96, top = 28;
  const gq = flow.queryGroups.length, gk = flow.keyGroups.length;
  const width = labelW + gk * cell + 10, height = top + labelH + gq * cell + 10;
  const title = `${block} · step ${step} · ${headLabel(flow, head)}`;
  const parts = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" ` +
    `font-family="sans-serif" font-size="11" data-block="${esc(block)}" data-step="${step}" data-head="${head}">`,
    `<text x="4" y="16" font-size="13" font-weight="bold">${esc(title)}</text>`,
  ];
  flow.keyGroups.forEach((g, b) => {
    const x = labelW + b * cell + cell / 2, y = top + labelH - 4;
    parts.push(`<text transform="translate(${x},${y}) rotate(-55)" text-anchor="start">${esc(g.name)}</text>`);
  });
  flow.queryGroups.forEach((g, a) => {
    const y = top + labelH + a * cell;
    parts.push(`<text x="${labelW - 6}" y="${y + cell / 2 + 4}" text-anchor="end">${esc(g.name)} (${g.tokens})</text>`);
    flow.keyGroups.forEach((k, b) => {
      const v = m[a][b], x = labelW + b * cell;
      parts.push(
        `<g data-query="${esc(g.name)}" data-key="${esc(k.name)}" data-mass="${v}">` +
          `<rect x="${x}" y="${y}" width="${cell}" height="${cell}" fill="${cellColour(v)}" stroke="#fff"/>` +
          `<text x="${x + cell / 2}" y="${y + cell / 2 + 4}" text-anchor="middle" fill="${v > 0.35 ? "#fff" : "#000"}">${num(v)}</text>` +
          `<title>${esc(`${g.name} → ${k.name}: ${v.toFixed(4)}`)}</title></g>`,
      );
    });
  });
  parts.push("</svg>");
  return parts.join("\n");
}

/** Key groups made only of reference tokens ("ref", "ref[k]", joined with +). */
export function isReferenceGroup(name: string): boolean {
  return name.split("+").every((p) => /^ref(\[\d+\])?$/.test(p.trim()));
}

/** Mass of each query group on the key groups `keys` selects (default: the reference groups) over the blocks of one
 * step: x = block index, y = mass 0 … 1, one line per query group. Null when no key group is selected. */
export function flowToKeysSvg(
  flow: AttentionFlowJson,
  step: number,
  options: { keys?: (name: string) => boolean; head?: FlowHead; label?: string } = {},
): string | null {
  const select = options.keys ?? isReferenceGroup;
  const keyIndex = flow.keyGroups.map((g, i) => (select(g.name) ? i : -1)).filter((i) => i >= 0);
  if (!keyIndex.length) return null;
  const tables = flow.tables.filter((t) => t.step === step).sort((a, b) => a.blockIndex - b.blockIndex);
  if (!tables.length) return null;
  const slice = sliceOf(flow, options.head ?? "mean");
  const label = options.label ?? keyIndex.map((i) => flow.keyGroups[i].name).join(" + ");
  const W = 560, H = 300, left = 48, right = 150, topM = 30, bottom = 36;
  const plotW = W - left - right, plotH = H - topM - bottom;
  const xMax = Math.max(1, ...tables.map((t) => t.blockIndex));
  const px = (b: number) => left + (b / xMax) * plotW, py = (v: number) => topM + (1 - v) * plotH;
  const parts = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="11" ` +
    `data-step="${step}">`,
    `<text x="4" y="16" font-size="13" font-weight="bold">${
      esc(`mass to ${label} · step ${step} · ${headLabel(flow, options.head ?? "mean")}`)
    }</text>`,
  ];
  for (const v of [0, 0.25, 0.5, 0.75, 1]) {
    parts.push(`<line x1="${left}" x2="${left + plotW}" y1="${num(py(v))}" y2="${num(py(v))}" stroke="#ddd"/>`);
    parts.push(`<text x="${left - 6}" y="${num(py(v) + 4)}" text-anchor="end">${v}</text>`);
  }
  const ticks = tables.filter((_, i) => tables.length <= 16 || i % Math.ceil(tables.length / 16) === 0);
  for (const t of ticks) {
    parts.push(`<text x="${num(px(t.blockIndex))}" y="${H - bottom + 14}" text-anchor="middle">${t.blockIndex}</text>`);
  }
  parts.push(`<text x="${left + plotW / 2}" y="${H - 6}" text-anchor="middle">block</text>`);
  flow.queryGroups.forEach((g, a) => {
    const colour = PALETTE[a % PALETTE.length];
    const points = tables.map((t) => ({ t, v: keyIndex.reduce((s, b) => s + t.mass[slice][a][b], 0) }));
    const path = points.map((p, i) => `${i ? "L" : "M"}${num(px(p.t.blockIndex))},${num(py(p.v))}`).join(" ");
    parts.push(`<g data-query="${esc(g.name)}"><path d="${path}" fill="none" stroke="${colour}" stroke-width="1.8"/>`);
    for (const p of points) {
      parts.push(
        `<circle cx="${num(px(p.t.blockIndex))}" cy="${num(py(p.v))}" r="2.6" fill="${colour}" data-block="${
          esc(p.t.block)
        }" data-mass="${p.v}">` +
          `<title>${esc(`${g.name} → ${label} at ${p.t.block}: ${p.v.toFixed(4)}`)}</title></circle>`,
      );
    }
    parts.push("</g>");
    const ly = topM + 10 + a * 16;
    parts.push(`<line x1="${left + plotW + 12}" x2="${left + plotW + 30}" y1="${ly}" y2="${ly}" stroke="${colour}" stroke-width="2"/>`);
    parts.push(`<text x="${left + plotW + 34}" y="${ly + 4}">${esc(g.name)}</text>`);
  });
  parts.push("</svg>");
  return parts.join("\n");
}

export interface AttentionFlowFigures {
  /** One heatmap per table (block and step), mean over heads, in block then step order. */
  heatmaps: { block: string; step: number; svg: string }[];
  /** Per step, the mass to the reference groups over the blocks (absent when no key group is a reference group). */
  toReference: { step: number; svg: string }[];
}

/** Every figure of a flow. */
export function attentionFlowFigures(flow: AttentionFlowJson): AttentionFlowFigures {
  const tables = [...flow.tables].sort((a, b) => a.blockIndex - b.blockIndex || a.step - b.step);
  const steps = [...new Set(tables.map((t) => t.step))].sort((a, b) => a - b);
  return {
    heatmaps: tables.map((t) => ({ block: t.block, step: t.step, svg: flowHeatmapSvg(flow, t.block, t.step) })),
    toReference: steps.flatMap((step) => {
      const svg = flowToKeysSvg(flow, step);
      return svg ? [{ step, svg }] : [];
    }),
  };
}

/** An HTML section with every figure of a flow (for a report page; `heading` is escaped). */
export function attentionFlowSection(flow: AttentionFlowJson, heading = "Attention flow by token group"): string {
  const figures = attentionFlowFigures(flow);
  const lines = figures.toReference.map((f) => `<div class="flow-line">${f.svg}</div>`);
  const maps = figures.heatmaps.map((f) => `<div class="flow-heatmap">${f.svg}</div>`);
  return [
    `<section class="attention-flow"><h2>${esc(heading)}</h2>`,
    `<p>Rows: query groups (tokens); columns: key groups; cells: the mean probability mass a row of the query group puts ` +
    `on the key group, ${esc(headLabel(flow, "mean"))}, ${flow.forward} forward.` +
    (flow.uncoveredKeys ? ` ${flow.uncoveredKeys} keys are in no key group, so rows sum to less than 1.` : "") + `</p>`,
    ...lines,
    `<div style="display:flex;flex-wrap:wrap;gap:8px">`,
    ...maps,
    `</div></section>`,
  ].join("\n");
}

// ---- a cell's mean over tasks (aggregate.ts) --------------------------------------------------------------------------

const intervalText = (m: MeanInterval) =>
  m.n === 0
    ? "no tasks"
    : `${m.mean.toFixed(4)}${
      Number.isFinite(m.low) ? ` (95% ${m.low.toFixed(4)} – ${m.high.toFixed(4)})` : " (no interval: n = 1)"
    }, n = ${m.n}`;

/** The band of a series: one closed path per run of consecutive points that have an interval (n ≥ 2). */
export function bandPaths(
  points: { x: number; m: MeanInterval }[],
  px: (x: number) => number,
  py: (v: number) => number,
): string[] {
  const runs: { x: number; m: MeanInterval }[][] = [];
  let run: { x: number; m: MeanInterval }[] = [];
  for (const p of points) {
    if (Number.isFinite(p.m.low) && Number.isFinite(p.m.high)) run.push(p);
    else if (run.length) runs.push(run), run = [];
  }
  if (run.length) runs.push(run);
  return runs.map((r) => {
    const upper = r.map((p, i) => `${i ? "L" : "M"}${num(px(p.x))},${num(py(p.m.high))}`);
    const lower = [...r].reverse().map((p) => `L${num(px(p.x))},${num(py(p.m.low))}`);
    // A single point's band is a vertical bar: widen it a little so it shows.
    if (r.length === 1) {
      const x = px(r[0].x);
      return `M${num(x - 3)},${num(py(r[0].m.high))} L${num(x + 3)},${num(py(r[0].m.high))} L${num(x + 3)},${num(py(r[0].m.low))} ` +
        `L${num(x - 3)},${num(py(r[0].m.low))} Z`;
    }
    return `${upper.join(" ")} ${lower.join(" ")} Z`;
  });
}

/** A cell's mean heatmap of one block and step, small enough for one per block side by side: rows query groups,
 * columns key groups, each cell the mean over tasks of the mean-over-heads mass (hover: its interval and n). */
export function aggregateHeatmapSvg(agg: FlowAggregate, table: FlowAggregateTable): string {
  const cell = 28, labelW = 110, labelH = 72, top = 24;
  const gq = agg.queryGroups.length, gk = agg.keyGroups.length;
  const width = Math.max(labelW + gk * cell + 10, 200), height = top + labelH + gq * cell + 8;
  const n = Math.max(0, ...table.mass.flat().map((m) => m.n));
  const title = `${table.block} · step ${table.step} · mean of ${n} task${n === 1 ? "" : "s"}`;
  const parts = [
    `<svg xmlns="http://www.w3.org/2000/svg" class="agg-heatmap" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" ` +
    `font-family="sans-serif" font-size="10" role="img" aria-label="${esc(title)}" data-block="${esc(table.block)}" ` +
    `data-step="${table.step}" data-n="${n}">`,
    `<rect x="0" y="0" width="${width}" height="${height}" fill="#fff"/>`,
    `<text class="plot-title" x="4" y="15" font-size="12" font-weight="bold">${esc(title)}</text>`,
  ];
  agg.keyGroups.forEach((g, b) => {
    const x = labelW + b * cell + cell / 2, y = top + labelH - 4;
    parts.push(`<text transform="translate(${x},${y}) rotate(-55)" text-anchor="start">${esc(g)}</text>`);
  });
  agg.queryGroups.forEach((g, a) => {
    const y = top + labelH + a * cell;
    parts.push(`<text x="${labelW - 5}" y="${y + cell / 2 + 4}" text-anchor="end">${esc(g)}</text>`);
    agg.keyGroups.forEach((k, b) => {
      const m = table.mass[a][b], x = labelW + b * cell;
      const v = Number.isFinite(m.mean) ? m.mean : 0;
      parts.push(
        `<g data-query="${esc(g)}" data-key="${esc(k)}" data-mean="${m.mean}" data-low="${m.low}" data-high="${m.high}" data-n="${m.n}">` +
          `<rect x="${x}" y="${y}" width="${cell}" height="${cell}" fill="${m.n ? cellColour(v) : "#eee"}" stroke="#fff"/>` +
          `<text x="${x + cell / 2}" y="${y + cell / 2 + 3}" text-anchor="middle" font-size="9" fill="${v > 0.35 ? "#fff" : "#000"}">` +
          `${m.n ? num(v) : "–"}</text><title>${esc(`${g} → ${k}: ${intervalText(m)}`)}</title></g>`,
      );
    });
  });
  parts.push("</svg>");
  return parts.join("\n");
}

/** A cell's mean mass of each query group on the reference key groups over the blocks of one step, with its 95%
 * band; null when the cell has no reference key group or no table at `step`. */
export function aggregateToReferenceSvg(agg: FlowAggregate, step: number): string | null {
  const points = agg.toReference.filter((t) => t.step === step).sort((a, b) => a.blockIndex - b.blockIndex);
  if (!points.length || !agg.referenceKeys.length) return null;
  const label = agg.referenceKeys.join(" + ");
  const W = 600, H = 300, left = 48, right = 160, topM = 30, bottom = 36;
  const plotW = W - left - right, plotH = H - topM - bottom;
  const xMax = Math.max(1, ...points.map((t) => t.blockIndex));
  const px = (b: number) => left + (b / xMax) * plotW, py = (v: number) => topM + (1 - Math.min(1, Math.max(0, v))) * plotH;
  const title = `mass to ${label} · step ${step} · mean over ${agg.tasks.length} task${agg.tasks.length === 1 ? "" : "s"}, 95% band`;
  const parts = [
    `<svg xmlns="http://www.w3.org/2000/svg" class="agg-flow-line" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" ` +
    `font-family="sans-serif" font-size="11" role="img" aria-label="${esc(title)}" data-step="${step}">`,
    `<rect x="0" y="0" width="${W}" height="${H}" fill="#fff"/>`,
    `<text class="plot-title" x="4" y="16" font-size="13" font-weight="bold">${esc(title)}</text>`,
  ];
  for (const v of [0, 0.25, 0.5, 0.75, 1]) {
    parts.push(`<line x1="${left}" x2="${left + plotW}" y1="${num(py(v))}" y2="${num(py(v))}" stroke="${v ? "#ddd" : "#333"}"/>`);
    parts.push(`<text x="${left - 6}" y="${num(py(v) + 4)}" text-anchor="end">${v}</text>`);
  }
  const ticks = points.filter((_, i) => points.length <= 16 || i % Math.ceil(points.length / 16) === 0);
  for (const t of ticks) {
    parts.push(`<text x="${num(px(t.blockIndex))}" y="${H - bottom + 14}" text-anchor="middle">${t.blockIndex}</text>`);
  }
  parts.push(`<text x="${left + plotW / 2}" y="${H - 6}" text-anchor="middle">block</text>`);
  agg.queryGroups.forEach((g, a) => {
    const colour = PALETTE[a % PALETTE.length];
    const series = points.map((t) => ({ x: t.blockIndex, block: t.block, m: t.mass[a] })).filter((p) => p.m.n > 0);
    parts.push(`<g class="series" data-query="${esc(g)}">`);
    for (const d of bandPaths(series, px, py)) {
      parts.push(`<path class="band" d="${d}" fill="${colour}" fill-opacity="0.18" stroke="none"/>`);
    }
    const line = series.map((p, i) => `${i ? "L" : "M"}${num(px(p.x))},${num(py(p.m.mean))}`).join(" ");
    parts.push(`<path class="line" d="${line}" fill="none" stroke="${colour}" stroke-width="1.8"/>`);
    for (const p of series) {
      parts.push(
        `<circle cx="${num(px(p.x))}" cy="${num(py(p.m.mean))}" r="2.6" fill="${colour}" data-block="${esc(p.block)}" ` +
          `data-mean="${p.m.mean}" data-low="${p.m.low}" data-high="${p.m.high}" data-n="${p.m.n}">` +
          `<title>${esc(`${g} → ${label} at ${p.block}: ${intervalText(p.m)}`)}</title></circle>`,
      );
    }
    parts.push("</g>");
    const ly = topM + 10 + a * 16;
    parts.push(`<rect x="${left + plotW + 12}" y="${ly - 5}" width="18" height="10" fill="${colour}" fill-opacity="0.18"/>`);
    parts.push(`<line x1="${left + plotW + 12}" x2="${left + plotW + 30}" y1="${ly}" y2="${ly}" stroke="${colour}" stroke-width="2"/>`);
    parts.push(`<text x="${left + plotW + 34}" y="${ly + 4}">${esc(g)}</text>`);
  });
  parts.push("</svg>");
  return parts.join("\n");
}

/** A cell's attention-flow figures as HTML: at the first recorded step the mass to the reference over the blocks and
 * one heatmap per block; the other steps' figures collapsed. */
export function flowAggregateSection(agg: FlowAggregate): string {
  const steps = [...new Set(agg.tables.map((t) => t.step))].sort((a, b) => a - b);
  if (!steps.length) return `<p class="meta">No attention-flow tables in this cell.</p>`;
  const figuresAt = (step: number) => {
    const line = aggregateToReferenceSvg(agg, step);
    const maps = agg.tables.filter((t) => t.step === step).map((t) => `<div class="flow-heatmap">${aggregateHeatmapSvg(agg, t)}</div>`);
    return (line
      ? `<div class="flow-line">${line}</div>`
      : `<p class="meta">No key group is a reference group: no mass-to-reference plot.</p>`) +
      `\n<div class="small-multiples" style="display:flex;flex-wrap:wrap;gap:6px">${maps.join("\n")}</div>`;
  };
  const rest = steps.slice(1);
  return [
    `<div class="aggregate-flow"><h4>Attention flow (${esc(agg.forward)} forward), mean over ${agg.tasks.length} task(s)</h4>`,
    `<p class="meta">Cells: the mean over tasks of each task's mean-over-heads mass (rows: query groups, columns: key groups); ` +
    `hover a cell or point for its 95% interval (${esc(meanIntervalMethodText(agg.tasks.length))}) and n. Step ${
      steps[0]
    } (the first recorded)${rest.length ? `; steps ${rest.join(", ")} below` : ""}.</p>`,
    figuresAt(steps[0]),
    ...rest.map((s) => `<details class="other-step"><summary>step ${s}</summary>${figuresAt(s)}</details>`),
    `</div>`,
  ].join("\n");
}
