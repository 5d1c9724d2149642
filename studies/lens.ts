// The T2I lens: decode the text-token activations of an editing run by running a text-to-image run in which those
// activations replace (diagonal) the same block's text rows, or (input_to_block0) the text input of the first block.

import type { Flux2KleinPipeline, GenerateRequest, GenerateResult } from "../model/pipeline.ts";
import { CaptureIntervention } from "../interventions/capture_run.ts";
import { PatchIntervention } from "../interventions/patch.ts";
import { resolveGroups } from "../interventions/groups.ts";
import { takeRows, textTapOfBlock } from "../interventions/taps.ts";
import type { Intervention } from "../interventions/intervention.ts";

export interface LensOptions {
  block: string;
  mode: "diagonal" | "input_to_block0";
  /** The editing run whose text rows are decoded (its steps are the lens's source steps). */
  source: GenerateRequest;
  /** Which step of the source run is decoded (default 0). */
  sourceStep?: number;
  /** The text-to-image target (prompt default "", no references; size defaults to the source's). */
  target: GenerateRequest;
  /** Text rows decoded (a token group); default every text row. */
  group?: string;
  /** Further interventions on the target (captures). */
  targetInterventions?: Intervention[];
}

export interface LensResult {
  source: GenerateResult;
  target: GenerateResult;
}

/** Text rows [textRows, hidden] of `block` at `step` of a run. */
export async function captureTextRows(
  pipe: Flux2KleinPipeline,
  request: GenerateRequest,
  block: string,
  steps: number[],
): Promise<{ rows: Map<number, Float32Array>; result: GenerateResult }> {
  if (!pipe.blockNames().includes(block)) {
    throw new Error(`block "${block}" does not exist (this model has ${pipe.blockNames().join(", ")})`);
  }
  const tap = textTapOfBlock(block);
  const capture = new CaptureIntervention([{ tap, group: block.startsWith("single") ? "text" : undefined, steps }]);
  const result = await pipe.generate({ ...request, interventions: [...(request.interventions ?? []), capture] });
  return { rows: [...capture.captured.values()][0].steps, result };
}

export async function runLens(pipe: Flux2KleinPipeline, o: LensOptions): Promise<LensResult> {
  const sourceStep = o.sourceStep ?? 0;
  const sourceSteps = o.source.steps ?? 1;
  if (sourceStep >= sourceSteps) throw new Error(`lens: source step ${sourceStep} is beyond the source run's ${sourceSteps} step(s)`);
  // Check the target before running anything.
  const targetRequest: GenerateRequest = { refs: [], ...o.target };
  const sourcePrepared = await pipe.prepare({ ...o.source, steps: sourceSteps });
  // The target defaults to the source's size.
  targetRequest.width ??= sourcePrepared.width;
  targetRequest.height ??= sourcePrepared.height;
  await pipe.prepare(targetRequest);
  const { rows, result: source } = await captureTextRows(pipe, { ...o.source, steps: sourceSteps }, o.block, [sourceStep]);
  const all = rows.get(sourceStep)!;
  const textRows = source.layout.textRows;
  const cols = all.length / textRows;
  const positions = o.group ? resolveGroups(source.layout, o.group) : Array.from({ length: textRows }, (_, i) => i);
  const tap = o.mode === "diagonal" ? textTapOfBlock(o.block) : "context_embedder";
  const patch = new PatchIntervention({
    tap,
    positions: (ctx) => (o.group ? resolveGroups(ctx.layout, o.group) : positions),
    rows: takeRows(all, cols, positions),
    label: `lens ${o.mode} from ${o.block}`,
  });
  const target = await pipe.generate({
    ...targetRequest,
    interventions: [patch, ...(o.targetInterventions ?? [])],
  });
  return { source, target };
}
