// What this stack can reach on a card: microbenchmarks in WGSL, run through the same runtime as the kernels (graph,
// plan, executor), of the f32 and packed-f16 multiply-add rates and of workgroup- and global-memory bandwidth.
// bench summary reports every kernel against these as well as against the datasheet peak.
//
//   deno task bench ceilings [--small] [--iters n] [--json FILE]
//
// Each result is checked: the multiply-add chains against the same recurrence on the CPU for sampled threads, the
// workgroup sums against their closed form, the copy element for element on sampled ranges.

import { getGpu, type GpuContext } from "../runtime/device.ts";
import { Graph } from "../runtime/graph.ts";
import { Plan } from "../runtime/executor.ts";
import { grid1d, type KernelSpec } from "../runtime/kernel.ts";
import { fillUniform, formatTable, median, parseBenchArgs } from "./common.ts";

export interface Ceiling {
  name: "f32 FMA" | "f16 FMA (packed)" | "workgroup memory" | "global memory";
  /** TFLOP/s for the multiply-add rates, GB/s for the bandwidths. */
  value: number;
  unit: "TFLOP/s" | "GB/s";
  /** Median time of one dispatch. */
  medianMs: number;
  timedBy: "timestamps" | "wall clock";
}

export interface CeilingsReport {
  device: string;
  ceilings: Ceiling[];
  /** Why a ceiling was not measured (f16 without shader-f16). */
  skipped: string[];
}

export interface CeilingsOptions {
  /** Sizes a software adapter finishes in seconds. */
  small?: boolean;
  /** Dispatches timed back to back (default 5). */
  iters?: number;
}

const ceilingKernel = (file: string, bindings: KernelSpec["bindings"], params: KernelSpec["params"], usesF16 = false): KernelSpec => ({
  name: `ceiling.${file}`,
  source: new URL(`./ceilings/${file}.wgsl`, import.meta.url),
  bindings,
  params,
  usesF16,
});

const OUT = { name: "out", type: "array<vec4<f32>>", access: "read_write" } as const;
const FMA_PARAMS: KernelSpec["params"] = [{ name: "iters", type: "u32" }, { name: "b", type: "f32" }, { name: "c", type: "f32" }];
const FMA_F32 = ceilingKernel("fma_f32", [OUT], FMA_PARAMS);
const FMA_F16 = ceilingKernel("fma_f16", [OUT], FMA_PARAMS, true);
const WORKGROUP = ceilingKernel("workgroup_bandwidth", [OUT], [{ name: "iters", type: "u32" }, { name: "stride", type: "u32" }]);
const GLOBAL = ceilingKernel("global_bandwidth", [{ name: "src", type: "array<vec4<f32>>", access: "read" }, OUT], [{
  name: "count",
  type: "u32",
}]);

/** Sizes: workgroups of 256 threads and steps per thread. */
function sizes(small: boolean) {
  return small
    ? { fmaGroups: 16, fmaIters: 256, wgGroups: 16, wgIters: 256, copyVec4: 1 << 16 }
    : { fmaGroups: 16384, fmaIters: 1024, wgGroups: 8192, wgIters: 2048, copyVec4: 1 << 24 };
}

/** Run `node` `iters` times back to back; the median dispatch time, from timestamps when the adapter has them. */
async function timeNodes(
  gpu: GpuContext,
  build: (g: Graph, name: string) => void,
  iters: number,
  prepare: (plan: Plan) => void,
): Promise<{ plan: Plan; ms: number; timedBy: Ceiling["timedBy"] }> {
  const g = new Graph();
  for (let i = 0; i < iters; i++) build(g, `ceiling.${i}`);
  const plan = await Plan.compile(gpu, g, null, { label: "bench:ceilings" });
  prepare(plan);
  await plan.run();
  if (gpu.hasTimestamps) return { plan, ms: median((await plan.profile()).map((t) => t.ms)), timedBy: "timestamps" };
  const t0 = performance.now();
  await plan.run();
  return { plan, ms: (performance.now() - t0) / iters, timedBy: "wall clock" };
}

