// Capture as an intervention: selected rows of tap points at selected steps. What a run captured comes back on its
// result (typed: tap, group, forward, step → rows × cols), never kept in the intervention.
//
// Captured rows stream: after each step the capture's state tensors are copied into a staging buffer (Plan.readAsync),
// and the host copies or writes them once the next step has been submitted, while the GPU computes it; the next
// readback is queued only after that, because its submit may hold the thread until the GPU is done (see readAsync).
// So the host holds one step's rows at a time when they are streamed into a file. Host memory is bounded by a budget:
// in memory, the whole capture must fit it; streamed, one step's rows must (both refused when the run is prepared).

import type { AsyncReadback, Plan } from "../runtime/executor.ts";
import type { GenerateResult } from "../model/pipeline.ts";
import type { Intervention, RunBinding, RunContext } from "../model/run.ts";
import { insertCapture, type RowSelection } from "./capture.ts";
import { CaptureFileWriter, captureLayout, type PlacedEntry, readCaptureEntry } from "./capture_file.ts";
import { dirname, resolve } from "node:path";
import { printable } from "../runtime/printable.ts";
import { resolveSteps } from "./intervention.ts";
import { resolveGroups } from "./groups.ts";
import { findTap, tapRows } from "./patch.ts";

/** Host memory captured rows may hold when no budget is given, in MiB. */
export const DEFAULT_CAPTURE_BUDGET_MB = 4096;

export interface CaptureRequest {
  /** A tap point name, e.g. "double.1.txt", "single.0", "single.0.img", "context_embedder", "double.0.attn.q". */
  tap: string;
  /** Token group of the rows to keep (e.g. "text[content]", "image", "ref[0]"); default: every row of the tap. */
  group?: string;
  /** Steps to capture ("all", "0,2", "1..3"); default all. */
  steps?: string | number[];
  /** In a guided run, which forward of a step: "cond" (default) or "uncond". */
  forward?: "cond" | "uncond";
}

export interface CaptureOptions {
  /** Host memory the captured rows may hold, in MiB (2^20 bytes); default DEFAULT_CAPTURE_BUDGET_MB. In memory the
   * whole capture must fit; streamed (`file`), the rows read back and not yet written must. */
  budgetMB?: number;
  /** Stream the rows into this safetensors file as they arrive (written under a temporary name, in place when the
   * last step is written). The run's CaptureSet then reads them from the file when asked. */
  file?: string;
}

/** Rows of one tap (and group) at one step. */
export interface CapturedRows {
  rows: number;
  cols: number;
  /** Row-major [rows, cols]. */
  data: Float32Array;
}

/** What a capture request collected in one run. */
export interface CapturedTensor {
  tap: string;
  /** The token group asked for, or "all". */
  group: string;
  forward: "cond" | "uncond";
  /** Sequence positions of the rows (null: every row of the tap, or a tap whose rows are not tokens). */
  positions: number[] | null;
  cols: number;
  /** step → rows [count, cols]. In a streamed capture the map is read-only and reads each step's rows from the
   * captures file when asked for (get, values, entries, iteration). */
  steps: Map<number, Float32Array>;
}

/** How a run's captures used host memory. */
export interface CaptureStats {
  /** Bytes of every captured row of the run. */
  bytes: number;
  /** The budget they ran under, in bytes. */
  budgetBytes: number;
  /** Most bytes of captured rows the host held at once: kept in memory, or read back and not yet written. */
  peakHostBytes: number;
  /** The captures file the rows were streamed into; undefined when they are kept in memory. */
  file?: string;
}

/** The captures of one run. */
export class CaptureSet {
  constructor(
    readonly tensors: readonly CapturedTensor[],
    readonly stats: CaptureStats = { bytes: 0, budgetBytes: 0, peakHostBytes: 0 },
    /** Streamed captures: every tensor's place in `stats.file`, in file order. */
    readonly fileEntries: readonly PlacedEntry[] = [],
  ) {}

