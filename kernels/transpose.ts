// Matrix transpose [rows, cols] → [cols, rows] of f32 activations, with an optional fused residual add.
// Used to move between channel-major images [C, H·W] and token-major rows [H·W, C] (e.g. around attention).

import type { Graph } from "../runtime/graph.ts";
import { ceilDiv, grid1d, type KernelSpec } from "../runtime/kernel.ts";

export const transposeKernel: KernelSpec = {
  name: "transpose",
  source: new URL("./transpose.wgsl", import.meta.url),
  bindings: [
    { name: "x", type: "array<f32>", access: "read" },
    { name: "residual", type: "array<f32>", access: "read" },
    { name: "out", type: "array<f32>", access: "read_write" },
  ],
  params: [
    { name: "rows", type: "u32" },
    { name: "cols", type: "u32" },
    { name: "colTiles", type: "u32" },
    { name: "tiles", type: "u32" },
  ],
};

const TILE = 32;

/** Writes xᵀ (+ residual) into an existing tensor `out` [cols, rows]. */
export function transposeNode(g: Graph, name: string, x: number, out: number, residual?: number): void {
  const xs = g.shape(x);
  if (xs.length !== 2) throw new Error(`${name}: transpose input must be 2-D, got [${xs.join("×")}]`);
  const [rows, cols] = xs;
  for (const [label, id] of [["output", out], ["residual", residual]] as const) {
    if (id === undefined) continue;
    const s = g.shape(id);
    if (s.length !== 2 || s[0] !== cols || s[1] !== rows) {
      throw new Error(`${name}: ${label} must be [${cols}, ${rows}], got [${s.join("×")}]`);
    }
  }
  const colTiles = ceilDiv(cols, TILE);
  const tiles = ceilDiv(rows, TILE) * colTiles;
  g.add({
    name,
    kernel: transposeKernel,
    variant: { RESIDUAL: residual !== undefined },
    bindings: { x, residual: residual ?? x, out },
    params: { rows, cols, colTiles, tiles },
    workgroups: grid1d(tiles),
  });
}

/** xᵀ for x [rows, cols], plus `residual` [cols, rows] when given; returns a new [cols, rows] tensor. */
export function transpose(g: Graph, name: string, x: number, residual?: number): number {
  const xs = g.shape(x);
  if (xs.length !== 2) throw new Error(`${name}: transpose input must be 2-D, got [${xs.join("×")}]`);
  const out = g.activation(name, [xs[1], xs[0]]);
  transposeNode(g, name, x, out, residual);
  return out;
}
