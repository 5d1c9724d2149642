// One table of everything that decides the speed of an edit, kleinscope and PyTorch side by side, in one process and
// one GPU session:
//   - matmul at the klein transformer's heavy shapes (M = the sequence's rows; bf16 weights), multiplied in f32 and,
//     where the adapter has shader-f16, in f16 (bench/matmul.ts's timing, which also checks sampled outputs);
//   - attention, heads × 128 over the sequence, plain and with the knockout group mask "ref->text" (text = the first
//     min(512, S/5) rows may not read the last S/4), each checked on a few rows against float64;
//   - one transformer forward (bench/dit.ts) in f32 and f16, with its peak GPU memory (weights + plan);
//   - with --pipeline, the stages and steps of a whole edit (load, text encoder, VAE encode, steps, decode);
//   - PyTorch on the same shapes: bench/torch_baseline.py (fp32 with TF32 off, and bf16) for matmul and attention,
//     bench/torch_flux2.py for the forward (bench/dit.ts --compare), unless --no-torch or PyTorch is missing.
//
//   deno task bench summary [--size 512|1024] [--refs 1] [--model DIR | --random klein-9b|klein-4b|tiny]
//                           [--forward-sizes 1024,512] [--iters 10] [--forward-iters 3] [--no-f16] [--no-torch] [--python python3]
//                           [--peak-tflops F32[,F16]] [--pipeline [--pipeline-model DIR] [--steps 4]]
//                           [--json PATH] [--verbose] [--small]
//
// The sequence is bench/dit.ts's: 512 text rows, then (size/16)² noise rows and as many per reference, so --size 512
// with one reference is 2560 rows and --size 1024 is 8704. Matmul and attention repeat their node --iters times back
// to back in one plan; after a warm-up run, one profiled run gives each repetition's time from GPU timestamps (without
// timestamps, the wall clock of a run shared out evenly) and the median is reported. The forward is the median
// wall-clock time of --forward-iters runs, at --size and at every other side of --forward-sizes (each with its own
// PyTorch comparison), so that one call reports e.g. the forward at 512² beside everything at 1024². % of peak is against the card's FMA peak (f32 rows against the f32 peak,
// f16 rows against the f16 one): a small table of known adapters, or --peak-tflops. % of ceiling is against the
// multiply-add rate this stack measures on the card itself (bench/ceilings.ts, run first; its rows head the table).
// --small: shapes for a software adapter (M 256, hidden 128, 2 heads at S = 256, the fixture's tiny transformer
// at 64²), done in well under a minute on llvmpipe.

import { parseArgs } from "node:util";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { getGpu } from "../runtime/device.ts";
import { applyDeviceTuning } from "../kernels/tuning.ts";
import { type CeilingsReport, runCeilings } from "./ceilings.ts";
import { matmulConfigFor, matmulConfigName } from "../kernels/matmul.ts";
import { Flux2KleinPipeline, type StageTimes } from "../model/pipeline.ts";
import { savePng } from "../model/images.ts";
import { Operands, type Shape, timeMatmul } from "./matmul.ts";
import { type AttentionMeasurement, knockoutLayout, timeAttention } from "./attention_timing.ts";
import { type DitBenchReport, ditSequence, RANDOM_PRESETS, runDitBench } from "./dit.ts";
import { exists, formatGB, formatMs, formatTable, formatTflops, runCommand, tail } from "./common.ts";

const BENCH_DIR = fileURLToPath(new URL(".", import.meta.url));
const TORCH_BASELINE = join(BENCH_DIR, "torch_baseline.py");
const CHECKPOINT_SCRIPT = join(BENCH_DIR, "make_random_checkpoint.py");
/** The fixture's tiny pipeline (its transformer/ is what --small times). */
export const SMALL_MODEL = fileURLToPath(new URL("../tests/fixtures/klein-tiny/model", import.meta.url));

export const USAGE = `usage: deno task bench summary [--size 512] [--refs 1] [--model DIR | --random ${RANDOM_PRESETS.join("|")}]
         [--forward-sizes 1024,512] [--iters 10] [--forward-iters 3] [--no-f16] [--no-torch] [--python python3] [--peak-tflops F32[,F16]]
         [--pipeline [--pipeline-model DIR] [--steps 4]] [--json PATH] [--verbose] [--small]`;

/** FMA peaks in TFLOP/s (f32, f16) of known adapters, matched as a part of the adapter's description. */
export const KNOWN_PEAKS: Record<string, { f32: number; f16: number }> = {
  "NVIDIA H100 80GB HBM3": { f32: 66.9, f16: 133.8 },
  "NVIDIA H200": { f32: 66.9, f16: 133.8 },
};

/** A mistake in the command line (exit code 2). */
export class UsageError extends Error {}

