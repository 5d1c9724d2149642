// Matrix products in the nn.Linear layout: y[M, N] = x[M, K] · W[N, K]ᵀ (+ bias), x f32, W bf16 or f32.
// One WGSL family; the variant key is (W dtype, vectorised or element-wise loads, tile configuration, bias,
// accumulate, epilogue). The tile configuration comes from the caller, else it is chosen for the device the plan is
// compiled on (matmulConfigFor): tiles tuned for that adapter, the built-in table for its class of device
// (kernels/matmul_tuned.json), a rule for software adapters, else a default that fits any WebGPU device.

import type { Graph } from "../runtime/graph.ts";
import type { DeviceCapabilities } from "../runtime/device.ts";
import { ceilDiv, grid1d, type KernelSpec, type Variant } from "../runtime/kernel.ts";
import { type DType, shapeString } from "../runtime/tensor.ts";
import { checkTuningTable, readTuningFile, type TuningTable } from "./tuning_file.ts";
import builtinTiles from "./matmul_tuned.json" with { type: "json" };
import { checkWarpCols, joinBlocks, LANES, outerProductStep, range, threadPositionLines } from "./register_tile.ts";

/** Output tile bm×bn per workgroup, register tile tm×tn per thread (bm/tm × bn/tn threads), K step bk (a
 * multiple of 4), and the form of the inner product (kernels/matmul.wgsl describes both). */
export interface MatmulConfig {
  bm: number;
  bn: number;
  bk: number;
  tm: number;
  tn: number;
  /** "outer" (default; tm and tn multiples of 4): outer products from transposed tiles, few live operand registers.
   * "dot": dot products over groups of 4 k from K-contiguous tiles, any tm and tn.
   * "direct": no workgroup tiles; every thread reads its rows of x and columns of W straight from the buffers, bk k
   * between barriers (any tm and tn). For software adapters, where every load is a per-lane gather and every barrier
   * a switch between the SIMD batches of a workgroup, staging through workgroup memory only adds loads and barriers. */
  form?: MatmulForm;
  /** Threads of one 32-thread warp along a row of the bn/tn × bm/tm thread grid (see threadPositionLines); default:
   * the grid in row-major order. */
  warpCols?: number;
}

export type MatmulForm = "outer" | "dot" | "direct";

export type MatmulEpilogue = "none" | "silu" | "gelu_tanh";

export interface MatmulOptions {
  /** f32 or bf16 tensor of N elements, added to every row. */
  bias?: number;
  /** Write into this f32 [M, N] tensor instead of a new activation. */
  out?: number;
  /** out += x·Wᵀ (needs `out`): a fused residual add. */
  accumulate?: boolean;
  /** Tile configuration; default: chosen for the device and shape class when the plan is compiled (matmulConfigFor). */
  config?: MatmulConfig;
  /** Applied to x·Wᵀ + bias before it is written (or accumulated). */
  epilogue?: MatmulEpilogue;
  /** Multiply in f16 (needs shader-f16): x and W are rounded to f16 as they are staged, the products of one K step
   * are summed in packed f16 pairs, and the step sums are accumulated in f32; about 1e-3 relative error for K in the
   * thousands. Packed f16 has twice the multiply-add rate of f32, but on the H100 this form measures no faster than
   * the f32 one (both about 42 TFLOP/s): the f32 kernel is not limited by its multiply-add rate there. */
  f16?: boolean;
}

