import assert from "node:assert/strict";
import { getGpu, type GpuContext } from "../../runtime/device.ts";
import { Graph } from "../../runtime/graph.ts";
import { Plan } from "../../runtime/executor.ts";
import { Rng } from "../../runtime/random.ts";
import { type AuditCase, formatAuditTable, relativeL2, runAuditCase } from "../../kernels/audit.ts";
import { attention, groupMaskBits, setAttentionGroupMask } from "../../kernels/attention.ts";
import {
  attentionFlow,
  attentionFlowKernel,
  attentionFlowOfNode,
  attentionFlowWorkgroupBytes,
  flowGroupIds,
  NO_FLOW_GROUP,
} from "../../kernels/attention_flow.ts";
import {
  attentionFlowAuditCases,
  attentionFlowCase,
  attentionFlowCaseSpecs,
  attentionFlowReference,
  groupIdsFromRuns,
} from "../../kernels/reference/attention_flow.ts";
import { copyRows } from "../../kernels/rows.ts";

const range = (start: number, end: number) => Array.from({ length: end - start }, (_, i) => start + i);

/** Run an audit case's graph once (outputs poisoned with NaN first) and return each output with its expectation. */
async function runCase(gpu: GpuContext, c: AuditCase): Promise<Map<string, { got: Float32Array; expected: Float64Array }>> {
  const g = new Graph();
  const { inputs, outputs } = c.build(g, new Rng(7));
  const plan = await Plan.compile(gpu, g, null, { label: "test:attention_flow" });
  try {
    for (const inp of inputs) plan.write(inp.name, inp.data);
    for (const out of outputs) plan.write(out.name, new Float32Array(g.elementCount(g.find(out.name)!)).fill(NaN));
    await plan.run();
    const result = new Map<string, { got: Float32Array; expected: Float64Array }>();
    for (const out of outputs) result.set(out.name, { got: await plan.read(out.name), expected: out.expected });
    return result;
  } finally {
    plan.destroy();
  }
}

Deno.test("attention flow: every audit case matches the float64 reference", async () => {
  const gpu = await getGpu();
  const results = [];
  for (const c of attentionFlowAuditCases) results.push(await runAuditCase(gpu, c));
  console.log(formatAuditTable(results));
  const failed = results.filter((r) => !r.pass);
  assert.equal(failed.length, 0, `failed: ${failed.map((r) => `${r.label} (rel L2 ${r.relL2})`).join("; ")}`);
});

Deno.test("attention flow: with key groups covering every key, rows and non-empty query groups sum to 1; empty groups are zeros", async () => {
  const gpu = await getGpu();
  // The cases whose key runs cover every key and whose masks leave every key visible to someone.
  const covering = attentionFlowCaseSpecs.filter((s) =>
    !s.causal && s.keyLength === undefined && s.keyRuns.reduce((n, [, len]) => n + len, 0) >= s.sk
  );
  assert.ok(covering.length >= 3, "expected at least three covering cases");
  let emptyGroups = 0;
  for (const spec of covering) {
    const out = await runCase(gpu, attentionFlowCase(spec));
    const { heads, sq, sk, queryGroupCount: gq, keyGroupCount: gk } = { ...spec };
    const rows = out.get("flow.rows")!.got, mass = out.get("flow.mass")!.got, counts = out.get("flow.counts")!.got;
    const ids = groupIdsFromRuns(sq, spec.queryRuns);
    for (let g = 0; g < gq; g++) assert.equal(counts[g], ids.filter((id) => id === g).length, `${spec.label}: count of group ${g}`);
    emptyGroups += counts.filter((c) => c === 0).length;
    for (let h = 0; h < heads; h++) {
      for (let i = 0; i < sq; i++) {
        let sum = 0;
        for (let g = 0; g < gk; g++) sum += rows[(h * sq + i) * gk + g];
        assert.ok(Math.abs(sum - 1) <= 1e-5, `${spec.label}: head ${h} row ${i} sums to ${sum}`);
      }
    }
    for (let h = 0; h <= heads; h++) {
      for (let g = 0; g < gq; g++) {
        const row = Array.from(mass.subarray((h * gq + g) * gk, (h * gq + g + 1) * gk));
        const sum = row.reduce((a, b) => a + b, 0);
        if (counts[g] > 0) {
          assert.ok(Math.abs(sum - 1) <= 1e-5, `${spec.label}: head ${h === heads ? "mean" : h} group ${g} sums to ${sum}`);
          assert.ok(row.every((x) => x >= 0), `${spec.label}: negative mass in head ${h} group ${g}`);
        } else {
          assert.deepEqual(row, new Array(gk).fill(0), `${spec.label}: empty group ${g} of head ${h} is not zeros`);
        }
      }
    }
    if (spec.tokenGroup !== undefined) {
      const tokens = out.get("flow.tokens")!.got;
      for (let h = 0; h <= heads; h++) {
        const sum = tokens.subarray(h * sk, (h + 1) * sk).reduce((a, b) => a + b, 0);
        assert.ok(Math.abs(sum - 1) <= 1e-5, `${spec.label}: per-key masses of head ${h} sum to ${sum}`);
      }
    }
  }
  assert.ok(emptyGroups >= 2, "the covering cases should include empty query groups");
});

