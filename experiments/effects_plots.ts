// Figures of an intervention's effects (effects.json, written by studies/outputs.ts) as standalone SVG text: the
// change of each row group over the blocks at one step (the intervention solid, the control dashed), a block × step
// map of one group's change, and the attention-flow change as a diverging heatmap per block and step. No library and
// no script; every point and cell carries a <title> (hover text) and data- attributes, so a page and its tests can
// read the numbers back. A cell's mean over tasks (aggregate.ts) gets the same line plot with 95% bands.

import type { EffectsAggregate, EffectsAggregatePoint } from "./aggregate.ts";
import { bandPaths } from "./flow_plots.ts";
import { type MeanInterval, meanIntervalMethodText } from "./stats.ts";
import type { EffectRecord, EffectsJson, FlowChange, RowStats, RunEffectsJson } from "../studies/effects.ts";
import { EFFECTS_FORMAT } from "../studies/effects.ts";
import { parseOutputJson } from "./files.ts";
import { printable } from "../runtime/printable.ts";
import { PALETTE } from "./svg_plot.ts";

const esc = (s: string) => s.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]!);
const num = (v: number) => Number(v.toFixed(2)).toString();

export type EffectStat = keyof RowStats;
const STAT_LABEL: Record<EffectStat, string> = {
  relL2: "relative L2 change",
  cosine: "cosine (flattened)",
  rowCosine: "mean row cosine",
};
export type EffectsRun = "intervention" | "control";

/** Read effects.json text, checking what the figures rely on (format, blocks, steps, groups, records, flow tables);
 * errors name the file and the field. */
export function parseEffectsJson(text: string, where = "effects.json"): EffectsJson {
  const { raw, fail } = parseOutputJson(text, where, EFFECTS_FORMAT, 1);
  const isObj = (v: unknown): v is Record<string, unknown> => !!v && typeof v === "object" && !Array.isArray(v);
  const j = raw as unknown as EffectsJson;
  if (!Array.isArray(j.blocks) || j.blocks.some((b) => typeof b !== "string")) fail("blocks", "expected a list of block names");
  if (!Array.isArray(j.steps) || j.steps.some((s) => !Number.isInteger(s))) fail("steps", "expected a list of step indices");
  const groupNames = ["text", "image", "ref"];
  if (
    !Array.isArray(j.groups) ||
    j.groups.some((g) => !groupNames.includes(g?.name) || (g.tap !== "txt" && g.tap !== "img") || !Number.isInteger(g.rows))
  ) {
    fail("groups", "expected a list of {name: text|image|ref, tap: txt|img, rows}");
  }
  const statsOk = (s: unknown) =>
    isObj(s) && (s.relL2 === null || Number.isFinite(s.relL2)) && Number.isFinite(s.cosine) && Number.isFinite(s.rowCosine);
  const checkRun = (r: RunEffectsJson, field: string) => {
    if (!isObj(r)) fail(field, "expected an object");
    if (!Array.isArray(r.records)) fail(`${field}.records`, "expected a list");
    r.records.forEach((rec, i) => {
      const f = `${field}.records[${i}]`;
      if (typeof rec?.block !== "string" || !Number.isInteger(rec.blockIndex) || !Number.isInteger(rec.step)) {
        fail(f, "expected block, blockIndex and step");
      }
      for (const g of j.groups) {
        if (!statsOk(rec[g.name as keyof EffectRecord])) fail(`${f}.${g.name}`, "expected {relL2, cosine, rowCosine}");
      }
    });
    if (!isObj(r.final) || !statsOk(r.final.latents) || !Number.isFinite(r.final.imageMeanAbsDiff255)) {
      fail(`${field}.final`, "expected {latents: {relL2, cosine, rowCosine}, imageMeanAbsDiff255}");
    }
    const flow = r.attentionFlow;
    if (flow !== null) {
      if (!isObj(flow) || !Array.isArray(flow.queryGroups) || !Array.isArray(flow.keyGroups) || !Array.isArray(flow.tables)) {
        fail(`${field}.attentionFlow`, "expected null or {queryGroups, keyGroups, tables}");
      }
      const gq = flow.queryGroups.length, gk = flow.keyGroups.length;
      const matrix = (m: unknown) =>
        Array.isArray(m) && m.length === gq && m.every((row) => Array.isArray(row) && row.length === gk && row.every(Number.isFinite));
      flow.tables.forEach((t, i) => {
        if (typeof t?.block !== "string" || !Number.isInteger(t.step) || !matrix(t.run) || !matrix(t.baseline) || !matrix(t.delta)) {
          fail(`${field}.attentionFlow.tables[${i}]`, `expected block, step and run, baseline, delta as [${gq}][${gk}] numbers`);
        }
      });
    }
  };
  checkRun(j.intervention, "intervention");
  if (j.control !== null) {
    checkRun(j.control, "control");
    if (!Number.isInteger(j.control.seed) || !Array.isArray(j.control.settings)) fail("control", "expected seed and settings");
  }
  return j;
}

