// Float64 reference and audit cases for the matmul family. bf16 weights are compared against the exact values
// the GPU sees (the bf16-rounded weights, widened to float64).

import type { AuditCase } from "../audit.ts";
import { elementwiseNode } from "../elementwise.ts";
import {
  FEW_ROWS_MATMUL_CONFIG,
  matmul,
  MATMUL_SWEEP_CONFIGS,
  type MatmulConfig,
  matmulConfigFits,
  matmulConfigName,
  type MatmulEpilogue,
  matmulThreads,
  matmulWorkgroupBytes,
} from "../matmul.ts";
import type { Graph } from "../../runtime/graph.ts";
import type { Rng } from "../../runtime/random.ts";
import { packBf16, roundToBf16 } from "../../weights/dtypes.ts";

export function silu64(v: number): number {
  return v / (1 + Math.exp(-v));
}

export function geluTanh64(v: number): number {
  return 0.5 * v * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (v + 0.044715 * v * v * v)));
}

const EPILOGUES: Record<MatmulEpilogue, (v: number) => number> = { none: (v) => v, silu: silu64, gelu_tanh: geluTanh64 };

/** y[M, N] = epilogue(x[M, K] · w[N, K]ᵀ + bias) (+ initial), in float64. */
export function matmulReference(
  x: ArrayLike<number>,
  w: ArrayLike<number>,
  m: number,
  k: number,
  n: number,
  opts: { bias?: ArrayLike<number>; epilogue?: MatmulEpilogue; initial?: ArrayLike<number> } = {},
): Float64Array {
  const act = EPILOGUES[opts.epilogue ?? "none"];
  const y = new Float64Array(m * n);
  for (let i = 0; i < m; i++) {
    for (let j = 0; j < n; j++) {
      let s = 0;
      for (let t = 0; t < k; t++) s += x[i * k + t] * w[j * k + t];
      if (opts.bias) s += opts.bias[j];
      y[i * n + j] = act(s) + (opts.initial ? opts.initial[i * n + j] : 0);
    }
  }
  return y;
}

interface CaseSpec {
  m: number;
  k: number;
  n: number;
  weight: "bf16" | "f32";
  bias?: "bf16" | "f32";
  accumulate?: boolean;
  epilogue?: MatmulEpilogue;
  config?: MatmulConfig;
  /** Write to a fresh activation (then copied to the audited state) instead of straight into the state. */
  viaActivation?: boolean;
  /** Multiply in f16: the reference uses the f16-rounded operands, the tolerance covers the f16 step sums. */
  f16?: boolean;
}

function describe(c: CaseSpec): string {
  const parts = [`M${c.m} K${c.k} N${c.n}`, `W ${c.weight}`];
  if (c.bias) parts.push(`bias ${c.bias}`);
  if (c.accumulate) parts.push("accumulate");
  if (c.epilogue && c.epilogue !== "none") parts.push(c.epilogue);
  if (c.config) parts.push(matmulConfigName(c.config));
  if (c.viaActivation) parts.push("new activation");
  if (c.f16) parts.push("f16 math");
  return parts.join(", ");
}

/** Host data for a tensor of the given dtype: the packed words to upload and the values the GPU will see. */
function hostTensor(values: Float32Array, dtype: "bf16" | "f32"): { data: Float32Array | Uint32Array; exact: Float32Array } {
  return dtype === "bf16" ? { data: packBf16(values), exact: roundToBf16(values) } : { data: values, exact: values };
}

function roundToF16(values: Float32Array): Float32Array {
  return values.map((v) => Math.f16round(v));
}

/** f16 step sums over 16-32 products: about 2⁻¹¹·√BK relative error each, averaged down by the f32 accumulation. */
const F16_TOLERANCE = 3e-3;

