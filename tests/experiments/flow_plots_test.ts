import assert from "node:assert/strict";
import {
  attentionFlowFigures,
  attentionFlowSection,
  flowHeatmapSvg,
  flowToKeysSvg,
  parseAttentionFlowJson,
} from "../../experiments/flow_plots.ts";
import type { AttentionFlowJson } from "../../interventions/attention_flow.ts";

/** A flow of 2 heads, groups [text, image, ref[0]] → [text, ref[0]+ref[1], image], blocks 0, 3, 7 at steps 0 and 2. */
function sample(): AttentionFlowJson {
  const table = (block: string, blockIndex: number, step: number) => {
    const slice = (h: number) => [0, 1, 2].map((a) => [0.1 * (a + 1) + 0.01 * h, 0.05 * blockIndex + 0.01 * step, 0]);
    const mass = [slice(0), slice(1), slice(0).map((row, a) => row.map((v, b) => (v + slice(1)[a][b]) / 2))];
    for (const s of mass) for (const row of s) row[2] = 1 - row[0] - row[1];
    return { block, blockIndex, step, mass, tokens: null };
  };
  return {
    format: "kleinscope-attention-flow",
    version: 1,
    forward: "cond",
    totalHeads: 2,
    heads: [0, 1],
    sequenceLength: 100,
    uncoveredKeys: 0,
    queryGroups: [{ name: "text", tokens: 40 }, { name: "image", tokens: 30 }, { name: "ref[0]", tokens: 30 }],
    keyGroups: [{ name: "text", tokens: 40 }, { name: "ref[0]+ref[1]", tokens: 30 }, { name: "image", tokens: 30 }],
    tokenGroup: null,
    tables: [table("single.2", 7, 0), table("double.0", 0, 0), table("double.3", 3, 0), table("double.0", 0, 2)],
  };
}

const attr = (svg: string, name: string) => [...svg.matchAll(new RegExp(`${name}="([^"]*)"`, "g"))].map((m) => m[1]);

Deno.test("flow plots: heatmap cells carry the table's numbers; the reference line follows the blocks in order", () => {
  const flow = parseAttentionFlowJson(JSON.stringify(sample()));
  const heat = flowHeatmapSvg(flow, "double.3", 0);
  assert.equal(attr(heat, "data-mass").length, 9);
  assert.deepEqual(attr(heat, "data-mass").map(Number), flow.tables[2].mass[2].flat());
  assert.match(heat, /double\.3 · step 0 · mean over 2 heads/);
  assert.deepEqual(attr(flowHeatmapSvg(flow, "double.3", 0, 1), "data-mass").map(Number), flow.tables[2].mass[1].flat());
  assert.throws(() => flowHeatmapSvg(flow, "double.3", 0, 5), /head 5 was not kept/);
  assert.throws(() => flowHeatmapSvg(flow, "double.9", 0), /no table of block double.9 at step 0/);

  const line = flowToKeysSvg(flow, 0)!;
  // One line per query group, points in block order 0, 3, 7, the mass on the ref[0]+ref[1] column.
  assert.deepEqual(attr(line, "data-query"), ["text", "image", "ref[0]"]);
  assert.deepEqual(attr(line, "data-block").slice(0, 3), ["double.0", "double.3", "single.2"]);
  attr(line, "data-mass").slice(0, 3).map(Number).forEach((v, i) =>
    assert.ok(Math.abs(v - [0, 0.15, 0.35][i]) < 1e-12, `point ${i}: ${v}`)
  );
  assert.equal(flowToKeysSvg(flow, 0, { keys: (n) => n === "nothing" }), null);

  const figures = attentionFlowFigures(flow);
  assert.deepEqual(figures.heatmaps.map((f) => `${f.block}@${f.step}`), [
    "double.0@0",
    "double.0@2",
    "double.3@0",
    "single.2@0",
  ]);
  assert.deepEqual(figures.toReference.map((f) => f.step), [0, 2]);
  const html = attentionFlowSection(flow, "Flow <run a>");
  assert.match(html, /<h2>Flow &lt;run a&gt;<\/h2>/);
  assert.equal((html.match(/<svg /g) ?? []).length, 6);
});

Deno.test("flow plots: a malformed attention_flow.json is refused naming the field", () => {
  const good = sample();
  assert.throws(() => parseAttentionFlowJson("{", "x.json"), /x\.json: not valid JSON/);
  assert.throws(() => parseAttentionFlowJson(JSON.stringify({ ...good, format: "other" })), /format: expected "kleinscope-attention-flow"/);
  const bad = sample();
  bad.tables[1].mass[0].pop();
  assert.throws(() => parseAttentionFlowJson(JSON.stringify(bad)), /tables\[1\]\.mass: expected \[3\]\[3\]\[3\] numbers/);
});