/** 128×128 tiles, 8×8 per thread, 256 threads, 16 KiB of workgroup memory: fits every WebGPU device. */
export const DEFAULT_MATMUL_CONFIG: Readonly<MatmulConfig> = { bm: 128, bn: 128, bk: 8, tm: 8, tn: 8 };
/** The f16 default: f16 tiles take half the workgroup memory, so a K step twice as deep fits the same 16 KiB. */
export const DEFAULT_F16_MATMUL_CONFIG: Readonly<MatmulConfig> = { bm: 128, bn: 128, bk: 16, tm: 8, tn: 8 };
/** For few rows (modulation vectors, a handful of tokens): short tiles waste less work on absent rows. */
export const FEW_ROWS_MATMUL_CONFIG: Readonly<MatmulConfig> = { bm: 16, bn: 64, bk: 16, tm: 4, tn: 4 };
const FEW_ROWS = 64;
/** Software adapters (llvmpipe), f32 multiplication: the direct form, which compiles in a fraction of the tiled
 * forms' time and runs about twice as fast there (bench/results/matmul_llvmpipe.txt); 8 × 16 outputs per thread, whose
 * matmuls take 13% less time than 8 × 8 in a tiny-checkpoint forward with no measurable cost in a cold compile
 * (bench/results/dit_tiny_llvmpipe.txt). */
export const SOFTWARE_MATMUL_CONFIG: Readonly<MatmulConfig> = { bm: 64, bn: 128, bk: 4, tm: 8, tn: 16, form: "direct" };
export const SOFTWARE_FEW_ROWS_MATMUL_CONFIG: Readonly<MatmulConfig> = { bm: 8, bn: 64, bk: 4, tm: 2, tn: 8, form: "direct" };

/** The configurations a tuning sweep tries (those that exceed a device's workgroup memory are skipped). */
export const MATMUL_SWEEP_CONFIGS: readonly Readonly<MatmulConfig>[] = [
  DEFAULT_MATMUL_CONFIG,
  { ...DEFAULT_MATMUL_CONFIG, warpCols: 8 },
  { bm: 128, bn: 128, bk: 16, tm: 8, tn: 8 },
  { bm: 64, bn: 64, bk: 16, tm: 4, tn: 4 },
  { bm: 128, bn: 64, bk: 16, tm: 8, tn: 8 },
  { bm: 64, bn: 128, bk: 16, tm: 8, tn: 8 },
  { bm: 128, bn: 64, bk: 32, tm: 8, tn: 8 },
  { bm: 64, bn: 256, bk: 16, tm: 8, tn: 8 },
  { bm: 256, bn: 64, bk: 16, tm: 8, tn: 8 },
  { bm: 128, bn: 256, bk: 8, tm: 8, tn: 16 },
  // 512 threads: devices whose threads share 64 K registers then give each at most 128, which keeps a K step of 16
  // from spreading into more registers than two 256-thread workgroups would get.
  { bm: 256, bn: 128, bk: 16, tm: 8, tn: 8 },
  { bm: 128, bn: 128, bk: 16, tm: 8, tn: 8, form: "dot" },
  { bm: 64, bn: 64, bk: 16, tm: 4, tn: 4, form: "dot" },
  { bm: 32, bn: 64, bk: 16, tm: 4, tn: 4 },
  FEW_ROWS_MATMUL_CONFIG,
  SOFTWARE_MATMUL_CONFIG,
  SOFTWARE_FEW_ROWS_MATMUL_CONFIG,
];

/** The largest workgroup any WebGPU device offers; a device's own limit (maxComputeInvocationsPerWorkgroup, at least
 * 256) is checked by matmulConfigFits. More threads per workgroup also cap each thread's registers on GPUs whose
 * register file is shared by the resident threads (64 K registers: at most 128 per thread at 512 threads). */
const MAX_THREADS = 1024;
const MAX_ACCUMULATORS = 128;
/** What every WebGPU device allows; the tiles chosen without a device stay within it. */
const BASELINE_THREADS = 256;

export function matmulConfigName(c: MatmulConfig): string {
  const form = c.form === "dot" || c.form === "direct" ? c.form : "";
  return `${c.bm}x${c.bn}x${c.bk}/${c.tm}x${c.tn}${form}${c.warpCols ? `w${c.warpCols}` : ""}`;
}

export function matmulThreads(c: MatmulConfig): number {
  return (c.bm / c.tm) * (c.bn / c.tn);
}