function matmulCase(c: CaseSpec): AuditCase {
  return {
    kernel: "matmul",
    label: describe(c),
    tolerance: c.f16 ? F16_TOLERANCE : undefined,
    needsF16: c.f16,
    unsupported: (device) =>
      c.config && !matmulConfigFits(c.config, device, c.f16)
        ? `${matmulThreads(c.config)} threads, ${matmulWorkgroupBytes(c.config, c.f16)} B of workgroup memory`
        : undefined,
    build(g: Graph, rng: Rng) {
      const xValues = rng.normalArray(c.m * c.k);
      const w = hostTensor(rng.normalArray(c.n * c.k, 1 / Math.sqrt(c.k)), c.weight);
      const inputs = [{ name: "x", data: xValues }, { name: "w", data: w.data }];
      const x = g.input("x", [c.m, c.k]);
      const wt = g.input("w", [c.n, c.k], c.weight);
      let bias: number | undefined, biasExact: Float32Array | undefined;
      if (c.bias) {
        const b = hostTensor(rng.normalArray(c.n), c.bias);
        bias = g.input("bias", [c.n], c.bias);
        biasExact = b.exact;
        inputs.push({ name: "bias", data: b.data });
      }
      const initial = c.accumulate ? rng.normalArray(c.m * c.n) : undefined;
      const out = g.state("out", [c.m, c.n]);
      const options = { bias, epilogue: c.epilogue, config: c.config, accumulate: c.accumulate, f16: c.f16 };
      if (c.viaActivation) {
        const y = matmul(g, "matmul", x, wt, options);
        elementwiseNode(g, "copy", { op: "scale", a: y, out, cols: c.n, alpha: 1 });
      } else {
        matmul(g, "matmul", x, wt, { ...options, out });
      }
      const [xSeen, wSeen] = c.f16 ? [roundToF16(xValues), roundToF16(w.exact)] : [xValues, w.exact];
      const expected = matmulReference(xSeen, wSeen, c.m, c.k, c.n, { bias: biasExact, epilogue: c.epilogue, initial });
      return { inputs, outputs: [{ name: "out", expected, initial }] };
    },
  };
}

/** Shapes not multiple of any tile, odd K (bf16 pairs straddling rows), one row, K not a multiple of the K step. */
const SHAPE_CASES: CaseSpec[] = [
  { m: 37, k: 53, n: 29, weight: "bf16" },
  { m: 37, k: 53, n: 29, weight: "f32", bias: "f32" },
  { m: 37, k: 53, n: 29, weight: "bf16", bias: "bf16", viaActivation: true },
  { m: 130, k: 96, n: 77, weight: "bf16", bias: "bf16" },
  { m: 130, k: 96, n: 77, weight: "f32" },
  { m: 67, k: 257, n: 131, weight: "bf16" },
  { m: 67, k: 257, n: 131, weight: "f32", bias: "bf16" },
  { m: 1, k: 33, n: 65, weight: "bf16", bias: "f32" },
  { m: 1, k: 64, n: 65, weight: "bf16" },
  { m: 200, k: 128, n: 300, weight: "bf16" },
  { m: 200, k: 128, n: 300, weight: "f32", bias: "f32", viaActivation: true },
  { m: 200, k: 128, n: 300, weight: "bf16", bias: "f32", accumulate: true },
  { m: 67, k: 257, n: 131, weight: "bf16", accumulate: true },
  { m: 45, k: 100, n: 70, weight: "bf16", bias: "bf16" },
  { m: 37, k: 64, n: 53, weight: "bf16", bias: "f32", epilogue: "silu" },
  { m: 130, k: 96, n: 77, weight: "f32", bias: "bf16", epilogue: "gelu_tanh" },
  { m: 29, k: 37, n: 41, weight: "bf16", bias: "f32", epilogue: "gelu_tanh", accumulate: true },
  // 19 row tiles × 5 column tiles: the row-grouped tile order ends on a partial group.
  { m: 300, k: 20, n: 300, weight: "bf16", config: FEW_ROWS_MATMUL_CONFIG },
];

/** Every tile configuration a sweep may pick, on a vectorised and an element-wise shape. */
const CONFIG_CASES: CaseSpec[] = MATMUL_SWEEP_CONFIGS.flatMap((config) => [
  { m: 150, k: 76, n: 133, weight: "bf16" as const, bias: "f32" as const, config },
  { m: 45, k: 39, n: 70, weight: "f32" as const, config },
]);

/** f16 multiplication: vectorised and element-wise loads, bias, epilogue and accumulation, a long K, few rows. */
const F16_CASES: CaseSpec[] = [
  { m: 150, k: 76, n: 133, weight: "bf16", bias: "f32", f16: true },
  { m: 67, k: 257, n: 131, weight: "f32", f16: true },
  { m: 200, k: 128, n: 300, weight: "bf16", bias: "bf16", accumulate: true, epilogue: "gelu_tanh", f16: true },
  { m: 70, k: 1500, n: 90, weight: "bf16", f16: true },
  { m: 3, k: 96, n: 77, weight: "bf16", bias: "f32", f16: true },
  { m: 150, k: 76, n: 133, weight: "bf16", f16: true, config: { bm: 64, bn: 64, bk: 32, tm: 4, tn: 4 } },
];

export const matmulAuditCases: AuditCase[] = [...SHAPE_CASES, ...CONFIG_CASES, ...F16_CASES].map(matmulCase);