function runOf(json: EffectsJson, run: EffectsRun): RunEffectsJson {
  const r = run === "intervention" ? json.intervention : json.control;
  if (!r) throw new Error(`effects: this file has no control run`);
  return r;
}

/** One statistic of each group over the blocks at one step: x = block (in the file's order), one colour per group,
 * the intervention solid and the control (when there is one) dashed. */
export function effectsVsBlockSvg(json: EffectsJson, step: number, stat: EffectStat = "relL2"): string {
  if (!json.steps.includes(step)) throw new Error(`effects: step ${step} was not compared (steps: ${json.steps.join(", ")})`);
  const runs: EffectsRun[] = json.control ? ["intervention", "control"] : ["intervention"];
  const series = runs.flatMap((run) =>
    json.groups.map((g, gi) => ({
      run,
      group: g.name,
      colour: PALETTE[gi % PALETTE.length],
      points: runOf(json, run).records.filter((r) => r.step === step).map((r) => ({
        x: json.blocks.indexOf(r.block),
        block: r.block,
        v: (r[g.name as keyof EffectRecord] as RowStats)[stat],
      })).filter((p): p is { x: number; block: string; v: number } => p.x >= 0 && p.v !== null).sort((a, b) => a.x - b.x),
    }))
  );
  const values = series.flatMap((s) => s.points.map((p) => p.v));
  // relL2 from 0 up; cosines down from 1.
  let lo = 0, hi = 1;
  if (stat === "relL2") hi = niceCeiling(Math.max(1e-6, ...values));
  else lo = Math.min(0.9, Math.floor(Math.min(1, ...values) * 20) / 20);
  const W = 600, H = 300, left = 56, right = 170, top = 30, bottom = 56;
  const pw = W - left - right, ph = H - top - bottom;
  const xMax = Math.max(1, json.blocks.length - 1);
  const px = (x: number) => left + (x / xMax) * pw, py = (v: number) => top + (1 - (v - lo) / (hi - lo)) * ph;
  const parts = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" ` +
    `font-size="11" data-step="${step}" data-stat="${stat}">`,
    `<rect x="0" y="0" width="${W}" height="${H}" fill="#fff"/>`,
    `<text x="4" y="16" font-size="13" font-weight="bold">${esc(`${STAT_LABEL[stat]} against the baseline · step ${step}`)}</text>`,
  ];
  for (let i = 0; i <= 4; i++) {
    const v = lo + ((hi - lo) * i) / 4;
    parts.push(`<line x1="${left}" x2="${left + pw}" y1="${num(py(v))}" y2="${num(py(v))}" stroke="${i ? "#e3e3e3" : "#333"}"/>`);
    parts.push(`<text x="${left - 6}" y="${num(py(v) + 4)}" text-anchor="end">${Number(v.toPrecision(3))}</text>`);
  }
  const every = Math.ceil(json.blocks.length / 16);
  json.blocks.forEach((b, x) => {
    if (x % every) return;
    parts.push(`<text transform="translate(${num(px(x))},${H - bottom + 12}) rotate(40)" text-anchor="start">${esc(b)}</text>`);
  });
  series.forEach((s, si) => {
    if (!s.points.length) return;
    const dash = s.run === "control" ? ` stroke-dasharray="5,3"` : "";
    const path = s.points.map((p, i) => `${i ? "L" : "M"}${num(px(p.x))},${num(py(p.v))}`).join(" ");
    parts.push(
      `<g data-run="${s.run}" data-group="${s.group}"><path d="${path}" fill="none" stroke="${s.colour}" stroke-width="1.8"${dash}/>`,
    );
    for (const p of s.points) {
      parts.push(
        `<circle cx="${num(px(p.x))}" cy="${num(py(p.v))}" r="2.6" fill="${s.colour}" data-block="${esc(p.block)}" data-value="${p.v}">` +
          `<title>${esc(`${s.run}, ${s.group} at ${p.block}: ${STAT_LABEL[stat]} ${p.v.toPrecision(4)}`)}</title></circle>`,
      );
    }
    parts.push("</g>");
    const ly = top + 10 + si * 16;
    parts.push(`<line x1="${left + pw + 12}" x2="${left + pw + 32}" y1="${ly}" y2="${ly}" stroke="${s.colour}" stroke-width="2"${dash}/>`);
    parts.push(`<text x="${left + pw + 36}" y="${ly + 4}">${esc(`${s.group} (${s.run})`)}</text>`);
  });
  parts.push("</svg>");
  return parts.join("\n");
}

