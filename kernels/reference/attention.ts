// Float64 reference and audit cases for the attention family.

import type { AuditCase, AuditInput } from "../audit.ts";
import type { Graph } from "../../runtime/graph.ts";
import type { Rng } from "../../runtime/random.ts";
import { attention, type AttentionConfig, fullyMaskedQueries, type GroupMaskBits, groupMaskBits, type GroupRule } from "../attention.ts";

export interface AttentionProblem {
  sq: number;
  sk: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  scale?: number;
  causal?: boolean;
  keyLength?: number;
  bits?: GroupMaskBits;
}

/** Softmax probabilities in float64 of query row `i`, head `h` over every key, written into `probs` [sk]: masked
 * q·kᵀ·scale (key length, causal, group-mask bits), then exp and normalise. False (and `probs` untouched beyond the
 * scores) when the row sees no key. Shared by the attention and attention-flow references. */
export function attentionRowProbabilities(
  q: ArrayLike<number>,
  k: ArrayLike<number>,
  p: AttentionProblem,
  h: number,
  i: number,
  probs: Float64Array,
): boolean {
  const { sk, heads, kvHeads, headDim: d } = p;
  const scale = p.scale ?? 1 / Math.sqrt(d);
  const keyEnd = Math.min(sk, p.keyLength ?? sk);
  const qCols = heads * d, kCols = kvHeads * d;
  const kvh = Math.floor(h / (heads / kvHeads));
  let max = -Infinity;
  for (let j = 0; j < sk; j++) {
    const visible = j < keyEnd && (!p.causal || j <= i) && (!p.bits || (p.bits.queryBits[i] & p.bits.keyBits[j]) === 0);
    if (!visible) {
      probs[j] = -Infinity;
      continue;
    }
    let s = 0;
    for (let c = 0; c < d; c++) s += q[i * qCols + h * d + c] * k[j * kCols + kvh * d + c];
    probs[j] = s * scale;
    if (probs[j] > max) max = probs[j];
  }
  if (max === -Infinity) return false;
  let sum = 0;
  for (let j = 0; j < sk; j++) {
    probs[j] = probs[j] === -Infinity ? 0 : Math.exp(probs[j] - max);
    sum += probs[j];
  }
  for (let j = 0; j < sk; j++) probs[j] /= sum;
  return true;
}

/** softmax(q·kᵀ·scale + mask)·v per head in float64; rows with no visible key are zeros. */
export function attentionReference(q: ArrayLike<number>, k: ArrayLike<number>, v: ArrayLike<number>, p: AttentionProblem): Float64Array {
  const { sq, sk, heads, kvHeads, headDim: d } = p;
  const qCols = heads * d, kCols = kvHeads * d;
  const out = new Float64Array(sq * qCols);
  const probs = new Float64Array(sk);
  for (let h = 0; h < heads; h++) {
    const kvh = Math.floor(h / (heads / kvHeads));
    for (let i = 0; i < sq; i++) {
      if (!attentionRowProbabilities(q, k, p, h, i, probs)) continue;
      for (let j = 0; j < sk; j++) {
        const w = probs[j];
        if (w === 0) continue;
        for (let c = 0; c < d; c++) out[i * qCols + h * d + c] += w * v[j * kCols + kvh * d + c];
      }
    }
  }
  return out;
}

export interface AttentionCaseSpec extends AttentionProblem {
  label: string;
  rules?: GroupRule[];
  config?: AttentionConfig;
  /** Standard deviation of q and k (larger values sharpen the softmax). */
  spread?: number;
}

/** An audit case: random q, k, v; the attention node writes straight into a poisoned state tensor. */
export function attentionCase(spec: AttentionCaseSpec): AuditCase {
  return {
    kernel: "attention",
    label: spec.label,
    build(g: Graph, rng: Rng) {
      const { sq, sk, heads, kvHeads, headDim } = spec;
      const spread = spec.spread ?? 1;
      const q = rng.normalArray(sq * heads * headDim, spread);
      const k = rng.normalArray(sk * kvHeads * headDim, spread);
      const v = rng.normalArray(sk * kvHeads * headDim);
      const bits = spec.bits ?? (spec.rules ? groupMaskBits(sq, sk, spec.rules) : undefined);
      const blind = fullyMaskedQueries(sq, sk, { causal: spec.causal, keyLength: spec.keyLength, bits });
      if (blind.length) throw new Error(`attention case ${spec.label}: queries ${blind.slice(0, 8).join(", ")} see no key`);
      const out = g.state("out", [sq, heads * headDim]);
      const inputs: AuditInput[] = [
        { name: "q", data: q },
        { name: "k", data: k },
        { name: "v", data: v },
      ];
      let groupMask: { queryBits: number; keyBits: number } | undefined;
      if (bits) {
        groupMask = { queryBits: g.input("queryBits", [sq], "u32"), keyBits: g.input("keyBits", [sk], "u32") };
        inputs.push({ name: "queryBits", data: bits.queryBits }, { name: "keyBits", data: bits.keyBits });
      }
      attention(g, "attention", {
        q: g.input("q", [sq, heads * headDim]),
        k: g.input("k", [sk, kvHeads * headDim]),
        v: g.input("v", [sk, kvHeads * headDim]),
        heads,
        kvHeads,
        headDim,
        scale: spec.scale,
        causal: spec.causal,
        keyLength: spec.keyLength,
        groupMask,
        out,
        config: spec.config,
      });
      const expected = attentionReference(q, k, v, { ...spec, bits });
      return { inputs, outputs: [{ name: "out", expected }] };
    },
  };
}

const range = (start: number, end: number) => Array.from({ length: end - start }, (_, i) => start + i);

/** The standard cases: joint attention (square and not), Qwen3-like grouped causal with padding, VAE-like single head
 * (small and real-size head dim), knockout rules over index ranges, a scale override. */
export const attentionCaseSpecs: AttentionCaseSpec[] = [
  { label: "D128 H2 S300", sq: 300, sk: 300, heads: 2, kvHeads: 2, headDim: 128 },
  { label: "D128 H2 Sq129 Sk300", sq: 129, sk: 300, heads: 2, kvHeads: 2, headDim: 128 },
  { label: "D16 H4 Hkv2 S77 causal keyLength61", sq: 77, sk: 77, heads: 4, kvHeads: 2, headDim: 16, causal: true, keyLength: 61 },
  { label: "D32 H1 S129", sq: 129, sk: 129, heads: 1, kvHeads: 1, headDim: 32 },
  { label: "D512 H1 S53", sq: 53, sk: 53, heads: 1, kvHeads: 1, headDim: 512 },
  {
    label: "D128 H2 S300 3 rules",
    sq: 300,
    sk: 300,
    heads: 2,
    kvHeads: 2,
    headDim: 128,
    // text = [0, 77), image = [77, 225), ref = [225, 300): ref->text, ref->image, text[37, 77)->image[77, 150)
    rules: [
      { queries: range(0, 77), keys: range(225, 300) },
      { queries: range(77, 225), keys: range(225, 300) },
      { queries: range(77, 150), keys: range(37, 77) },
    ],
  },
  { label: "D64 H3 S201 scale0.3", sq: 201, sk: 201, heads: 3, kvHeads: 3, headDim: 64, scale: 0.3, spread: 1.5 },
];

export const attentionAuditCases: AuditCase[] = attentionCaseSpecs.map(attentionCase);