/** Workgroup memory of a configuration: two stages of the x and W tiles, f32 (f16 with `f16`; in the dot form,
 * rows padded by one vec4); none in the direct form. */
export function matmulWorkgroupBytes(c: MatmulConfig, f16 = false): number {
  if (c.form === "direct") return 0;
  return c.form === "dot" ? 2 * (c.bm + c.bn) * (c.bk / 4 + 1) * 16 : 2 * (c.bm + c.bn) * c.bk * (f16 ? 2 : 4);
}

/** Throws unless the configuration is one the shader can be instantiated with. */
export function validateMatmulConfig(c: MatmulConfig, where = "matmul", f16 = false): void {
  const name = `${where}: tile configuration ${JSON.stringify(c)}`;
  for (const key of ["bm", "bn", "bk", "tm", "tn"] as const) {
    const v = c[key];
    if (!Number.isInteger(v) || v <= 0) throw new Error(`${name}: ${key} must be a positive integer, got ${v}`);
  }
  if (c.bk % 4 !== 0) throw new Error(`${name}: bk must be a multiple of 4, got ${c.bk}`);
  if (c.bm % c.tm !== 0 || c.bn % c.tn !== 0) throw new Error(`${name}: bm must be a multiple of tm and bn of tn`);
  if (c.form !== undefined && c.form !== "outer" && c.form !== "dot" && c.form !== "direct") {
    throw new Error(`${name}: form must be "outer", "dot" or "direct"`);
  }
  if (f16 && c.form !== undefined && c.form !== "outer") throw new Error(`${name}: f16 multiplication has the outer form only`);
  if ((c.form ?? "outer") === "outer" && (c.tm % 4 !== 0 || c.tn % 4 !== 0)) {
    throw new Error(`${name}: the outer form needs tm and tn to be multiples of 4 (use form "dot" otherwise)`);
  }
  const threads = matmulThreads(c);
  if (c.warpCols !== undefined) checkWarpCols(c.warpCols, c.bn / c.tn, c.bm / c.tm, name);
  if (threads > MAX_THREADS) throw new Error(`${name}: needs ${threads} threads per workgroup, more than ${MAX_THREADS}`);
  if (c.tm * c.tn > MAX_ACCUMULATORS) throw new Error(`${name}: a ${c.tm}×${c.tn} register tile exceeds ${MAX_ACCUMULATORS} accumulators`);
}

// ---- Tile choice ----------------------------------------------------------------------------------------------

/** kernels/matmul_tuned.json: device class → shape class → configuration. */
export type MatmulTuningTable = TuningTable<MatmulConfig>;

/** The built-in table. Its nvidia-datacenter entries are the sweep winners measured on an H100 80GB HBM3 (bench
 * matmul --sweep, bench/results/matmul*.txt), the best known for NVIDIA's datacenter parts; the class of large M and
 * N at K = 4096 then took the 512-thread 256x128x16/8x8, 3% faster on an H200 (bench/results/tiles_tried_h200.txt). */
export const BUILTIN_MATMUL_TILES: MatmulTuningTable = checkTuningTable<MatmulConfig>(
  builtinTiles,
  "kernels/matmul_tuned.json",
  "shape class",
  (config, _key, where) => validateMatmulConfig(config, where),
);

/** Read and check a tuning file in the layout of kernels/matmul_tuned.json; a missing file means none. */
export function loadMatmulTuning(file: URL): MatmulTuningTable {
  return readTuningFile<MatmulConfig>(file, "shape class", (config, _key, where) => validateMatmulConfig(config, where));
}

function bucket(v: number, edges: number[]): string {
  for (const e of edges) if (v <= e) return String(e);
  return "big";
}

/** Shapes that share a tuned configuration, e.g. "bf16.m4096.nbig.k4096" (each bound is an upper limit), prefixed
 * "f16." for f16 multiplication. */
