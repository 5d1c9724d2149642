// GroupNorm with affine parameters over channel-major images (f32 [C, H·W]), optionally fused with SiLU.
// Three dispatches (partial sums, partial squared deviations, normalise) over chunks of each group, so that a
// 1024² image with few groups still spreads over the whole GPU and the variance is a true two-pass one.

import type { Graph } from "../runtime/graph.ts";
import { ceilDiv, type KernelSpec } from "../runtime/kernel.ts";
import { weightIsBf16 } from "./conv2d.ts";

export const groupNormKernel: KernelSpec = {
  name: "groupnorm",
  source: new URL("./groupnorm.wgsl", import.meta.url),
  bindings: [
    { name: "x", type: "array<f32>", access: "read" },
    { name: "gamma", type: "array<u32>", access: "read" },
    { name: "beta", type: "array<u32>", access: "read" },
    { name: "stats", type: "array<f32>", access: "read_write" },
    { name: "out", type: "array<f32>", access: "read_write" },
  ],
  params: [
    { name: "groups", type: "u32" },
    { name: "groupSize", type: "u32" },
    { name: "hw", type: "u32" },
    { name: "chunks", type: "u32" },
    { name: "chunkLen", type: "u32" },
    { name: "eps", type: "f32" },
  ],
};

/** Upper bound on chunks per group: the partials of one group are reduced by one 256-thread workgroup. */
const MAX_CHUNKS = 256;
/** Elements a workgroup handles per pass by default. */
const DEFAULT_CHUNK_ELEMENTS = 4096;

export interface GroupNormOptions {
  /** [C] scale and shift, bf16 or f32. */
  gamma: number;
  beta: number;
  groups: number;
  eps: number;
  /** Apply SiLU to the normalised output. */
  silu?: boolean;
  /** Target elements per workgroup (tests use small values to exercise the chunked reduction). */
  chunkElements?: number;
}

/** GroupNorm (+ SiLU) of x [C, HW]; returns a new [C, HW] tensor. */
export function groupNorm(g: Graph, name: string, x: number, o: GroupNormOptions): number {
  const xs = g.shape(x);
  if (xs.length !== 2) throw new Error(`${name}: group norm input must be [C, H·W], got [${xs.join("×")}]`);
  const [channels, hw] = xs;
  if (!Number.isInteger(o.groups) || o.groups <= 0 || channels % o.groups !== 0) {
    throw new Error(`${name}: ${channels} channels cannot be split into ${o.groups} groups`);
  }
  for (const [label, id] of [["gamma", o.gamma], ["beta", o.beta]] as const) {
    const s = g.shape(id);
    if (s.length !== 1 || s[0] !== channels) throw new Error(`${name}: ${label} must be [${channels}], got [${s.join("×")}]`);
  }
  const bf16 = weightIsBf16(g, name, o.gamma);
  if (weightIsBf16(g, name, o.beta) !== bf16) throw new Error(`${name}: gamma and beta must have the same dtype`);
  const groupSize = (channels / o.groups) * hw;
  const chunks = Math.min(MAX_CHUNKS, ceilDiv(groupSize, o.chunkElements ?? DEFAULT_CHUNK_ELEMENTS));
  const chunkLen = ceilDiv(groupSize, chunks);
  const stats = g.activation(`${name}.stats`, [2 * o.groups * chunks]);
  const out = g.activation(name, [channels, hw]);
  const params = { groups: o.groups, groupSize, hw, chunks, chunkLen, eps: o.eps };
  const bindings = { x, gamma: o.gamma, beta: o.beta, stats, out };
  for (const pass of ["sum", "sqdev", "apply"]) {
    g.add({
      name: pass === "apply" ? name : `${name}.${pass}`,
      kernel: groupNormKernel,
      variant: { PASS: `pass_${pass}`, AFFINE_BF16: bf16, SILU: !!o.silu },
      bindings,
      params,
      workgroups: [chunks, o.groups, 1],
    });
  }
  return out;
}
