// Float64 reference and audit cases for the attention flow (kernels/attention_flow.ts).

import type { AuditCase, AuditInput, AuditOutput } from "../audit.ts";
import type { Graph } from "../../runtime/graph.ts";
import type { Rng } from "../../runtime/random.ts";
import { fullyMaskedQueries, type GroupMaskBits, groupMaskBits, type GroupRule } from "../attention.ts";
import { attentionFlow } from "../attention_flow.ts";
import { type AttentionProblem, attentionRowProbabilities } from "./attention.ts";

export interface AttentionFlowProblem extends AttentionProblem {
  /** Group id per query [sq] and per key [sk]; ids ≥ the count are in no group. */
  queryGroups: Uint32Array;
  keyGroups: Uint32Array;
  queryGroupCount: number;
  keyGroupCount: number;
  tokenGroup?: number;
}

export interface AttentionFlowExpected {
  /** [H, Sq, Gk]. */
  rows: Float64Array;
  /** [H + 1, Gq, Gk]; slice H is the mean over heads. */
  mass: Float64Array;
  /** [Gq]. */
  counts: Float64Array;
  /** [H + 1, Sk], with a token group. */
  tokens?: Float64Array;
}

/** The flow from explicit scores: masked q·kᵀ·scale, softmax per row in float64, summed by key group. */
export function attentionFlowReference(q: ArrayLike<number>, k: ArrayLike<number>, p: AttentionFlowProblem): AttentionFlowExpected {
  const { sq, sk, heads, queryGroups, keyGroups, queryGroupCount: gq, keyGroupCount: gk } = p;
  const rows = new Float64Array(heads * sq * gk);
  const mass = new Float64Array((heads + 1) * gq * gk);
  const counts = new Float64Array(gq);
  for (let i = 0; i < sq; i++) if (queryGroups[i] < gq) counts[queryGroups[i]]++;
  const tokens = p.tokenGroup !== undefined ? new Float64Array((heads + 1) * sk) : undefined;
  const probs = new Float64Array(sk);
  for (let h = 0; h < heads; h++) {
    for (let i = 0; i < sq; i++) {
      if (!attentionRowProbabilities(q, k, p, h, i, probs)) continue; // no visible key: no mass
      const qg = queryGroups[i];
      for (let j = 0; j < sk; j++) {
        const w = probs[j];
        if (keyGroups[j] < gk) rows[(h * sq + i) * gk + keyGroups[j]] += w;
        if (tokens && qg === p.tokenGroup) tokens[h * sk + j] += w / counts[qg];
      }
      if (qg < gq) {
        for (let g = 0; g < gk; g++) mass[(h * gq + qg) * gk + g] += rows[(h * sq + i) * gk + g] / counts[qg];
      }
    }
  }
  const meanOverHeads = (a: Float64Array, n: number) => {
    for (let x = 0; x < n; x++) {
      let s = 0;
      for (let h = 0; h < heads; h++) s += a[h * n + x];
      a[heads * n + x] = s / heads;
    }
  };
  meanOverHeads(mass, gq * gk);
  if (tokens) meanOverHeads(tokens, sk);
  return { rows, mass, counts, tokens };
}

export interface AttentionFlowCaseSpec {
  label: string;
  sq: number;
  sk: number;
  heads: number;
  kvHeads?: number;
  headDim: number;
  scale?: number;
  causal?: boolean;
  keyLength?: number;
  rules?: GroupRule[];
  /** Group sizes in token order: query token i belongs to the group whose run covers it; runs past the end of the
   * list leave tokens in no group. Several runs may name the same group (interleaved groups). */
  queryRuns: [group: number, length: number][];
  keyRuns: [group: number, length: number][];
  queryGroupCount: number;
  keyGroupCount: number;
  tokenGroup?: number;
  /** Standard deviation of q and k (larger values sharpen the softmax). */
  spread?: number;
}

/** Group ids from runs of [group, length]; tokens past the runs get 0xffffffff (no group). */
export function groupIdsFromRuns(n: number, runs: [number, number][]): Uint32Array {
  const ids = new Uint32Array(n).fill(0xffffffff);
  let at = 0;
  for (const [group, length] of runs) {
    ids.fill(group, at, Math.min(n, at + length));
    at += length;
  }
  return ids;
}

/** The problem of a case spec (bits packed from its rules). */
export function attentionFlowProblem(spec: AttentionFlowCaseSpec): AttentionFlowProblem & { bits?: GroupMaskBits } {
  const bits = spec.rules ? groupMaskBits(spec.sq, spec.sk, spec.rules) : undefined;
  return {
    sq: spec.sq,
    sk: spec.sk,
    heads: spec.heads,
    kvHeads: spec.kvHeads ?? spec.heads,
    headDim: spec.headDim,
    scale: spec.scale,
    causal: spec.causal,
    keyLength: spec.keyLength,
    bits,
    queryGroups: groupIdsFromRuns(spec.sq, spec.queryRuns),
    keyGroups: groupIdsFromRuns(spec.sk, spec.keyRuns),
    queryGroupCount: spec.queryGroupCount,
    keyGroupCount: spec.keyGroupCount,
    tokenGroup: spec.tokenGroup,
  };
}