export function matmulShapeClass(m: number, n: number, k: number, wDtype: DType, f16 = false): string {
  return `${f16 ? "f16." : ""}${wDtype}.m${bucket(m, [FEW_ROWS, 1024, 4096])}.n${bucket(n, [1024, 4096])}.k${bucket(k, [1024, 4096])}`;
}

/** Whether a configuration can run this product on the device (f16 needs the outer form; workgroup memory and
 * threads per workgroup within the device's limits, or the WebGPU minimums without a device). */
export function matmulConfigFits(c: MatmulConfig, device: DeviceCapabilities | null, f16 = false): boolean {
  return (!f16 || (c.form ?? "outer") === "outer") &&
    matmulWorkgroupBytes(c, f16) <= (device?.limits.maxComputeWorkgroupStorageSize ?? 16384) &&
    matmulThreads(c) <= (device?.limits.maxComputeInvocationsPerWorkgroup ?? BASELINE_THREADS);
}

/** The configuration matmul() uses for this shape on a device (null: one that fits any device): the tiles tuned for
 * the adapter, else the built-in entry for its device class, else the rule — few rows get short tiles; software
 * adapters (llvmpipe) take the direct form for f32 multiplication, and the K step of 8 for f16 (whose unrolled code
 * compiles in half the time there). */
export function matmulConfigFor(
  device: DeviceCapabilities | null,
  m: number,
  n: number,
  k: number,
  wDtype: DType,
  f16 = false,
): MatmulConfig {
  if (device) {
    const key = matmulShapeClass(m, n, k, wDtype, f16);
    const tuned = device.tiles.matmul?.[key] as MatmulConfig | undefined;
    for (const c of [tuned, BUILTIN_MATMUL_TILES[device.deviceClass]?.[key]]) {
      if (c && matmulConfigFits(c, device, f16)) return { ...c };
    }
  }
  if (device?.software && !f16) return { ...(m <= FEW_ROWS ? SOFTWARE_FEW_ROWS_MATMUL_CONFIG : SOFTWARE_MATMUL_CONFIG) };
  if (m <= FEW_ROWS) return { ...FEW_ROWS_MATMUL_CONFIG };
  return { ...(f16 && !device?.software ? DEFAULT_F16_MATMUL_CONFIG : DEFAULT_MATMUL_CONFIG) };
}

// ---- Kernel declarations ------------------------------------------------------------------------------------

type WeightDType = "f32" | "bf16";

/** Bodies of read_x / read_w: one group of 4 k-consecutive elements of a row inside the matrix, zero where k ≥ K.
 * The vectorised forms need K % 4 == 0 (a group is then one aligned vec4, or vec2<u32> of bf16 pairs, entirely
 * inside or entirely outside K). */
const READ_X = { vec4: alignedGroup("x", "row"), scalar: elementGroup("row", (e) => `x[${e}]`) };

const READ_W: Record<WeightDType, { vec4: string; scalar: string }> = {
  f32: { vec4: alignedGroup("w", "n"), scalar: elementGroup("n", (e) => `w[${e}]`) },
  bf16: {
    vec4: `let p = w[(n * params.K + k) >> 2u];
  return select(vec4<f32>(0.0), vec4<f32>(bf16_lo(p.x), bf16_hi(p.x), bf16_lo(p.y), bf16_hi(p.y)), k < params.K);`,
    // Element e = n·K + k lives in word e >> 1; with odd K, rows start mid-word.
    scalar: elementGroup("n", (e) => `bf16_element(${e})`),
  },
};

/** A group read as one aligned vec4 of an f32 buffer. */
function alignedGroup(buffer: string, row: string): string {
  return `return select(vec4<f32>(0.0), ${buffer}[(${row} * params.K + k) >> 2u], k < params.K);`;
}

