// Tiles that follow the device. Kernels choose their tiles from the device-capabilities record the plan is compiled
// for (runtime/device.ts): tiles tuned for this very adapter, else the built-in table of its device class
// (kernels/*_tuned.json), else a rule (small, quickly compiled tiles on software adapters). applyDeviceTuning fills
// in the first: from the adapter's cache file, or — the first time an adapter without one is used — from a short
// automatic tuning whose winners are written there.
//
// Cache: $XDG_CACHE_HOME/kleinscope (else ~/.cache/kleinscope), one JSON file per adapter and driver, written
// atomically. KLEINSCOPE_NO_TUNE=1 skips the tuning (a cache file already written is still used); software
// adapters are never tuned. `deno task tune` runs it again.

import { join } from "node:path";
import type { DeviceCapabilities, GpuContext, TileChoices } from "../runtime/device.ts";
import { Graph } from "../runtime/graph.ts";
import { Plan } from "../runtime/executor.ts";
import { Rng } from "../runtime/random.ts";
import { printable } from "../runtime/printable.ts";
import {
  BUILTIN_MATMUL_TILES,
  matmul,
  MATMUL_SWEEP_CONFIGS,
  type MatmulConfig,
  matmulConfigFits,
  matmulConfigFor,
  matmulConfigName,
  matmulShapeClass,
  validateMatmulConfig,
} from "./matmul.ts";
import {
  attention,
  ATTENTION_SWEEP_CONFIGS,
  type AttentionConfig,
  attentionConfigFits,
  attentionConfigFor,
  attentionConfigName,
  attentionTiles,
  BUILTIN_ATTENTION_TILES,
  defaultAttentionConfig,
} from "./attention.ts";
import { type Conv2dTile, validateConv2dTile } from "./conv2d.ts";
import { attentionReference } from "./reference/attention.ts";
import { relativeL2 } from "./audit.ts";

/** One shape to tune a kernel on; its key (shape class or head dim) is the entry the winner fills. */
export type TuningProblem =
  | { kernel: "matmul"; m: number; n: number; k: number; f16?: boolean; candidates?: MatmulConfig[] }
  | { kernel: "attention"; seq: number; heads: number; headDim: number; candidates?: AttentionConfig[] };

/** The shape classes FLUX.2 klein spends its time in (hidden 3072/4096, MLP 9216/12288; 512² images give about 1.5k
 * tokens, 1024² about 4.6k), sized so that one candidate runs in milliseconds on a datacenter GPU. In order of
 * importance: the time budget cuts the list from the end. */
export const TUNING_PROBLEMS: readonly TuningProblem[] = [
  { kernel: "matmul", m: 2560, n: 3072, k: 3072 },
  { kernel: "matmul", m: 2560, n: 9216, k: 3072 },
  { kernel: "matmul", m: 2560, n: 3072, k: 9216 },
  { kernel: "attention", seq: 2048, heads: 24, headDim: 128 },
  { kernel: "matmul", m: 4608, n: 9216, k: 3072 },
  { kernel: "matmul", m: 4608, n: 3072, k: 3072 },
  { kernel: "matmul", m: 4608, n: 3072, k: 9216 },
  { kernel: "attention", seq: 1024, heads: 1, headDim: 512 },
  { kernel: "matmul", m: 2560, n: 3072, k: 3072, f16: true },
  { kernel: "matmul", m: 4608, n: 9216, k: 3072, f16: true },
];

/** Deeper K steps that only f16 tiles fit. */
const F16_EXTRA_CONFIGS: MatmulConfig[] = [{ bm: 128, bn: 128, bk: 32, tm: 8, tn: 8 }, { bm: 128, bn: 256, bk: 16, tm: 8, tn: 16 }];

export const DEFAULT_TUNING_BUDGET_MS = 90_000;
const CACHE_FORMAT = "kleinscope-tiles";
const CACHE_VERSION = 1;

export interface TuningOptions {
  /** "auto" (default): use the cache file, tune when there is none; "force": tune and rewrite it (`deno task tune`). */
  mode?: "auto" | "force";
  /** Folder of the cache files (default userCacheDir()). */
  cacheDir?: string;
  /** Stop starting new measurements after this long (default 90 s); untuned keys keep the built-in tiles. */
  budgetMs?: number;
  /** What to tune (default TUNING_PROBLEMS). */
  problems?: readonly TuningProblem[];
  /** Progress lines (default: standard error). */
  log?: (line: string) => void;
}