  /** The captures file holding the rows, when they were streamed to disk. */
  get file(): string | undefined {
    return this.stats.file;
  }

  /** The capture of `tap` (and `group`, default every row; `forward`, default "cond"), refused when not asked for. */
  get(tap: string, group = "all", forward: "cond" | "uncond" = "cond"): CapturedTensor {
    const t = this.tensors.find((c) => c.tap === tap && c.group === group && c.forward === forward);
    if (!t) {
      const known = this.tensors.map((c) => `${c.tap}[${c.group}]${c.forward === "uncond" ? " (uncond)" : ""}`).join(", ");
      throw new Error(
        `no capture of ${tap}[${group}]${forward === "uncond" ? " (uncond)" : ""} in this run (captured: ${known || "none"})`,
      );
    }
    return t;
  }

  /** Rows of `tap` (and `group`) at `step`. */
  at(tap: string, group: string | undefined, step: number, forward: "cond" | "uncond" = "cond"): CapturedRows {
    const t = this.get(tap, group, forward);
    const data = t.steps.get(step);
    if (!data) throw new Error(`the capture of ${tap}[${t.group}] holds steps ${[...t.steps.keys()].join(", ")}, not step ${step}`);
    return { rows: data.length / t.cols, cols: t.cols, data };
  }
}

/** Steps of a streamed capture, read from its file on demand (never cached: the file holds them). */
class FileSteps extends Map<number, Float32Array> {
  private readonly entries_: Map<number, PlacedEntry>;
  constructor(private readonly path: string, entries: readonly PlacedEntry[]) {
    super();
    this.entries_ = new Map(entries.map((e) => [e.step, e]));
  }
  override get size(): number {
    return this.entries_.size;
  }
  override has(step: number): boolean {
    return this.entries_.has(step);
  }
  override get(step: number): Float32Array | undefined {
    const e = this.entries_.get(step);
    return e && readCaptureEntry(this.path, e);
  }
  override keys(): MapIterator<number> {
    return this.entries_.keys();
  }
  override *entries(): MapIterator<[number, Float32Array]> {
    for (const step of this.entries_.keys()) yield [step, this.get(step)!];
  }
  override *values(): MapIterator<Float32Array> {
    for (const step of this.entries_.keys()) yield this.get(step)!;
  }
  override [Symbol.iterator](): MapIterator<[number, Float32Array]> {
    return this.entries();
  }
  override forEach(f: (value: Float32Array, key: number, map: Map<number, Float32Array>) => void, self?: unknown): void {
    for (const [k, v] of this.entries()) f.call(self, v, k, this);
  }
  override set(): this {
    throw new Error(`the captured steps in ${this.path} are read-only`);
  }
  override delete(): boolean {
    throw new Error(`the captured steps in ${this.path} are read-only`);
  }
  override clear(): void {
    throw new Error(`the captured steps in ${this.path} are read-only`);
  }
}

/** Readbacks in flight and the host bytes they hold: `track` accounts for one until its work settles (kept bytes
 * stay accounted for good), `drain` waits for all of them. The capture drains before it queues a step's readback, so
 * at most one step's rows are in flight, which the budget was checked against when the run was prepared. The first
 * failure is kept and thrown by the next drain. */
export class ReadbacksInFlight {
  private readonly inFlight: { settled: Promise<void> }[] = [];
  private failure: { error: unknown } | null = null;
  hostBytes = 0;
  peakHostBytes = 0;

  /** Account for `bytes` until `work` settles; with `keep`, they stay on the host afterwards (rows kept in memory). */
  track(bytes: number, work: Promise<void>, keep = false): void {
    this.hostBytes += bytes;
    this.peakHostBytes = Math.max(this.peakHostBytes, this.hostBytes);
    const entry = {
      settled: work.then(
        () => {},
        (error) => void (this.failure ??= { error }),
      ).finally(() => {
        if (!keep) this.hostBytes -= bytes;
        this.inFlight.splice(this.inFlight.indexOf(entry), 1);
      }),
    };
    this.inFlight.push(entry);
  }