/** A group read element by element (`element` reads flat index e), each lane zero past K. */
function elementGroup(row: string, element: (e: string) => string): string {
  const lanes = LANES.map((lane, q) => {
    const e = q === 0 ? "base" : `base + ${q}u`;
    const k = q === 0 ? "k" : `k + ${q}u`;
    return `  if (${k} < params.K) { v.${lane} = ${element(e)}; }`;
  });
  return `var v = vec4<f32>(0.0);\n  let base = ${row} * params.K + k;\n${lanes.join("\n")}\n  return v;`;
}

/** Helper the element-wise bf16 reader needs (declared only in that variant, where w is array<u32>). */
const BF16_ELEMENT = `fn bf16_element(e: u32) -> f32 {
  let word = w[e >> 1u];
  return select(bf16_hi(word), bf16_lo(word), (e & 1u) == 0u);
}`;

// ---- Generated per-thread code --------------------------------------------------------------------------------

type CodeBlocks = Record<"TILED" | "TILES" | "POSITION" | "DECLARE" | "FETCH" | "STORE" | "COMPUTE" | "FLUSH" | "WRITE", string>;

/** The tile configuration a node's variant was built with. */
function matmulConfigOfVariant(v: Variant): MatmulConfig {
  const config: MatmulConfig = { bm: Number(v.BM), bn: Number(v.BN), bk: Number(v.BK), tm: Number(v.TM), tn: Number(v.TN) };
  if (v.FORM === "dot" || v.FORM === "direct") config.form = v.FORM;
  if (Number(v.WARP_COLS) > 0) config.warpCols = Number(v.WARP_COLS);
  return config;
}

/** The unrolled blocks of kernels/matmul.wgsl for a configuration validateMatmulConfig accepted (see the comment at
 * the top there). */
function matmulCodeBlocks(c: MatmulConfig, f16 = false): CodeBlocks {
  const blocks = c.form === "direct" ? directFormBlocks(c) : c.form === "dot" ? dotFormBlocks(c) : outerFormBlocks(c, f16);
  return { ...blocks, POSITION: threadPositionLines(c.warpCols, "WGX") };
}

/** The blocks of one form: all but POSITION, which every form derives alike from warpCols. */
type FormBlocks = Omit<CodeBlocks, "POSITION">;

/** Accumulator declarations and writes of the dot and direct forms, whose thread (tx, ty) owns rows ty + i·WGY and
 * columns tx + j·WGX. */
function strideOwnedBlocks(c: MatmulConfig): { declare: string[]; write: string[] } {
  const wgx = c.bn / c.tn, wgy = c.bm / c.tm;
  const declare: string[] = [], write: string[] = [];
  for (let i = 0; i < c.tm; i++) {
    for (let j = 0; j < c.tn; j++) {
      declare.push(`  var acc_${i}_${j} = 0.0;`);
      write.push(`  write_out(row0 + ty + ${i * wgy}u, col0 + tx + ${j * wgx}u, acc_${i}_${j});`);
    }
  }
  return { declare, write };
}

/** Transposed tiles: x_tile[stage][k][i][ty] holds rows 4·(i·WGY + ty) .. +3 at k (w_tile likewise with tx). A load
 * unit is a 4×4 block, four rows × four consecutive k, read as four vec4s and transposed in registers into four
 * whole-vec4 stores (a store to one lane of a shared vec4 would be a read-modify-write of all four). Units of x come
 * first, then units of W; neighbouring threads take neighbouring k groups of the same four rows. */