/** The chain of fma_*.wgsl for one thread and lane, on the CPU (f32 rounding per step; f16 is checked loosely). */
function fmaSum(thread: number, iters: number, b: number, c: number, f16: boolean): number[] {
  const start = (thread % 7) * 0.01;
  const round = f16 ? (v: number) => v : Math.fround;
  const starts = f16 ? [0, 0.25, 0.5, 0.75] : [0, 1, 2, 3];
  const offsets = f16 ? [0, 0.125, 0.0625, 0.03125] : [0, 4, 8, 12];
  const sums = [0, 0, 0, 0];
  for (let lane = 0; lane < 4; lane++) {
    for (let chain = 0; chain < 4; chain++) {
      let a = round(start + starts[lane] + offsets[chain]);
      const cc = round(c * (chain + 1));
      for (let i = 0; i < iters; i++) a = round(a * b + cc);
      sums[lane] += a;
    }
  }
  return sums;
}

async function fmaCeiling(gpu: GpuContext, f16: boolean, s: ReturnType<typeof sizes>, iters: number): Promise<Ceiling> {
  const threads = s.fmaGroups * 256;
  // Exact in f16 and f32; the chains contract towards the fixed points c·(chain + 1)/(1 − b) = 1, 2, 3, 4.
  const b = 127 / 128, c = 1 / 128;
  const { plan, ms, timedBy } = await timeNodes(
    gpu,
    (g, name) => {
      const out = g.find("out") ?? g.state("out", [threads, 4]);
      g.add({
        name,
        kernel: f16 ? FMA_F16 : FMA_F32,
        variant: {},
        bindings: { out },
        params: { iters: s.fmaIters, b, c },
        workgroups: grid1d(s.fmaGroups),
      });
    },
    iters,
    (p) => p.write("out", new Float32Array(threads * 4).fill(NaN)),
  );
  try {
    for (const thread of [0, 1, 6, threads - 1]) {
      const got = await plan.readRows("out", thread, 1);
      const want = fmaSum(thread, s.fmaIters, b, c, f16);
      for (let lane = 0; lane < 4; lane++) {
        const error = Math.abs(got[lane] - want[lane]) / Math.abs(want[lane]);
        if (!(error < (f16 ? 5e-2 : 1e-3))) {
          throw new Error(`${f16 ? "f16" : "f32"} FMA: thread ${thread} lane ${lane} is ${got[lane]}, expected ${want[lane]}`);
        }
      }
    }
  } finally {
    plan.destroy();
  }
  const flops = threads * s.fmaIters * 4 * 4 * 2;
  return { name: f16 ? "f16 FMA (packed)" : "f32 FMA", value: flops / (ms * 1e-3) / 1e12, unit: "TFLOP/s", medianMs: ms, timedBy };
}

async function workgroupCeiling(gpu: GpuContext, s: ReturnType<typeof sizes>, iters: number): Promise<Ceiling> {
  const threads = s.wgGroups * 256, stride = 1;
  const { plan, ms, timedBy } = await timeNodes(
    gpu,
    (g, name) => {
      const out = g.find("out") ?? g.state("out", [threads, 4]);
      g.add({
        name,
        kernel: WORKGROUP,
        variant: {},
        bindings: { out },
        params: { iters: s.wgIters, stride },
        workgroups: grid1d(s.wgGroups),
      });
    },
    iters,
    (p) => p.write("out", new Float32Array(threads * 4).fill(NaN)),
  );
  try {
    for (const thread of [0, 255, 256 + 17, threads - 1]) {
      const group = Math.floor(thread / 256), lid = thread % 256;
      const want = [0, 0, 0, 0];
      for (let i = 0; i < s.wgIters; i++) {
        const e = (lid + i * stride) & 255;
        for (const q of [0, 256, 512, 768]) {
          want[0] += e + q;
          want[1] += (e + q) * 0.5;
          want[2] += group % 5;
          want[3] += 1;
        }
      }
      const got = await plan.readRows("out", thread, 1);
      for (let lane = 0; lane < 4; lane++) {
        if (!(Math.abs(got[lane] - want[lane]) <= 1e-3 * Math.abs(want[lane]))) {
          throw new Error(`workgroup memory: thread ${thread} lane ${lane} is ${got[lane]}, expected ${want[lane]}`);
        }
      }
    }
  } finally {
    plan.destroy();
  }
  const bytes = threads * s.wgIters * 4 * 16;
  return { name: "workgroup memory", value: bytes / (ms * 1e-3) / 1e9, unit: "GB/s", medianMs: ms, timedBy };
}

