// Executing an experiment spec: the plain run, knockouts (any number, united), patches (each with its source run),
// the T2I lens and captures. A spec is first planned — every run it needs prepared and every intervention bound, so
// that all bad input fails before any GPU work — then the planned runs are executed once each, sources first.

import type { Flux2KleinPipeline, GenerateRequest, GenerateResult, PreparedRun } from "../model/pipeline.ts";
import type { Intervention } from "../model/run.ts";
import { readInitialLatents } from "../model/latents_file.ts";
import { CaptureIntervention, type CaptureSet } from "../interventions/capture_run.ts";
import { KnockoutIntervention } from "../interventions/knockout.ts";
import { PatchIntervention } from "../interventions/patch.ts";
import { AttentionFlowIntervention, type AttentionFlowResult } from "../interventions/attention_flow.ts";
import { resolveGroups } from "../interventions/groups.ts";
import { resolveBlocks } from "../interventions/intervention.ts";
import type { KnockoutSpec, LensSpec, PatchSpecJson, RunSpec } from "./spec.ts";
import { SourceRows } from "./source_rows.ts";

export const KLEINSCOPE_VERSION = "0.1.0";

export interface SpecRunResult {
  spec: RunSpec;
  result: GenerateResult;
  /** The run that supplied patch rows or was decoded by the lens (the last one, with several patches). */
  source?: GenerateResult;
  /** What the spec's captures collected (in the output run). */
  captures?: CaptureSet;
  /** What the spec's attention flow measured (in the output run). */
  attentionFlow?: AttentionFlowResult;
  /** Warnings of every run of the spec (source runs' prefixed with "source run: "). */
  warnings: string[];
}

/** A spec with every run prepared: the source runs (executed first) and the output run. */
export interface SpecPlan {
  spec: RunSpec;
  sources: SourceRows[];
  target: PreparedRun;
  capture?: CaptureIntervention;
  attentionFlow?: AttentionFlowIntervention;
}

/** The request of the spec's own run (prompt, references, size, steps, guidance, seed or initial latents). */
async function baseRequest(pipe: Flux2KleinPipeline, spec: RunSpec): Promise<GenerateRequest> {
  const req: GenerateRequest = {
    prompt: spec.prompt,
    refs: spec.refs ?? [],
    width: spec.width,
    height: spec.height,
    steps: spec.steps,
    guidance: spec.guidance,
    distilled: spec.distilled,
    seed: spec.seed ?? 0,
    noise: spec.noise,
  };
  if (spec.latents) {
    const refs = [];
    for (const r of spec.refs ?? []) refs.push(await pipe.loadReference(r));
    req.refs = refs;
    const width = spec.width ?? refs[0]?.width ?? 1024, height = spec.height ?? refs[0]?.height ?? 1024;
    req.initialLatents = await readInitialLatents(spec.latents, pipe.transformer.config.inChannels, width, height);
  }
  return req;
}

/** The token group a patch mode or lens subset names. */
export function textGroupOf(mode: string | undefined): string {
  switch (mode ?? "all") {
    case "all":
      return "text";
    case "padding_only":
      return "text[padding]";
    case "content_only":
      return "text[content]";
    default:
      return mode!;
  }
}

/** The tap holding a block's text rows. */
function textTapOfBlock(blocks: readonly string[], block: string, where: string): string {
  resolveBlocks([block], [...blocks], where);
  return `${block}.txt`;
}

/** One knockout intervention per knockout entry; the run unites their cuts. */
function knockoutOf(k: KnockoutSpec): KnockoutIntervention {
  const settings = k.settings ?? [{ setting: k.setting!, blocks: k.blocks, steps: k.steps }];
  return new KnockoutIntervention(settings.map((s) => ({ setting: s.setting, blocks: s.blocks, steps: s.steps })));
}

async function planPatch(
  pipe: Flux2KleinPipeline,
  spec: RunSpec,
  base: GenerateRequest,
  p: PatchSpecJson,
  where: string,
): Promise<{ source: SourceRows; patch: PatchIntervention }> {
  const tap = p.tap ?? textTapOfBlock(pipe.blockNames(), p.block!, `${where}.block`);
  const group = p.mode === "group" ? p.group! : textGroupOf(p.mode);
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
  const targetSteps = pipe.stepsOf(base);
  const source = await SourceRows.prepare(
    pipe,
    await baseRequest(pipe, sourceSpec),
    { tap, group, schedule: p.schedule ?? "per-step", sourceStep: p.sourceStep },
    targetSteps,
  ).catch((e) => {
    throw new Error(`${where}.source: ${(e as Error).message}`);
  });
  const patch = new PatchIntervention({
    tap,
    positions: (ctx) => resolveGroups(ctx.layout, group),
    rows: source,
    mode: p.op ?? "replace",
    alpha: p.alpha,
    steps: p.steps,
    label: `patch ${p.mode ?? "all"} at ${p.block ?? p.tap}`,
  });
  return { source, patch };
}