function outerFormBlocks(c: MatmulConfig, f16: boolean): FormBlocks {
  const threads = matmulThreads(c);
  const wgx = c.bn / c.tn, wgy = c.bm / c.tm, bk4 = c.bk / 4, tm4 = c.tm / 4, tn4 = c.tn / 4;
  const declare: string[] = [], fetch: string[] = [], store: string[] = [], compute: string[] = [], write: string[] = [];
  const flush: string[] = [];
  const elem = f16 ? "f16" : "f32";
  const tiles = `var<workgroup> x_tile: array<array<array<array<vec4<${elem}>, WGY>, ${tm4}>, BK>, 2u>;
var<workgroup> w_tile: array<array<array<array<vec4<${elem}>, WGX>, ${tn4}>, BK>, 2u>;`;
  for (let i = 0; i < c.tm; i++) {
    for (let j = 0; j < c.tn; j++) declare.push(`  var acc_${i}_${j} = 0.0;`);
    // f16: the step sums of columns 2p and 2p + 1, one packed pair, added into the f32 accumulators after each step.
    for (let p = 0; f16 && p < c.tn / 2; p++) {
      declare.push(`  var h_${i}_${p} = vec2<f16>(0.0);`);
      flush.push(`      acc_${i}_${2 * p} += f32(h_${i}_${p}.x);`, `      acc_${i}_${2 * p + 1} += f32(h_${i}_${p}.y);`);
      flush.push(`      h_${i}_${p} = vec2<f16>(0.0);`);
    }
  }
  const unitsX = (c.bm / 4) * bk4, unitsW = (c.bn / 4) * bk4, units = unitsX + unitsW;
  const rounds = Math.ceil(units / threads);
  const tileUnits = [
    { name: "x", first: "row0", last: "last_row", threads: "WGY", offset: 0, count: unitsX },
    { name: "w", first: "col0", last: "last_col", threads: "WGX", offset: unitsX, count: unitsW },
  ];
  for (let l = 0; l < rounds; l++) {
    const regs = range(4).map((r) => `u${l}_${r}`);
    for (const reg of regs) declare.push(`  var ${reg} = vec4<f32>(0.0);`);
    const u = l === 0 ? "lid" : `(lid + ${l * threads}u)`;
    // Which tiles this round's units can fall in, as compile-time facts.
    const lo = l * threads, hi = Math.min((l + 1) * threads, units);
    const parts = tileUnits.filter((t) => lo < t.offset + t.count && hi > t.offset);
    const fetchParts: string[] = [], storeParts: string[] = [];
    for (const t of parts) {
      const local = t.offset === 0 ? u : `(${u} - ${t.offset}u)`;
      const group = `(${local} / ${bk4}u)`, kq = `(${local} % ${bk4}u)`;
      const reads = regs.map((reg, r) => `${reg} = read_${t.name}(min(${t.first} + ${group} * 4u + ${r}u, ${t.last}), k0 + ${kq} * 4u);`);
      const writes = LANES.map((comp, e) =>
        `${t.name}_tile[base][${kq} * 4u + ${e}u][${group} / ${t.threads}][${group} % ${t.threads}] = ` +
        (f16
          ? `vec4<f16>(vec4<f32>(${regs.map((reg) => `${reg}.${comp}`).join(", ")}));`
          : `vec4<f32>(${regs.map((reg) => `${reg}.${comp}`).join(", ")});`)
      );
      const conditions: string[] = [];
      if (lo < t.offset) conditions.push(`${u} >= ${t.offset}u`);
      if ((l + 1) * threads > t.offset + t.count) conditions.push(`${u} < ${t.offset + t.count}u`);
      const cond = conditions.join(" && ");
      fetchParts.push(cond ? `if (${cond}) { ${reads.join(" ")} }` : reads.join(" "));
      storeParts.push(cond ? `if (${cond}) { ${writes.join(" ")} }` : writes.join(" "));
    }
    fetch.push(...fetchParts.map((line) => `      ${line}`));
    store.push(...storeParts.map((line) => `      ${line}`));
  }
  compute.push(
    ...outerProductStep({
      k: c.bk,
      rows: c.tm,
      cols: c.tn,
      aTile: "x_tile",
      aPosition: "ty",
      bTile: "w_tile",
      bPosition: "tx",
      packedF16: f16,
    }),
  );
  for (let i = 0; i < c.tm; i++) {
    const row = `row0 + (${(i >> 2) * wgy}u + ty) * 4u + ${i & 3}u`;
    for (let j = 0; j < c.tn; j++) {
      write.push(`  write_out(${row}, col0 + (${(j >> 2) * wgx}u + tx) * 4u + ${j & 3}u, acc_${i}_${j});`);
    }
  }
  return joinBlocks({
    TILED: "true",
    TILES: tiles,
    DECLARE: declare,
    FETCH: fetch,
    STORE: store,
    COMPUTE: compute,
    FLUSH: flush,
    WRITE: write,
  });
}

