// Attention throughput at FLUX.2 klein joint-attention shapes (32 heads × 128, 512² and 1024² with one reference),
// without and with a knockout group mask ("ref->text": text = the first 512 tokens, ref = the last quarter).
// Every configuration timed is first checked against the float64 reference (a small random case in full, and
// sampled rows of the timed case). The timed plan repeats the attention node back to back (same inputs and output),
// so the GPU stays busy, and at its working clock, between repetitions; after warm-up runs, one profiled run gives
// each repetition's time from GPU timestamps (without timestamps, the wall clock of a run shared out evenly), and the
// median is reported.
//
//   deno run -A bench/attention.ts                 default / tuned configuration for this device
//   deno run -A bench/attention.ts --small         shapes small enough for a software adapter
//   deno run -A bench/attention.ts --sweep         try ATTENTION_SWEEP_CONFIGS, record the fastest per head dim in
//                                                  kernels/attention_tuned.json (or --tuning-out PATH)
//   deno run -A bench/attention.ts --config q128r8.t16k4.ds16.ks16.dv128[,…]   these configurations
//   --head-dim D (default 128: the transformer's; the text encoder's is 128 on klein, 16 on the tiny checkpoint)
//   --runs N (default 5: repetitions of the node in the timed plan)   --json PATH (write every measurement)

import { getGpu, type GpuContext } from "../runtime/device.ts";
import { runAuditCase } from "../kernels/audit.ts";
import {
  ATTENTION_SWEEP_CONFIGS,
  type AttentionConfig,
  attentionConfigFor,
  attentionConfigName,
  attentionTiles,
  attentionWorkgroupBytes,
  loadAttentionTuning,
  parseAttentionConfigName,
} from "../kernels/attention.ts";
import { applyDeviceTuning } from "../kernels/tuning.ts";
import { attentionCase } from "../kernels/reference/attention.ts";
import { type AttentionMeasurement, knockoutBits, timeAttention } from "./attention_timing.ts";
import { parseBenchArgs } from "./common.ts";

interface Shape {
  label: string;
  seq: number;
  heads: number;
  headDim: number;
  /** Knockout mask: the first `text` queries may not read the last `ref` keys. */
  masked: boolean;
}

/** One timed shape and configuration, labelled. */
type Measurement = AttentionMeasurement & { shape: string };

export const USAGE = `usage: deno task bench attention [--small] [--sweep [--tuning-out PATH]] [--config NAME[,…]] [--head-dim 128]
         [--runs 5] [--json PATH]
Flash-attention TFLOP/s at klein's joint-attention shapes, plain and with a knockout mask, each configuration checked
against float64 first; --sweep records the fastest per head dim in kernels/attention_tuned.json; --small: shapes for a
software adapter. Configuration names: q128r8.t16k4.ds16.ks16.dv128[.w4].`;

const parsed = parseBenchArgs(Deno.args, {
  small: { type: "boolean", default: false },
  sweep: { type: "boolean", default: false },
  runs: { type: "string", default: "5" },
  json: { type: "string" },
  "tuning-out": { type: "string" },
  config: { type: "string" },
  "head-dim": { type: "string", default: "128" },
}, USAGE);
if (parsed === "help") Deno.exit(0);
const opts = parsed;
const headDim = Number(opts["head-dim"]);
if (!Number.isInteger(headDim) || headDim <= 0 || headDim % 4 !== 0) {
  throw new Error(`--head-dim must be a positive multiple of 4, got ${opts["head-dim"]}`);
}
if (opts.config && opts.sweep) throw new Error("--config and --sweep exclude each other");
// Checked against the head dim before any GPU work, so that a typo fails at once.
const namedConfigs = opts.config?.split(",").map((name) => {
  const config = parseAttentionConfigName(name);
  attentionTiles(config, headDim, "--config");
  return config;
});
const runs = Number(opts.runs);
if (!Number.isInteger(runs) || runs < 1) throw new Error(`--runs must be a positive integer, got ${opts.runs}`);

/** Full check of a configuration on a small random case with awkward sizes (and the group mask when asked). */
async function checkSmall(gpu: GpuContext, config: AttentionConfig, headDim: number, masked: boolean): Promise<number> {
  const seq = 300;
  const c = attentionCase({
    label: "check",
    sq: seq,
    sk: seq,
    heads: 2,
    kvHeads: 2,
    headDim,
    config,
    bits: masked ? knockoutBits(seq) : undefined,
  });
  return (await runAuditCase(gpu, c, 5)).relL2;
}

