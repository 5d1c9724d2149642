// The attention flow (kernels/attention_flow.ts) against the attention node it describes, at the 9B joint-attention
// shape at 1024² with one reference (32 heads × 128, S = 8704: text 512 = scaffold 9 + content 20 + scaffold 11 +
// pad 472, image 4096, ref 4096) under a knockout "ref->text[padding]". One plan holds the attention node and the flow
// (five query and key groups, per-key masses of text[content]) repeated back to back; after a check against float64
// (sampled rows, the per-key masses of text[content] in full, sums of 1) and warm-up runs, one profiled run gives each
// dispatch's time from GPU timestamps, and the medians over the repetitions are reported per pass.
//
//   deno run -A bench/attention_flow.ts            the 9B shape (a GPU)
//   deno run -A bench/attention_flow.ts --small    S = 640, 2 heads (a software adapter)
//   --runs N (default 5: repetitions in the timed plan)   --token-group image (per-key masses of a large group)
//   --json PATH (write the measurements)

import { parseArgs } from "node:util";
import { getGpu } from "../runtime/device.ts";
import { Graph } from "../runtime/graph.ts";
import { Plan } from "../runtime/executor.ts";
import { applyDeviceTuning } from "../kernels/tuning.ts";
import { attention, fullyMaskedQueries, groupMaskBits } from "../kernels/attention.ts";
import { attentionFlow, flowGroupIds } from "../kernels/attention_flow.ts";
import { attentionFlowReference } from "../kernels/reference/attention_flow.ts";
import { fillUniform, formatMs, formatTable, median } from "./common.ts";
import { relativeL2 } from "../kernels/audit.ts";

const { values: opts } = parseArgs({
  args: Deno.args,
  options: {
    small: { type: "boolean", default: false },
    runs: { type: "string", default: "5" },
    "token-group": { type: "string", default: "text[content]" },
    json: { type: "string" },
  },
});
const runs = Number(opts.runs);
if (!Number.isInteger(runs) || runs < 1) throw new Error(`--runs must be a positive integer, got ${opts.runs}`);

const range = (a: number, b: number) => Array.from({ length: b - a }, (_, i) => a + i);

// Layout: [text ; image ; ref], text = scaffold [0, 9) + content [9, 29) + scaffold [29, 40) + pad.
const heads = opts.small ? 2 : 32, headDim = 128;
const seq = opts.small ? 640 : 8704;
const text = opts.small ? 64 : 512;
const image = (seq - text) / 2;
const groupNames = ["text[content]", "text[scaffold]", "text[pad]", "image", "ref"];
const groupLists = [range(9, 29), [...range(0, 9), ...range(29, 40)], range(40, text), range(text, text + image), range(text + image, seq)];
const tokenGroup = groupNames.indexOf(opts["token-group"]!);
if (tokenGroup < 0) throw new Error(`--token-group must be one of ${groupNames.join(", ")}, got ${opts["token-group"]}`);
const ids = flowGroupIds(seq, groupLists);
// ref->text[padding]: scaffold and pad queries may not read ref keys.
const bits = groupMaskBits(seq, seq, [{ queries: [...groupLists[1], ...groupLists[2]], keys: groupLists[4] }]);
if (fullyMaskedQueries(seq, seq, { bits }).length) throw new Error("the knockout leaves a query with no key");

const cols = heads * headDim;
const gpu = await getGpu({ maxBufferSize: seq * cols * 4, maxStorageBufferBindingSize: seq * cols * 4 });
await applyDeviceTuning(gpu);
console.log(`device: ${gpu.adapterDescription} (timestamps ${gpu.hasTimestamps})`);
console.log(`H${heads} D${headDim} S${seq}, ref->text[padding], per-key masses of ${groupNames[tokenGroup]}, ${runs} repetitions`);