Deno.test("attention flow: an empty token group gives zero per-key masses; knocked-out keys receive nothing", async () => {
  const gpu = await getGpu();
  const spec = {
    label: "D64 H2 S130 tokens of an empty group",
    sq: 130,
    sk: 130,
    heads: 2,
    headDim: 64,
    rules: [{ queries: range(0, 130), keys: range(100, 130) }],
    queryRuns: [[0, 60], [2, 70]] as [number, number][],
    keyRuns: [[0, 100], [1, 30]] as [number, number][],
    queryGroupCount: 3,
    keyGroupCount: 2,
    tokenGroup: 1,
  };
  const out = await runCase(gpu, attentionFlowCase(spec));
  const tokens = out.get("flow.tokens")!, mass = out.get("flow.mass")!, counts = out.get("flow.counts")!;
  assert.ok(tokens.got.every((x) => x === 0), "per-key masses of an empty group must be zeros");
  assert.equal(counts.got[1], 0);
  // Key group 1 is knocked out for every query: it receives no mass, group 0 all of it.
  for (let h = 0; h <= 2; h++) {
    for (const g of [0, 2]) {
      assert.ok(Math.abs(mass.got[(h * 3 + g) * 2] - 1) <= 1e-5, `head ${h} group ${g} → key group 0: ${mass.got[(h * 3 + g) * 2]}`);
      assert.equal(mass.got[(h * 3 + g) * 2 + 1], 0);
    }
  }
  assert.ok(relativeL2(mass.got, mass.expected) <= 1e-5);
});

Deno.test("attention flow: attached to an attention node, it reads the node's q, k, scale and knockout bits, and agrees with the node itself", async () => {
  const gpu = await getGpu();
  const S = 150, H = 2, D = 32, gk = 3;
  const rng = new Rng(11);
  const qd = rng.normalArray(S * H * D, 1.3), kd = rng.normalArray(S * H * D, 1.3);
  const keyRuns: [number, number][] = [[0, 40], [1, 45], [2, 65]];
  const keyIds = groupIdsFromRuns(S, keyRuns);
  const queryIds = groupIdsFromRuns(S, [[0, 40], [1, 110]]);
  // v is the one-hot key group in the first gk columns of every head: the attention output is then the mass of
  // each row on each key group, computed by the attention kernel itself.
  const vd = new Float32Array(S * H * D);
  for (let j = 0; j < S; j++) for (let h = 0; h < H; h++) vd[j * H * D + h * D + keyIds[j]] = 1;
  const bits = groupMaskBits(S, S, [{ queries: range(0, 40), keys: range(85, 150) }]);
  const scale = 0.21;

  const g = new Graph();
  const q = g.input("q", [S, H * D]), k = g.input("k", [S, H * D]), v = g.input("v", [S, H * D]);
  const out = g.state("out", [S, H * D]);
  attention(g, "blk.attn", { q, k, v, heads: H, kvHeads: H, headDim: D, scale, out });
  const after = g.state("after", [S, H * D]);
  copyRows(g, "blk.after", out, after, { srcRow: 0, dstRow: 0, rows: S });
  // The knockout rewrite first, then the flow: it must see the mask.
  const queryBits = g.input("queryBits", [S], "u32"), keyBits = g.input("keyBits", [S], "u32");
  setAttentionGroupMask(g, "blk.attn", { queryBits, keyBits });
  const flow = attentionFlowOfNode(g, "blk.attn", "blk.flow", {
    queryGroups: g.input("queryGroups", [S], "u32"),
    queryGroupCount: 2,
    keyGroups: g.input("keyGroups", [S], "u32"),
    keyGroupCount: gk,
    tokenGroup: 0,
  });
  assert.deepEqual(g.nodes.map((n) => n.name), [
    "blk.attn",
    "blk.flow.rows",
    "blk.flow.groups",
    "blk.flow.groups_mean",
    "blk.flow.tokens",
    "blk.flow.tokens_mean",
    "blk.after",
  ]);
  const plan = await Plan.compile(gpu, g, null, { label: "test:attention_flow_node" });
  try {
    for (const [name, data] of [["q", qd], ["k", kd], ["v", vd], ["queryBits", bits.queryBits], ["keyBits", bits.keyBits]] as const) {
      plan.write(name, data);
    }
    plan.write("queryGroups", queryIds);
    plan.write("keyGroups", keyIds);
    for (const name of ["out", "after", "blk.flow.rows", "blk.flow.mass", "blk.flow.tokens"]) {
      plan.write(name, new Float32Array(g.elementCount(g.find(name)!)).fill(NaN));
    }
    await plan.run();
    const rows = await plan.read(g.get(flow.rows).name);
    const expected = attentionFlowReference(qd, kd, {
      sq: S,
      sk: S,
      heads: H,
      kvHeads: H,
      headDim: D,
      scale,
      bits,
      queryGroups: queryIds,
      keyGroups: keyIds,
      queryGroupCount: 2,
      keyGroupCount: gk,
      tokenGroup: 0,
    });
    assert.ok(relativeL2(rows, expected.rows) <= 1e-5, `rows: rel L2 ${relativeL2(rows, expected.rows)}`);
    const mass = await plan.read("blk.flow.mass");
    assert.ok(relativeL2(mass, expected.mass) <= 1e-5, `mass: rel L2 ${relativeL2(mass, expected.mass)}`);
    const tokens = await plan.read("blk.flow.tokens");
    assert.ok(relativeL2(tokens, expected.tokens!) <= 1e-5, `tokens: rel L2 ${relativeL2(tokens, expected.tokens!)}`);
    // The attention node's own output with one-hot v.
    const attended = await plan.read("out");
    const fromNode = new Float32Array(H * S * gk);
    for (let h = 0; h < H; h++) {
      for (let i = 0; i < S; i++) for (let c = 0; c < gk; c++) fromNode[(h * S + i) * gk + c] = attended[i * H * D + h * D + c];
    }
    assert.ok(relativeL2(rows, fromNode) <= 1e-5, `rows vs the attention node: rel L2 ${relativeL2(rows, fromNode)}`);
    // The knockout holds: queries [0, 40) put no mass on keys [85, 150) (key group 2 and part of group 1).
    for (let h = 0; h < H; h++) for (let i = 0; i < 40; i++) assert.equal(rows[(h * S + i) * gk + 2], 0);
  } finally {
    plan.destroy();
  }
});