function table(ms: Measurement[]): string {
  const head = ["shape", "mask", "config", "median ms", "TFLOP/s", "sampled rel L2"];
  const rows = ms.map((
    m,
  ) => [
    m.shape,
    m.masked ? "ref->text" : "none",
    m.config,
    m.medianMs.toFixed(3),
    m.tflops.toPrecision(3),
    m.checkRelL2.toExponential(1),
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (r: string[]) => r.map((c, i) => c.padEnd(widths[i])).join("  ");
  return [line(head), line(widths.map((w) => "-".repeat(w))), ...rows.map(line)].join("\n");
}

const TOLERANCE = 1e-5;

const shapes: Shape[] = opts.small
  ? [
    { label: `H2 D${headDim} S256`, seq: 256, heads: 2, headDim, masked: false },
    { label: `H2 D${headDim} S640`, seq: 640, heads: 2, headDim, masked: false },
  ]
  : [
    { label: `H32 D${headDim} S2560`, seq: 2560, heads: 32, headDim, masked: false },
    { label: `H32 D${headDim} S8704`, seq: 8704, heads: 32, headDim, masked: false },
  ];
const allShapes = shapes.flatMap((s) => [s, { ...s, masked: true }]);
const largest = Math.max(...allShapes.map((s) => s.seq * s.heads * s.headDim * 4));
const gpu = await getGpu({ maxBufferSize: largest, maxStorageBufferBindingSize: largest });
await applyDeviceTuning(gpu);
console.log(
  `device: ${gpu.adapterDescription} (workgroup memory ${gpu.limits.maxComputeWorkgroupStorageSize} B, timestamps ${gpu.hasTimestamps})`,
);

const results: Measurement[] = [];
const failures: string[] = [];

async function checkedMeasure(shape: Shape, config: AttentionConfig): Promise<Measurement | null> {
  const small = await checkSmall(gpu, config, shape.headDim, shape.masked);
  if (!(small <= TOLERANCE)) {
    failures.push(`${attentionConfigName(config)} D${shape.headDim}${shape.masked ? " masked" : ""}: small-case rel L2 ${small}`);
    return null;
  }
  let m: Measurement;
  try {
    m = { shape: shape.label, ...(await timeAttention(gpu, shape, shape.masked, runs, config)) };
  } catch (e) {
    failures.push(`${attentionConfigName(config)} ${shape.label}${shape.masked ? " masked" : ""}: ${(e as Error).message}`);
    return null;
  }
  results.push(m);
  console.log(
    `  ${m.shape} ${m.masked ? "masked" : "plain "} ${m.config}: ${m.medianMs.toFixed(3)} ms, ${m.tflops.toPrecision(3)} TFLOP/s`,
  );
  return m;
}

if (opts.sweep) {
  // Sweep on the largest plain shape per head dim, then time the winner on every shape.
  const sweepShapes: Shape[] = [
    shapes[shapes.length - 1],
    opts.small
      ? { label: "H1 D512 S256", seq: 256, heads: 1, headDim: 512, masked: false }
      : { label: "H1 D512 S4096", seq: 4096, heads: 1, headDim: 512, masked: false },
  ];
  const winners: Record<string, AttentionConfig> = {};
  for (const shape of sweepShapes) {
    let best: { config: AttentionConfig; ms: number } | null = null;
    for (const config of ATTENTION_SWEEP_CONFIGS) {
      let bytes: number;
      try {
        bytes = attentionWorkgroupBytes(config, shape.headDim);
      } catch {
        continue;
      }
      if (bytes > gpu.limits.maxComputeWorkgroupStorageSize) continue;
      const m = await checkedMeasure(shape, config);
      if (m && (!best || m.medianMs < best.ms)) best = { config, ms: m.medianMs };
    }
    if (best) winners[String(shape.headDim)] = best.config;
  }
  const file = opts["tuning-out"]
    ? new URL(opts["tuning-out"], `file://${Deno.cwd()}/`)
    : new URL("../kernels/attention_tuned.json", import.meta.url);
  const table_ = loadAttentionTuning(file);
  // The built-in table is keyed by device class (this adapter's own winners live in its tile cache).
  const deviceClass = gpu.caps.deviceClass;
  table_[deviceClass] = { ...table_[deviceClass], ...winners };
  Deno.writeTextFileSync(file, JSON.stringify(table_, null, 2) + "\n");
  console.log(
    `recorded ${JSON.stringify(winners)} for ${deviceClass} devices (measured on "${gpu.adapterDescription}") in ${file.pathname}`,
  );
  for (const shape of allShapes) {
    await checkedMeasure(shape, winners[String(shape.headDim)] ?? attentionConfigFor(gpu.caps, shape.headDim));
  }
} else if (namedConfigs) {
  for (const config of namedConfigs) for (const shape of allShapes) await checkedMeasure(shape, config);
} else {
  for (const shape of allShapes) await checkedMeasure(shape, attentionConfigFor(gpu.caps, shape.headDim));
}

console.log(`\ndevice: ${gpu.adapterDescription}`);
console.log(table(results));
const pairs = shapes.map((s) => {
  const plain = results.filter((r) => r.shape === s.label && !r.masked).at(-1);
  const masked = results.filter((r) => r.shape === s.label && r.masked).at(-1);
  return plain && masked ? `${s.label}: group mask costs ${((masked.medianMs / plain.medianMs - 1) * 100).toFixed(1)}%` : null;
}).filter(Boolean);
console.log(pairs.join("\n"));
if (opts.json) Deno.writeTextFileSync(opts.json, JSON.stringify({ device: gpu.adapterDescription, results, failures }, null, 2) + "\n");
if (failures.length) {
  console.error(`FAILED checks:\n  ${failures.join("\n  ")}`);
  Deno.exit(1);
}