  /** Wait for every readback; throw the first failure. */
  async drain(): Promise<void> {
    while (this.inFlight.length) await this.inFlight[0].settled;
    if (this.failure) throw this.failure.error;
  }
}

/** The folder a captures file goes into must exist (checked when bound, before any GPU work). */
function checkFolder(file: string, label: string): void {
  const folder = dirname(resolve(file));
  let isDirectory = false;
  try {
    isDirectory = Deno.statSync(folder).isDirectory;
  } catch {
    // reported below
  }
  if (!isDirectory) {
    throw new Error(`${label}: the captures file ${printable(file)} needs the folder ${printable(folder)}, which does not exist`);
  }
}

const MiB = 2 ** 20;
const mib = (bytes: number) => `${(bytes / MiB).toFixed(bytes < 10 * MiB ? 2 : 0)} MiB`;

let captureCounter = 0;

export class CaptureIntervention implements Intervention {
  readonly label: string;
  readonly budgetBytes: number;

  constructor(readonly requests: CaptureRequest[], readonly options: CaptureOptions = {}) {
    this.label = `capture ${requests.map((r) => r.tap + (r.group ? `[${r.group}]` : "")).join(", ")}`;
    const mb = options.budgetMB ?? DEFAULT_CAPTURE_BUDGET_MB;
    if (!(typeof mb === "number" && Number.isFinite(mb) && mb > 0)) {
      throw new Error(`${this.label}: the capture budget must be a number of MiB above 0, got ${mb}`);
    }
    this.budgetBytes = Math.floor(mb * MiB);
  }

  /** The captures this intervention made in `run` (an error if it was not part of that run). */
  results(run: Pick<GenerateResult, "outputs">): CaptureSet {
    const out = run.outputs.get(this);
    if (!(out instanceof CaptureSet)) throw new Error(`${this.label} was not an intervention of this run`);
    return out;
  }

