// Executing an experiment spec: the plain run, knockouts, patching (with its source run) and the T2I lens, with the
// requested captures, and writing everything next to the image so the run can be regenerated.

import { join } from "node:path";
import type { Flux2KleinPipeline, GenerateRequest, GenerateResult } from "../model/pipeline.ts";
import { savePng } from "../model/images.ts";
import { readInitialLatents } from "../model/latents_file.ts";
import { writeSafetensors } from "../weights/safetensors_writer.ts";
import { checkpointFingerprint } from "../weights/fingerprint.ts";
import { CaptureIntervention } from "../interventions/capture_run.ts";
import { KnockoutIntervention } from "../interventions/knockout.ts";
import { PatchIntervention } from "../interventions/patch.ts";
import { captureTextRows, runLens } from "./lens.ts";
import { resolveGroups } from "../interventions/groups.ts";
import { checkTap, takeRows, textTapOfBlock } from "../interventions/taps.ts";
import { resolveBlocks, resolveSteps } from "../interventions/intervention.ts";
import type { Intervention } from "../interventions/intervention.ts";
import { type LensSpec, type PatchSpecJson, type RunSpec, SPEC_VERSION } from "./spec.ts";

export const KLEINSCOPE_VERSION = "0.1.0";

export interface SpecRunResult {
  spec: RunSpec;
  result: GenerateResult;
  /** The run that supplied patch rows or was decoded by the lens. */
  source?: GenerateResult;
  capture?: CaptureIntervention;
  warnings: string[];
}

async function baseRequest(pipe: Flux2KleinPipeline, spec: RunSpec): Promise<GenerateRequest> {
  const req: GenerateRequest = {
    prompt: spec.prompt,
    refs: spec.refs ?? [],
    width: spec.width,
    height: spec.height,
    steps: spec.steps,
    guidance: spec.guidance,
    seed: spec.seed ?? 0,
  };
  if (spec.latents) {
    const prepared = await pipe.prepare(req);
    req.initialLatents = await readInitialLatents(spec.latents, pipe.transformer.config.inChannels, prepared.width, prepared.height);
  }
  return req;
}

function patchGroup(p: PatchSpecJson): string {
  switch (p.mode ?? "all") {
    case "all":
      return "text";
    case "padding_only":
      return "text[padding]";
    case "content_only":
      return "text[content]";
    case "group":
      return p.group!;
  }
}

async function buildPatch(pipe: Flux2KleinPipeline, spec: RunSpec, p: PatchSpecJson, steps: number) {
  const sourceSpec: RunSpec = {
    ...spec,
    prompt: p.source.prompt ?? spec.prompt,
    refs: p.source.refs ?? spec.refs,
    seed: p.source.latents ? undefined : p.source.seed ?? spec.seed,
    latents: p.source.latents ?? (p.source.seed !== undefined ? undefined : spec.latents),
    steps: p.source.steps ?? spec.steps,
    interventions: [],
    captures: [],
  };
  const sourceRequest = await baseRequest(pipe, sourceSpec);
  const tap = p.tap ?? textTapOfBlock(p.block!);
  const group = patchGroup(p);
  const fixed = p.schedule === "fixed";
  const wanted = fixed ? [p.sourceStep ?? 0] : Array.from({ length: steps }, (_, i) => i);
  let rowsByStep: Map<number, Float32Array>;
  let source: GenerateResult;
  let cols: number;
  if (p.block) {
    ({ rows: rowsByStep, result: source } = await captureTextRows(pipe, sourceRequest, p.block, wanted));
    cols = [...rowsByStep.values()][0].length / source.layout.textRows;
  } else {
    const cap = new CaptureIntervention([{ tap, steps: wanted }]);
    source = await pipe.generate({ ...sourceRequest, interventions: [cap] });
    const captured = [...cap.captured.values()][0];
    rowsByStep = captured.steps;
    cols = captured.cols;
  }
  const sourcePositions = resolveGroups(source.layout, group);
  const pick = (s: number) => takeRows(rowsByStep.get(s)!, cols, sourcePositions);
  const rows = fixed ? pick(p.sourceStep ?? 0) : wanted.map(pick);
  const patch = new PatchIntervention({
    tap,
    positions: (ctx) => {
      const target = resolveGroups(ctx.layout, group);
      if (target.length !== sourcePositions.length) {
        throw new Error(
          `patch ${group}: the source run has ${sourcePositions.length} such rows, the target ${target.length}; ` +
            `row counts must match group by group`,
        );
      }
      return target;
    },
    rows,
    mode: p.op ?? "replace",
    alpha: p.alpha,
    steps: p.steps,
    label: `patch ${p.mode ?? "all"} at ${p.block ?? p.tap}`,
  });
  return { patch, source };
}

