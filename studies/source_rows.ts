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
  ) {
    this.positions = positions;
    this.count = positions.length;
    this.cols = cols;
  }

  /** Prepare the source run with a capture of the rows (no GPU work; every check happens here). `targetSteps` is
   * the number of steps of the run that will be patched. */
  static async prepare(
    pipe: Flux2KleinPipeline,
    source: GenerateRequest,
    request: SourceRowsRequest,
    targetSteps: number,
  ): Promise<SourceRows> {
    const sourceStep = request.sourceStep ?? 0;
    const sourceSteps = pipe.stepsOf(source);
    if (request.schedule === "fixed" && sourceStep >= sourceSteps) {
      throw new Error(`source step ${sourceStep} is beyond the source run's ${sourceSteps} step(s)`);
    }
    if (request.schedule === "per-step" && sourceSteps < targetSteps) {
      throw new Error(`a per-step source needs at least the patched run's ${targetSteps} steps; the source run has ${sourceSteps}`);
    }
    const steps = request.schedule === "fixed" ? [sourceStep] : Array.from({ length: targetSteps }, (_, i) => i);
    const capture = new CaptureIntervention([{ tap: request.tap, group: request.group, steps }]);
    const run = await pipe.prepare({ ...source, interventions: [...(source.interventions ?? []), capture] });
    const positions = resolveGroups(run.layout, request.group);
    const cols = run.taps.get(request.tap)!.cols;
    return new SourceRows(run, capture, request, positions, cols);
  }

  /** Run the source (once) and keep its rows. */
  async execute(pipe: Flux2KleinPipeline): Promise<GenerateResult> {
    if (this.result) return this.result;
    const result = await pipe.execute(this.run);
    this.captured = this.capture.results(result).get(this.request.tap, this.request.group).steps;
    this.result = result;
    return result;
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