  bind(ctx: RunContext): RunBinding {
    const wanted = this.requests.map((r) => {
      const where = `capture of ${r.tap}`;
      const tap = findTap(ctx, r.tap, where);
      const forward = r.forward ?? "cond";
      if (forward === "uncond" && !ctx.guided) throw new Error(`${where}: forward "uncond" exists only in a guided run (guidance ≠ 1)`);
      const steps = resolveSteps(r.steps, ctx.steps, where);
      const positions = r.group ? resolveGroups(ctx.layout, r.group) : null;
      const rows = positions ? tapRows(tap, positions, `${where}[${r.group}]`) : null;
      if (rows && !rows.length) ctx.warn(`${where}: group ${r.group} is empty in this run; nothing is captured`);
      return { request: r, tap, forward, steps, positions, rows, rowCount: rows ? rows.length : tap.rows };
    });
    const keys = wanted.map((w) => `${w.tap.name}[${w.request.group ?? "all"}]${w.forward}`);
    const twice = keys.find((k, i) => keys.indexOf(k) !== i);
    if (twice) throw new Error(`capture of ${twice.replace(/(cond|uncond)$/, "")} is requested twice`);
    const shapes = wanted.map((w) => ({
      tap: w.tap.name,
      group: w.request.group ?? "all",
      forward: w.forward,
      positions: w.positions,
      rows: w.rowCount,
      cols: w.tap.cols,
      steps: [...w.steps].sort((a, b) => a - b),
    }));
    // What each step reads back, and the budget's checks: all before any GPU work.
    const bytesAt = (step: number) => shapes.reduce((a, c) => a + (c.steps.includes(step) ? c.rows * c.cols * 4 : 0), 0);
    const perStep = Array.from({ length: ctx.steps }, (_, s) => bytesAt(s));
    const total = perStep.reduce((a, b) => a + b, 0);
    const budget = this.budgetBytes;
    const option = "the capture budget (captureBudget in a spec, --capture-budget on the command line)";
    const file = total > 0 ? this.options.file : undefined;
    if (!file && total > budget) {
      throw new Error(
        `${this.label}: the captured rows take ${mib(total)} (${shapes.filter((c) => c.rows).length} capture(s) over ` +
          `${perStep.filter((b) => b).length} step(s)), more than ${option} of ${mib(budget)}; raise it to at least ` +
          `${Math.ceil(total / MiB)} MiB, or write the run to an output folder, which streams captures to disk`,
      );
    }
    const largest = perStep.indexOf(Math.max(...perStep));
    if (file && perStep[largest] > budget) {
      throw new Error(
        `${this.label}: step ${largest}'s captured rows alone take ${mib(perStep[largest])}, more than ${option} of ` +
          `${mib(budget)}; raise it to at least ${Math.ceil(perStep[largest] / MiB)} MiB`,
      );
    }
    if (file) checkFolder(file, this.label);
    const layout = file ? captureLayout(shapes) : null;
    const writer = file && layout ? new CaptureFileWriter(file, layout) : null;
    const tensors: CapturedTensor[] = shapes.map((c, i) => ({
      tap: c.tap,
      group: c.group,
      forward: c.forward,
      positions: c.positions,
      cols: c.cols,
      steps: layout && file ? new FileSteps(file, layout.entries.filter((e) => e.capture === i)) : new Map(),
    }));
    const queue = new ReadbacksInFlight();
    // Host work on a step's rows waits until the next step is submitted (or the run's last step is done).
    let gates: (() => void)[] = [];
    const openGates = () => {
      for (const open of gates) open();
      gates = [];
    };
    const stateNames: string[] = [];
    const id = captureCounter++;
    const stats = () => ({
      bytes: total,
      budgetBytes: budget,
      peakHostBytes: queue.peakHostBytes,
      file: file,
    });

    /** Copy or write one step's readback once the next step has been submitted. Everything after the gate is
     * synchronous: it runs right after the step loop submits the next step, while the GPU computes it (see
     * CaptureFileWriter on why not asynchronous). */
    const consume = async (step: number, indices: number[], readback: AsyncReadback, gate: Promise<void>) => {
      try {
        await readback.mapped;
        await gate;
        const views = readback.views();
        if (writer) {
          writer.write(indices.map((i, k) => ({
            entry: layout!.entries.findIndex((e) => e.capture === i && e.step === step),
            data: views[k],
          })));
        } else {
          indices.forEach((i, k) => tensors[i].steps.set(step, views[k].slice()));
        }
      } finally {
        readback.release();
      }
    };

    return {
      rewrite(g, forwards) {
        wanted.forEach((w, i) => {
          if (w.rows && !w.rows.length) return;
          const scope = forwards.find((f) => f.forward === w.forward)!.scope;
          const sel: RowSelection = w.rows ? { positions: w.rows } : { all: true };
          stateNames[i] = insertCapture(g, scope + w.tap.name, sel, `capture${id}.${i}/${keys[i]}`).tensor;
        });
      },
      async afterStep(plan: Plan, step: number) {
        // This step is submitted and the GPU is running it. First the rows of the previous step are copied or written,
        // meanwhile; only then is this step's readback queued, because its submit may not return before the step is
        // done (see Plan.readAsync).
        try {
          // Nothing is in flight after this (a failure is thrown here), so this step's readback always fits the
          // budget checked when the run was prepared.
          openGates();
          await queue.drain();
          const indices = wanted.flatMap((w, i) => (stateNames[i] && w.steps.has(step) ? [i] : []));
          if (indices.length) {
            const readback = plan.readAsync(indices.map((i) => stateNames[i]));
            const gate = new Promise<void>((open) => gates.push(open));
            queue.track(readback.bytes, consume(step, indices, readback, gate), !writer);
          }
          if (step === ctx.steps - 1) {
            openGates();
            await queue.drain();
            writer?.finish();
          }
        } catch (e) {
          openGates();
          await queue.drain().catch(() => {});
          writer?.abort();
          throw e;
        }
      },
      output: () => new CaptureSet(tensors, stats(), layout && file ? layout.entries : []),
    };
  }
}