/** Everything in a spec that can be checked without the GPU: sizes, images, prompt, blocks, taps, groups, steps. */
export async function checkSpec(pipe: Flux2KleinPipeline, spec: RunSpec): Promise<void> {
  const blocks = pipe.blockNames();
  const base = await baseRequest(pipe, spec);
  spec.captures?.forEach((c, i) => checkTap(c.tap, blocks, `spec.captures[${i}].tap`));
  const lens = spec.interventions?.find((i) => i.type === "lens") as LensSpec | undefined;
  if (lens) {
    resolveBlocks([lens.block], blocks, "spec.interventions[0].block");
    const source = await pipe.prepare({ ...base, steps: lens.sourceSteps ?? 1 });
    if (lens.group) resolveGroups(source.layout, lens.group);
    if ((lens.sourceStep ?? 0) >= source.steps) {
      throw new Error(`spec.interventions[0].sourceStep: ${lens.sourceStep} is beyond the source run's ${source.steps} step(s)`);
    }
    return;
  }
  const knockouts = (spec.interventions ?? []).filter((i) => i.type === "knockout").map((k) =>
    new KnockoutIntervention([{ setting: k.setting, blocks: k.blocks, steps: k.steps }])
  );
  const captures = spec.captures?.length ? [new CaptureIntervention(spec.captures)] : [];
  const prepared = await pipe.prepare({ ...base, interventions: [...knockouts, ...captures] });
  for (const [i, iv] of (spec.interventions ?? []).entries()) {
    if (iv.type !== "patch") continue;
    const where = `spec.interventions[${i}]`;
    if (iv.block) resolveBlocks([iv.block], blocks, `${where}.block`);
    if (iv.tap) checkTap(iv.tap, blocks, `${where}.tap`);
    resolveSteps(iv.steps, prepared.steps, `${where}.steps`);
    resolveGroups(prepared.layout, patchGroup(iv));
    const sourceSteps = iv.source.steps ?? prepared.steps;
    if (iv.schedule === "fixed" && (iv.sourceStep ?? 0) >= sourceSteps) {
      throw new Error(`${where}.sourceStep: ${iv.sourceStep} is beyond the source run's ${sourceSteps} step(s)`);
    }
    if (iv.schedule !== "fixed" && sourceSteps < prepared.steps) {
      throw new Error(`${where}.source.steps: a per-step patch needs a source with at least the target's ${prepared.steps} steps`);
    }
    const source = await pipe.prepare({ ...base, prompt: iv.source.prompt ?? spec.prompt, refs: iv.source.refs ?? spec.refs ?? [] });
    const group = patchGroup(iv);
    const [s, t] = [resolveGroups(source.layout, group).length, resolveGroups(prepared.layout, group).length];
    if (s !== t) {
      throw new Error(
        `${where}: the source run has ${s} ${group} rows and this run ${t}; patch rows are matched group by group, ` +
          `so the counts must be equal`,
      );
    }
  }
}

