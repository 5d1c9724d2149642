// "Rows of a source run": the one primitive behind patching, the T2I lens, their conformance cases and the
// benchmarks. A source run is prepared with a capture of a token group's rows at a tap; once it has run, the rows
// are supplied step by step to a patch of another run (step k from step k, or one fixed step for every step).

import type { Flux2KleinPipeline, GenerateRequest, GenerateResult, PreparedRun } from "../model/pipeline.ts";
import { CaptureIntervention } from "../interventions/capture_run.ts";
import { resolveGroups } from "../interventions/groups.ts";
import type { RowSupply } from "../interventions/patch.ts";

export interface SourceRowsRequest {
  /** The tap whose rows are taken, e.g. "double.1.txt", "single.0.txt". */
  tap: string;
  /** Token group of the rows, resolved on the source run's own prompt and layout. */
  group: string;
  /** "per-step": the patched run's step k gets the source's step k; "fixed": every step gets `sourceStep`. */
  schedule: "per-step" | "fixed";
  /** With "fixed": the source step supplied (default 0). */
  sourceStep?: number;
}

/** An executed source run and every text row of one tap at each of its steps. */
interface CachedSource {
  key: string;
  result: GenerateResult;
  textRows: Map<number, Float32Array>;
}

/** Source runs already executed, kept for later patches of the same run at the same tap: the conditions of one task
 * in an experiment (all, padding only, content only) share their source run, which then runs once instead of once per
 * condition. An entry holds every text row of the tap at every step, from which each patch takes its group's rows.
 * The oldest entries are dropped beyond `capacity`. */
export class SourceRunCache {
  /** Source runs executed through the cache; the rest were served from it. */
  executed = 0;
  reused = 0;
  private entries: CachedSource[] = [];

  constructor(readonly capacity = 1) {
    if (!Number.isInteger(capacity) || capacity < 1) throw new Error(`a source run cache holds at least one run, got ${capacity}`);
  }

  get(key: string): CachedSource | undefined {
    return this.entries.find((e) => e.key === key);
  }

  put(entry: CachedSource): void {
    this.entries = [...this.entries.filter((e) => e.key !== entry.key), entry].slice(-this.capacity);
  }

  clear(): void {
    this.entries = [];
  }
}

/** A source run shared through a cache: the key names the run (every field of its request that changes it); the
 * tap is added to it here. */
export interface SharedSource {
  cache: SourceRunCache;
  key: string;
}

/** Whether every part of a group lies in the text rows (then a shared source's text rows hold it). */
function isTextGroup(group: string): boolean {
  return group.split("+").every((part) => /^text(\[.*\])?$/.test(part.trim()));
}

/** A prepared source run and the rows it will supply once executed. */
export class SourceRows implements RowSupply {
  readonly count: number;
  readonly cols: number;
  /** Sequence positions of the rows in the source run. */
  readonly positions: number[];
  private captured: Map<number, Float32Array> | null = null;
  private result: GenerateResult | null = null;

  private constructor(
    readonly run: PreparedRun,
    private readonly capture: CaptureIntervention,
    readonly request: SourceRowsRequest,
    positions: number[],
    cols: number,
    /** With a cache: the run's key, and the group of the capture (all text rows). */
    private readonly shared?: SharedSource & { captureGroup: string },
  ) {
    this.positions = positions;
    this.count = positions.length;
    this.cols = cols;
  }

  /** Prepare the source run with a capture of the rows (no GPU work; every check happens here). `targetSteps` is
   * the number of steps of the run that will be patched. With `shared`, a run of the same key and tap already in its
   * cache supplies the rows instead (for groups of text rows; other groups always run). */
  static async prepare(
    pipe: Flux2KleinPipeline,
    source: GenerateRequest,
    request: SourceRowsRequest,
    targetSteps: number,
    shared?: SharedSource,
  ): Promise<SourceRows> {
    const sourceStep = request.sourceStep ?? 0;
    const sourceSteps = pipe.stepsOf(source);
    if (request.schedule === "fixed" && sourceStep >= sourceSteps) {
      throw new Error(`source step ${sourceStep} is beyond the source run's ${sourceSteps} step(s)`);
    }
    if (request.schedule === "per-step" && sourceSteps < targetSteps) {
      throw new Error(`a per-step source needs at least the patched run's ${targetSteps} steps; the source run has ${sourceSteps}`);
    }
    // A shared run captures every text row at every step, so that any text group and schedule can be served from it.
    const share = shared && isTextGroup(request.group)
      ? { ...shared, key: JSON.stringify([shared.key, request.tap]), captureGroup: "text" }
      : undefined;
    const steps = share
      ? Array.from({ length: sourceSteps }, (_, i) => i)
      : request.schedule === "fixed"
      ? [sourceStep]
      : Array.from({ length: targetSteps }, (_, i) => i);
    const capture = new CaptureIntervention([{ tap: request.tap, group: share?.captureGroup ?? request.group, steps }]);
    const run = await pipe.prepare({ ...source, interventions: [...(source.interventions ?? []), capture] });
    const positions = resolveGroups(run.layout, request.group);
    const cols = run.taps.get(request.tap)!.cols;
    return new SourceRows(run, capture, request, positions, cols, share);
  }

  /** Run the source (once, or not at all when its cache holds it) and keep its rows. */
  async execute(pipe: Flux2KleinPipeline): Promise<GenerateResult> {
    if (this.result) return this.result;
    if (!this.shared) {
      const result = await pipe.execute(this.run);
      this.captured = this.capture.results(result).get(this.request.tap, this.request.group).steps;
      this.result = result;
      return result;
    }
    const { cache, key, captureGroup } = this.shared;
    let entry = cache.get(key);
    if (entry) {
      cache.reused++;
    } else {
      const result = await pipe.execute(this.run);
      cache.executed++;
      const textRows = new Map<number, Float32Array>();
      for (const [step, rows] of this.capture.results(result).get(this.request.tap, captureGroup).steps) textRows.set(step, rows);
      entry = { key, result, textRows };
      cache.put(entry);
    }
    this.captured = this.groupRows(entry.textRows);
    this.result = entry.result;
    return entry.result;
  }

  /** Whether execute() will take the run from its cache instead of running it. */
  get cached(): boolean {
    return this.shared !== undefined && this.shared.cache.get(this.shared.key) !== undefined;
  }

  /** This source's group taken out of every text row (text positions are 0 … text rows − 1, in order). */
  private groupRows(textRows: Map<number, Float32Array>): Map<number, Float32Array> {
    const out = new Map<number, Float32Array>();
    const cols = this.cols;
    for (const [step, text] of textRows) {
      const rows = new Float32Array(this.count * cols);
      this.positions.forEach((p, j) => rows.set(text.subarray(p * cols, (p + 1) * cols), j * cols));
      out.set(step, rows);
    }
    return out;
  }

  /** The source run's result (after execute). */
  get sourceResult(): GenerateResult {
    if (!this.result) throw new Error("the source run has not run yet");
    return this.result;
  }

  rowsAt(step: number): Float32Array {
    if (!this.captured) throw new Error(`rows of ${this.request.tap}[${this.request.group}] were asked for before the source run ran`);
    const s = this.request.schedule === "fixed" ? this.request.sourceStep ?? 0 : step;
    const rows = this.captured.get(s);
    if (!rows) throw new Error(`the source run captured no rows of ${this.request.tap}[${this.request.group}] at step ${s}`);
    return rows;
  }
}