/** 1, 2 or 5 times a power of ten, at least `v`. */
function niceCeiling(v: number): number {
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

/** White → dark red for 0 → `max`. */
function changeColour(v: number, max: number): string {
  const t = max > 0 ? Math.min(1, Math.max(0, v / max)) : 0;
  const [a, b] = [[255, 245, 240], [103, 0, 13]];
  return `rgb(${a.map((x, i) => Math.round(x + (b[i] - x) * Math.sqrt(t))).join(",")})`;
}

/** Blue (negative) → white → red (positive), symmetric around 0 with |v| ≤ `max`. */
function divergingColour(v: number, max: number): string {
  const t = max > 0 ? Math.min(1, Math.abs(v) / max) : 0;
  const end = v < 0 ? [33, 102, 172] : [178, 24, 43];
  return `rgb(${end.map((x) => Math.round(255 + (x - 255) * Math.sqrt(t))).join(",")})`;
}

/** The relative L2 change of one group of one run as a map: rows are blocks, columns steps. */
export function effectsMapSvg(json: EffectsJson, run: EffectsRun, group: string): string {
  if (!json.groups.some((g) => g.name === group)) throw new Error(`effects: no group ${printable(group)} in this file`);
  const records = runOf(json, run).records;
  const value = (block: string, step: number) =>
    (records.find((r) => r.block === block && r.step === step)?.[group as keyof EffectRecord] as RowStats | undefined)?.relL2 ?? null;
  const max = Math.max(0, ...records.map((r) => (r[group as keyof EffectRecord] as RowStats | undefined)?.relL2 ?? 0));
  const cellW = 46, cellH = 18, labelW = 80, top = 44;
  const W = labelW + json.steps.length * cellW + 10, H = top + json.blocks.length * cellH + 10;
  const parts = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" ` +
    `font-size="10" data-run="${run}" data-group="${esc(group)}">`,
    `<text x="4" y="14" font-size="12" font-weight="bold">${esc(`${run}: ${group} rel L2`)}</text>`,
  ];
  json.steps.forEach((s, c) =>
    parts.push(`<text x="${labelW + c * cellW + cellW / 2}" y="${top - 6}" text-anchor="middle">step ${s}</text>`)
  );
  json.blocks.forEach((b, r) => {
    const y = top + r * cellH;
    parts.push(`<text x="${labelW - 6}" y="${y + cellH / 2 + 4}" text-anchor="end">${esc(b)}</text>`);
    json.steps.forEach((s, c) => {
      const v = value(b, s), x = labelW + c * cellW;
      const fill = v === null ? "#eee" : changeColour(v, max);
      const shown = v === null ? "–" : Number(v.toPrecision(2)).toString();
      parts.push(
        `<g data-block="${esc(b)}" data-step="${s}" data-value="${v}"><rect x="${x}" y="${y}" width="${cellW}" height="${cellH}" ` +
          `fill="${fill}" stroke="#fff"/><text x="${x + cellW / 2}" y="${y + cellH / 2 + 4}" text-anchor="middle" ` +
          `fill="${v !== null && max > 0 && v / max > 0.45 ? "#fff" : "#000"}">${shown}</text>` +
          `<title>${esc(`${b}, step ${s}: ${v === null ? "undefined" : v.toPrecision(4)}`)}</title></g>`,
      );
    });
  });
  parts.push("</svg>");
  return parts.join("\n");
}

/** The attention-flow change (run − baseline, mean over heads) of one block and step: rows query groups, columns key
 * groups, blue where the run puts less mass than the baseline, red where more. */