export interface TuningOutcome {
  /** Where the tiles came from. */
  source: "rules" | "cache" | "builtin" | "tuned" | "skipped";
  /** The adapter's cache file (absent for software adapters). */
  file?: string;
  tiles: TileChoices;
  /** One line per candidate measured (tuning only). */
  measurements: TuningMeasurement[];
}

export interface TuningMeasurement {
  kernel: string;
  key: string;
  config: string;
  /** Median time of one dispatch, or null when the candidate failed (then `error` says why). */
  ms: number | null;
  error?: string;
}

interface CacheFile {
  format: string;
  version: number;
  adapter: AdapterIdentity;
  deno: string;
  tunedAt: string;
  complete: boolean;
  tiles: TileChoices;
  measurements: TuningMeasurement[];
}

type AdapterIdentity = Pick<DeviceCapabilities, "description" | "vendor" | "vendorId" | "deviceId" | "architecture" | "driver">;

/** $XDG_CACHE_HOME/kleinscope, else ~/.cache/kleinscope. */
export function userCacheDir(): string {
  const xdg = Deno.env.get("XDG_CACHE_HOME");
  if (xdg) return join(xdg, "kleinscope");
  const home = Deno.env.get("HOME") ?? Deno.env.get("USERPROFILE");
  if (!home) throw new Error("no cache folder for tuned tiles: set XDG_CACHE_HOME or HOME");
  return join(home, ".cache", "kleinscope");
}

function identity(caps: DeviceCapabilities): AdapterIdentity {
  const { description, vendor, vendorId, deviceId, architecture, driver } = caps;
  return { description, vendor, vendorId, deviceId, architecture, driver };
}

/** FNV-1a, 32 bits: tells apart adapters whose names read the same once reduced to file-name characters. */
function fnv1a(text: string): string {
  let h = 0x811c9dc5;
  for (const byte of new TextEncoder().encode(text)) h = Math.imul(h ^ byte, 0x01000193) >>> 0;
  return h.toString(16).padStart(8, "0");
}

/** The cache file of an adapter and driver, e.g. "nvidia-h100-80gb-hbm3--550.54.15--1a2b3c4d.json". */
export function tuningCacheFile(caps: DeviceCapabilities, dir: string = userCacheDir()): string {
  const slug = (s: string) => s.toLowerCase().replace(/[^a-z0-9.]+/g, "-").replace(/^-+|-+$/g, "").slice(0, 60);
  const parts = [slug(caps.description) || "adapter", ...(caps.driver ? [slug(caps.driver)] : [])];
  return join(dir, `${parts.join("--")}--${fnv1a(JSON.stringify(identity(caps)))}.json`);
}

/** Check tile choices read from a file; throws naming the entry. */
export function checkTileChoices(tiles: unknown, where: string): TileChoices {
  const isMap = (v: unknown): v is Record<string, unknown> => typeof v === "object" && v !== null && !Array.isArray(v);
  if (!isMap(tiles)) throw new Error(`${where}: "tiles" must be an object`);
  const checks: Record<string, (config: never, key: string, at: string) => void> = {
    matmul: (c: MatmulConfig, key, at) => validateMatmulConfig(c, at, key.startsWith("f16.")),
    attention: (c: AttentionConfig, key, at) => void attentionTiles(c, Number(key), at),
    conv2d: (c: Conv2dTile, _key, at) => validateConv2dTile(c, at),
  };
  for (const [kernel, entries] of Object.entries(tiles)) {
    const check = checks[kernel];
    if (!check) throw new Error(`${where}: unknown kernel "${printable(kernel)}" in "tiles"`);
    if (!isMap(entries)) throw new Error(`${where}: tiles.${kernel} must be an object`);
    for (const [key, config] of Object.entries(entries)) {
      if (!isMap(config)) throw new Error(`${where}: tiles.${kernel}["${printable(key)}"] must be an object`);
      check(config as never, key, `${where}: tiles.${kernel}["${printable(key)}"]`);
    }
  }
  return tiles as TileChoices;
}

