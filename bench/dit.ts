// Benchmark of one FLUX.2 transformer forward on the GPU, optionally against a plain-PyTorch forward on the same
// weights and inputs (bench/torch_flux2.py, run as a subprocess).
//
//   deno run -A bench/dit.ts --model DIR | --random klein-4b|klein-9b|tiny
//                            [--size 512] [--refs 1] [--iters 5] [--seed 0] [--compare] [--python python3] [--f16]
//
// The sequence is [512 text ; noise ; references]: (size/16)² noise tokens and as many per reference, so 512² with one
// reference is 2560 rows and 1024² with one is 8704. Inputs are seeded random values at σ = 0.7. The script prints the
// load time and rate (weights stream from disk), the median wall-clock time of --iters forwards (plan.run()), and,
// where the adapter has timestamp queries, one profiled run: the 12 slowest nodes and a table per kernel family with
// TFLOP/s from each node's declared FLOPs. Peak GPU memory is the weights plus everything the plan allocated.
// --compare writes the inputs to a safetensors file, frees kleinscope's GPU memory, runs bench/torch_flux2.py in fp32
// (TF32 off) and in bf16, and reports the relative L2 error of kleinscope's output against PyTorch fp32 with all times.
// --f16 also times the forward with the blocks' projections multiplied in f16 and reports its relative L2 error
// against kleinscope's f32 output (and against PyTorch fp32 with --compare).
// --random PRESET uses /tmp/kleinscope-random-PRESET, writing it with bench/make_random_checkpoint.py when missing.

import { parseArgs } from "node:util";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { getGpu, type GpuContext } from "../runtime/device.ts";
import { Graph } from "../runtime/graph.ts";
import { type NodeTiming, Plan } from "../runtime/executor.ts";
import { applyDeviceTuning } from "../kernels/tuning.ts";
import { Flux2Transformer } from "../model/flux2/transformer.ts";
import type { Flux2Config } from "../model/flux2/config.ts";
import { concatIds, type Grid, imageIds, textIds } from "../model/flux2/positions.ts";
import { writeSafetensors } from "../weights/safetensors_writer.ts";
import { SafetensorsFile } from "../weights/safetensors.ts";
import {
  benchCommandLine,
  exists,
  formatGB,
  formatMs,
  formatTable,
  formatTflops,
  median,
  runCommand,
  seededNormals,
  tail,
} from "./common.ts";
import { relativeL2 } from "../kernels/audit.ts";

export const TEXT_ROWS = 512;
export const RANDOM_PRESETS = ["klein-4b", "klein-9b", "tiny"] as const;
/** σ of the benchmark inputs (the model's timestep is 1000·σ). */
export const BENCH_SIGMA = 0.7;

const BENCH_DIR = fileURLToPath(new URL(".", import.meta.url));
const TORCH_SCRIPT = join(BENCH_DIR, "torch_flux2.py");
const CHECKPOINT_SCRIPT = join(BENCH_DIR, "make_random_checkpoint.py");

export interface DitBenchOptions {
  /** Transformer folder (or pipeline folder holding transformer/). */
  model?: string;
  /** Random checkpoint preset, written to /tmp when missing. */
  random?: string;
  size: number;
  refs: number;
  iters: number;
  seed: number;
  compare: boolean;
  f16: boolean;
  /** Python interpreter for the PyTorch baseline and the checkpoint writer. */
  python: string;
}