/** K-contiguous tiles: x_tile[stage][i][ty][g] holds x[row0 + ty + i·WGY, k0 + 4g .. +3], rows padded to BK/4 + 1
 * vec4s (w_tile likewise). Group g of a tile is row g / BK4, k group g % BK4, so neighbouring threads read
 * neighbouring 16-byte pieces of one row. */
function dotFormBlocks(c: MatmulConfig): FormBlocks {
  const threads = matmulThreads(c);
  const bk4 = c.bk / 4;
  const { declare, write } = strideOwnedBlocks(c);
  const fetch: string[] = [], store: string[] = [], compute: string[] = [];
  const tiles = `var<workgroup> x_tile: array<array<array<array<vec4<f32>, ${bk4 + 1}>, WGY>, TM>, 2u>;
var<workgroup> w_tile: array<array<array<array<vec4<f32>, ${bk4 + 1}>, WGX>, TN>, 2u>;`;
  const tileRows = [
    { name: "x", rows: c.bm, first: "row0", last: "last_row", threads: "WGY" },
    { name: "w", rows: c.bn, first: "col0", last: "last_col", threads: "WGX" },
  ];
  for (const t of tileRows) {
    const groups = t.rows * bk4;
    const loads = Math.ceil(groups / threads);
    for (let l = 0; l < loads; l++) {
      const reg = `${t.name}g${l}`;
      declare.push(`  var ${reg} = vec4<f32>(0.0);`);
      const g = l === 0 ? "lid" : `(lid + ${l * threads}u)`;
      const partial = (l + 1) * threads > groups;
      const open = partial ? `if (${g} < ${groups}u) { ` : "";
      const close = partial ? " }" : "";
      fetch.push(`      ${open}${reg} = read_${t.name}(min(${t.first} + ${g} / ${bk4}u, ${t.last}), k0 + (${g} % ${bk4}u) * 4u);${close}`);
      const row = `(${g} / ${bk4}u)`;
      store.push(`      ${open}${t.name}_tile[base][${row} / ${t.threads}][${row} % ${t.threads}][${g} % ${bk4}u] = ${reg};${close}`);
    }
  }
  for (let q = 0; q < bk4; q++) {
    compute.push("      {");
    for (let j = 0; j < c.tn; j++) compute.push(`        let b${j} = w_tile[st][${j}][tx][${q}];`);
    for (let i = 0; i < c.tm; i++) {
      compute.push(`        let a${i} = x_tile[st][${i}][ty][${q}];`);
      for (const comp of LANES) {
        for (let j = 0; j < c.tn; j++) compute.push(`        acc_${i}_${j} = fma(a${i}.${comp}, b${j}.${comp}, acc_${i}_${j});`);
      }
    }
    compute.push("      }");
  }
  return joinBlocks({
    TILED: "true",
    TILES: tiles,
    DECLARE: declare,
    FETCH: fetch,
    STORE: store,
    COMPUTE: compute,
    FLUSH: "",
    WRITE: write,
  });
}

/** No tiles: thread (tx, ty) owns rows ty + i·WGY and columns tx + j·WGX (as in the dot form) and, per pass, reads
 * the BK/4 groups of four k of each straight from x and W (unrolled), accumulating their dot products. */