/** An audit case: random q and k, the flow's outputs (poisoned by the audit) against the float64 reference. */
export function attentionFlowCase(spec: AttentionFlowCaseSpec): AuditCase {
  return {
    kernel: "attention_flow",
    label: spec.label,
    build(g: Graph, rng: Rng) {
      const p = attentionFlowProblem(spec);
      const { sq, sk, heads, kvHeads, headDim } = p;
      const q = rng.normalArray(sq * heads * headDim, spec.spread ?? 1);
      const k = rng.normalArray(sk * kvHeads * headDim, spec.spread ?? 1);
      const blind = fullyMaskedQueries(sq, sk, { causal: p.causal, keyLength: p.keyLength, bits: p.bits });
      if (blind.length) throw new Error(`attention flow case ${spec.label}: queries ${blind.slice(0, 8).join(", ")} see no key`);
      const inputs: AuditInput[] = [
        { name: "q", data: q },
        { name: "k", data: k },
        { name: "queryGroups", data: p.queryGroups },
        { name: "keyGroups", data: p.keyGroups },
      ];
      let groupMask: { queryBits: number; keyBits: number } | undefined;
      if (p.bits) {
        groupMask = { queryBits: g.input("queryBits", [sq], "u32"), keyBits: g.input("keyBits", [sk], "u32") };
        inputs.push({ name: "queryBits", data: p.bits.queryBits }, { name: "keyBits", data: p.bits.keyBits });
      }
      attentionFlow(g, "flow", {
        q: g.input("q", [sq, heads * headDim]),
        k: g.input("k", [sk, kvHeads * headDim]),
        heads,
        kvHeads,
        headDim,
        scale: p.scale,
        causal: p.causal,
        keyLength: p.keyLength,
        groupMask,
        queryGroups: g.input("queryGroups", [sq], "u32"),
        keyGroups: g.input("keyGroups", [sk], "u32"),
        queryGroupCount: p.queryGroupCount,
        keyGroupCount: p.keyGroupCount,
        tokenGroup: p.tokenGroup,
      });
      const expected = attentionFlowReference(q, k, p);
      const outputs: AuditOutput[] = [
        { name: "flow.rows", expected: expected.rows },
        { name: "flow.mass", expected: expected.mass },
        { name: "flow.counts", expected: expected.counts },
      ];
      if (expected.tokens) outputs.push({ name: "flow.tokens", expected: expected.tokens });
      return { inputs, outputs };
    },
  };
}

const range = (start: number, end: number) => Array.from({ length: end - start }, (_, i) => start + i);

/** Awkward sizes (no multiple of the 64-row tiles), groups of uneven size with an empty one, interleaved groups,
 * tokens in no group, different query and key partitions, knockout rules, grouped-query heads, causal with padding. */
export const attentionFlowCaseSpecs: AttentionFlowCaseSpec[] = [
  {
    label: "D128 H2 S37 5 groups (group 3 empty)",
    sq: 37,
    sk: 37,
    heads: 2,
    headDim: 128,
    queryRuns: [[0, 5], [1, 3], [0, 4], [2, 11], [4, 14]],
    keyRuns: [[0, 5], [1, 3], [0, 4], [2, 11], [4, 14]],
    queryGroupCount: 5,
    keyGroupCount: 5,
    tokenGroup: 2,
  },
  {
    // text = [0, 61) (content [9, 40), scaffold around it, pad [40, 61)), image = [61, 190), ref = [190, 261).
    label: "D128 H3 S261 text/image/ref, ref->text[content] knocked out",
    sq: 261,
    sk: 261,
    heads: 3,
    headDim: 128,
    rules: [{ queries: range(9, 40), keys: range(190, 261) }],
    queryRuns: [[1, 9], [0, 31], [2, 21], [3, 129], [4, 71]],
    keyRuns: [[1, 9], [0, 31], [2, 21], [3, 129], [4, 71]],
    queryGroupCount: 6,
    keyGroupCount: 5,
    tokenGroup: 0,
    spread: 1.5,
  },
  {
    label: "D128 H1 S1000 16 key groups, 3 query groups, tokens of a 1-row group",
    sq: 1000,
    sk: 1000,
    heads: 1,
    headDim: 128,
    rules: [{ queries: range(0, 300), keys: range(700, 1000) }, { queries: range(300, 700), keys: range(50, 60) }],
    queryRuns: [[0, 300], [1, 400], [2, 299], [3, 1]],
    keyRuns: Array.from({ length: 16 }, (_, g) => [g, g === 15 ? 1000 - 15 * 62 : 62] as [number, number]),
    queryGroupCount: 4,
    keyGroupCount: 16,
    tokenGroup: 3,
  },
  {
    // Ids past the group counts (7 for queries, 9 for keys, then 0xffffffff) put tokens in no group.
    label: "D32 H3 Hkv1 Sq70 Sk203 tokens partly ungrouped, scale0.3",
    sq: 70,
    sk: 203,
    heads: 3,
    kvHeads: 1,
    headDim: 32,
    scale: 0.3,
    spread: 1.5,
    queryRuns: [[1, 20], [7, 5], [0, 45]],
    keyRuns: [[2, 40], [0, 100], [1, 33], [9, 10]],
    queryGroupCount: 2,
    keyGroupCount: 3,
    tokenGroup: 1,
  },
  {
    label: "D12 H2 S77 causal keyLength61 no tokens",
    sq: 77,
    sk: 77,
    heads: 2,
    headDim: 12,
    causal: true,
    keyLength: 61,
    queryRuns: [[0, 10], [1, 67]],
    keyRuns: [[0, 10], [1, 51], [2, 16]],
    queryGroupCount: 3,
    keyGroupCount: 3,
  },
];

export const attentionFlowAuditCases: AuditCase[] = attentionFlowCaseSpecs.map(attentionFlowCase);