export function parseDitBenchArgs(args: string[]): DitBenchOptions {
  const { values } = parseArgs({
    args,
    options: {
      model: { type: "string" },
      random: { type: "string" },
      size: { type: "string", default: "512" },
      refs: { type: "string", default: "1" },
      iters: { type: "string", default: "5" },
      seed: { type: "string", default: "0" },
      compare: { type: "boolean", default: false },
      f16: { type: "boolean", default: false },
      python: { type: "string", default: "python3" },
    },
  });
  const int = (key: "size" | "refs" | "iters" | "seed", min: number) => {
    const v = Number(values[key]);
    if (!Number.isInteger(v) || v < min) throw new Error(`--${key}: "${values[key]}" is not an integer ≥ ${min}`);
    return v;
  };
  if ((values.model === undefined) === (values.random === undefined)) {
    throw new Error("give exactly one of --model DIR or --random klein-4b|klein-9b|tiny");
  }
  if (values.random !== undefined && !(RANDOM_PRESETS as readonly string[]).includes(values.random)) {
    throw new Error(`--random: "${values.random}" is not one of ${RANDOM_PRESETS.join(", ")}`);
  }
  const size = int("size", 16);
  if (size % 16) throw new Error(`--size ${size} must be a multiple of 16 (one latent token per 16×16 pixels)`);
  return {
    model: values.model,
    random: values.random,
    size,
    refs: int("refs", 0),
    iters: int("iters", 1),
    seed: int("seed", 0),
    compare: values.compare!,
    f16: values.f16!,
    python: values.python!,
  };
}

export interface DitSequence {
  textRows: number;
  noise: Grid;
  refs: Grid[];
  /** Noise plus reference rows. */
  imageRows: number;
  /** Text plus image rows. */
  rows: number;
}

/** The [text ; noise ; references] sequence of a square image of `size` pixels with `refs` references of the same size. */
export function ditSequence(size: number, refs: number, textRows = TEXT_ROWS): DitSequence {
  const side = size / 16;
  if (!Number.isInteger(side) || side < 1) throw new Error(`image size ${size} is not a positive multiple of 16`);
  const noise = { h: side, w: side };
  const imageRows = side * side * (1 + refs);
  return { textRows, noise, refs: Array.from({ length: refs }, () => ({ ...noise })), imageRows, rows: textRows + imageRows };
}

export interface BenchInputs {
  /** [imageRows, in_channels] */
  x: Float32Array;
  /** [textRows, joint_attention_dim] */
  ctx: Float32Array;
  /** Position ids [rows, 4], text rows first. */
  ids: Float64Array;
  sigma: number;
  seq: DitSequence;
}

/** Seeded standard-normal x and ctx, and the sequence's position ids. */
export function ditBenchInputs(cfg: Flux2Config, seq: DitSequence, seed: number): BenchInputs {
  return {
    x: seededNormals(seq.imageRows * cfg.inChannels, 2 * seed + 1),
    ctx: seededNormals(seq.textRows * cfg.jointAttentionDim, 2 * seed + 2),
    ids: concatIds(textIds(seq.textRows), imageIds(seq.noise, seq.refs)),
    sigma: BENCH_SIGMA,
    seq,
  };
}

/** The transformer folder to load: --model (a pipeline folder means its transformer/), or the random preset's folder
 * in /tmp, written by bench/make_random_checkpoint.py when it does not exist yet. */
export async function resolveTransformerDir(opts: DitBenchOptions, log: (s: string) => void): Promise<string> {
  if (opts.model !== undefined) {
    if (!(await exists(opts.model))) throw new Error(`--model ${opts.model}: no such file or folder`);
    return (await exists(join(opts.model, "model_index.json"))) ? join(opts.model, "transformer") : opts.model;
  }
  const dir = `/tmp/kleinscope-random-${opts.random}`;
  if (await exists(dir)) return dir;
  log(`writing a random ${opts.random} transformer to ${dir} …`);
  const r = await runCommand(opts.python, [CHECKPOINT_SCRIPT, "--kind", "transformer", "--preset", opts.random!, "--out", dir]);
  if (r.code !== 0) throw new Error(`make_random_checkpoint.py failed (exit ${r.code}):\n${tail(r.stderr || r.stdout)}`);
  log(tail(r.stdout, 1));
  return dir;
}

export interface LoadedTransformer {
  transformer: Flux2Transformer;
  seconds: number;
  /** GPU bytes of the weights (bf16, as read from disk). */
  bytes: number;
}