export function flowChangeSvg(json: EffectsJson, run: EffectsRun, block: string, step: number): string {
  const flow: FlowChange | null = runOf(json, run).attentionFlow;
  if (!flow) throw new Error(`effects: the ${run} run has no attention-flow change (the spec asked for no attention flow)`);
  const table = flow.tables.find((t) => t.block === block && t.step === step);
  if (!table) throw new Error(`effects: no attention-flow change of block ${printable(block)} at step ${step}`);
  const max = Math.max(1e-9, ...table.delta.flat().map(Math.abs));
  const cell = 44, labelW = 150, labelH = 96, top = 28;
  const gq = flow.queryGroups.length, gk = flow.keyGroups.length;
  const W = labelW + gk * cell + 10, H = top + labelH + gq * cell + 10;
  const parts = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" ` +
    `font-size="11" data-run="${run}" data-block="${esc(block)}" data-step="${step}">`,
    `<text x="4" y="16" font-size="13" font-weight="bold">${esc(`${run} − baseline · ${block} · step ${step}`)}</text>`,
  ];
  flow.keyGroups.forEach((g, b) => {
    const x = labelW + b * cell + cell / 2, y = top + labelH - 4;
    parts.push(`<text transform="translate(${x},${y}) rotate(-55)" text-anchor="start">${esc(g.name)}</text>`);
  });
  flow.queryGroups.forEach((g, a) => {
    const y = top + labelH + a * cell;
    parts.push(`<text x="${labelW - 6}" y="${y + cell / 2 + 4}" text-anchor="end">${esc(g.name)} (${g.tokens})</text>`);
    flow.keyGroups.forEach((k, b) => {
      const d = table.delta[a][b], x = labelW + b * cell;
      parts.push(
        `<g data-query="${esc(g.name)}" data-key="${esc(k.name)}" data-delta="${d}">` +
          `<rect x="${x}" y="${y}" width="${cell}" height="${cell}" fill="${divergingColour(d, max)}" stroke="#fff"/>` +
          `<text x="${x + cell / 2}" y="${y + cell / 2 + 4}" text-anchor="middle" fill="${Math.abs(d) / max > 0.5 ? "#fff" : "#000"}">` +
          `${Number(d.toFixed(2)) === 0 ? "0" : d.toFixed(2)}</text>` +
          `<title>${
            esc(
              `${g.name} → ${k.name}: ${table.baseline[a][b].toFixed(4)} → ${table.run[a][b].toFixed(4)} (${d >= 0 ? "+" : ""}${
                d.toFixed(4)
              })`,
            )
          }</title></g>`,
      );
    });
  });
  parts.push("</svg>");
  return parts.join("\n");
}

export interface EffectsFigures {
  /** Per step and statistic, every group over the blocks (intervention and control). */
  vsBlock: { step: number; stat: EffectStat; svg: string }[];
  /** Per run and group, the relative L2 change over blocks × steps. */
  maps: { run: EffectsRun; group: string; svg: string }[];
  /** Per run, block and step with an attention flow, the change of the group tables. */
  flow: { run: EffectsRun; block: string; step: number; svg: string }[];
}

/** Every figure of an effects file. */
export function effectsFigures(json: EffectsJson): EffectsFigures {
  const runs: EffectsRun[] = json.control ? ["intervention", "control"] : ["intervention"];
  return {
    vsBlock: json.steps.flatMap((step) =>
      (["relL2", "rowCosine"] as const).map((stat) => ({ step, stat, svg: effectsVsBlockSvg(json, step, stat) }))
    ),
    maps: runs.flatMap((run) => json.groups.map((g) => ({ run, group: g.name, svg: effectsMapSvg(json, run, g.name) }))),
    flow: runs.flatMap((run) =>
      (runOf(json, run).attentionFlow?.tables ?? []).map((t) => ({
        run,
        block: t.block,
        step: t.step,
        svg: flowChangeSvg(json, run, t.block, t.step),
      }))
    ),
  };
}