Deno.test("attention flow: bad arguments are refused with the flow's name", () => {
  const g = new Graph();
  const q = g.input("q", [20, 64]), k = g.input("k", [20, 64]);
  const ids = g.input("ids", [20], "u32"), short = g.input("short", [19], "u32"), f32Ids = g.input("f32ids", [20]);
  const base = { q, k, heads: 2, headDim: 32, queryGroups: ids, keyGroups: ids, queryGroupCount: 3, keyGroupCount: 3 };
  assert.throws(() => attentionFlow(g, "f1", { ...base, keyGroupCount: 17 }), /f1: keyGroupCount must be an integer in \[1, 16\], got 17/);
  assert.throws(() => attentionFlow(g, "f2", { ...base, queryGroupCount: 0 }), /f2: queryGroupCount/);
  assert.throws(() => attentionFlow(g, "f3", { ...base, tokenGroup: 3 }), /f3: tokenGroup must be a query group in \[0, 3\), got 3/);
  assert.throws(() => attentionFlow(g, "f4", { ...base, queryGroups: short }), /f4: queryGroups short must be u32 with 20 elements/);
  assert.throws(() => attentionFlow(g, "f5", { ...base, keyGroups: f32Ids }), /f5: keyGroups f32ids must be u32/);
  assert.throws(() => attentionFlow(g, "f6", { ...base, headDim: 16 }), /f6: q q must be f32 \[tokens, 32\]/);
  assert.throws(() => attentionFlow(g, "f7", { ...base, keyLength: 21 }), /f7: keyLength must be an integer in \[1, 20\]/);
  assert.throws(() => attentionFlow(g, "f8", { ...base, heads: 2, kvHeads: 3 }), /f8: heads \(2\) must be a multiple of kvHeads \(3\)/);
  copyRows(g, "copy", q, g.state("dst", [20, 64]), { srcRow: 0, dstRow: 0, rows: 20 });
  const groups = { queryGroups: ids, keyGroups: ids, queryGroupCount: 3, keyGroupCount: 3 };
  assert.throws(() => attentionFlowOfNode(g, "nope", "f9", groups), /f9: no node named nope/);
  assert.throws(() => attentionFlowOfNode(g, "copy", "f10", groups), /f10: node copy is a rows_\w+ node, not attention/);
  assert.equal(g.nodes.length, 1, "a refused flow adds no node");
});

Deno.test("attention flow: group ids from token lists refuse overlaps, bad indices and too many groups", () => {
  const ids = flowGroupIds(6, [[0, 2], [1], [], [5]]);
  assert.deepEqual(Array.from(ids), [0, 1, 0, NO_FLOW_GROUP, NO_FLOW_GROUP, 3]);
  assert.throws(() => flowGroupIds(6, [[0, 1], [1]]), /token 1 is in groups 0 and 1/);
  assert.throws(() => flowGroupIds(6, [[6]]), /group 0 lists token 6, outside \[0, 6\)/);
  assert.throws(() => flowGroupIds(6, Array.from({ length: 17 }, () => [])), /17 groups given, expected 1 to 16/);
});

Deno.test("attention flow: workgroup memory fits 32 KiB and the kernel declares its bindings", () => {
  for (const d of [12, 32, 128, 256]) {
    assert.ok(attentionFlowWorkgroupBytes(d) <= 32768, `head dim ${d}: ${attentionFlowWorkgroupBytes(d)} bytes`);
  }
  assert.equal(attentionFlowKernel.bindings.length, 10);
});