const g = new Graph();
const q = g.input("q", [seq, cols]), k = g.input("k", [seq, cols]), v = g.input("v", [seq, cols]);
const groupMask = { queryBits: g.input("queryBits", [seq], "u32"), keyBits: g.input("keyBits", [seq], "u32") };
const groupIds = g.input("groups", [seq], "u32");
const out = g.state("out", [seq, cols]);
for (let i = 0; i < runs; i++) {
  attention(g, `attn.${i}`, { q, k, v, heads, kvHeads: heads, headDim, groupMask, out });
  attentionFlow(g, `flow.${i}`, {
    q,
    k,
    heads,
    headDim,
    groupMask,
    queryGroups: groupIds,
    keyGroups: groupIds,
    queryGroupCount: groupNames.length,
    keyGroupCount: groupNames.length,
    tokenGroup,
  });
}
const plan = await Plan.compile(gpu, g, null, { label: "bench:attention_flow" });
try {
  const qd = fillUniform(seq * cols, 1), kd = fillUniform(seq * cols, 2);
  plan.write("q", qd);
  plan.write("k", kd);
  plan.write("v", fillUniform(seq * cols, 3));
  plan.write("queryBits", bits.queryBits);
  plan.write("keyBits", bits.keyBits);
  plan.write("groups", ids);
  for (const name of ["flow.0.rows", "flow.0.mass", "flow.0.tokens"]) {
    plan.write(name, new Float32Array(g.elementCount(g.find(name)!)).fill(NaN));
  }
  await plan.run();

  // Check: sampled rows, the per-key masses of the token group (its rows only, so in full), and sums of 1.
  const gk = groupNames.length;
  const rowsGot = await plan.read("flow.0.rows");
  const sampled = [0, 9, 28, 39, text - 1, text, text + image - 1, text + image, seq - 1];
  let worstRow = 0;
  for (const row of sampled) {
    const want = attentionFlowReference(qd.subarray(row * cols, (row + 1) * cols), kd, {
      sq: 1,
      sk: seq,
      heads,
      kvHeads: heads,
      headDim,
      bits: { queryBits: bits.queryBits.subarray(row, row + 1), keyBits: bits.keyBits },
      queryGroups: ids.subarray(row, row + 1),
      keyGroups: ids,
      queryGroupCount: gk,
      keyGroupCount: gk,
    }).rows;
    const got = new Float32Array(heads * gk);
    for (let h = 0; h < heads; h++) got.set(rowsGot.subarray((h * seq + row) * gk, (h * seq + row + 1) * gk), h * gk);
    worstRow = Math.max(worstRow, relativeL2(got, want));
  }
  const members = groupLists[tokenGroup];
  const first = members[0], count = members.length;
  let tokensRelL2 = NaN;
  if (members.every((r, i) => r === first + i) && count <= 64) {
    const want = attentionFlowReference(qd.subarray(first * cols, (first + count) * cols), kd, {
      sq: count,
      sk: seq,
      heads,
      kvHeads: heads,
      headDim,
      bits: { queryBits: bits.queryBits.subarray(first, first + count), keyBits: bits.keyBits },
      queryGroups: new Uint32Array(count).fill(tokenGroup),
      keyGroups: ids,
      queryGroupCount: gk,
      keyGroupCount: gk,
      tokenGroup,
    }).tokens!;
    tokensRelL2 = relativeL2(await plan.read("flow.0.tokens"), want);
  }
  const mass = await plan.read("flow.0.mass");
  let worstSum = 0;
  for (let r = 0; r < (heads + 1) * gk; r++) {
    worstSum = Math.max(
      worstSum,
      Math.abs(mass.subarray(r * gk, (r + 1) * gk).reduce((a, b) => a + b) - 1),
    );
  }
  console.log(
    `check: sampled rows rel L2 ${worstRow.toExponential(1)}, per-key masses rel L2 ${
      Number.isNaN(tokensRelL2) ? "(not checked: group not a short run)" : tokensRelL2.toExponential(1)
    }, group rows sum to 1 within ${worstSum.toExponential(1)}`,
  );
  if (!(worstRow <= 1e-5) || !(tokensRelL2 <= 1e-5 || Number.isNaN(tokensRelL2)) || !(worstSum <= 1e-5)) {
    throw new Error("attention flow: wrong result at the benchmark shape");
  }

  const warmStart = performance.now();
  do await plan.run(); while (performance.now() - warmStart < 300);
  if (!gpu.hasTimestamps) throw new Error("this benchmark times dispatches with timestamps, which this adapter lacks");
  const timings = await plan.profile();
  // Pass name (the node name without the repetition index) → times of its repetitions.
  const byPass = new Map<string, number[]>();
  for (const t of timings) {
    const pass = t.name.replace(/^(attn|flow)\.\d+/, "$1");
    byPass.set(pass, [...(byPass.get(pass) ?? []), t.ms]);
  }
  const medians = new Map([...byPass].map(([pass, ms]) => [pass, median(ms)]));
  const attentionMs = medians.get("attn")!;
  const flowMs = [...medians].filter(([p]) => p.startsWith("flow.")).reduce((s, [, ms]) => s + ms, 0);
  const rows = [...medians].map(([pass, ms]) => [pass, formatMs(ms), (ms / attentionMs).toFixed(2)]);
  rows.push(["flow (all passes)", formatMs(flowMs), (flowMs / attentionMs).toFixed(2)]);
  console.log(formatTable(["dispatch", "median ms", "× attention"], rows));
  if (opts.json) {
    const record = {
      device: gpu.adapterDescription,
      shape: { heads, headDim, seq, text, image, ref: image },
      tokenGroup: groupNames[tokenGroup],
      check: { sampledRowsRelL2: worstRow, tokensRelL2, worstGroupSumError: worstSum },
      medianMs: Object.fromEntries(medians),
      flowMs,
      attentionMs,
    };
    await Deno.writeTextFile(opts.json, JSON.stringify(record, null, 2) + "\n");
  }
} finally {
  plan.destroy();
}