function directFormBlocks(c: MatmulConfig): FormBlocks {
  const wgx = c.bn / c.tn, wgy = c.bm / c.tm;
  const { declare, write } = strideOwnedBlocks(c);
  const compute: string[] = [];
  for (let q = 0; q < c.bk / 4; q++) {
    compute.push(`      {`, `        let k = s * BK + ${4 * q}u;`);
    for (let i = 0; i < c.tm; i++) compute.push(`        let a${i} = read_x(min(row0 + ty + ${i * wgy}u, last_row), k);`);
    for (let j = 0; j < c.tn; j++) compute.push(`        let b${j} = read_w(min(col0 + tx + ${j * wgx}u, last_col), k);`);
    for (let i = 0; i < c.tm; i++) {
      for (let j = 0; j < c.tn; j++) compute.push(`        acc_${i}_${j} += dot(a${i}, b${j});`);
    }
    compute.push("      }");
  }
  return joinBlocks({
    TILED: "false",
    TILES: "",
    DECLARE: declare,
    FETCH: "",
    STORE: "",
    COMPUTE: compute,
    FLUSH: "",
    WRITE: write,
  });
}

const kernels = new Map<string, KernelSpec>();

/** The declaration for one combination of load width and weight dtype (their binding types differ). */
export function matmulKernel(vectorised: boolean, wDtype: WeightDType, f16 = false): KernelSpec {
  const name = `matmul.${vectorised ? "vec4" : "scalar"}.${wDtype}${f16 ? ".f16" : ""}`;
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
      usesF16: f16,
      expand: (v) => matmulCodeBlocks(matmulConfigOfVariant(v), f16),
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
  const f16 = opts.f16 ?? false;
  // Without an explicit configuration the node starts with the one that fits any device, and the plan compiler
  // swaps in the one chosen for its device.
  const tileChoice = (device: DeviceCapabilities | null) => {
    const config = opts.config ?? matmulConfigFor(device, m, n, k, wDtype, f16);
    validateMatmulConfig(config, name, f16);
    if (device && !matmulConfigFits(config, device, f16)) {
      throw new Error(
        `${name}: tile configuration ${matmulConfigName(config)} needs ${matmulThreads(config)} threads and ${
          matmulWorkgroupBytes(config, f16)
        } B of workgroup memory per workgroup; ${device.description} allows ${device.limits.maxComputeInvocationsPerWorkgroup} and ${device.limits.maxComputeWorkgroupStorageSize} B`,
      );
    }
    const variant = {
      BM: config.bm,
      BN: config.bn,
      BK: config.bk,
      TM: config.tm,
      TN: config.tn,
      FORM: config.form ?? "outer",
      WARP_COLS: config.warpCols ?? 0,
    };
    return { variant, workgroups: grid1d(ceilDiv(m, config.bm) * ceilDiv(n, config.bn)) };
  };
  const initial = tileChoice(null);
  const vectorised = k % 4 === 0;
  g.add({
    name,
    kernel: matmulKernel(vectorised, wDtype, f16),
    variant: {
      ...initial.variant,
      READ_X: vectorised ? READ_X.vec4 : READ_X.scalar,
      READ_W: vectorised ? READ_W[wDtype].vec4 : READ_W[wDtype].scalar,
      HELPERS: !vectorised && wDtype === "bf16" ? BF16_ELEMENT : "",
      HAS_BIAS: opts.bias !== undefined,
      BIAS_BF16: opts.bias !== undefined && g.get(opts.bias).dtype === "bf16",
      ACCUMULATE: opts.accumulate ?? false,
      ACT: ACTIVATIONS[epilogue],
    },
    // Without a bias, x stands in for the binding (the shader never reads it).
    bindings: { x, w, bias: opts.bias ?? x, out },
    params: { M: m, N: n, K: k },
    workgroups: initial.workgroups,
    flops: 2 * m * n * k,
    // Explicit tiles stay as given; choosing them for a device only checks that they fit it.
    chooseTiles: tileChoice,
  });
  return out;
}