export interface SummaryOptions {
  /** Image side; the sequence is 512 text rows + (size/16)² · (1 + refs). */
  size: number;
  /** Sides of the transformer forwards: `size` first, then the others of --forward-sizes. */
  forwardSizes: number[];
  refs: number;
  small: boolean;
  /** Transformer (or pipeline) folder; else `random`. */
  model?: string;
  random?: string;
  /** Back-to-back repetitions of the matmul and attention nodes (and PyTorch's timed runs). */
  iters: number;
  forwardIters: number;
  f16: boolean;
  torch: boolean;
  python: string;
  /** --peak-tflops: overrides the known-adapter table. */
  peak?: { f32: number; f16?: number };
  pipeline: boolean;
  pipelineModel?: string;
  steps: number;
  json?: string;
  verbose: boolean;
}

export function parseSummaryArgs(args: string[]): SummaryOptions | "help" {
  let values;
  try {
    ({ values } = parseArgs({
      args,
      options: {
        size: { type: "string" },
        "forward-sizes": { type: "string" },
        refs: { type: "string", default: "1" },
        small: { type: "boolean", default: false },
        model: { type: "string" },
        random: { type: "string" },
        iters: { type: "string" },
        "forward-iters": { type: "string" },
        "no-f16": { type: "boolean", default: false },
        "no-torch": { type: "boolean", default: false },
        python: { type: "string", default: "python3" },
        "peak-tflops": { type: "string" },
        pipeline: { type: "boolean", default: false },
        "pipeline-model": { type: "string" },
        steps: { type: "string", default: "4" },
        json: { type: "string" },
        verbose: { type: "boolean", default: false },
        help: { type: "boolean", short: "h", default: false },
      },
    }));
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
  if (values.help) return "help";
  const small = values.small!;
  const int = (key: string, text: string, min: number) => {
    const v = Number(text);
    if (!/^\s*\d+\s*$/.test(text) || !Number.isInteger(v) || v < min) {
      throw new UsageError(`--${key}: "${text}" is not an integer ≥ ${min}`);
    }
    return v;
  };
  const size = int("size", values.size ?? (small ? "64" : "512"), 16);
  if (size % 16) throw new UsageError(`--size ${size} must be a multiple of 16 (one latent token per 16×16 pixels)`);
  const forwardSizes = [size];
  if (values["forward-sizes"] !== undefined) {
    for (const part of values["forward-sizes"].split(",")) {
      const side = int("forward-sizes", part.trim(), 16);
      if (side % 16) throw new UsageError(`--forward-sizes: ${side} must be a multiple of 16 (one latent token per 16×16 pixels)`);
      if (!forwardSizes.includes(side)) forwardSizes.push(side);
    }
  }
  if (values.model !== undefined && values.random !== undefined) {
    throw new UsageError("give at most one of --model DIR and --random PRESET");
  }
  if (values.random !== undefined && !(RANDOM_PRESETS as readonly string[]).includes(values.random)) {
    throw new UsageError(`--random: "${values.random}" is not one of ${RANDOM_PRESETS.join(", ")}`);
  }
  if (values["pipeline-model"] !== undefined && !values.pipeline) throw new UsageError("--pipeline-model is used with --pipeline");
  let peak: SummaryOptions["peak"];
  if (values["peak-tflops"] !== undefined) {
    const parts = values["peak-tflops"].split(",").map((p) => p.trim());
    const nums = parts.map(Number);
    if (parts.length > 2 || parts.some((p) => p === "") || nums.some((n) => !Number.isFinite(n) || n <= 0)) {
      throw new UsageError(`--peak-tflops: "${values["peak-tflops"]}" is not F32[,F16] with positive TFLOP/s, e.g. 66.9,133.8`);
    }
    peak = { f32: nums[0], f16: nums[1] };
  }
  const model = values.model ?? (values.random === undefined && small ? SMALL_MODEL : undefined);
  return {
    size,
    forwardSizes,
    refs: int("refs", values.refs!, 0),
    small,
    model,
    random: model === undefined ? values.random ?? "klein-9b" : undefined,
    iters: int("iters", values.iters ?? (small ? "3" : "10"), 1),
    forwardIters: int("forward-iters", values["forward-iters"] ?? (small ? "1" : "3"), 1),
    f16: !values["no-f16"],
    torch: !values["no-torch"],
    python: values.python!,
    peak,
    pipeline: values.pipeline!,
    pipelineModel: values["pipeline-model"],
    steps: int("steps", values.steps!, 1),
    json: values.json,
    verbose: values.verbose!,
  };
}

/** FMA peak of the adapter: --peak-tflops, else the known-adapter table, else unknown. */
export function peakFor(description: string, override?: { f32: number; f16?: number }): { f32?: number; f16?: number } {
  if (override) return { f32: override.f32, f16: override.f16 };
  const key = Object.keys(KNOWN_PEAKS).find((k) => description.includes(k));
  return key ? { ...KNOWN_PEAKS[key] } : {};
}

// ---- Shapes -----------------------------------------------------------------------------------------------------

export interface MatmulItem {
  /** The projection it stands for. */
  name: string;
  k: number;
  n: number;
}

/** The heavy projections of a FLUX.2 block of `hidden` with an MLP of `mlp`: K, N pairs. */
export function transformerMatmuls(hidden: number, mlp: number): MatmulItem[] {
  return [
    { name: "double qkv", k: hidden, n: 3 * hidden },
    { name: "double ff_in", k: hidden, n: 2 * mlp },
    { name: "double ff_out", k: mlp, n: hidden },
    { name: "single qkv_mlp", k: hidden, n: 3 * hidden + 2 * mlp },
    { name: "single out", k: hidden + mlp, n: hidden },
  ];
}

export interface SummaryShapes {
  /** Matmul rows. */
  m: number;
  matmuls: MatmulItem[];
  attention: { seq: number; heads: number; headDim: number };
}

/** klein-9B's shapes at the sequence of `size` (hidden 4096, MLP 12288, 32 heads × 128), or small ones for a
 * software adapter. */
export function summaryShapes(opts: Pick<SummaryOptions, "size" | "refs" | "small">): SummaryShapes {
  if (opts.small) return { m: 256, matmuls: transformerMatmuls(128, 384), attention: { seq: 256, heads: 2, headDim: 128 } };
  const rows = ditSequence(opts.size, opts.refs).rows;
  return { m: rows, matmuls: transformerMatmuls(4096, 12288), attention: { seq: rows, heads: 32, headDim: 128 } };
}

// ---- Measurements -----------------------------------------------------------------------------------------------

export interface MatmulMeasurement {
  name: string;
  m: number;
  k: number;
  n: number;
  mode: "f32" | "f16";
  config: string;
  medianMs: number;
  tflops: number;
  /** Operands and output on the GPU. */
  bytes: number;
  timedBy: string;
}

// ---- PyTorch ----------------------------------------------------------------------------------------------------

export interface TorchInfo {
  available: boolean;
  /** Why the PyTorch columns are n/a. */
  reason?: string;
  version?: string;
  /** "cuda" when PyTorch sees a GPU, else "cpu". */
  device?: string;
  deviceName?: string;
}

export interface TorchMeasurement {
  mode: string;
  median_ms: number;
  tflops: number;
  m?: number;
  k?: number;
  n?: number;
  seq?: number;
  heads?: number;
  head_dim?: number;
  masked?: boolean;
  /** Attention: "sdpa", or "math" where PyTorch has no scaled_dot_product_attention. */
  impl?: string;
}

/** Whether `python` has PyTorch, and where it would run. */
export async function probeTorch(python: string): Promise<TorchInfo> {
  const code = "import json, torch; c = torch.cuda.is_available(); " +
    "print(json.dumps({'version': torch.__version__, 'cuda': c, 'name': torch.cuda.get_device_name() if c else 'cpu'}))";
  let r;
  try {
    r = await runCommand(python, ["-c", code]);
  } catch (e) {
    return { available: false, reason: (e as Error).message };
  }
  if (r.code !== 0) {
    const missing = /No module named ['"]?torch/.test(r.stderr);
    return {
      available: false,
      reason: missing ? `PyTorch is not installed for ${python}` : `${python} cannot import torch: ${tail(r.stderr, 1)}`,
    };
  }
  const info = JSON.parse(r.stdout.trim().split("\n").at(-1)!);
  return { available: true, version: info.version, device: info.cuda ? "cuda" : "cpu", deviceName: info.name };
}

/** bench/torch_baseline.py SUB ... --json: every measurement it wrote. */
async function torchBaseline(python: string, device: string, sub: string, args: string[], iters: number): Promise<TorchMeasurement[]> {
  const dir = await Deno.makeTempDir({ prefix: "kleinscope-summary-" });
  try {
    const json = join(dir, `${sub}.json`);
    const r = await runCommand(python, [TORCH_BASELINE, sub, ...args, "--device", device, "--iters", String(iters), "--json", json]);
    if (r.code !== 0) throw new Error(`torch_baseline.py ${sub} failed (exit ${r.code}):\n${tail(r.stderr || r.stdout)}`);
    return JSON.parse(await Deno.readTextFile(json)).results;
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

// ---- Pipeline ---------------------------------------------------------------------------------------------------

export interface PipelineStages extends StageTimes {
  model: string;
  size: number;
  steps: number;
  loadMs: number;
  weightsBytes: number;
  planBytes: number;
  vaePlanBytes: number;
  /** Resident weights plus the larger of the step plan and the VAE plans (they never coexist). */
  peakBytes: number;
}

/** The pipeline folder for --pipeline: --pipeline-model, --model when it is a pipeline folder, else the random
 * preset's pipeline in /tmp (written when missing). */
async function pipelineDir(opts: SummaryOptions, log: (s: string) => void): Promise<string> {
  if (opts.pipelineModel !== undefined) return opts.pipelineModel;
  if (opts.model !== undefined) {
    if (await exists(join(opts.model, "model_index.json"))) return opts.model;
    throw new Error(`--pipeline: --model ${opts.model} is a transformer folder, not a pipeline: give --pipeline-model DIR`);
  }
  const dir = `/tmp/kleinscope-pipeline-${opts.random}`;
  if (await exists(dir)) return dir;
  log(`writing a random ${opts.random} pipeline to ${dir} …`);
  const r = await runCommand(opts.python, [CHECKPOINT_SCRIPT, "--kind", "pipeline", "--preset", opts.random!, "--out", dir]);
  if (r.code !== 0) throw new Error(`make_random_checkpoint.py failed (exit ${r.code}):\n${tail(r.stderr || r.stdout)}`);
  return dir;
}

/** A smooth RGB reference image of `size` pixels, written as PNG. */
async function writeReference(path: string, size: number): Promise<void> {
  const chw = new Float32Array(3 * size * size);
  for (let y = 0; y < size; y++) {
    for (let x = 0; x < size; x++) {
      const u = x / size, v = y / size, i = y * size + x;
      chw[i] = 0.5 + 0.4 * Math.sin(3 * u + 2 * v);
      chw[size * size + i] = 0.5 + 0.4 * Math.sin(2 * u - 4 * v + 1);
      chw[2 * size * size + i] = 0.5 + 0.4 * Math.cos(5 * u + 3 * v);
    }
  }
  await savePng(path, chw, size, size);
}

/** A whole edit with `refs` references of the output size: stage and step times, and the GPU memory held. */
export async function benchPipeline(
  model: string,
  size: number,
  refs: number,
  steps: number,
  log: (s: string) => void,
): Promise<PipelineStages> {
  const dir = await Deno.makeTempDir({ prefix: "kleinscope-summary-" });
  try {
    const refPaths: string[] = [];
    for (let i = 0; i < refs; i++) {
      refPaths.push(join(dir, `reference${i}.png`));
      await writeReference(refPaths[i], size);
    }
    const t0 = performance.now();
    const pipe = await Flux2KleinPipeline.load(model, { log });
    const loadMs = performance.now() - t0;
    try {
      const r = await pipe.generate({
        prompt: "turn the scene into a watercolour painting, keep the layout",
        refs: refPaths,
        width: size,
        height: size,
        steps,
        seed: 1,
        onStep: (i) => log(`step ${i.step + 1}/${i.steps}: ${formatMs(i.ms)} ms`),
      });
      const vae = await pipe.vae.gpuBytes();
      const weightsBytes = pipe.transformer.store.bytes() + vae.weights;
      return {
        model,
        size,
        steps,
        loadMs,
        ...r.times,
        weightsBytes,
        planBytes: r.planBytes,
        vaePlanBytes: r.vaePlanBytes,
        peakBytes: weightsBytes + Math.max(r.planBytes, r.vaePlanBytes),
      };
    } finally {
      pipe.release();
    }
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

// ---- The summary ------------------------------------------------------------------------------------------------

export interface SummaryRow {
  item: string;
  kleinscopeMs?: number;
  tflops?: number;
  percentOfPeak?: number;
  /** Against the multiply-add rate this stack measured on the card (bench/ceilings.ts). */
  percentOfCeiling?: number;
  torchFp32Ms?: number;
  torchBf16Ms?: number;
  peakBytes?: number;
  note: string;
  /** No PyTorch counterpart (pipeline stages): its PyTorch columns stay empty rather than n/a. */
  noBaseline?: boolean;
}

export interface SummaryReport {
  device: string;
  date: string;
  ran: string[];
  peak: { f32?: number; f16?: number };
  /** What this stack reaches on the card (bench/ceilings.ts); absent when it could not be measured. */
  ceilings?: CeilingsReport;
  torch: TorchInfo;
  shapes: SummaryShapes;
  matmul: MatmulMeasurement[];
  attention: AttentionMeasurement[];
  /** bench/dit.ts's report without the output tensors, at --size. */
  forward?: Record<string, unknown>;
  /** The same for every side of --forward-sizes, --size first. */
  forwards: Record<string, unknown>[];
  torchMatmul: TorchMeasurement[];
  torchAttention: TorchMeasurement[];
  pipeline?: PipelineStages;
  rows: SummaryRow[];
  failures: string[];
}

/** Run everything the options ask for and build the table's rows. Progress goes to `log`; failures of single items
 * are kept in `failures` (and the rows' notes) rather than thrown. */
export async function runSummary(opts: SummaryOptions, log: (s: string) => void = console.log): Promise<SummaryReport> {
  // Folders are checked before any GPU work.
  for (const [flag, dir] of [["--model", opts.model], ["--pipeline-model", opts.pipelineModel]]) {
    if (dir !== undefined && !(await exists(dir))) throw new Error(`${flag} ${dir}: no such file or folder`);
  }
  const gpu = await getGpu();
  await applyDeviceTuning(gpu);
  const peak = peakFor(gpu.adapterDescription, opts.peak);
  const f16 = opts.f16 && gpu.hasF16;
  const shapes = summaryShapes(opts);
  const failures: string[] = [];
  const fail = (what: string, e: unknown) => {
    const message = `${what}: ${(e as Error).message}`;
    failures.push(message);
    log(`  FAILED ${message}`);
  };
  log(`device: ${gpu.adapterDescription} (shader-f16: ${gpu.hasF16 ? "yes" : "no"}, timestamps: ${gpu.hasTimestamps ? "yes" : "no"})`);
  let ceilings: CeilingsReport | undefined;
  try {
    ceilings = await runCeilings(gpu, { small: opts.small });
    for (const c of ceilings.ceilings) log(`ceiling ${c.name}: ${c.value.toPrecision(4)} ${c.unit}`);
  } catch (e) {
    fail("ceilings", e);
  }
  const torch: TorchInfo = opts.torch ? await probeTorch(opts.python) : { available: false, reason: "--no-torch" };
  log(
    torch.available
      ? `PyTorch ${torch.version} on ${torch.device === "cuda" ? torch.deviceName : "the CPU"}`
      : `PyTorch: n/a (${torch.reason})`,
  );

  // Matmul.
  const matmul: MatmulMeasurement[] = [];
  const modes: ("f32" | "f16")[] = f16 ? ["f32", "f16"] : ["f32"];
  log(`matmul: M = ${shapes.m}, bf16 weights, ${modes.join(" and ")} multiplication, ${opts.iters} back to back`);
  for (const item of shapes.matmuls) {
    const shape: Shape = { m: shapes.m, k: item.k, n: item.n };
    const ops = new Operands(shape, "bf16");
    for (const mode of modes) {
      try {
        const config = matmulConfigFor(gpu.caps, shape.m, shape.n, shape.k, "bf16", mode === "f16");
        const t = await timeMatmul(gpu, ops, config, opts.iters, mode === "f16");
        const bytes = 4 * shape.m * shape.k + 2 * shape.n * shape.k + 4 * shape.m * shape.n;
        matmul.push({
          name: item.name,
          ...shape,
          mode,
          config: matmulConfigName(config),
          medianMs: t.medianMs,
          tflops: t.tflops,
          bytes,
          timedBy: t.source,
        });
        log(`  ${item.name} ${shapeName(shape)} ${mode}: ${formatMs(t.medianMs)} ms, ${formatTflops(t.tflops)} TFLOP/s`);
      } catch (e) {
        fail(`matmul ${item.name} ${shapeName(shape)} ${mode}`, e);
      }
    }
  }

  // Attention.
  const attentionResults: AttentionMeasurement[] = [];
  const a = shapes.attention;
  log(`attention: ${a.heads} heads × ${a.headDim}, S = ${a.seq}, plain and ref->text, ${opts.iters} back to back`);
  for (const masked of [false, true]) {
    try {
      const m = await timeAttention(gpu, a, masked, opts.iters);
      attentionResults.push(m);
      log(`  ${masked ? "ref->text" : "plain"}: ${formatMs(m.medianMs)} ms, ${formatTflops(m.tflops)} TFLOP/s`);
    } catch (e) {
      fail(`attention S=${a.seq}${masked ? " ref->text" : ""}`, e);
    }
  }

  // PyTorch on the same shapes, while kleinscope holds no GPU memory.
  let torchMatmul: TorchMeasurement[] = [], torchAttention: TorchMeasurement[] = [];
  if (torch.available) {
    log(`PyTorch matmul and attention (fp32 with TF32 off, bf16) …`);
    try {
      const list = shapes.matmuls.map((s) => `${shapes.m},${s.k},${s.n}`).join(";");
      torchMatmul = await torchBaseline(opts.python, torch.device!, "matmul", ["--shapes", list, "--modes", "fp32,bf16"], opts.iters);
    } catch (e) {
      fail("PyTorch matmul", e);
    }
    try {
      const args = ["--seqs", String(a.seq), "--heads", String(a.heads), "--head-dim", String(a.headDim), "--modes", "fp32,bf16"];
      torchAttention = await torchBaseline(opts.python, torch.device!, "attention", args, opts.iters);
    } catch (e) {
      fail("PyTorch attention", e);
    }
  }

  // The transformer forwards (with PyTorch's through bench/dit.ts --compare), one per side.
  const dits: SizedForward[] = [];
  const ditLog = (s: string) => {
    if (opts.verbose) log(s.split("\n").map((l) => `  ${l}`).join("\n"));
    else if (!s.includes("\n") && s.trim() && !s.startsWith("device:")) log(`  ${s.trim()}`);
  };
  for (const size of opts.forwardSizes) {
    log(`transformer forward: ${opts.model ?? `random ${opts.random}`}, ${size}² + ${opts.refs} ref, ${modes.join(" and ")} …`);
    try {
      const dit = await runDitBench({
        model: opts.model,
        random: opts.random,
        size,
        refs: opts.refs,
        iters: opts.forwardIters,
        seed: 0,
        compare: torch.available,
        f16,
        python: opts.python,
      }, ditLog);
      for (const m of dit.torch?.failures ?? []) failures.push(`PyTorch forward ${size}²: ${m}`);
      dits.push({ size, dit });
    } catch (e) {
      fail(`transformer forward ${size}²`, e);
    }
  }
  const dit = dits[0]?.size === opts.size ? dits[0].dit : undefined;

  let pipeline: PipelineStages | undefined;
  if (opts.pipeline) {
    try {
      const model = await pipelineDir(opts, log);
      log(`pipeline: ${model}, ${opts.size}² + ${opts.refs} ref, ${opts.steps} steps …`);
      pipeline = await benchPipeline(model, opts.size, opts.refs, opts.steps, (s) => log(`  ${s}`));
    } catch (e) {
      fail("pipeline", e);
    }
  }

  const ran = [
    `matmul: ${shapes.matmuls.length} shapes at M = ${shapes.m}, bf16 weights, ${
      modes.join("/")
    } multiplication, median of ${opts.iters} back to back (${matmul[0]?.timedBy ?? "timestamps"})`,
    `attention: ${a.heads}×${a.headDim} at S = ${a.seq}, plain and ref->text (text = first ${knockoutLayout(a.seq).text} rows, ref = last ${
      knockoutLayout(a.seq).ref
    }), median of ${opts.iters} back to back`,
    `forward: ${dit ? dit.modelDir : opts.model ?? opts.random}, ${
      opts.forwardSizes.map((size) => `${size}² + ${opts.refs} ref (S = ${ditSequence(size, opts.refs).rows})`).join(" and ")
    }, ${modes.join("/")}, median wall clock of ${opts.forwardIters}`,
    ...(opts.pipeline ? [`pipeline: ${opts.steps} steps at ${opts.size}² + ${opts.refs} ref`] : []),
    torch.available
      ? `PyTorch ${torch.version} on ${torch.deviceName}: torch_baseline.py (matmul, attention) and torch_flux2.py (forward), fp32 with TF32 off and bf16`
      : `PyTorch: n/a (${torch.reason})`,
  ];
  if (!f16) ran.push(opts.f16 ? "f16: n/a (the adapter offers no shader-f16)" : "f16: not run (--no-f16)");

  const report: SummaryReport = {
    device: gpu.adapterDescription,
    date: new Date().toISOString(),
    ran,
    peak,
    ceilings,
    torch,
    shapes,
    matmul,
    attention: attentionResults,
    torchMatmul,
    torchAttention,
    pipeline,
    forwards: [],
    rows: [],
    failures,
  };
  const strip = <T extends { output?: Float32Array }>(x: T | undefined) => x && { ...x, output: undefined };
  for (const { size, dit } of dits) {
    const t = dit.torch;
    report.forwards.push({
      size,
      modelDir: dit.modelDir,
      config: dit.config,
      seq: dit.seq,
      load: { seconds: dit.load.seconds, bytes: dit.load.bytes },
      peakBytes: dit.peakBytes,
      f32: strip(dit.forward),
      f16: strip(dit.forwardF16),
      torch: t && { ...t, fp32: strip(t.fp32), bf16: strip(t.bf16) },
    });
  }
  if (dit) report.forward = report.forwards[0];
  report.rows = summaryRows(report, dits, opts);
  return report;
}

/** A short name of a transformer folder: the random preset, else the folder above transformer/ and model/. */
export function modelLabel(dir: string): string {
  const parts = dir.replace(/\/+$/, "").split("/").filter((p) => p && p !== "transformer" && p !== "model");
  return (parts.at(-1) ?? dir).replace(/^kleinscope-random-/, "");
}

function shapeName(s: { m: number; k: number; n: number }): string {
  return `${s.m}×${s.k}×${s.n}`;
}

/** A transformer forward of the summary and its side. */
export interface SizedForward {
  size: number;
  dit: DitBenchReport;
}

/** One row per measurement, in the table's order. */
export function summaryRows(r: SummaryReport, dits: SizedForward[], opts: Pick<SummaryOptions, "refs">): SummaryRow[] {
  const rows: SummaryRow[] = [];
  const percent = (tflops: number, mode: "f32" | "f16") => {
    const p = r.peak[mode];
    return p ? (100 * tflops) / p : undefined;
  };
  const ceiling = (mode: "f32" | "f16") => r.ceilings?.ceilings.find((c) => c.name === (mode === "f32" ? "f32 FMA" : "f16 FMA (packed)"));
  const ofCeiling = (tflops: number, mode: "f32" | "f16") => {
    const c = ceiling(mode);
    return c ? (100 * tflops) / c.value : undefined;
  };
  for (const c of r.ceilings?.ceilings ?? []) {
    const fma = c.unit === "TFLOP/s";
    rows.push({
      item: `ceiling ${c.name}`,
      kleinscopeMs: c.medianMs,
      tflops: fma ? c.value : undefined,
      percentOfPeak: fma ? percent(c.value, c.name === "f32 FMA" ? "f32" : "f16") : undefined,
      note: fma ? "measured multiply-add rate (bench ceilings)" : `${c.value.toPrecision(4)} GB/s measured (bench ceilings)`,
      noBaseline: true,
    });
  }
  const torchNote = r.torch.available && r.torch.device === "cpu" ? "PyTorch on the CPU" : "";
  const join = (...notes: (string | undefined)[]) => notes.filter(Boolean).join("; ");
  for (const m of r.matmul) {
    const t = (mode: string) => r.torchMatmul.find((x) => x.m === m.m && x.k === m.k && x.n === m.n && x.mode === mode)?.median_ms;
    rows.push({
      item: `matmul ${m.name} ${shapeName(m)} ${m.mode}`,
      kleinscopeMs: m.medianMs,
      tflops: m.tflops,
      percentOfPeak: percent(m.tflops, m.mode),
      percentOfCeiling: ofCeiling(m.tflops, m.mode),
      torchFp32Ms: t("fp32"),
      torchBf16Ms: t("bf16"),
      peakBytes: m.bytes,
      note: join(m.config, torchNote),
    });
  }
  for (const a of r.attention) {
    const t = (mode: string) =>
      r.torchAttention.find((x) =>
        x.seq === a.seq && x.heads === a.heads && x.head_dim === a.headDim && x.masked === a.masked && x.mode === mode
      )
        ?.median_ms;
    rows.push({
      item: `attention ${a.heads}×${a.headDim} S=${a.seq} ${a.masked ? "ref->text" : "plain"}`,
      kleinscopeMs: a.medianMs,
      tflops: a.tflops,
      percentOfPeak: percent(a.tflops, "f32"),
      percentOfCeiling: ofCeiling(a.tflops, "f32"),
      torchFp32Ms: t("fp32"),
      torchBf16Ms: t("bf16"),
      peakBytes: a.bytes,
      note: join(
        a.config,
        `rel L2 ${a.checkRelL2.toExponential(1)} on checked rows`,
        torchNote,
        r.torchAttention.some((x) => x.impl === "math") ? "PyTorch without SDPA: softmax(q·kᵀ)·v written out" : undefined,
      ),
    });
  }
  for (const { size, dit } of dits) {
    const label = `forward ${modelLabel(dit.modelDir)} ${size}²+${opts.refs} ref S=${dit.seq.rows}`;
    const tflops = (ms: number) => dit.forward.flops / (ms * 1e-3) / 1e12;
    const t = dit.torch;
    const err = (e: number | undefined) => (e === undefined ? undefined : e.toExponential(1));
    rows.push({
      item: `${label} f32`,
      kleinscopeMs: dit.forward.medianMs,
      tflops: tflops(dit.forward.medianMs),
      percentOfPeak: percent(tflops(dit.forward.medianMs), "f32"),
      percentOfCeiling: ofCeiling(tflops(dit.forward.medianMs), "f32"),
      torchFp32Ms: t?.fp32?.medianMs,
      torchBf16Ms: t?.bf16?.medianMs,
      peakBytes: dit.peakBytes,
      note: join(
        `${dit.forward.dispatches} dispatches`,
        t?.errorFp32 !== undefined ? `rel L2 vs PyTorch fp32 ${err(t.errorFp32)}` : undefined,
        t?.fp32?.peakGB ? `PyTorch fp32 peak ${formatGB(t.fp32.peakGB * 1e9)}` : undefined,
        torchNote,
      ),
    });
    if (dit.forwardF16) {
      const f = dit.forwardF16;
      rows.push({
        item: `${label} f16`,
        kleinscopeMs: f.medianMs,
        tflops: tflops(f.medianMs),
        percentOfPeak: percent(tflops(f.medianMs), "f16"),
        percentOfCeiling: ofCeiling(tflops(f.medianMs), "f16"),
        torchFp32Ms: t?.fp32?.medianMs,
        torchBf16Ms: t?.bf16?.medianMs,
        peakBytes: f.peakBytes,
        note: join(
          t?.errorF16VsFp32 !== undefined ? `rel L2 vs PyTorch fp32 ${err(t.errorF16VsFp32)}` : `rel L2 vs f32 ${err(f.errorVsF32)}`,
          t?.bf16?.peakGB ? `PyTorch bf16 peak ${formatGB(t.bf16.peakGB * 1e9)}` : undefined,
          torchNote,
        ),
      });
    }
  }
  const p = r.pipeline;
  if (p) {
    const stage = (item: string, ms: number, note = "", peakBytes?: number) =>
      rows.push({ item: `pipeline ${item}`, kleinscopeMs: ms, peakBytes, note, noBaseline: true });
    stage("load transformer + VAE", p.loadMs);
    stage("text encoder load", p.textLoadMs);
    stage("text encoder (encode, release)", p.textMs);
    stage("VAE encode of the references", p.refsMs);
    stage("step plan (build + compile)", p.planMs);
    p.stepsMs.forEach((ms, i) => stage(`step ${i + 1}/${p.steps}`, ms, "", p.weightsBytes + p.planBytes));
    stage("VAE decode", p.decodeMs);
    stage("total with the text encoder's load", p.totalMs, "every stage but the transformer + VAE load");
    stage(
      "total (without loads)",
      p.totalMs - p.textLoadMs,
      `${p.size}², f32; peak = transformer + VAE weights ${formatGB(p.weightsBytes)} + the larger of the step plan ` +
        `${formatGB(p.planBytes)} and the VAE plans ${formatGB(p.vaePlanBytes)}`,
      p.peakBytes,
    );
  }
  return rows;
}

/** The table, with "n/a" where a value is missing (no PyTorch, unknown peak). */
export function formatSummaryTable(rows: SummaryRow[]): string {
  const na = <T>(v: T | undefined, f: (v: T) => string) => (v === undefined ? "n/a" : f(v));
  return formatTable(
    ["item", "kleinscope ms", "TFLOP/s", "% of peak", "% of ceiling", "PyTorch fp32 ms", "PyTorch bf16 ms", "peak mem", "note"],
    rows.map((r) => [
      r.item,
      na(r.kleinscopeMs, formatMs),
      r.tflops === undefined ? "" : formatTflops(r.tflops),
      r.tflops === undefined ? "" : na(r.percentOfPeak, (p) => `${p.toPrecision(3)}%`),
      r.tflops === undefined || r.item.startsWith("ceiling ") ? "" : na(r.percentOfCeiling, (p) => `${p.toPrecision(3)}%`),
      r.noBaseline ? "" : na(r.torchFp32Ms, formatMs),
      r.noBaseline ? "" : na(r.torchBf16Ms, formatMs),
      r.peakBytes === undefined ? "" : formatGB(r.peakBytes),
      r.note,
    ]),
  );
}

/** The lines printed after the progress: device, date, what ran, the table, and any failures. */
export function formatSummary(r: SummaryReport): string {
  const peak = r.peak.f32
    ? `FMA peak ${r.peak.f32} TFLOP/s f32${r.peak.f16 ? `, ${r.peak.f16} f16` : ""}`
    : "FMA peak unknown for this adapter (--peak-tflops F32[,F16] gives it): % of peak n/a";
  const measured = r.ceilings
    ? `measured ceilings: ${r.ceilings.ceilings.map((c) => `${c.name} ${c.value.toPrecision(4)} ${c.unit}`).join(", ")}`
    : "measured ceilings: n/a (% of ceiling n/a)";
  return [
    `device: ${r.device}; ${peak}`,
    measured,
    `date: ${r.date}`,
    ...r.ran.map((l) => `ran: ${l}`),
    "",
    formatSummaryTable(r.rows),
    ...(r.failures.length ? ["", `FAILED (${r.failures.length}):`, ...r.failures.map((f) => `  ${f}`)] : []),
  ].join("\n");
}

if (import.meta.main) {
  let opts: SummaryOptions | "help";
  try {
    opts = parseSummaryArgs(Deno.args);
  } catch (e) {
    console.error(`error: ${(e as Error).message}\n${USAGE}`);
    Deno.exit(2);
  }
  if (opts === "help") {
    console.log(USAGE);
    Deno.exit(0);
  }
  try {
    const report = await runSummary(opts);
    console.log("\n" + formatSummary(report));
    if (opts.json) {
      await Deno.writeTextFile(opts.json, JSON.stringify(report, null, 2) + "\n");
      console.log(`wrote ${opts.json}`);
    }
    if (report.failures.length) Deno.exit(1);
  } catch (e) {
    console.error(`error: ${(e as Error).message}`);
    Deno.exit(1);
  }
}