export async function loadTransformer(gpu: GpuContext, dir: string): Promise<LoadedTransformer> {
  const t0 = performance.now();
  const transformer = await Flux2Transformer.load(gpu, dir);
  return { transformer, seconds: (performance.now() - t0) / 1e3, bytes: transformer.store.bytes() };
}

export interface ForwardBench {
  /** Output of the first (untimed) forward [imageRows, out_channels]. */
  output: Float32Array;
  samplesMs: number[];
  medianMs: number;
  compileSeconds: number;
  dispatches: number;
  /** Sum of the nodes' declared FLOPs. */
  flops: number;
  /** Bytes of inputs, activations and outputs the plan allocated. */
  planBytes: number;
  /** Per-node GPU times of one profiled run (when the adapter has timestamp queries). */
  profile: NodeTiming[] | null;
}

/** Compile the forward for the inputs' sequence, run it once (its output is kept), time `iters` runs, and profile one
 * more when the adapter has timestamp queries (unless `profile` is false). The plan is destroyed before returning. */
export async function benchForward(
  gpu: GpuContext,
  transformer: Flux2Transformer,
  inputs: BenchInputs,
  iters: number,
  options: { profile?: boolean; f16?: boolean } = {},
): Promise<ForwardBench> {
  const cfg = transformer.config;
  const { textRows, imageRows } = inputs.seq;
  const g = new Graph();
  const output = g.state("dit.output", [imageRows, cfg.outChannels]);
  transformer.buildForward(g, textRows, imageRows, { output, f16: options.f16 });
  const t0 = performance.now();
  const plan = await Plan.compile(gpu, g, transformer.store, { label: "bench:dit" });
  const compileSeconds = (performance.now() - t0) / 1e3;
  try {
    transformer.writeForwardInputs(plan, { x: inputs.x, ctx: inputs.ctx, ids: inputs.ids, timestep: inputs.sigma * 1000 });
    await plan.run();
    const out = await plan.read("dit.output");
    const samplesMs: number[] = [];
    for (let i = 0; i < iters; i++) {
      const t = performance.now();
      await plan.run();
      samplesMs.push(performance.now() - t);
    }
    const profile = gpu.hasTimestamps && options.profile !== false ? await plan.profile() : null;
    return {
      output: out,
      samplesMs,
      medianMs: median(samplesMs),
      compileSeconds,
      dispatches: g.nodes.length,
      flops: g.flops(),
      planBytes: plan.allocatedBytes,
      profile,
    };
  } finally {
    plan.destroy();
  }
}

/** The `count` slowest nodes of a profiled run. */
export function topNodesTable(timings: NodeTiming[], count = 12): string {
  const total = timings.reduce((s, t) => s + t.ms, 0);
  const rows = [...timings].sort((a, b) => b.ms - a.ms).slice(0, count).map((t) => [
    t.name,
    t.kernel,
    t.ms.toFixed(3),
    `${((100 * t.ms) / total).toFixed(1)}%`,
    t.flops ? formatTflops(t.flops / (t.ms * 1e-3) / 1e12) : "",
  ]);
  return formatTable(["node", "kernel", "ms", "share", "TFLOP/s"], rows);
}

/** GPU time per kernel family (all nodes of one kernel), slowest first, with TFLOP/s over the nodes that declare FLOPs. */
export function kernelFamilyTable(timings: NodeTiming[]): string {
  const total = timings.reduce((s, t) => s + t.ms, 0);
  const families = new Map<string, { nodes: number; ms: number; flops: number; flopMs: number }>();
  for (const t of timings) {
    const f = families.get(t.kernel) ?? { nodes: 0, ms: 0, flops: 0, flopMs: 0 };
    f.nodes++;
    f.ms += t.ms;
    if (t.flops) {
      f.flops += t.flops;
      f.flopMs += t.ms;
    }
    families.set(t.kernel, f);
  }
  const rows = [...families.entries()].sort((a, b) => b[1].ms - a[1].ms).map(([kernel, f]) => [
    kernel,
    String(f.nodes),
    f.ms.toFixed(2),
    `${((100 * f.ms) / total).toFixed(1)}%`,
    f.flops ? (f.flops / 1e9).toFixed(1) : "",
    f.flops && f.flopMs > 0 ? formatTflops(f.flops / (f.flopMs * 1e-3) / 1e12) : "",
  ]);
  rows.push(["total", String(timings.length), total.toFixed(2), "100%", "", ""]);
  return formatTable(["kernel", "nodes", "ms", "share", "GFLOP", "TFLOP/s"], rows);
}