/** An HTML section with every figure of an effects file (for a report page; `heading` is escaped). */
export function effectsSection(json: EffectsJson, heading = "Intervention effects against the baseline"): string {
  const f = effectsFigures(json);
  const fin = (run: EffectsRun) => {
    const r = runOf(json, run).final;
    return `${run}: final latents rel L2 ${r.latents.relL2?.toPrecision(3) ?? "–"}, image mean |Δ| ${
      r.imageMeanAbsDiff255.toFixed(2)
    } of 255`;
  };
  const control = json.control
    ? `<p>Control (seed ${json.control.seed}): ${esc(json.control.rule)}. Settings: ${
      json.control.settings.map((s) => `${esc(s.original)} → ${s.queries} of ${s.pool} text[pad] positions`).join("; ")
    }.</p>`
    : "";
  return [
    `<section class="effects"><h2>${esc(heading)}</h2>`,
    `<p>Baseline: ${esc(json.baseline.description)}. Rows of the ${json.forward} forward; groups: ${
      json.groups.map((g) => `${esc(g.name)} (${g.rows} rows of .${g.tap})`).join(", ")
    }. ${esc(fin("intervention"))}${json.control ? `; ${esc(fin("control"))}` : ""}.</p>`,
    control,
    `<div style="display:flex;flex-wrap:wrap;gap:8px">`,
    ...f.vsBlock.map((x) => `<div class="effects-line">${x.svg}</div>`),
    ...f.maps.map((x) => `<div class="effects-map">${x.svg}</div>`),
    ...f.flow.map((x) => `<div class="effects-flow">${x.svg}</div>`),
    `</div></section>`,
  ].join("\n");
}

// ---- a cell's mean over tasks (aggregate.ts) --------------------------------------------------------------------------

export type AggregateEffectStat = "relL2" | "cosine";

/** A cell's mean of one statistic of each row group over the blocks at one step, with its 95% band: the intervention
 * solid, the control (when the cell's tasks have one) dashed with a lighter band. x = the cell's blocks in order. */
export function aggregateEffectsVsBlockSvg(agg: EffectsAggregate, step: number, stat: AggregateEffectStat = "relL2"): string {
  const here = agg.points.filter((p) => p.step === step);
  if (!here.length) throw new Error(`effects aggregate ${printable(agg.condition)} · ${printable(agg.family)}: no points at step ${step}`);
  const blocks = [...new Map(agg.points.map((p) => [p.blockIndex, p.block])).entries()].sort((a, b) => a[0] - b[0]);
  const xOf = new Map(blocks.map(([index], x) => [index, x]));
  const runs = (["intervention", "control"] as const).filter((run) => here.some((p) => p.run === run));
  const series = runs.flatMap((run) =>
    agg.groups.map((group, gi) => ({
      run,
      group,
      colour: PALETTE[gi % PALETTE.length],
      points: here.filter((p) => p.run === run && p.group === group && p[stat].n > 0)
        .map((p) => ({ x: xOf.get(p.blockIndex)!, p, m: p[stat] as MeanInterval }))
        .sort((a, b) => a.x - b.x),
    }))
  );
  const values = series.flatMap((s) => s.points.flatMap((p) => [p.m.mean, p.m.low, p.m.high])).filter(Number.isFinite);
  let lo = 0, hi = 1;
  if (stat === "relL2") hi = niceCeiling(Math.max(1e-6, ...values));
  else lo = Math.max(-1, Math.min(0.9, Math.floor(Math.min(1, ...values) * 20) / 20));
  const W = 620, H = 300, left = 56, right = 190, top = 30, bottom = 56;
  const pw = W - left - right, ph = H - top - bottom;
  const xMax = Math.max(1, blocks.length - 1);
  const px = (x: number) => left + (x / xMax) * pw;
  const py = (v: number) => top + (1 - (Math.min(hi, Math.max(lo, v)) - lo) / (hi - lo)) * ph;
  const n = Math.max(0, ...here.map((p) => p[stat].n));
  const title = `${STAT_LABEL[stat]} against the baseline · step ${step} · mean over ${n} task${n === 1 ? "" : "s"}, 95% band`;
  const parts = [
    `<svg xmlns="http://www.w3.org/2000/svg" class="agg-effects-line" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" ` +
    `font-family="sans-serif" font-size="11" role="img" aria-label="${esc(title)}" data-step="${step}" data-stat="${stat}">`,
    `<rect x="0" y="0" width="${W}" height="${H}" fill="#fff"/>`,
    `<text class="plot-title" x="4" y="16" font-size="13" font-weight="bold">${esc(title)}</text>`,
  ];
  for (let i = 0; i <= 4; i++) {
    const v = lo + ((hi - lo) * i) / 4;
    parts.push(`<line x1="${left}" x2="${left + pw}" y1="${num(py(v))}" y2="${num(py(v))}" stroke="${i ? "#e3e3e3" : "#333"}"/>`);
    parts.push(`<text x="${left - 6}" y="${num(py(v) + 4)}" text-anchor="end">${Number(v.toPrecision(3))}</text>`);
  }
  const every = Math.ceil(blocks.length / 16);
  blocks.forEach(([, b], x) => {
    if (x % every) return;
    parts.push(`<text transform="translate(${num(px(x))},${H - bottom + 12}) rotate(40)" text-anchor="start">${esc(b)}</text>`);
  });
  series.forEach((s, si) => {
    if (!s.points.length) return;
    const control = s.run === "control";
    const dash = control ? ` stroke-dasharray="5,3"` : "";
    parts.push(`<g class="series" data-run="${s.run}" data-group="${esc(s.group)}">`);
    for (const d of bandPaths(s.points, px, py)) {
      parts.push(`<path class="band" d="${d}" fill="${s.colour}" fill-opacity="${control ? 0.09 : 0.18}" stroke="none"/>`);
    }
    const line = s.points.map((p, i) => `${i ? "L" : "M"}${num(px(p.x))},${num(py(p.m.mean))}`).join(" ");
    parts.push(`<path class="line" d="${line}" fill="none" stroke="${s.colour}" stroke-width="1.8"${dash}/>`);
    for (const { x, p, m } of s.points) parts.push(pointSvg(px(x), py(m.mean), s.colour, p, m, stat));
    parts.push("</g>");
    const ly = top + 10 + si * 16;
    parts.push(`<line x1="${left + pw + 12}" x2="${left + pw + 32}" y1="${ly}" y2="${ly}" stroke="${s.colour}" stroke-width="2"${dash}/>`);
    parts.push(`<text x="${left + pw + 36}" y="${ly + 4}">${esc(`${s.group} (${s.run})`)}</text>`);
  });
  parts.push("</svg>");
  return parts.join("\n");
}

