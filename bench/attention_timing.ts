// Timing of the attention kernel at benchmark shapes, shared by bench/attention.ts (sweeps) and bench/summary.ts:
// the node repeated back to back in one plan, checked on sampled rows against float64, warmed up, then one profiled
// run. The knockout layout is the one bench/torch_baseline.py uses too.

import type { GpuContext } from "../runtime/device.ts";
import { Graph } from "../runtime/graph.ts";
import { Plan } from "../runtime/executor.ts";
import {
  attention,
  type AttentionConfig,
  attentionConfigFor,
  attentionConfigName,
  type GroupMaskBits,
  groupMaskBits,
} from "../kernels/attention.ts";
import { attentionReference } from "../kernels/reference/attention.ts";
import { fillUniform, median } from "./common.ts";
import { relativeL2 } from "../kernels/audit.ts";

/** The knockout layout: the first min(512, S/5) queries ("text") may not read the last S/4 keys ("ref"). */
export function knockoutLayout(seq: number): { text: number; ref: number } {
  return { text: Math.min(512, Math.floor(seq / 5)), ref: Math.floor(seq / 4) };
}

export function knockoutBits(seq: number): GroupMaskBits {
  const { text, ref } = knockoutLayout(seq);
  const range = (a: number, b: number) => Array.from({ length: b - a }, (_, i) => a + i);
  return groupMaskBits(seq, seq, [{ queries: range(0, text), keys: range(seq - ref, seq) }]);
}

export interface AttentionMeasurement {
  seq: number;
  heads: number;
  headDim: number;
  masked: boolean;
  config: string;
  medianMs: number;
  tflops: number;
  /** Worst relative L2 of the rows checked against float64. */
  checkRelL2: number;
  /** Inputs, masks and output on the GPU. */
  bytes: number;
  timedBy: "timestamps" | "wall clock";
}

/** Time self-attention over `seq` rows, `iters` repetitions back to back; `config` defaults to the tuned one. Throws
 * when the sampled rows are wrong. */
export async function timeAttention(
  gpu: GpuContext,
  shape: { seq: number; heads: number; headDim: number },
  masked: boolean,
  iters: number,
  config: AttentionConfig = attentionConfigFor(gpu.caps, shape.headDim),
): Promise<AttentionMeasurement> {
  const { seq, heads, headDim } = shape;
  const cols = heads * headDim;
  const bits = masked ? knockoutBits(seq) : undefined;
  const g = new Graph();
  const groupMask = bits ? { queryBits: g.input("queryBits", [seq], "u32"), keyBits: g.input("keyBits", [seq], "u32") } : undefined;
  const q = g.input("q", [seq, cols]), k = g.input("k", [seq, cols]), v = g.input("v", [seq, cols]);
  const out = g.state("out", [seq, cols]);
  for (let i = 0; i < iters; i++) attention(g, `attn.${i}`, { q, k, v, heads, kvHeads: heads, headDim, groupMask, out, config });
  const plan = await Plan.compile(gpu, g, null, { label: `bench:attention:${attentionConfigName(config)}` });
  try {
    // Scores of O(1) keep the softmax from collapsing onto one key, so the sampled check is meaningful.
    const qd = fillUniform(seq * cols, 1), kd = fillUniform(seq * cols, 2), vd = fillUniform(seq * cols, 3);
    plan.write("q", qd);
    plan.write("k", kd);
    plan.write("v", vd);
    if (bits) {
      plan.write("queryBits", bits.queryBits);
      plan.write("keyBits", bits.keyBits);
    }
    plan.write("out", new Float32Array(seq * cols).fill(NaN));
    await plan.run();
    const checkRelL2 = await checkSampledRows(plan, qd, kd, vd, shape, bits);
    if (!(checkRelL2 <= 1e-5)) {
      throw new Error(
        `attention S=${seq}${masked ? " masked" : ""} ${
          attentionConfigName(config)
        }: wrong result (relative L2 ${checkRelL2} on sampled rows)`,
      );
    }
    // Warm up for a while: a short kernel run once after the host-side work above would be timed at a low clock.
    const warmStart = performance.now();
    do await plan.run(); while (performance.now() - warmStart < 300);
    let samples: number[];
    if (gpu.hasTimestamps) {
      samples = (await plan.profile()).map((t) => t.ms);
    } else {
      const t0 = performance.now();
      await plan.run();
      samples = [(performance.now() - t0) / iters];
    }
    const medianMs = median(samples);
    return {
      seq,
      heads,
      headDim,
      masked,
      config: attentionConfigName(config),
      medianMs,
      tflops: g.flops() / iters / (medianMs * 1e-3) / 1e12,
      checkRelL2,
      bytes: plan.allocatedBytes,
      timedBy: gpu.hasTimestamps ? "timestamps" : "wall clock",
    };
  } finally {
    plan.destroy();
  }
}

/** Compare a few rows of the output (first, last, and both sides of the text/ref boundaries) with float64. */
async function checkSampledRows(
  plan: Plan,
  q: Float32Array,
  k: Float32Array,
  v: Float32Array,
  shape: { seq: number; heads: number; headDim: number },
  bits?: GroupMaskBits,
): Promise<number> {
  const { seq, heads, headDim } = shape;
  const cols = heads * headDim;
  const { text, ref } = knockoutLayout(seq);
  const rows = [...new Set([0, text - 1, text, seq - ref - 1, seq - ref, seq - 1])].filter((r) => r >= 0 && r < seq);
  let worst = 0;
  for (const row of rows) {
    const got = await plan.readRows("out", row, 1);
    const want = attentionReference(q.subarray(row * cols, (row + 1) * cols), k, v, {
      sq: 1,
      sk: seq,
      heads,
      kvHeads: heads,
      headDim,
      bits: bits ? { queryBits: bits.queryBits.subarray(row, row + 1), keyBits: bits.keyBits } : undefined,
    });
    worst = Math.max(worst, relativeL2(got, want));
  }
  return worst;
}