/** The inputs as bench/torch_flux2.py reads them: x, ctx, ids (F32) and timestep = σ (F64). */
export async function writeBenchInputs(path: string, cfg: Flux2Config, inputs: BenchInputs): Promise<void> {
  const { textRows, imageRows, rows } = inputs.seq;
  await writeSafetensors(path, {
    x: { dtype: "F32", shape: [imageRows, cfg.inChannels], data: inputs.x },
    ctx: { dtype: "F32", shape: [textRows, cfg.jointAttentionDim], data: inputs.ctx },
    ids: { dtype: "F32", shape: [rows, 4], data: Float32Array.from(inputs.ids) },
    timestep: { dtype: "F64", shape: [1], data: Float64Array.of(inputs.sigma) },
  });
}

export interface TorchResult {
  mode: string;
  device: string;
  medianMs: number;
  loadSeconds: number;
  peakGB?: number;
  output?: Float32Array;
}

/** Run bench/torch_flux2.py once (timed, writing its output) and read back what it reports. */
export async function runTorchBaseline(
  python: string,
  modelDir: string,
  inputsPath: string,
  dtype: "fp32" | "bf16",
  iters: number,
  outputPath: string,
): Promise<TorchResult> {
  const args = [
    TORCH_SCRIPT,
    "--model",
    modelDir,
    "--inputs",
    inputsPath,
    "--output",
    outputPath,
    "--dtype",
    dtype,
    "--time",
    "--iters",
    String(iters),
  ];
  const r = await runCommand(python, args);
  const line = r.stdout.split("\n").find((l) => l.startsWith("RESULT "));
  if (r.code !== 0 || !line) {
    throw new Error(`torch_flux2.py --dtype ${dtype} failed (exit ${r.code}):\n${tail(r.stderr || r.stdout)}`);
  }
  const res = JSON.parse(line.slice("RESULT ".length));
  const file = await SafetensorsFile.open(outputPath);
  try {
    return {
      mode: dtype,
      device: res.device,
      medianMs: res.median_ms,
      loadSeconds: res.load_s,
      peakGB: res.peak_gb,
      output: await file.readF32("output"),
    };
  } finally {
    file.close();
  }
}

export interface DitBenchReport {
  device: string;
  modelDir: string;
  config: Flux2Config;
  seq: DitSequence;
  load: { seconds: number; bytes: number };
  forward: ForwardBench;
  peakBytes: number;
  /** With --f16: the same forward multiplying in f16, and its relative L2 error against kleinscope's f32 output. */
  forwardF16?: ForwardBench & { peakBytes: number; errorVsF32: number };
  torch?: TorchComparison;
}

export interface TorchComparison {
  fp32?: TorchResult;
  bf16?: TorchResult;
  /** Relative L2 error of kleinscope's output against PyTorch fp32. */
  errorFp32?: number;
  errorBf16VsFp32?: number;
  /** Relative L2 error of kleinscope --f16 against PyTorch fp32. */
  errorF16VsFp32?: number;
  /** Messages of the baselines that did not run. */
  failures: string[];
}

