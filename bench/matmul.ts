// Matmul throughput: y[M, N] = x[M, K] · W[N, K]ᵀ on random data, reported in TFLOP/s (median of the timed runs).
//
//   deno run -A bench/matmul.ts [--shapes M,K,N;M,K,N] [--dtype bf16,f32] [--iters n] [--small]
//                               [--config 128x128x8/8x8[w8][,…]] [--sweep [--write] [--tuning-file path]] [--f16]
//
// Times come from timestamp queries around the dispatch when the adapter has them, else from the wall clock
// around a submit-and-wait of the plan. --sweep times every tile configuration on every shape, prints a table and
// the winners; --write stores the winner of each shape class for this device class in kernels/matmul_tuned.json (or in
// --tuning-file), keeping the entries of other devices and classes.
// --f16 times f16 multiplication (kernels/matmul.ts `f16`) and sweeps and records its own shape classes ("f16.…").
// Every run checks a few output entries against a float64 dot product.

import { resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { type GpuContext, openGpu } from "../runtime/device.ts";
import { Graph } from "../runtime/graph.ts";
import { Plan } from "../runtime/executor.ts";
import {
  loadMatmulTuning,
  matmul,
  MATMUL_SWEEP_CONFIGS,
  type MatmulConfig,
  matmulConfigFits,
  matmulConfigFor,
  matmulConfigName,
  matmulShapeClass,
  validateMatmulConfig,
} from "../kernels/matmul.ts";
import { applyDeviceTuning } from "../kernels/tuning.ts";
import { bf16ToF32 } from "../weights/dtypes.ts";
import { median, parseBenchArgs } from "./common.ts";

export const USAGE = `usage: deno task bench matmul [--shapes M,K,N;M,K,N] [--dtype bf16,f32] [--iters n] [--small]
         [--config 128x128x8/8x8[dot|direct][wC][,…]] [--sweep [--write] [--tuning-file path]] [--f16]
Matmul throughput y = x·Wᵀ on random data (TFLOP/s, median of the timed runs); --sweep times every tile configuration
and --write stores the winners in kernels/matmul_tuned.json; --small: shapes for a software adapter.`;

export type WeightDType = "bf16" | "f32";

export interface Shape {
  m: number;
  k: number;
  n: number;
}

const GPU_SHAPES = "2560,4096,4096;8704,4096,36864;2560,3072,9216";
const SMALL_SHAPES = "128,256,192;256,512,384";
const TUNING_FILE = new URL("../kernels/matmul_tuned.json", import.meta.url);
/** Deeper K steps, which only f16 tiles fit. */
const F16_EXTRA_CONFIGS: MatmulConfig[] = [{ bm: 128, bn: 128, bk: 32, tm: 8, tn: 8 }, { bm: 128, bn: 256, bk: 16, tm: 8, tn: 16 }];

function parseShapes(text: string): Shape[] {
  return text.split(";").filter((s) => s.trim()).map((s) => {
    const dims = s.split(",").map((d) => Number(d.trim()));
    if (dims.length !== 3 || dims.some((d) => !Number.isInteger(d) || d <= 0)) {
      throw new Error(`--shapes: "${s}" is not M,K,N with three positive integers`);
    }
    return { m: dims[0], k: dims[1], n: dims[2] };
  });
}

function parseConfig(text: string): MatmulConfig {
  const match = /^(\d+)x(\d+)x(\d+)\/(\d+)x(\d+)(dot|direct)?(?:w(\d+))?$/.exec(text.trim());
  if (!match) throw new Error(`--config: "${text}" is not BMxBNxBK/TMxTN[dot|direct][wC], e.g. 128x128x8/8x8 or 128x128x8/8x8w8`);
  const [bm, bn, bk, tm, tn] = match.slice(1, 6).map(Number);
  const config: MatmulConfig = { bm, bn, bk, tm, tn };
  if (match[6]) config.form = match[6] as "dot" | "direct";
  if (match[7]) config.warpCols = Number(match[7]);
  validateMatmulConfig(config, "--config");
  return config;
}

/** Random operands, generated once per shape: x uniform in ±1, W with random signs and magnitudes in [1/8, 2). */
export class Operands {
  readonly x: Float32Array;
  readonly w: Uint32Array | Float32Array;
  constructor(readonly shape: Shape, readonly dtype: WeightDType, seed = 12345) {
    let s = seed >>> 0 || 1;
    const next = () => {
      s ^= s << 13;
      s >>>= 0;
      s ^= s >>> 17;
      s ^= s << 5;
      return (s >>>= 0);
    };
    this.x = new Float32Array(shape.m * shape.k);
    for (let i = 0; i < this.x.length; i++) this.x[i] = next() / 2 ** 31 - 1;
    const count = shape.n * shape.k;
    if (dtype === "bf16") {
      const bits = () => {
        const r = next();
        return ((r & 1) << 15) | ((124 + ((r >>> 1) & 3)) << 7) | ((r >>> 3) & 0x7f);
      };
      this.w = new Uint32Array(Math.ceil(count / 2));
      for (let i = 0; i < this.w.length; i++) this.w[i] = bits() | (2 * i + 1 < count ? bits() << 16 : 0);
    } else {
      this.w = new Float32Array(count);
      for (let i = 0; i < count; i++) this.w[i] = next() / 2 ** 31 - 1;
    }
  }

  weight(index: number): number {
    if (this.w instanceof Float32Array) return this.w[index];
    const word = this.w[index >> 1];
    return bf16ToF32(index & 1 ? word >>> 16 : word & 0xffff);
  }
}

export interface Timing {
  config: MatmulConfig;
  medianMs: number;
  tflops: number;
  source: "timestamps" | "wall clock";
}

/** Compare sampled entries of the output with float64 dot products. */
async function checkSamples(plan: Plan, ops: Operands): Promise<number> {
  const { m, k, n } = ops.shape;
  let worst = 0;
  for (let t = 0; t < 4; t++) {
    const row = Math.floor(((t * 2 + 1) / 8) * m);
    const got = await plan.readRows("y", row, 1);
    for (let u = 0; u < 4; u++) {
      const col = Math.floor(((u * 2 + 1) / 8) * n);
      let want = 0, scale = 0;
      for (let i = 0; i < k; i++) {
        const p = ops.x[row * k + i] * ops.weight(col * k + i);
        want += p;
        scale += Math.abs(p);
      }
      worst = Math.max(worst, Math.abs(got[col] - want) / scale);
    }
  }
  return worst;
}

/** The plan repeats the product `iters` times back to back, so the GPU stays busy (and at its working clock) while the
 * repetitions are timed; each repetition's time comes from timestamp queries, else the wall clock of a whole run is
 * shared out evenly. */
export async function timeMatmul(gpu: GpuContext, ops: Operands, config: MatmulConfig, iters: number, f16: boolean): Promise<Timing> {
  const { m, k, n } = ops.shape;
  const g = new Graph();
  const x = g.input("x", [m, k]);
  const w = g.input("w", [n, k], ops.dtype);
  const y = g.state("y", [m, n]);
  for (let i = 0; i < iters; i++) matmul(g, `matmul.${i}`, x, w, { out: y, config, f16 });
  const plan = await Plan.compile(gpu, g, null, { label: `bench:${matmulConfigName(config)}` });
  try {
    plan.write("x", ops.x);
    plan.write("w", ops.w);
    await plan.run();
    const error = await checkSamples(plan, ops);
    // f32 accumulation over K terms: a relative error far above K·2⁻²⁴ means a wrong result, not rounding (f16
    // operands alone are 2⁻¹¹ off).
    if (!(error < (f16 ? 5e-3 : 1e-4))) {
      throw new Error(`matmul ${matmulConfigName(config)} on ${m}×${k}×${n}: wrong result (relative error ${error})`);
    }
    await plan.run();
    let samples: number[];
    const source = gpu.hasTimestamps ? "timestamps" : "wall clock";
    if (gpu.hasTimestamps) {
      samples = (await plan.profile()).map((p) => p.ms);
    } else {
      const t0 = performance.now();
      await plan.run();
      samples = [(performance.now() - t0) / iters];
    }
    const medianMs = median(samples);
    return { config, medianMs, tflops: (2 * m * n * k) / (medianMs * 1e-3) / 1e12, source };
  } finally {
    plan.destroy();
  }
}

/** Three significant digits, so that software adapters (thousandths of a TFLOP/s) still read. */
function formatTflops(v: number): string {
  return v >= 100 ? v.toFixed(1) : v.toPrecision(3);
}

function table(head: string[], rows: string[][]): string {
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (r: string[]) => r.map((c, i) => c.padEnd(widths[i])).join("  ");
  return [line(head), line(widths.map((w) => "-".repeat(w))), ...rows.map(line)].join("\n");
}

function shapeName(s: Shape): string {
  return `${s.m}×${s.k}×${s.n}`;
}

async function main() {
  const parsed = parseBenchArgs(Deno.args, {
    shapes: { type: "string" },
    dtype: { type: "string", default: "bf16" },
    iters: { type: "string", default: "10" },
    small: { type: "boolean", default: false },
    sweep: { type: "boolean", default: false },
    write: { type: "boolean", default: false },
    config: { type: "string" },
    "tuning-file": { type: "string" },
    f16: { type: "boolean", default: false },
  }, USAGE);
  if (parsed === "help") return;
  const values = parsed;
  const f16 = values.f16!;
  const shapes = parseShapes(values.shapes ?? (values.small ? SMALL_SHAPES : GPU_SHAPES));
  const dtypes = values.dtype.split(",").map((d) => d.trim());
  for (const d of dtypes) if (d !== "bf16" && d !== "f32") throw new Error(`--dtype: "${d}" is not bf16 or f32`);
  const iters = Number(values.iters);
  if (!Number.isInteger(iters) || iters < 1) throw new Error(`--iters: "${values.iters}" is not a positive integer`);
  if (values.write && !values.sweep) throw new Error("--write stores sweep winners: use it with --sweep");

  const gpu = await openGpu();
  if (f16 && !gpu.hasF16) throw new Error(`--f16: adapter ${gpu.adapterDescription} offers no shader-f16`);
  await applyDeviceTuning(gpu);
  const workgroupLimit = gpu.limits.maxComputeWorkgroupStorageSize;
  console.log(`device: ${gpu.adapterDescription} (workgroup memory ${workgroupLimit} B, timestamps: ${gpu.hasTimestamps ? "yes" : "no"})`);

  if (!values.sweep) {
    const named = values.config?.split(",").map((text) => {
      const config = parseConfig(text);
      if (!matmulConfigFits(config, gpu.caps, f16)) {
        throw new Error(
          `--config: ${
            matmulConfigName(config)
          } exceeds this device's workgroup memory (${workgroupLimit} B) or threads per workgroup (${gpu.limits.maxComputeInvocationsPerWorkgroup})`,
        );
      }
      return config;
    });
    const rows: string[][] = [];
    for (const shape of shapes) {
      for (const dtype of dtypes as WeightDType[]) {
        const ops = new Operands(shape, dtype);
        const configs = named ?? [matmulConfigFor(gpu.caps, shape.m, shape.n, shape.k, dtype, f16)];
        for (const config of configs) {
          const t = await timeMatmul(gpu, ops, config, iters, f16);
          rows.push([shapeName(shape), dtype, matmulConfigName(config), t.medianMs.toFixed(3), formatTflops(t.tflops), t.source]);
          console.log(rows.at(-1)!.join("  "));
        }
      }
    }
    console.log("\n" + table(["M×K×N", "W", "config", "median ms", "TFLOP/s", "timed by"], rows));
    return;
  }

  // f16 multiplication has the outer form only, and its tiles take half the memory: deeper K steps fit.
  const candidates = f16 ? [...MATMUL_SWEEP_CONFIGS, ...F16_EXTRA_CONFIGS].filter((c) => c.form !== "dot") : MATMUL_SWEEP_CONFIGS;
  const configs = candidates.filter((c) => matmulConfigFits(c, gpu.caps, f16));
  const skipped = candidates.filter((c) => !matmulConfigFits(c, gpu.caps, f16));
  if (skipped.length) {
    console.log(
      `skipped (workgroup memory over ${workgroupLimit} B or threads over ${gpu.limits.maxComputeInvocationsPerWorkgroup}): ${
        skipped.map(matmulConfigName).join(", ")
      }`,
    );
  }
  const columns: { shape: Shape; dtype: WeightDType; timings: Timing[] }[] = [];
  for (const shape of shapes) {
    for (const dtype of dtypes as WeightDType[]) {
      const ops = new Operands(shape, dtype);
      const timings: Timing[] = [];
      for (const config of configs) {
        const t = await timeMatmul(gpu, ops, config, iters, f16);
        timings.push(t);
        console.log(
          `${shapeName(shape)} ${dtype} ${matmulConfigName(config)}: ${formatTflops(t.tflops)} TFLOP/s (${t.medianMs.toFixed(3)} ms)`,
        );
      }
      columns.push({ shape, dtype, timings });
    }
  }
  const head = ["config", ...columns.map((c) => `${shapeName(c.shape)} ${c.dtype}`)];
  const rows = configs.map((config, i) => [matmulConfigName(config), ...columns.map((c) => formatTflops(c.timings[i].tflops))]);
  const best = columns.map((c) => c.timings.reduce((a, b) => (b.medianMs < a.medianMs ? b : a)));
  rows.push(["winner", ...best.map((t) => matmulConfigName(t.config))]);
  console.log(`\nTFLOP/s, median of ${iters} (${best[0]?.source})\n` + table(head, rows));

  // A shape class may hold several shapes: its winner is the configuration with the least total time over them.
  const classes = new Map<string, number[]>();
  columns.forEach((c, i) => {
    const key = matmulShapeClass(c.shape.m, c.shape.n, c.shape.k, c.dtype, f16);
    classes.set(key, [...(classes.get(key) ?? []), i]);
  });
  const winners: Record<string, MatmulConfig> = {};
  for (const [key, members] of classes) {
    let bestIndex = 0, bestTotal = Infinity;
    configs.forEach((_, i) => {
      const total = members.reduce((s, j) => s + columns[j].timings[i].medianMs, 0);
      if (total < bestTotal) [bestIndex, bestTotal] = [i, total];
    });
    winners[key] = configs[bestIndex];
    console.log(`class ${key}: ${matmulConfigName(configs[bestIndex])}`);
  }
  if (values.write) {
    const file = values["tuning-file"] ? pathToFileURL(resolve(values["tuning-file"])) : TUNING_FILE;
    const tuned = loadMatmulTuning(file);
    // The built-in table is keyed by device class (this adapter's own winners live in its tile cache).
    const deviceClass = gpu.caps.deviceClass;
    tuned[deviceClass] = { ...tuned[deviceClass], ...winners };
    Deno.writeTextFileSync(file, stableJson(tuned) + "\n");
    console.log(
      `wrote ${
        Object.keys(winners).length
      } winner(s) for ${deviceClass} devices (measured on "${gpu.adapterDescription}") to ${file.pathname}`,
    );
  }
}

/** JSON with sorted object keys (configurations keep their field order), so rewrites diff cleanly. */
function stableJson(table: Record<string, Record<string, MatmulConfig>>): string {
  const sorted: Record<string, Record<string, MatmulConfig>> = {};
  for (const device of Object.keys(table).sort()) {
    sorted[device] = {};
    for (const key of Object.keys(table[device]).sort()) {
      const c = table[device][key];
      sorted[device][key] = { bm: c.bm, bn: c.bn, bk: c.bk, tm: c.tm, tn: c.tn, ...(c.form === "dot" ? { form: c.form } : {}) };
    }
  }
  return JSON.stringify(sorted, null, 2);
}

if (import.meta.main) await main();
