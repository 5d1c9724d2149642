// Float64 reference and audit cases for the RoPE kernel.

import type { AuditCase } from "../audit.ts";
import { type RopeLayout, ropeNode } from "../rope.ts";
import { fluxRopeTables, qwenRopeTables, type RopeTables } from "../rope_tables.ts";

/** Rotate x [S, heads·headDim] with tables cos, sin [S, headDim/2], in float64. */
export function rope64(
  x: ArrayLike<number>,
  cos: ArrayLike<number>,
  sin: ArrayLike<number>,
  seq: number,
  heads: number,
  headDim: number,
  layout: RopeLayout,
): Float64Array {
  const out = new Float64Array(seq * heads * headDim);
  const half = headDim / 2;
  for (let s = 0; s < seq; s++) {
    for (let h = 0; h < heads; h++) {
      const head = (s * heads + h) * headDim;
      for (let j = 0; j < half; j++) {
        const a = layout === "interleaved" ? head + 2 * j : head + j;
        const b = layout === "interleaved" ? a + 1 : a + half;
        const c = cos[s * half + j], sn = sin[s * half + j];
        out[a] = x[a] * c - x[b] * sn;
        out[b] = x[b] * c + x[a] * sn;
      }
    }
  }
  return out;
}

function ropeCase(
  label: string,
  seq: number,
  heads: number,
  headDim: number,
  layout: RopeLayout,
  tables: (seq: number) => RopeTables,
): AuditCase {
  return {
    kernel: `rope_${layout}`,
    label: `${seq}×${heads}·${headDim} ${label}`,
    build(g, rng) {
      const x = rng.normalArray(seq * heads * headDim);
      const { cos, sin } = tables(seq);
      const out = g.state("out", [seq, heads * headDim]);
      ropeNode(g, "op", {
        x: g.input("x", [seq, heads * headDim]),
        cos: g.input("cos", [seq, headDim / 2]),
        sin: g.input("sin", [seq, headDim / 2]),
        out,
        heads,
        headDim,
        layout,
      });
      return {
        inputs: [{ name: "x", data: x }, { name: "cos", data: cos }, { name: "sin", data: sin }],
        outputs: [{ name: "out", expected: rope64(x, cos, sin, seq, heads, headDim, layout) }],
      };
    },
  };
}

/** FLUX.2-like position ids: text tokens (0, 0, 0, l), then an image grid (t, h, w, 0) of the given width. */
function fluxIds(seq: number, textTokens: number, gridWidth: number): Float64Array {
  const ids = new Float64Array(seq * 4);
  for (let s = 0; s < seq; s++) {
    if (s < textTokens) ids[s * 4 + 3] = s;
    else {
      const i = s - textTokens;
      ids.set([10, Math.floor(i / gridWidth), i % gridWidth, 0], s * 4);
    }
  }
  return ids;
}

/** Tables of a head dimension other than 128: one FLUX.2-style axis per 32 pairs, last axis shorter. */
function fluxTablesFor(headDim: number) {
  return (seq: number) => {
    const axes: number[] = [];
    for (let left = headDim; left > 0; left -= Math.min(32, left)) axes.push(Math.min(32, left));
    const ids = new Float64Array(seq * axes.length).map((_, i) => (i * 7) % 23);
    return fluxRopeTables(ids, seq, axes);
  };
}

export const ropeAuditCases: AuditCase[] = [
  ropeCase("FLUX.2 tables", 53, 3, 128, "interleaved", (seq) => fluxRopeTables(fluxIds(seq, 20, 7), seq)),
  ropeCase("odd pairs", 37, 5, 18, "interleaved", fluxTablesFor(18)),
  ropeCase("Qwen3 tables", 37, 4, 16, "rotate_half", (seq) => qwenRopeTables(seq, 16)),
  ropeCase("Qwen3 tables", 300, 2, 128, "rotate_half", (seq) => qwenRopeTables(seq, 128)),
  ropeCase("odd pairs", 29, 3, 22, "rotate_half", (seq) => qwenRopeTables(seq, 22)),
];
