// Executing an experiment spec: the plain run, knockouts (any number, united), patches (each with its source run),
// the T2I lens and captures. A spec is first planned — every run it needs prepared and every intervention bound, so
// that all bad input fails before any GPU work — then the planned runs are executed once each, sources first.

import type { Flux2KleinPipeline, GenerateRequest, GenerateResult, PreparedRun } from "../model/pipeline.ts";
import type { Intervention } from "../model/run.ts";
import { readInitialLatents } from "../model/latents_file.ts";
import { CaptureIntervention, type CaptureOptions, type CaptureSet } from "../interventions/capture_run.ts";
import { KnockoutIntervention } from "../interventions/knockout.ts";
import { PatchIntervention } from "../interventions/patch.ts";
import { AttentionFlowIntervention, type AttentionFlowResult } from "../interventions/attention_flow.ts";
import { resolveGroups } from "../interventions/groups.ts";
import { resolveBlocks } from "../interventions/intervention.ts";
import type { EffectsSpec, KnockoutSpec, LensSpec, PatchSpecJson, RunSpec } from "./spec.ts";
import { SourceRows, type SourceRunCache } from "./source_rows.ts";
import {
  BaselineRows,
  controlKnockouts,
  type ControlSetting,
  EffectsComparer,
  effectsLayout,
  EffectsProbe,
  type EffectsResult,
  finalEffects,
  flowChange,
  type RunEffects,
} from "./effects.ts";

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
  /** With `effects`: the baseline run, the control run (with `control`) and the statistics of both against it. */
  baseline?: GenerateResult;
  control?: GenerateResult;
  effects?: EffectsResult;
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
  effects?: EffectsPlan;
}

/** The runs of a spec's effects: the baseline (executed before the output run; its rows go to a temporary file), the
 * comparer bound to the output run, and the control run with its own comparer. */
export interface EffectsPlan {
  /** What the baseline is, in words (written to effects.json). */
  description: string;
  baseline: PreparedRun;
  baselineRows: BaselineRows;
  baselineFlow?: AttentionFlowIntervention;
  comparer: EffectsComparer;
  control?: {
    run: PreparedRun;
    comparer: EffectsComparer;
    flow?: AttentionFlowIntervention;
    seed: number;
    interventions: KnockoutSpec[];
    settings: ControlSetting[];
  };
}

/** The probe of an output run, and its comparer, when the spec asks for effects. */
function effectsProbe(spec: RunSpec, options: PlanOptions): { probe: EffectsProbe; rows: BaselineRows; comparer: EffectsComparer } | null {
  if (!spec.effects) return null;
  const rows = new BaselineRows(options.tempDir);
  const comparer = new EffectsComparer(rows, "intervention");
  return { probe: new EffectsProbe(effectsRequest(spec.effects), comparer), rows, comparer };
}

function effectsRequest(effects: NonNullable<RunSpec["effects"]>): EffectsSpec {
  return effects === true ? {} : effects;
}

