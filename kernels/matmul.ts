// Matrix products in the nn.Linear layout: y[M, N] = x[M, K] · W[N, K]ᵀ (+ bias), x f32, W bf16 or f32.
// One WGSL family; the variant key is (W dtype, vectorised or element-wise loads, tile configuration, bias,
// accumulate, epilogue). The tile configuration comes from the caller, else from kernels/matmul_tuned.json for
// the device chosen with setMatmulDevice, else from a default that fits any WebGPU device.

import type { Graph } from "../runtime/graph.ts";
import { ceilDiv, grid1d, type KernelSpec } from "../runtime/kernel.ts";
import { type DType, shapeString } from "../runtime/tensor.ts";
import { readTuningFile, type TuningTable } from "./tuning_file.ts";

/** Output tile bm×bn per workgroup, register tile tm×tn per thread, K step bk (all multiples of 4). */
export interface MatmulConfig {
  bm: number;
  bn: number;
  bk: number;
  tm: number;
  tn: number;
}

export type MatmulEpilogue = "none" | "silu" | "gelu_tanh";

export interface MatmulOptions {
  /** f32 or bf16 tensor of N elements, added to every row. */
  bias?: number;
  /** Write into this f32 [M, N] tensor instead of a new activation. */
  out?: number;
  /** out += x·Wᵀ (needs `out`): a fused residual add. */
  accumulate?: boolean;
  /** Tile configuration; default: tuned for the device and shape class, else DEFAULT_MATMUL_CONFIG. */
  config?: MatmulConfig;
  /** Applied to x·Wᵀ + bias before it is written (or accumulated). */
  epilogue?: MatmulEpilogue;
}

/** 128×128 tiles, 8×8 per thread, 256 threads, 16 KiB of workgroup memory: fits every WebGPU device. */
export const DEFAULT_MATMUL_CONFIG: Readonly<MatmulConfig> = { bm: 128, bn: 128, bk: 8, tm: 8, tn: 8 };
/** For few rows (modulation vectors, a handful of tokens): short tiles waste less work on absent rows. */
export const FEW_ROWS_MATMUL_CONFIG: Readonly<MatmulConfig> = { bm: 16, bn: 64, bk: 16, tm: 4, tn: 4 };
const FEW_ROWS = 64;

/** The configurations a tuning sweep tries (those that exceed a device's workgroup memory are skipped). */
export const MATMUL_SWEEP_CONFIGS: readonly Readonly<MatmulConfig>[] = [
  DEFAULT_MATMUL_CONFIG,
  { bm: 128, bn: 128, bk: 16, tm: 8, tn: 8 },
  { bm: 64, bn: 256, bk: 8, tm: 8, tn: 8 },
  { bm: 256, bn: 64, bk: 8, tm: 8, tn: 8 },
  { bm: 128, bn: 64, bk: 16, tm: 8, tn: 8 },
  { bm: 64, bn: 128, bk: 16, tm: 8, tn: 8 },
  { bm: 128, bn: 64, bk: 8, tm: 8, tn: 4 },
  { bm: 64, bn: 128, bk: 8, tm: 4, tn: 8 },
  { bm: 64, bn: 64, bk: 16, tm: 4, tn: 4 },
  { bm: 32, bn: 64, bk: 16, tm: 4, tn: 4 },
  FEW_ROWS_MATMUL_CONFIG,
];

const MAX_THREADS = 256;
const MAX_ACCUMULATORS = 128;

export function matmulConfigName(c: MatmulConfig): string {
  return `${c.bm}x${c.bn}x${c.bk}/${c.tm}x${c.tn}`;
}

export function matmulThreads(c: MatmulConfig): number {
  return (c.bm / c.tm) * (c.bn / c.tn);
}

/** Workgroup memory of a configuration: two stages of the x and W tiles, f32. */
export function matmulWorkgroupBytes(c: MatmulConfig): number {
  return 2 * c.bk * (c.bm + c.bn) * 4;
}

/** Throws unless the configuration is one the shader can be instantiated with. */
export function validateMatmulConfig(c: MatmulConfig, where = "matmul"): void {
  const name = `${where}: tile configuration ${JSON.stringify(c)}`;
  for (const key of ["bm", "bn", "bk", "tm", "tn"] as const) {
    const v = c[key];
    if (!Number.isInteger(v) || v <= 0 || v % 4 !== 0) throw new Error(`${name}: ${key} must be a positive multiple of 4, got ${v}`);
  }
  if (c.bm % c.tm !== 0 || c.bn % c.tn !== 0) throw new Error(`${name}: bm must be a multiple of tm and bn of tn`);
  const threads = matmulThreads(c);
  if (threads > MAX_THREADS) throw new Error(`${name}: needs ${threads} threads per workgroup, more than ${MAX_THREADS}`);
  if (c.tm * c.tn > MAX_ACCUMULATORS) throw new Error(`${name}: a ${c.tm}×${c.tn} register tile exceeds ${MAX_ACCUMULATORS} accumulators`);
}

