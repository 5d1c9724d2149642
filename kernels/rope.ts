// Rotary position embedding of per-head queries or keys, from cos/sin tables computed on the CPU
// (kernels/rope_tables.ts): WGSL's sin/cos are far less accurate than the reference's angles need.

import type { Graph } from "../runtime/graph.ts";
import { ceilDiv, grid1d, type KernelSpec } from "../runtime/kernel.ts";
import { shapeString } from "../runtime/tensor.ts";

export const ropeKernel: KernelSpec = {
  name: "rope",
  source: new URL("./rope.wgsl", import.meta.url),
  bindings: [
    { name: "x", type: "array<f32>", access: "read" },
    { name: "cosTable", type: "array<f32>", access: "read" },
    { name: "sinTable", type: "array<f32>", access: "read" },
    { name: "out", type: "array<f32>", access: "read_write" },
  ],
  params: [
    { name: "pairs", type: "u32" },
    { name: "heads", type: "u32" },
    { name: "headDim", type: "u32" },
  ],
};

/** Which elements of a head rotate together: FLUX.2 pairs neighbours (2i, 2i+1); Qwen3 pairs the two halves
 * (i, i + D/2). */
export type RopeLayout = "interleaved" | "rotate_half";

const PAIRS: Record<RopeLayout, string> = {
  interleaved: "let a = head + 2u * j; let b = a + 1u;",
  rotate_half: "let a = head + j; let b = a + halfDim;",
};

export interface RopeOptions {
  heads: number;
  headDim: number;
  layout: RopeLayout;
}

/** Adds one dispatch rotating x [S, heads·headDim] into `out` (same shape; must not be x). */
export function ropeNode(g: Graph, name: string, args: RopeOptions & { x: number; cos: number; sin: number; out: number }): void {
  const { x, cos, sin, out, heads, headDim, layout } = args;
  if (!(layout in PAIRS)) throw new Error(`${name}: unknown RoPE layout "${layout}" (expected interleaved or rotate_half)`);
  if (!Number.isInteger(heads) || heads <= 0) throw new Error(`${name}: heads must be a positive integer, got ${heads}`);
  if (!Number.isInteger(headDim) || headDim <= 0 || headDim % 2) {
    throw new Error(`${name}: head dimension must be a positive even integer, got ${headDim}`);
  }
  const xs = g.shape(x);
  if (xs.length !== 2 || xs[1] !== heads * headDim) {
    throw new Error(`${name}: input must be [S, ${heads}·${headDim}], got ${shapeString(xs)}`);
  }
  const seq = xs[0];
  for (const [label, id] of [["input", x], ["cos table", cos], ["sin table", sin], ["output", out]] as const) {
    const t = g.get(id);
    if (t.dtype !== "f32") throw new Error(`${name}: ${label} ${t.name} must be f32, got ${t.dtype}`);
  }
  for (const [label, id] of [["cos", cos], ["sin", sin]] as const) {
    const s = g.shape(id);
    if (s.length !== 2 || s[0] !== seq || s[1] !== headDim / 2) {
      throw new Error(`${name}: ${label} table must be [${seq}, ${headDim / 2}], got ${shapeString(s)}`);
    }
  }
  if (g.elementCount(out) !== g.elementCount(x)) {
    throw new Error(`${name}: output ${shapeString(g.shape(out))} does not match input ${shapeString(xs)}`);
  }
  if (g.rootOf(out) === g.rootOf(x)) throw new Error(`${name}: RoPE writes a new tensor; the output must not be the input`);
  const pairs = (seq * heads * headDim) / 2;
  g.add({
    name,
    kernel: ropeKernel,
    variant: { PAIR: PAIRS[layout] },
    bindings: { x, cosTable: cos, sinTable: sin, out },
    params: { pairs, heads, headDim },
    workgroups: grid1d(ceilDiv(pairs, 256)),
    flops: 6 * pairs,
  });
}

/** Rotary embedding of x [S, H·D] with tables cos, sin [S, D/2] (f32 inputs), into a new tensor. */
export function rope(g: Graph, name: string, x: number, cos: number, sin: number, options: RopeOptions): number {
  const out = g.activation(name, g.shape(x));
  ropeNode(g, name, { ...options, x, cos, sin, out });
  return out;
}