export async function runDitBench(opts: DitBenchOptions, log: (s: string) => void = console.log): Promise<DitBenchReport> {
  const modelDir = await resolveTransformerDir(opts, log);
  const gpu = await getGpu();
  await applyDeviceTuning(gpu);
  if (opts.f16 && !gpu.hasF16) throw new Error(`--f16: adapter ${gpu.adapterDescription} offers no shader-f16`);
  const seq = ditSequence(opts.size, opts.refs);
  log(`device: ${gpu.adapterDescription} (timestamp queries: ${gpu.hasTimestamps ? "yes" : "no"})`);

  const loaded = await loadTransformer(gpu, modelDir);
  const { transformer } = loaded;
  const cfg = transformer.config;
  let report: DitBenchReport;
  try {
    log(
      `model: ${modelDir}: ${cfg.numDoubleBlocks} double + ${cfg.numSingleBlocks} single blocks, ${cfg.heads} heads, ` +
        `hidden ${cfg.hidden}; loaded ${formatGB(loaded.bytes)} in ${loaded.seconds.toFixed(1)} s ` +
        `(${(loaded.bytes / 1e9 / loaded.seconds).toFixed(2)} GB/s)`,
    );
    log(`sequence: ${opts.size}² + ${opts.refs} reference(s): ${seq.rows} rows (${seq.textRows} text + ${seq.imageRows} image)`);
    const inputs = ditBenchInputs(cfg, seq, opts.seed);
    const forward = await benchForward(gpu, transformer, inputs, opts.iters);
    const peakBytes = loaded.bytes + forward.planBytes;
    log(
      `plan: ${forward.dispatches} dispatches compiled in ${forward.compileSeconds.toFixed(1)} s; forward median ` +
        `${formatMs(forward.medianMs)} ms of ${opts.iters} (${forward.samplesMs.map(formatMs).join(", ")}), ` +
        `${(forward.flops / 1e12).toFixed(2)} TFLOP → ${formatTflops(forward.flops / (forward.medianMs * 1e-3) / 1e12)} TFLOP/s`,
    );
    log(`peak GPU memory: ${formatGB(loaded.bytes)} weights + ${formatGB(forward.planBytes)} plan = ${formatGB(peakBytes)}`);
    if (forward.profile) {
      const sum = forward.profile.reduce((s, t) => s + t.ms, 0);
      log(`\nslowest nodes (one profiled run, GPU time ${formatMs(sum)} ms over ${forward.profile.length} dispatches)`);
      log(topNodesTable(forward.profile));
      log(`\nper kernel family`);
      log(kernelFamilyTable(forward.profile));
    }
    report = { device: gpu.adapterDescription, modelDir, config: cfg, seq, load: loaded, forward, peakBytes };
    if (opts.f16) {
      const f16 = await benchForward(gpu, transformer, inputs, opts.iters, { f16: true });
      const errorVsF32 = relativeL2(f16.output, forward.output);
      report.forwardF16 = { ...f16, peakBytes: loaded.bytes + f16.planBytes, errorVsF32 };
      log(
        `\n--f16 (blocks' projections multiplied in f16): forward median ${formatMs(f16.medianMs)} ms of ${opts.iters} ` +
          `(${f16.samplesMs.map(formatMs).join(", ")}); relative L2 against kleinscope f32 ${errorVsF32.toExponential(2)}`,
      );
      if (f16.profile) log(kernelFamilyTable(f16.profile));
    }

    if (opts.compare) {
      const dir = await Deno.makeTempDir({ prefix: "kleinscope-dit-" });
      try {
        const inputsPath = join(dir, "inputs.safetensors");
        await writeBenchInputs(inputsPath, cfg, inputs);
        // Everything kleinscope needs is on the host now: give its GPU memory to PyTorch (waiting on the queue lets
        // the implementation reclaim the destroyed buffers now rather than at its next poll).
        transformer.release();
        gpu.device.queue.submit([]);
        await gpu.device.queue.onSubmittedWorkDone();
        // A failing baseline is reported, not thrown: kleinscope's figures above stay in the closing table.
        const torch: TorchComparison = { failures: [] };
        for (const dtype of ["fp32", "bf16"] as const) {
          try {
            torch[dtype] = await runTorchBaseline(opts.python, modelDir, inputsPath, dtype, opts.iters, join(dir, `${dtype}.safetensors`));
          } catch (e) {
            torch.failures.push((e as Error).message);
            log(`PyTorch ${dtype}: ${(e as Error).message}`);
          }
        }
        if (torch.fp32) {
          torch.errorFp32 = relativeL2(forward.output, torch.fp32.output!);
          if (report.forwardF16) torch.errorF16VsFp32 = relativeL2(report.forwardF16.output, torch.fp32.output!);
          if (torch.bf16) torch.errorBf16VsFp32 = relativeL2(torch.bf16.output!, torch.fp32.output!);
        }
        report.torch = torch;
      } finally {
        await Deno.remove(dir, { recursive: true }).catch(() => {});
      }
    }
  } finally {
    transformer.release();
  }
  log("\n" + summaryTable(report, opts));
  return report;
}