function pointSvg(x: number, y: number, colour: string, p: EffectsAggregatePoint, m: MeanInterval, stat: AggregateEffectStat): string {
  const interval = Number.isFinite(m.low) ? `95% ${m.low.toPrecision(4)} – ${m.high.toPrecision(4)}` : "no interval: n = 1";
  const undefinedNote = stat === "relL2" && p.relL2Undefined ? `; ${p.relL2Undefined} undefined left out` : "";
  return `<circle cx="${num(x)}" cy="${num(y)}" r="2.6" fill="${colour}" data-block="${esc(p.block)}" data-mean="${m.mean}" ` +
    `data-low="${m.low}" data-high="${m.high}" data-n="${m.n}"><title>${
      esc(`${p.run}, ${p.group} at ${p.block}: ${STAT_LABEL[stat]} ${m.mean.toPrecision(4)} (${interval}), n = ${m.n}${undefinedNote}`)
    }</title></circle>`;
}

/** A cell's effects figures as HTML: relL2 over the blocks at the first compared step (the cosine and the other steps
 * collapsed). */
export function effectsAggregateSection(agg: EffectsAggregate): string {
  const steps = [...new Set(agg.points.map((p) => p.step))].sort((a, b) => a - b);
  if (!steps.length) return `<p class="meta">No effects records in this cell.</p>`;
  const undefinedRelL2 = agg.points.reduce((a, p) => a + p.relL2Undefined, 0);
  const more = [
    ...steps.slice(1).map((s) => ({ label: `relL2, step ${s}`, svg: aggregateEffectsVsBlockSvg(agg, s, "relL2") })),
    ...steps.map((s) => ({ label: `cosine, step ${s}`, svg: aggregateEffectsVsBlockSvg(agg, s, "cosine") })),
  ];
  return [
    `<div class="aggregate-effects"><h4>Effects against the baseline, mean over ${agg.tasks.length} task(s)` +
    `${agg.controlTasks ? ` (${agg.controlTasks} with a control)` : ""}</h4>`,
    `<p class="meta">Intervention solid, control dashed; bands: the 95% interval of the mean (${
      esc(meanIntervalMethodText(agg.tasks.length))
    }). Step ${steps[0]} (the first compared).` +
    (undefinedRelL2 ? ` ${undefinedRelL2} undefined relL2 value(s) (all-zero baseline rows) left out of their points' n.` : "") + `</p>`,
    `<div class="effects-line">${aggregateEffectsVsBlockSvg(agg, steps[0], "relL2")}</div>`,
    `<details class="other-step"><summary>${more.map((m) => m.label).join(" · ")}</summary>` +
    `<div style="display:flex;flex-wrap:wrap;gap:8px">${
      more.map((m) => `<div class="effects-line">${m.svg}</div>`).join("\n")
    }</div></details>`,
    `</div>`,
  ].join("\n");
}