/** Read an adapter's cache file: null when there is none; throws when it is unreadable or not this adapter's. */
function readCache(file: string, caps: DeviceCapabilities): CacheFile | null {
  let text: string;
  try {
    text = Deno.readTextFileSync(file);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null;
    throw e;
  }
  let parsed: CacheFile;
  try {
    parsed = JSON.parse(text);
  } catch (e) {
    throw new Error(`not valid JSON (${(e as Error).message})`);
  }
  if (typeof parsed !== "object" || parsed === null || parsed.format !== CACHE_FORMAT || parsed.version !== CACHE_VERSION) {
    throw new Error(`not a version ${CACHE_VERSION} ${CACHE_FORMAT} file`);
  }
  if (JSON.stringify(parsed.adapter) !== JSON.stringify(identity(caps))) throw new Error("written for another adapter or driver");
  checkTileChoices(parsed.tiles, "tiles");
  return parsed;
}

/** Write through a temporary file and a rename, so that a reader never sees half a file. */
function writeAtomically(file: string, text: string): void {
  const dir = file.slice(0, file.lastIndexOf("/")) || ".";
  Deno.mkdirSync(dir, { recursive: true });
  const temporary = `${file}.${Deno.pid}.${Date.now()}.tmp`;
  try {
    Deno.writeTextFileSync(temporary, text);
    Deno.renameSync(temporary, file);
  } catch (e) {
    try {
      Deno.removeSync(temporary);
    } catch { /* it was never written */ }
    throw e;
  }
}

/**
 * Give the device its tiles (gpu.caps.tiles): from the adapter's cache file, else from a short automatic tuning that
 * writes one. Software adapters keep the rule tiles; KLEINSCOPE_NO_TUNE=1 skips the tuning. Called once per device
 * (later calls return at once unless mode is "force").
 */
export async function applyDeviceTuning(gpu: GpuContext, options: TuningOptions = {}): Promise<TuningOutcome> {
  const caps = gpu.caps;
  const log = options.log ?? ((line: string) => console.error(line));
  const force = options.mode === "force";
  if (caps.software) return { source: "rules", tiles: caps.tiles, measurements: [] };
  if (caps.tilesFrom && !force) return { source: caps.tilesFrom, tiles: caps.tiles, measurements: [] };
  const file = tuningCacheFile(caps, options.cacheDir ?? userCacheDir());
  if (!force) {
    try {
      const cached = readCache(file, caps);
      if (cached) {
        gpu.caps = { ...caps, tiles: cached.tiles, tilesFrom: "cache" };
        return { source: "cache", file, tiles: cached.tiles, measurements: [] };
      }
    } catch (e) {
      log(`warning: ignoring the tile cache ${file}: ${(e as Error).message}; it will be written again`);
    }
    // A device class with measured winners (e.g. the H100's for every NVIDIA datacenter part) needs no first-use
    // tuning: on an H200 a 90 s tuning got through one shape and kept the built-in tiles. `deno task tune` still can.
    if (BUILTIN_MATMUL_TILES[caps.deviceClass] && BUILTIN_ATTENTION_TILES[caps.deviceClass]) {
      gpu.caps = { ...caps, tilesFrom: "builtin" };
      return { source: "builtin", file, tiles: caps.tiles, measurements: [] };
    }
    if (Deno.env.get("KLEINSCOPE_NO_TUNE") === "1") {
      log(`tile tuning skipped (KLEINSCOPE_NO_TUNE=1): built-in tiles for ${caps.deviceClass} devices on ${printable(caps.description)}`);
      gpu.caps = { ...caps, tilesFrom: "skipped" };
      return { source: "skipped", file, tiles: caps.tiles, measurements: [] };
    }
  }
  const budgetMs = options.budgetMs ?? DEFAULT_TUNING_BUDGET_MS;
  log(
    `tuning kernel tiles for ${printable(caps.description)} (first use of this adapter; at most ${Math.round(budgetMs / 1000)} s, ` +
      `KLEINSCOPE_NO_TUNE=1 skips it)`,
  );
  const { tiles, measurements, complete } = await tuneTiles(gpu, options.problems ?? TUNING_PROBLEMS, budgetMs, log);
  const record: CacheFile = {
    format: CACHE_FORMAT,
    version: CACHE_VERSION,
    adapter: identity(caps),
    deno: Deno.version.deno,
    tunedAt: new Date().toISOString(),
    complete,
    tiles,
    measurements,
  };
  try {
    writeAtomically(file, JSON.stringify(record, null, 2) + "\n");
    log(`tuned tiles written to ${file}`);
  } catch (e) {
    log(`warning: could not write the tile cache ${file}: ${(e as Error).message}; the tiles hold for this run only`);
  }
  gpu.caps = { ...gpu.caps, tiles, tilesFrom: "tuned" };
  return { source: "tuned", file, tiles, measurements };
}