/** The closing table: one line per implementation, time and error against PyTorch fp32. */
export function summaryTable(r: DitBenchReport, opts: Pick<DitBenchOptions, "size" | "refs" | "iters">): string {
  const flops = r.forward.flops;
  const tflops = (ms: number) => formatTflops(flops / (ms * 1e-3) / 1e12);
  const error = (e: number | undefined) => (e === undefined ? "" : e.toExponential(2));
  const rows = [[
    `kleinscope (WebGPU, ${r.device})`,
    formatMs(r.forward.medianMs),
    tflops(r.forward.medianMs),
    formatGB(r.peakBytes),
    error(r.torch?.errorFp32),
  ]];
  if (r.forwardF16) {
    rows.push([
      `kleinscope --f16 (WebGPU, ${r.device})`,
      formatMs(r.forwardF16.medianMs),
      tflops(r.forwardF16.medianMs),
      formatGB(r.forwardF16.peakBytes),
      r.torch?.errorF16VsFp32 === undefined ? `${error(r.forwardF16.errorVsF32)} (vs kleinscope f32)` : error(r.torch.errorF16VsFp32),
    ]);
  }
  const torchRow = (label: string, t: TorchResult | undefined, err: string) => {
    if (!t) return rows.push([label, "failed", "", "", ""]);
    rows.push([`${label} (${t.device})`, formatMs(t.medianMs), tflops(t.medianMs), t.peakGB ? formatGB(t.peakGB * 1e9) : "", err]);
  };
  if (r.torch) {
    torchRow("PyTorch fp32, TF32 off", r.torch.fp32, "0 (reference)");
    torchRow("PyTorch bf16", r.torch.bf16, error(r.torch.errorBf16VsFp32));
  }
  const title = `transformer forward, ${opts.size}² + ${opts.refs} ref (S = ${r.seq.rows}), median of ${opts.iters}, ` +
    `${r.config.numDoubleBlocks}+${r.config.numSingleBlocks} blocks, ${r.config.heads} heads`;
  return `${title}\n${formatTable(["implementation", "ms", "TFLOP/s", "peak mem", "rel L2 vs PyTorch fp32"], rows)}`;
}

export const USAGE = `usage: deno task bench dit --model DIR | --random klein-4b|klein-9b|tiny
         [--size 512] [--refs 1] [--iters 5] [--seed 0] [--compare] [--python python3] [--f16]
One transformer forward: load rate, median forward time, the slowest nodes and a table per kernel family; --compare runs
the same forward in PyTorch (fp32 and bf16) and reports the relative L2 error against it.`;

if (import.meta.main) {
  const options = benchCommandLine(Deno.args, USAGE, parseDitBenchArgs);
  if (options === "help") Deno.exit(0);
  try {
    await runDitBench(options);
  } catch (e) {
    console.error(`bench/dit.ts: ${(e as Error).message}`);
    Deno.exit(1);
  }
}