// ---- Tuned configurations ------------------------------------------------------------------------------------

/** kernels/matmul_tuned.json: device description → shape class → configuration. */
export type MatmulTuningTable = TuningTable<MatmulConfig>;

const TUNING_FILE = new URL("./matmul_tuned.json", import.meta.url);
let tuningTable: MatmulTuningTable | null = null;
let activeDevice: { description: string; workgroupBytes: number } | null = null;

/** Read the tuning file once; a missing file means no tuned configurations. */
export function loadMatmulTuning(file: URL = TUNING_FILE): MatmulTuningTable {
  return readTuningFile<MatmulConfig>(file, "shape class", (config, _key, where) => validateMatmulConfig(config, where));
}

/** Replace the tuning table read from kernels/matmul_tuned.json (null: read the file again when next needed). */
export function setMatmulTuning(table: MatmulTuningTable | null): void {
  tuningTable = table;
}

/** Choose the device whose tuned configurations matmul() uses (null: defaults only). */
export function setMatmulDevice(gpu: { adapterDescription: string; limits: { maxComputeWorkgroupStorageSize: number } } | null): void {
  activeDevice = gpu ? { description: gpu.adapterDescription, workgroupBytes: gpu.limits.maxComputeWorkgroupStorageSize } : null;
}

function bucket(v: number, edges: number[]): string {
  for (const e of edges) if (v <= e) return String(e);
  return "big";
}

/** Shapes that share a tuned configuration, e.g. "bf16.m4096.nbig.k4096" (each bound is an upper limit). */
export function matmulShapeClass(m: number, n: number, k: number, wDtype: DType): string {
  return `${wDtype}.m${bucket(m, [FEW_ROWS, 1024, 4096])}.n${bucket(n, [1024, 4096])}.k${bucket(k, [1024, 4096])}`;
}

/** The configuration matmul() uses for this shape on the active device. */
export function matmulConfigFor(m: number, n: number, k: number, wDtype: DType): MatmulConfig {
  if (activeDevice) {
    tuningTable ??= loadMatmulTuning();
    const tuned = tuningTable[activeDevice.description]?.[matmulShapeClass(m, n, k, wDtype)];
    if (tuned && matmulWorkgroupBytes(tuned) <= activeDevice.workgroupBytes) return { ...tuned };
  }
  return { ...(m <= FEW_ROWS ? FEW_ROWS_MATMUL_CONFIG : DEFAULT_MATMUL_CONFIG) };
}

// ---- Kernel declarations ------------------------------------------------------------------------------------

type WeightDType = "f32" | "bf16";

/** Bodies of read_x / read_w: one group of 4 k-consecutive elements, zero outside the matrix. The vectorised
 * forms need K % 4 == 0 (a group is then one aligned vec4, or vec2<u32> of bf16 pairs). */
const READ_X = {
  vec4: `if (row >= params.M || k >= params.K) { return vec4<f32>(0.0); }
  return x[(row * params.K + k) >> 2u];`,
  scalar: `var v = vec4<f32>(0.0);
  if (row < params.M) {
    let base = row * params.K;
    for (var q = 0u; q < 4u; q++) { if (k + q < params.K) { v[q] = x[base + k + q]; } }
  }
  return v;`,
};

const READ_W: Record<WeightDType, { vec4: string; scalar: string }> = {
  f32: {
    vec4: `if (n >= params.N || k >= params.K) { return vec4<f32>(0.0); }
  return w[(n * params.K + k) >> 2u];`,
    scalar: `var v = vec4<f32>(0.0);
  if (n < params.N) {
    let base = n * params.K;
    for (var q = 0u; q < 4u; q++) { if (k + q < params.K) { v[q] = w[base + k + q]; } }
  }
  return v;`,
  },
  bf16: {
    vec4: `if (n >= params.N || k >= params.K) { return vec4<f32>(0.0); }
  let p = w[(n * params.K + k) >> 2u];
  return vec4<f32>(bf16_lo(p.x), bf16_hi(p.x), bf16_lo(p.y), bf16_hi(p.y));`,
    // Element e = n·K + k lives in word e >> 1; with odd K, rows start mid-word.
    scalar: `var v = vec4<f32>(0.0);
  if (n < params.N) {
    let base = n * params.K;
    for (var q = 0u; q < 4u; q++) {
      if (k + q < params.K) {
        let e = base + k + q;
        let word = w[e >> 1u];
        v[q] = select(bf16_hi(word), bf16_lo(word), (e & 1u) == 0u);
      }
    }
  }
  return v;`,
  },
};

const kernels = new Map<string, KernelSpec>();