/** Run a spec with a loaded pipeline (checked first, before any GPU work). */
export async function executeSpec(pipe: Flux2KleinPipeline, spec: RunSpec, log: (line: string) => void = () => {}): Promise<SpecRunResult> {
  await checkSpec(pipe, spec);
  const warnings: string[] = [];
  const capture = spec.captures?.length ? new CaptureIntervention(spec.captures) : undefined;
  const extra: Intervention[] = capture ? [capture] : [];
  const lens = spec.interventions?.find((i) => i.type === "lens") as LensSpec | undefined;
  const base = await baseRequest(pipe, spec);
  if (lens) {
    const targetSteps = lens.targetSteps ?? (lens.mode === "diagonal" ? 1 : 4);
    const target: GenerateRequest = {
      prompt: lens.targetPrompt ?? "",
      refs: [],
      steps: targetSteps,
      width: spec.width,
      height: spec.height,
    };
    if (lens.targetLatents) {
      const prepared = await pipe.prepare({ ...base, steps: lens.sourceSteps ?? 1 });
      target.initialLatents = await readInitialLatents(
        lens.targetLatents,
        pipe.transformer.config.inChannels,
        prepared.width,
        prepared.height,
      );
    } else target.seed = (spec.seed ?? 0) + (lens.targetSeedOffset ?? 0);
    const r = await runLens(pipe, {
      block: lens.block,
      mode: lens.mode,
      source: { ...base, steps: lens.sourceSteps ?? 1 },
      sourceStep: lens.sourceStep,
      target,
      group: lens.group,
      targetInterventions: extra,
    });
    return { spec, result: r.target, source: r.source, capture, warnings };
  }
  const interventions: Intervention[] = [];
  let source: GenerateResult | undefined;
  const steps = (await pipe.prepare(base)).steps;
  for (const iv of spec.interventions ?? []) {
    if (iv.type === "knockout") interventions.push(new KnockoutIntervention([{ setting: iv.setting, blocks: iv.blocks, steps: iv.steps }]));
    else if (iv.type === "patch") {
      log(`source run for ${iv.block ?? iv.tap}…`);
      const built = await buildPatch(pipe, spec, iv, steps);
      interventions.push(built.patch);
      source = built.source;
    }
  }
  const result = await pipe.generate({ ...base, interventions: [...interventions, ...extra] });
  return { spec, result, source, capture, warnings };
}

/** The spec as it ran: defaults made explicit, version and checkpoint fingerprint added. */
export async function resolvedSpec(spec: RunSpec, run: SpecRunResult): Promise<RunSpec> {
  return {
    ...spec,
    kleinscope: { version: KLEINSCOPE_VERSION, spec: SPEC_VERSION, fingerprint: await checkpointFingerprint(spec.model) },
    width: spec.width ?? (spec.interventions?.some((i) => i.type === "lens") ? run.source?.width : run.result.width),
    height: spec.height ?? (spec.interventions?.some((i) => i.type === "lens") ? run.source?.height : run.result.height),
    steps: spec.steps ??
      (spec.interventions?.some((i) => i.type === "lens") ? run.source?.times.stepsMs.length : run.result.times.stepsMs.length),
    seed: spec.latents ? undefined : spec.seed ?? 0,
  };
}

/** Write image.png, spec.json, run.json and (with captures) captures.safetensors + captures.json into `dir`. */
export async function writeSpecOutputs(dir: string, run: SpecRunResult): Promise<string[]> {
  await Deno.mkdir(dir, { recursive: true });
  const written: string[] = [];
  const image = join(dir, "image.png");
  await savePng(image, run.result.image, run.result.width, run.result.height);
  written.push(image);
  if (run.source) {
    const src = join(dir, "source.png");
    await savePng(src, run.source.image, run.source.width, run.source.height);
    written.push(src);
  }
  if (run.capture && run.capture.captured.size) {
    const tensors: Record<string, { dtype: "F32"; shape: number[]; data: Float32Array }> = {};
    const index: Record<string, unknown>[] = [];
    for (const [key, c] of run.capture.captured) {
      for (const [step, data] of [...c.steps].sort((a, b) => a[0] - b[0])) {
        const name = `${key}@step${step}`;
        tensors[name] = { dtype: "F32", shape: [data.length / c.cols, c.cols], data };
        index.push({ name, tap: c.tap, group: c.group, step, positions: c.positions, shape: [data.length / c.cols, c.cols] });
      }
    }
    await writeSafetensors(join(dir, "captures.safetensors"), tensors, { format: "kleinscope-captures" });
    await Deno.writeTextFile(join(dir, "captures.json"), JSON.stringify({ tensors: index }, null, 1));
    written.push(join(dir, "captures.safetensors"), join(dir, "captures.json"));
  }
  const spec = await resolvedSpec(run.spec, run);
  delete spec.output;
  await Deno.writeTextFile(join(dir, "spec.json"), JSON.stringify(spec, null, 2) + "\n");
  written.push(join(dir, "spec.json"));
  const r = run.result;
  await Deno.writeTextFile(
    join(dir, "run.json"),
    JSON.stringify(
      {
        width: r.width,
        height: r.height,
        times: r.times,
        layout: { ...r.layout, prompt: undefined },
        promptGroups: r.layout.prompt,
        warnings: run.warnings,
      },
      null,
      1,
    ),
  );
  written.push(join(dir, "run.json"));
  return written;
}
