// Float64 references and audit cases for the normalisation family.

import type { AuditCase } from "../audit.ts";
import { normNode } from "../norm.ts";
import { packBf16, roundToBf16 } from "../../weights/dtypes.ts";

/** LayerNorm of each contiguous group of n values (biased variance), in float64. */
export function layerNorm64(x: ArrayLike<number>, n: number, eps: number): Float64Array {
  const out = new Float64Array(x.length);
  for (let base = 0; base < x.length; base += n) {
    let mean = 0;
    for (let k = 0; k < n; k++) mean += x[base + k];
    mean /= n;
    let variance = 0;
    for (let k = 0; k < n; k++) variance += (x[base + k] - mean) ** 2;
    variance /= n;
    const inv = 1 / Math.sqrt(variance + eps);
    for (let k = 0; k < n; k++) out[base + k] = (x[base + k] - mean) * inv;
  }
  return out;
}

/** (1 + mod[scaleOffset + c]) · LN(x)[r, c] + mod[shiftOffset + c], in float64. */
export function layerNormModulate64(
  x: ArrayLike<number>,
  cols: number,
  mod: ArrayLike<number>,
  eps: number,
  scaleOffset: number,
  shiftOffset: number,
): Float64Array {
  const normed = layerNorm64(x, cols, eps);
  return normed.map((v, i) => (1 + mod[scaleOffset + (i % cols)]) * v + mod[shiftOffset + (i % cols)]);
}

/** RMSNorm of each contiguous group of weight.length values, times the weight, in float64. */
export function rmsNorm64(x: ArrayLike<number>, weight: ArrayLike<number>, eps: number): Float64Array {
  const n = weight.length;
  const out = new Float64Array(x.length);
  for (let base = 0; base < x.length; base += n) {
    let meanSquare = 0;
    for (let k = 0; k < n; k++) meanSquare += x[base + k] ** 2;
    meanSquare /= n;
    const inv = 1 / Math.sqrt(meanSquare + eps);
    for (let k = 0; k < n; k++) out[base + k] = x[base + k] * inv * weight[k];
  }
  return out;
}

function layerNormCase(rows: number, cols: number, eps: number, offset = 0, threads?: number): AuditCase {
  return {
    kernel: "layer_norm",
    label: `${rows}×${cols}${offset ? ` mean ${offset}` : ""}${threads ? `, ${threads} threads` : ""}`,
    build(g, rng) {
      const x = rng.normalArray(rows * cols, 2).map((v) => v + offset);
      const out = g.state("out", [rows, cols]);
      normNode(g, "op", { stats: "layer", x: g.input("x", [rows, cols]), out, groupSize: cols, eps, affine: { kind: "none" }, threads });
      return { inputs: [{ name: "x", data: x }], outputs: [{ name: "out", expected: layerNorm64(x, cols, eps) }] };
    },
  };
}

function layerNormModulateCase(rows: number, cols: number): AuditCase {
  const eps = 1e-6, scaleOffset = cols + 3, shiftOffset = 5;
  return {
    kernel: "layer_norm_modulate",
    label: `${rows}×${cols}`,
    build(g, rng) {
      const x = rng.normalArray(rows * cols), mod = rng.normalArray(3 * cols, 0.5);
      const out = g.state("out", [rows, cols]);
      normNode(g, "op", {
        stats: "layer",
        x: g.input("x", [rows, cols]),
        out,
        groupSize: cols,
        eps,
        affine: { kind: "modulate", mod: g.input("mod", [3 * cols]), scaleOffset, shiftOffset },
      });
      const expected = layerNormModulate64(x, cols, mod, eps, scaleOffset, shiftOffset);
      return { inputs: [{ name: "x", data: x }, { name: "mod", data: mod }], outputs: [{ name: "out", expected }] };
    },
  };
}

function rmsNormCase(rows: number, cols: number, groupSize: number, weightType: "bf16" | "f32", threads?: number): AuditCase {
  const eps = 1e-6;
  return {
    kernel: "rms_norm",
    label: `${rows}×${cols} groups of ${groupSize}, ${weightType} weight${threads ? `, ${threads} threads` : ""}`,
    build(g, rng) {
      const x = rng.normalArray(rows * cols, 1.5);
      const weight = rng.normalArray(groupSize, 0.2).map((v) => 1 + v);
      const weightValues = weightType === "bf16" ? roundToBf16(weight) : weight;
      const out = g.state("out", [rows, cols]);
      normNode(g, "op", {
        stats: "rms",
        x: g.input("x", [rows, cols]),
        out,
        groupSize,
        eps,
        affine: { kind: "weight", weight: g.input("weight", [groupSize], weightType) },
        threads,
      });
      const weightData = weightType === "bf16" ? packBf16(weight) : weight;
      return {
        inputs: [{ name: "x", data: x }, { name: "weight", data: weightData }],
        outputs: [{ name: "out", expected: rmsNorm64(x, weightValues, eps) }],
      };
    },
  };
}

export const normAuditCases: AuditCase[] = [
  layerNormCase(37, 53, 1e-6),
  layerNormCase(3, 4100, 1e-6),
  layerNormCase(29, 129, 1e-5, 40),
  layerNormCase(5, 3072, 1e-6, 1000),
  layerNormModulateCase(37, 129),
  layerNormModulateCase(5, 3072),
  rmsNormCase(37, 300, 300, "bf16"),
  rmsNormCase(29, 5 * 37, 37, "f32"),
  rmsNormCase(53, 3 * 128, 128, "bf16"),
  rmsNormCase(2, 4099, 4099, "f32"),
  // 70 000 groups: more workgroups than one grid dimension holds (65 535), so the dispatch spans x and y.
  rmsNormCase(7, 20000, 2, "f32"),
  // Both thread counts whatever the adapter: 256 and 32 are what GPUs get for these groups, 8 what software adapters get.
  layerNormCase(13, 300, 1e-6, 3, 256),
  layerNormCase(13, 300, 1e-6, 3, 8),
  rmsNormCase(11, 2 * 37, 37, "bf16", 32),
  rmsNormCase(11, 2 * 37, 37, "bf16", 8),
];
