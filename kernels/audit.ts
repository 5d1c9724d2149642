// The kernel audit: every kernel runs on random inputs of awkward sizes against its float64 CPU reference,
// with every output poisoned (NaN) before the run. Used by `deno task audit` and by the test suite.

import type { DeviceCapabilities, GpuContext } from "../runtime/device.ts";
import { Graph } from "../runtime/graph.ts";
import { Plan } from "../runtime/executor.ts";
import { Rng } from "../runtime/random.ts";

export interface AuditInput {
  /** Name of an input tensor of the graph. */
  name: string;
  data: Float32Array | Uint32Array | Int32Array;
}

export interface AuditOutput {
  /** Name of a state tensor of the graph. */
  name: string;
  expected: Float64Array;
  /** Initial contents (for in-place kernels); otherwise the output is poisoned with NaN. */
  initial?: Float32Array;
}

export interface AuditCase {
  kernel: string;
  label: string;
  /** Relative L2 tolerance against the float64 reference (default 1e-5). */
  tolerance?: number;
  /** The case computes in f16: on an adapter without shader-f16 it is reported as skipped. */
  needsF16?: boolean;
  /** Why the adapter cannot run the case's tiles (threads or workgroup memory over its limits), if it cannot: the
   * case is then reported as skipped. */
  unsupported?: (device: DeviceCapabilities) => string | undefined;
  build(g: Graph, rng: Rng): { inputs: AuditInput[]; outputs: AuditOutput[] };
}

export interface AuditResult {
  kernel: string;
  label: string;
  relL2: number;
  maxAbs: number;
  ms: number;
  tolerance: number;
  pass: boolean;
  /** Why the case did not run (then pass is true and the numbers are NaN). */
  skipped?: string;
}

/** ‖got − want‖ / ‖want‖ in float64 (‖got − want‖ where want is all zeros; Infinity where anything is not finite). */
export function relativeL2(got: ArrayLike<number>, want: ArrayLike<number>): number {
  if (got.length !== want.length) throw new Error(`relativeL2: ${got.length} values against ${want.length}`);
  let num = 0, den = 0;
  for (let i = 0; i < want.length; i++) {
    const d = got[i] - want[i];
    num += d * d;
    den += want[i] * want[i];
  }
  if (!Number.isFinite(num)) return Infinity;
  return den === 0 ? Math.sqrt(num) : Math.sqrt(num / den);
}

export function maxAbsDiff(got: ArrayLike<number>, want: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < want.length; i++) {
    const d = Math.abs(got[i] - want[i]);
    if (!(d <= m)) m = Number.isNaN(d) ? Infinity : d;
  }
  return m;
}

export async function runAuditCase(gpu: GpuContext, c: AuditCase, seed = 7): Promise<AuditResult> {
  if (c.needsF16 && !gpu.hasF16) {
    const tolerance = c.tolerance ?? 1e-5;
    return { kernel: c.kernel, label: c.label, relL2: NaN, maxAbs: NaN, ms: NaN, tolerance, pass: true, skipped: "no shader-f16" };
  }
  const unsupported = c.unsupported?.(gpu.caps);
  if (unsupported) {
    const tolerance = c.tolerance ?? 1e-5;
    return { kernel: c.kernel, label: c.label, relL2: NaN, maxAbs: NaN, ms: NaN, tolerance, pass: true, skipped: unsupported };
  }
  const g = new Graph();
  const rng = new Rng(seed);
  const { inputs, outputs } = c.build(g, rng);
  const plan = await Plan.compile(gpu, g, null, { label: `audit:${c.kernel}` });
  try {
    for (const inp of inputs) plan.write(inp.name, inp.data);
    for (const out of outputs) {
      const t = g.get(g.find(out.name)!);
      const n = t.shape.reduce((a, b) => a * b, 1);
      plan.write(out.name, out.initial ?? new Float32Array(n).fill(NaN));
    }
    await plan.run(); // warm-up and correctness run
    const got = await Promise.all(outputs.map((o) => plan.read(o.name)));
    // Time a second run (outputs of in-place kernels change, but timing does not depend on values).
    const t0 = performance.now();
    await plan.run();
    const ms = performance.now() - t0;
    let relL2 = 0, maxAbs = 0;
    outputs.forEach((o, i) => {
      relL2 = Math.max(relL2, relativeL2(got[i].subarray(0, o.expected.length), o.expected));
      maxAbs = Math.max(maxAbs, maxAbsDiff(got[i].subarray(0, o.expected.length), o.expected));
    });
    const tolerance = c.tolerance ?? 1e-5;
    return { kernel: c.kernel, label: c.label, relL2, maxAbs, ms, tolerance, pass: relL2 <= tolerance };
  } finally {
    plan.destroy();
  }
}

export function formatAuditTable(results: AuditResult[]): string {
  const rows = results.map((
    r,
  ) => [
    r.kernel,
    r.label,
    r.relL2.toExponential(2),
    r.maxAbs.toExponential(2),
    r.ms.toFixed(2),
    r.skipped ? `skipped (${r.skipped})` : r.pass ? "ok" : "FAIL",
  ]);
  const head = ["kernel", "shape", "rel L2", "max |Δ|", "ms", "verdict"];
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (r: string[]) => r.map((c, i) => c.padEnd(widths[i])).join("  ");
  return [line(head), line(widths.map((w) => "-".repeat(w))), ...rows.map(line)].join("\n");
}