/** Time every candidate of every problem (sampled rows checked against float64), within the budget. */
async function tuneTiles(
  gpu: GpuContext,
  problems: readonly TuningProblem[],
  budgetMs: number,
  log: (line: string) => void,
): Promise<{ tiles: TileChoices; measurements: TuningMeasurement[]; complete: boolean }> {
  const start = performance.now();
  const tiles: TileChoices = {};
  const measurements: TuningMeasurement[] = [];
  // The tiles the device had before tuning (built-in class table or rule): measured first, so that a budget cut
  // still compares against them.
  const before = gpu.caps;
  let complete = true;
  const jobs = problems.filter((p) => p.kernel !== "matmul" || !p.f16 || gpu.hasF16).map((p) => ({ p, c: candidatesOf(p, before) }));
  const total = jobs.reduce((n, j) => n + j.c.length, 0);
  let done = 0;
  for (const { p, c: candidates } of jobs) {
    const key = problemKey(p);
    let best: { config: object; ms: number } | null = null;
    for (const config of candidates) {
      if (performance.now() - start > budgetMs) {
        complete = false;
        break;
      }
      done++;
      const name = p.kernel === "matmul" ? matmulConfigName(config as MatmulConfig) : attentionConfigName(config as AttentionConfig);
      const m: TuningMeasurement = { kernel: p.kernel, key, config: name, ms: null };
      try {
        m.ms = p.kernel === "matmul"
          ? await timeMatmul(gpu, p, config as MatmulConfig)
          : await timeAttention(gpu, p, config as AttentionConfig);
        if (!best || m.ms < best.ms) best = { config, ms: m.ms };
      } catch (e) {
        m.error = (e as Error).message;
      }
      measurements.push(m);
      const elapsed = ((performance.now() - start) / 1000).toFixed(0);
      log(
        `  [${done}/${total}, ${elapsed} s] ${p.kernel} ${key} ${name}: ${m.ms === null ? `failed (${m.error})` : `${m.ms.toFixed(3)} ms`}`,
      );
    }
    if (best) {
      (tiles[p.kernel] ??= {})[key] = best.config;
      log(
        `  ${p.kernel} ${key}: ${
          p.kernel === "matmul" ? matmulConfigName(best.config as MatmulConfig) : attentionConfigName(best.config as AttentionConfig)
        }`,
      );
    }
    if (!complete) {
      log(`  time budget of ${Math.round(budgetMs / 1000)} s reached: the remaining shapes keep the built-in tiles`);
      break;
    }
  }
  return { tiles, measurements, complete };
}

function problemKey(p: TuningProblem): string {
  return p.kernel === "matmul" ? matmulShapeClass(p.m, p.n, p.k, "bf16", p.f16) : String(p.headDim);
}

/** The device's choice before tuning first, then every sweep configuration that fits, each once. */
function candidatesOf(p: TuningProblem, caps: DeviceCapabilities): object[] {
  const seen = new Set<string>();
  const out: object[] = [];
  if (p.kernel === "matmul") {
    const f16 = p.f16 ?? false;
    const all = [
      matmulConfigFor(caps, p.m, p.n, p.k, "bf16", f16),
      ...(p.candidates ?? [...MATMUL_SWEEP_CONFIGS, ...(f16 ? F16_EXTRA_CONFIGS : [])]),
    ];
    for (const c of all) {
      const name = matmulConfigName(c);
      if (seen.has(name) || !matmulConfigFits(c, caps, f16)) continue;
      seen.add(name);
      out.push(c);
    }
  } else {
    const all = [attentionConfigFor(caps, p.headDim), ...(p.candidates ?? [...ATTENTION_SWEEP_CONFIGS, defaultAttentionConfig(p.headDim)])];
    for (const c of all) {
      const name = attentionConfigName(c);
      if (seen.has(name)) continue;
      try {
        attentionTiles(c, p.headDim);
      } catch {
        continue;
      }
      if (!attentionConfigFits(c, p.headDim, caps)) continue;
      seen.add(name);
      out.push(c);
    }
  }
  return out;
}

const REPEATS = 5;

/** Uniform values in [-1, 1). */
function uniform(rng: Rng, n: number): Float32Array {
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = 2 * rng.uniform() - 1;
  return a;
}

/** Rows a candidate is checked on: first, last and two inside. */
function sampleRows(rows: number): number[] {
  return [...new Set([0, Math.floor(rows / 3), Math.floor((2 * rows) / 3) + 1, rows - 1])].filter((r) => r >= 0 && r < rows);
}