/** The declaration for one combination of load width and weight dtype (their binding types differ). */
export function matmulKernel(vectorised: boolean, wDtype: WeightDType): KernelSpec {
  const name = `matmul.${vectorised ? "vec4" : "scalar"}.${wDtype}`;
  let spec = kernels.get(name);
  if (!spec) {
    const wType = wDtype === "f32" ? (vectorised ? "array<vec4<f32>>" : "array<f32>") : (vectorised ? "array<vec2<u32>>" : "array<u32>");
    spec = {
      name,
      source: new URL("./matmul.wgsl", import.meta.url),
      bindings: [
        { name: "x", type: vectorised ? "array<vec4<f32>>" : "array<f32>", access: "read" },
        { name: "w", type: wType, access: "read" },
        // f32 bias is read through bitcast, bf16 bias as packed pairs.
        { name: "bias", type: "array<u32>", access: "read" },
        { name: "out", type: "array<f32>", access: "read_write" },
      ],
      params: [
        { name: "M", type: "u32" },
        { name: "N", type: "u32" },
        { name: "K", type: "u32" },
      ],
    };
    kernels.set(name, spec);
  }
  return spec;
}

const ACTIVATIONS: Record<MatmulEpilogue, string> = { none: "identity", silu: "silu", gelu_tanh: "gelu_tanh" };

// ---- Builder --------------------------------------------------------------------------------------------------

/** y[M, N] = epilogue(x[M, K] · W[N, K]ᵀ + bias), written to a new activation, to `out`, or added to `out`. */
export function matmul(g: Graph, name: string, x: number, w: number, opts: MatmulOptions = {}): number {
  const xs = g.get(x), ws = g.get(w);
  if (xs.dtype !== "f32") throw new Error(`${name}: x ${xs.name} must be f32, got ${xs.dtype}`);
  if (xs.shape.length !== 2) {
    throw new Error(`${name}: x ${xs.name} must be 2-D [M, K] (flatten leading dims), got ${shapeString(xs.shape)}`);
  }
  if (ws.dtype !== "bf16" && ws.dtype !== "f32") throw new Error(`${name}: weight ${ws.name} must be bf16 or f32, got ${ws.dtype}`);
  if (ws.shape.length !== 2) throw new Error(`${name}: weight ${ws.name} must be 2-D [N, K], got ${shapeString(ws.shape)}`);
  const [m, k] = xs.shape;
  const [n, kw] = ws.shape;
  if (kw !== k) {
    throw new Error(
      `${name}: x ${xs.name} ${shapeString(xs.shape)} has K = ${k} but weight ${ws.name} ${shapeString(ws.shape)} has K = ${kw}`,
    );
  }
  if (opts.bias !== undefined) {
    const bs = g.get(opts.bias);
    if (bs.dtype !== "f32" && bs.dtype !== "bf16") throw new Error(`${name}: bias ${bs.name} must be f32 or bf16, got ${bs.dtype}`);
    if (g.elementCount(opts.bias) !== n) throw new Error(`${name}: bias ${bs.name} ${shapeString(bs.shape)} must have N = ${n} elements`);
  }
  if (opts.accumulate && opts.out === undefined) throw new Error(`${name}: accumulate needs an out tensor to add to`);
  let out: number;
  if (opts.out !== undefined) {
    const os = g.get(opts.out);
    if (os.dtype !== "f32" || os.shape.length !== 2 || os.shape[0] !== m || os.shape[1] !== n) {
      throw new Error(`${name}: out ${os.name} must be f32 [${m}×${n}], got ${os.dtype} ${shapeString(os.shape)}`);
    }
    for (const operand of [x, w, opts.bias]) {
      if (operand !== undefined && g.rootOf(operand) === g.rootOf(opts.out)) {
        throw new Error(`${name}: out ${os.name} shares memory with operand ${g.get(operand).name}; a matmul cannot run in place`);
      }
    }
    out = opts.out;
  } else {
    out = g.activation(name, [m, n]);
  }
  const epilogue = opts.epilogue ?? "none";
  if (!(epilogue in ACTIVATIONS)) {
    throw new Error(`${name}: unknown epilogue "${epilogue}" (known: ${Object.keys(ACTIVATIONS).join(", ")})`);
  }
  const wDtype = ws.dtype;
  const config = opts.config ?? matmulConfigFor(m, n, k, wDtype);
  validateMatmulConfig(config, name);
  const vectorised = k % 4 === 0;
  const tiles = ceilDiv(m, config.bm) * ceilDiv(n, config.bn);
  g.add({
    name,
    kernel: matmulKernel(vectorised, wDtype),
    variant: {
      BM: config.bm,
      BN: config.bn,
      BK: config.bk,
      TM: config.tm,
      TN: config.tn,
      READ_X: vectorised ? READ_X.vec4 : READ_X.scalar,
      READ_W: vectorised ? READ_W[wDtype].vec4 : READ_W[wDtype].scalar,
      HAS_BIAS: opts.bias !== undefined,
      BIAS_BF16: opts.bias !== undefined && g.get(opts.bias).dtype === "bf16",
      ACCUMULATE: opts.accumulate ?? false,
      ACT: ACTIVATIONS[epilogue],
    },
    // Without a bias, x stands in for the binding (the shader never reads it).
    bindings: { x, w, bias: opts.bias ?? x, out },
    params: { M: m, N: n, K: k },
    workgroups: grid1d(tiles),
    flops: 2 * m * n * k,
  });
  return out;
}