/** Prepare the baseline (`request` without the spec's interventions) and, with a control, the control run. */
async function planEffects(
  pipe: Flux2KleinPipeline,
  spec: RunSpec,
  request: GenerateRequest,
  target: PreparedRun,
  probe: NonNullable<ReturnType<typeof effectsProbe>>,
  description: string,
): Promise<EffectsPlan> {
  const fx = effectsRequest(spec.effects!);
  const flowOf = () => (spec.attentionFlow ? new AttentionFlowIntervention(spec.attentionFlow) : undefined);
  const baselineFlow = flowOf();
  const baseline = await pipe.prepare({
    ...request,
    interventions: [new EffectsProbe(fx, probe.rows), ...(baselineFlow ? [baselineFlow] : [])],
  });
  const plan: EffectsPlan = { description, baseline, baselineRows: probe.rows, baselineFlow, comparer: probe.comparer };
  if (spec.control) {
    // The control's settings depend on this run's token groups (text[pad] and the query groups of the prompt).
    const control = controlKnockouts(spec.interventions ?? [], target.layout, spec.control.seed);
    const comparer = new EffectsComparer(probe.rows, "control");
    const flow = flowOf();
    const run = await pipe.prepare({
      ...request,
      interventions: [...control.interventions.map(knockoutOf), new EffectsProbe(fx, comparer), ...(flow ? [flow] : [])],
    }).catch((e) => {
      throw new Error(`control: ${(e as Error).message}`);
    });
    plan.control = { run, comparer, flow, seed: spec.control.seed, ...control };
  }
  return plan;
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
    maxSequenceLength: spec.maxSequenceLength,
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

/** What makes a source run what it is (the fields baseRequest reads), as a cache key: specs that differ only in
 * their interventions, captures or names share it. */
function sourceRunKey(spec: RunSpec): string {
  const { prompt, refs, width, height, steps, guidance, maxSequenceLength, distilled, seed, noise, latents } = spec;
  return JSON.stringify({ prompt, refs, width, height, steps, guidance, maxSequenceLength, distilled, seed, noise, latents });
}

async function planPatch(
  pipe: Flux2KleinPipeline,
  spec: RunSpec,
  base: GenerateRequest,
  p: PatchSpecJson,
  where: string,
  options: PlanOptions,
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
    options.sourceCache ? { cache: options.sourceCache, key: sourceRunKey(sourceSpec) } : undefined,
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

async function planLens(
  pipe: Flux2KleinPipeline,
  spec: RunSpec,
  base: GenerateRequest,
  lens: LensSpec,
  options: PlanOptions,
): Promise<SpecPlan> {
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
    // The lens copies text rows to the same positions of the target: the same sequence length.
    maxSequenceLength: spec.maxSequenceLength,
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
  const capture = spec.captures?.length ? new CaptureIntervention(spec.captures, captureOptions(spec, options)) : undefined;
  const fx = effectsProbe(spec, options);
  const run = await pipe.prepare({ ...target, interventions: [patch, ...(fx ? [fx.probe] : []), ...(capture ? [capture] : [])] });
  const effects = fx ? await planEffects(pipe, spec, target, run, fx, "the lens's target run without the lens patch") : undefined;
  return { spec, sources: [source], target: run, capture, effects };
}

/** How a spec's output run is executed, beyond the spec itself. */
export interface PlanOptions {
  /** Keep the output run's latents after every step (result.stepLatents). */
  keepStepLatents?: boolean;
  /** Stream the output run's captures into this safetensors file as they arrive (writeSpecOutputs keeps it when it
   * is the folder's captures.safetensors); without it they are kept in memory. */
  captureFile?: string;
  /** Folder of the temporary file that holds the baseline's rows with `effects` (default: $TMPDIR). */
  tempDir?: string;
  /** Source runs of patches, shared with the specs planned before and after this one (an experiment's conditions of
   * one task run their common source once); without it every patch runs its own source. */
  sourceCache?: SourceRunCache;
}

/** The spec's captures: its budget, and streamed into options.captureFile when given. */
function captureOptions(spec: RunSpec, options: PlanOptions): CaptureOptions {
  return { budgetMB: spec.captureBudget, file: options.captureFile };
}

/** Prepare every run of a spec and bind every intervention: all checks, no GPU work. */
export async function planSpec(pipe: Flux2KleinPipeline, spec: RunSpec, options: PlanOptions = {}): Promise<SpecPlan> {
  const base = { ...await baseRequest(pipe, spec), keepStepLatents: options.keepStepLatents };
  const lens = spec.interventions?.find((i) => i.type === "lens") as LensSpec | undefined;
  if (lens) return await planLens(pipe, spec, base, lens, options);
  const interventions: Intervention[] = [];
  const sources: SourceRows[] = [];
  for (const [i, iv] of (spec.interventions ?? []).entries()) {
    if (iv.type === "knockout") interventions.push(knockoutOf(iv));
    else if (iv.type === "patch") {
      const planned = await planPatch(pipe, spec, base, iv, `spec.interventions[${i}]`, options);
      interventions.push(planned.patch);
      sources.push(planned.source);
    }
  }
  // The probe comes after the patches, so it reads patched rows.
  const fx = effectsProbe(spec, options);
  if (fx) interventions.push(fx.probe);
  const capture = spec.captures?.length ? new CaptureIntervention(spec.captures, captureOptions(spec, options)) : undefined;
  if (capture) interventions.push(capture);
  const attentionFlow = spec.attentionFlow ? new AttentionFlowIntervention(spec.attentionFlow) : undefined;
  if (attentionFlow) interventions.push(attentionFlow);
  const target = await pipe.prepare({ ...base, interventions });
  const effects = fx ? await planEffects(pipe, spec, base, target, fx, "the same spec without its interventions") : undefined;
  return { spec, sources, target, capture, attentionFlow, effects };
}

/** Everything in a spec that can be checked without the GPU: sizes, images, prompt, blocks, taps, groups, steps. */
export async function checkSpec(pipe: Flux2KleinPipeline, spec: RunSpec): Promise<void> {
  await planSpec(pipe, spec);
}

/** Execute a planned spec: its source runs, the baseline (with effects), its output run, then the control. */
export async function executePlan(
  pipe: Flux2KleinPipeline,
  plan: SpecPlan,
  log: (line: string) => void = () => {},
): Promise<SpecRunResult> {
  const warnings: string[] = [];
  let source: GenerateResult | undefined;
  for (const s of plan.sources) {
    log(`source run for ${s.request.tap}[${s.request.group}]${s.cached ? " (the same run as the previous spec's: reused)" : "…"}`);
    source = await s.execute(pipe);
    warnings.push(...source.warnings.map((w) => `source run: ${w}`));
  }
  const fx = plan.effects;
  try {
    let baseline: GenerateResult | undefined;
    if (fx) {
      log(`baseline run (${fx.description})…`);
      fx.baselineRows.log = log;
      baseline = await pipe.execute(fx.baseline);
      await fx.baselineRows.finish();
    }
    const result = await pipe.execute(plan.target);
    warnings.push(...result.warnings);
    let control: GenerateResult | undefined;
    if (fx?.control) {
      log(`control run (seed ${fx.control.seed})…`);
      control = await pipe.execute(fx.control.run);
      warnings.push(...control.warnings.map((w) => `control run: ${w}`));
    }
    const attentionFlow = plan.attentionFlow?.results(result);
    let effects: EffectsResult | undefined;
    if (fx && baseline) {
      warnings.push(...baseline.warnings.filter((w) => !result.warnings.includes(w)).map((w) => `baseline run: ${w}`));
      const channels = pipe.transformer.config.inChannels;
      const baseFlow = fx.baselineFlow?.results(baseline);
      const intervention: RunEffects = {
        interventions: plan.spec.interventions ?? [],
        records: fx.comparer.sorted(),
        final: finalEffects(result, baseline, channels),
        attentionFlow: attentionFlow && baseFlow ? flowChange(attentionFlow, baseFlow) : null,
        warnings: [...result.warnings],
      };
      const c = fx.control;
      const controlFlow = c && control ? c.flow?.results(control) : undefined;
      effects = {
        ...effectsLayout(fx.baselineRows),
        baselineDescription: fx.description,
        baselineWarnings: [...baseline.warnings],
        intervention,
        control: c && control
          ? {
            interventions: c.interventions,
            records: c.comparer.sorted(),
            final: finalEffects(control, baseline, channels),
            attentionFlow: controlFlow && baseFlow ? flowChange(controlFlow, baseFlow) : null,
            warnings: [...control.warnings],
            seed: c.seed,
            settings: c.settings,
          }
          : null,
      };
    }
    return {
      spec: plan.spec,
      result,
      source,
      captures: plan.capture?.results(result),
      attentionFlow,
      baseline,
      control,
      effects,
      warnings,
    };
  } finally {
    await fx?.baselineRows.dispose();
  }
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