/** Median time of one dispatch of a plan that repeats the kernel REPEATS times back to back (timestamps when the
 * adapter has them, else the wall clock of a whole run shared out). */
async function timePlan(gpu: GpuContext, plan: Plan): Promise<number> {
  await plan.run();
  if (gpu.hasTimestamps) {
    const ms = (await plan.profile()).map((t) => t.ms).sort((a, b) => a - b);
    return ms[Math.floor(ms.length / 2)];
  }
  const t0 = performance.now();
  await plan.run();
  return (performance.now() - t0) / REPEATS;
}

async function timeMatmul(gpu: GpuContext, p: Extract<TuningProblem, { kernel: "matmul" }>, config: MatmulConfig): Promise<number> {
  const { m, n, k } = p;
  const f16 = p.f16 ?? false;
  const rng = new Rng(m * 31 + n * 7 + k);
  const x = uniform(rng, m * k);
  // bf16 weights: f32 values truncated to their upper halves, two per word.
  const wide = uniform(rng, n * k), bits = new Uint32Array(wide.buffer);
  const packed = new Uint32Array(Math.ceil((n * k) / 2));
  const w = new Float64Array(n * k);
  for (let i = 0; i < n * k; i++) {
    const half = bits[i] >>> 16;
    packed[i >> 1] |= i & 1 ? half << 16 : half;
    w[i] = new Float32Array(new Uint32Array([half << 16]).buffer)[0];
  }
  const g = new Graph();
  const xt = g.input("x", [m, k]), wt = g.input("w", [n, k], "bf16");
  const y = g.state("y", [m, n]);
  for (let i = 0; i < REPEATS; i++) matmul(g, `tune.matmul.${i}`, xt, wt, { out: y, config, f16 });
  const plan = await Plan.compile(gpu, g, null, { label: `tune:matmul:${matmulConfigName(config)}` });
  try {
    plan.write("x", x);
    plan.write("w", packed);
    plan.write("y", new Float32Array(m * n).fill(NaN));
    await plan.run();
    for (const row of sampleRows(m)) {
      const got = await plan.readRows("y", row, 1);
      const want = new Float64Array(n);
      for (let j = 0; j < n; j++) {
        let s = 0;
        for (let t = 0; t < k; t++) s += x[row * k + t] * w[j * k + t];
        want[j] = s;
      }
      const error = relativeL2(got, want);
      // f32 accumulation is ~1e-6 off; f16 operands alone are 2⁻¹¹ off.
      if (!(error < (f16 ? 5e-3 : 1e-4))) throw new Error(`wrong result on row ${row} (relative L2 ${error.toExponential(2)})`);
    }
    return await timePlan(gpu, plan);
  } finally {
    plan.destroy();
  }
}

async function timeAttention(
  gpu: GpuContext,
  p: Extract<TuningProblem, { kernel: "attention" }>,
  config: AttentionConfig,
): Promise<number> {
  const { seq, heads, headDim } = p;
  const cols = heads * headDim;
  const rng = new Rng(seq * 13 + headDim);
  const q = uniform(rng, seq * cols), k = uniform(rng, seq * cols), v = uniform(rng, seq * cols);
  const g = new Graph();
  const qt = g.input("q", [seq, cols]), kt = g.input("k", [seq, cols]), vt = g.input("v", [seq, cols]);
  const out = g.state("out", [seq, cols]);
  for (let i = 0; i < REPEATS; i++) {
    attention(g, `tune.attention.${i}`, { q: qt, k: kt, v: vt, heads, kvHeads: heads, headDim, out, config });
  }
  const plan = await Plan.compile(gpu, g, null, { label: `tune:attention:${attentionConfigName(config)}` });
  try {
    plan.write("q", q);
    plan.write("k", k);
    plan.write("v", v);
    plan.write("out", new Float32Array(seq * cols).fill(NaN));
    await plan.run();
    for (const row of sampleRows(seq)) {
      const got = await plan.readRows("out", row, 1);
      const want = attentionReference(q.subarray(row * cols, (row + 1) * cols), k, v, { sq: 1, sk: seq, heads, kvHeads: heads, headDim });
      const error = relativeL2(got, want);
      if (!(error <= 1e-5)) throw new Error(`wrong result on row ${row} (relative L2 ${error.toExponential(2)})`);
    }
    return await timePlan(gpu, plan);
  } finally {
    plan.destroy();
  }
}