async function planLens(pipe: Flux2KleinPipeline, spec: RunSpec, base: GenerateRequest, lens: LensSpec): Promise<SpecPlan> {
  const where = "spec.interventions[0]";
  const blockTap = textTapOfBlock(pipe.blockNames(), lens.block, `${where}.block`);
  const group = textGroupOf(lens.group);
  const sourceRequest: GenerateRequest = { ...base, steps: lens.sourceSteps ?? 1, keepStepLatents: false };
  const source = await SourceRows.prepare(pipe, sourceRequest, {
    tap: blockTap,
    group,
    schedule: "fixed",
    sourceStep: lens.sourceStep ?? 0,
  }, 1).catch((e) => {
    throw new Error(`${where}: ${(e as Error).message}`);
  });
  const width = source.run.width, height = source.run.height;
  const target: GenerateRequest = {
    prompt: lens.targetPrompt ?? "",
    refs: [],
    steps: lens.targetSteps ?? (lens.mode === "diagonal" ? 1 : 4),
    width,
    height,
    guidance: spec.guidance,
    distilled: spec.distilled,
    keepStepLatents: base.keepStepLatents,
  };
  if (lens.targetLatents) {
    target.initialLatents = await readInitialLatents(lens.targetLatents, pipe.transformer.config.inChannels, width, height);
  } else {
    target.seed = (spec.seed ?? 0) + (lens.targetSeedOffset ?? 1);
    target.noise = spec.noise;
  }
  // The subset is resolved on the source run's prompt and copied to the same positions of the target: the target's
  // own prompt (empty by default) has other groups.
  const patch = new PatchIntervention({
    tap: lens.mode === "diagonal" ? blockTap : "context_embedder",
    positions: source.positions,
    rows: source,
    label: `lens ${lens.mode} from ${lens.block}${lens.group ? ` (${lens.group})` : ""}`,
  });
  const capture = spec.captures?.length ? new CaptureIntervention(spec.captures) : undefined;
  const run = await pipe.prepare({ ...target, interventions: capture ? [patch, capture] : [patch] });
  return { spec, sources: [source], target: run, capture };
}

/** How a spec's output run is executed, beyond the spec itself. */
export interface PlanOptions {
  /** Keep the output run's latents after every step (result.stepLatents). */
  keepStepLatents?: boolean;
}

/** Prepare every run of a spec and bind every intervention: all checks, no GPU work. */
export async function planSpec(pipe: Flux2KleinPipeline, spec: RunSpec, options: PlanOptions = {}): Promise<SpecPlan> {
  const base = { ...await baseRequest(pipe, spec), keepStepLatents: options.keepStepLatents };
  const lens = spec.interventions?.find((i) => i.type === "lens") as LensSpec | undefined;
  if (lens) return await planLens(pipe, spec, base, lens);
  const interventions: Intervention[] = [];
  const sources: SourceRows[] = [];
  for (const [i, iv] of (spec.interventions ?? []).entries()) {
    if (iv.type === "knockout") interventions.push(knockoutOf(iv));
    else if (iv.type === "patch") {
      const planned = await planPatch(pipe, spec, base, iv, `spec.interventions[${i}]`);
      interventions.push(planned.patch);
      sources.push(planned.source);
    }
  }
  const capture = spec.captures?.length ? new CaptureIntervention(spec.captures) : undefined;
  if (capture) interventions.push(capture);
  const attentionFlow = spec.attentionFlow ? new AttentionFlowIntervention(spec.attentionFlow) : undefined;
  if (attentionFlow) interventions.push(attentionFlow);
  const target = await pipe.prepare({ ...base, interventions });
  return { spec, sources, target, capture, attentionFlow };
}

/** Everything in a spec that can be checked without the GPU: sizes, images, prompt, blocks, taps, groups, steps. */
export async function checkSpec(pipe: Flux2KleinPipeline, spec: RunSpec): Promise<void> {
  await planSpec(pipe, spec);
}

/** Execute a planned spec: its source runs, then its output run. */
export async function executePlan(
  pipe: Flux2KleinPipeline,
  plan: SpecPlan,
  log: (line: string) => void = () => {},
): Promise<SpecRunResult> {
  const warnings: string[] = [];
  let source: GenerateResult | undefined;
  for (const s of plan.sources) {
    log(`source run for ${s.request.tap}[${s.request.group}]…`);
    source = await s.execute(pipe);
    warnings.push(...source.warnings.map((w) => `source run: ${w}`));
  }
  const result = await pipe.execute(plan.target);
  warnings.push(...result.warnings);
  return {
    spec: plan.spec,
    result,
    source,
    captures: plan.capture?.results(result),
    attentionFlow: plan.attentionFlow?.results(result),
    warnings,
  };
}

/** Run a spec with a loaded pipeline (planned and checked first, before any GPU work). */
export async function executeSpec(
  pipe: Flux2KleinPipeline,
  spec: RunSpec,
  log: (line: string) => void = () => {},
  options: PlanOptions = {},
): Promise<SpecRunResult> {
  return await executePlan(pipe, await planSpec(pipe, spec, options), log);
}