async function globalCeiling(gpu: GpuContext, s: ReturnType<typeof sizes>, iters: number): Promise<Ceiling> {
  const count = s.copyVec4;
  const data = fillUniform(count * 4, 5);
  // One thread per 16 elements: enough in flight to saturate the memory without a grid as large as the buffer.
  const groups = Math.max(1, Math.ceil(count / 16 / 256));
  const { plan, ms, timedBy } = await timeNodes(
    gpu,
    (g, name) => {
      const src = g.find("src") ?? g.input("src", [count, 4]);
      const out = g.find("out") ?? g.state("out", [count, 4]);
      g.add({ name, kernel: GLOBAL, variant: {}, bindings: { src, out }, params: { count }, workgroups: grid1d(groups) });
    },
    iters,
    (p) => {
      p.write("src", data);
      p.write("out", new Float32Array(count * 4).fill(NaN));
    },
  );
  try {
    for (const row of [0, count >> 1, count - 64]) {
      const got = await plan.readRows("out", row, 64);
      for (let i = 0; i < got.length; i++) {
        if (got[i] !== data[row * 4 + i]) throw new Error(`global memory: element ${row * 4 + i} was not copied`);
      }
    }
  } finally {
    plan.destroy();
  }
  const bytes = 2 * count * 16;
  return { name: "global memory", value: bytes / (ms * 1e-3) / 1e9, unit: "GB/s", medianMs: ms, timedBy };
}

/** Measure every ceiling the adapter supports (f16 needs shader-f16). Throws when a kernel's result is wrong. */
export async function runCeilings(gpu: GpuContext, opts: CeilingsOptions = {}): Promise<CeilingsReport> {
  const s = sizes(opts.small ?? false), iters = opts.iters ?? 5;
  const ceilings: Ceiling[] = [await fmaCeiling(gpu, false, s, iters)];
  const skipped: string[] = [];
  if (gpu.hasF16) ceilings.push(await fmaCeiling(gpu, true, s, iters));
  else skipped.push("f16 FMA (packed): the adapter offers no shader-f16");
  ceilings.push(await workgroupCeiling(gpu, s, iters), await globalCeiling(gpu, s, iters));
  return { device: gpu.adapterDescription, ceilings, skipped };
}

export function formatCeilings(r: CeilingsReport): string {
  const rows = r.ceilings.map((c) => [c.name, c.value.toPrecision(4), c.unit, c.medianMs.toFixed(3), c.timedBy]);
  return [
    `device: ${r.device}`,
    formatTable(["ceiling", "measured", "unit", "median ms", "timed by"], rows),
    ...r.skipped.map((s) => `skipped: ${s}`),
  ].join("\n");
}

const USAGE = `usage: deno task bench ceilings [--small] [--iters n] [--json FILE]

Measures, through kleinscope's own runtime, the f32 and packed-f16 multiply-add rates and the workgroup- and
global-memory bandwidth of this adapter; each result is checked. --small uses sizes a software adapter runs in
seconds; --json writes the report.`;

if (import.meta.main) {
  const parsed = parseBenchArgs(Deno.args, {
    small: { type: "boolean", default: false },
    iters: { type: "string" },
    json: { type: "string" },
  }, USAGE);
  if (parsed === "help") Deno.exit(0);
  const values = parsed;
  const iters = values.iters === undefined ? undefined : Number(values.iters);
  if (iters !== undefined && !(Number.isInteger(iters) && iters >= 1)) {
    console.error(`error: --iters "${values.iters}" is not a positive whole number\n${USAGE}`);
    Deno.exit(2);
  }
  try {
    const report = await runCeilings(await getGpu(), { small: values.small, iters });
    console.log(formatCeilings(report));
    if (values.json) {
      await Deno.writeTextFile(values.json, JSON.stringify(report, null, 2) + "\n");
      console.log(`wrote ${values.json}`);
    }
  } catch (e) {
    console.error(`error: ${(e as Error).message}`);
    Deno.exit(1);
  }
}
