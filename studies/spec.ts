// The serialisable experiment spec: one JSON document that describes a run — checkpoint, prompt, references, size,
// steps, seed or initial latents, captures and interventions. It is validated field by field (errors name the
// field, e.g. `interventions[1].blocks`) and written next to every output, so any image can be regenerated.

import { JsonFields } from "./json_fields.ts";
import { MAX_SEQUENCE_LENGTH, NOISE_SOURCES, type NoiseSource } from "../model/pipeline.ts";

export const SPEC_VERSION = 1;

export type Selection = string | (string | number)[];

export interface CaptureSpec {
  /** A tap point ("double.1.txt", "single.0", "single.0.img", "context_embedder", "double.0.attn.q", …). */
  tap: string;
  /** Token group of the rows to keep; default all rows of the tap. */
  group?: string;
  steps?: string | number[];
  /** In a guided run: "cond" (default) or "uncond". */
  forward?: "cond" | "uncond";
}

export interface KnockoutSettingSpec {
  /** "A->B" (queries in B may not read keys in A). */
  setting: string;
  blocks?: Selection;
  steps?: string | number[];
}

/** One setting (`setting`, `blocks`, `steps`) or several applied together (`settings`): the run cuts the union of
 * their edges, and so does a spec with several knockout entries. */
export interface KnockoutSpec extends Partial<KnockoutSettingSpec> {
  type: "knockout";
  settings?: KnockoutSettingSpec[];
}

/** Where patch rows come from: another run (fields default to this run's), or a capture file. */
export interface SourceRunSpec {
  prompt?: string;
  refs?: string[];
  seed?: number;
  latents?: string;
  steps?: number;
}

export interface PatchSpecJson {
  type: "patch";
  /** The block whose text rows are patched (its output), or an explicit tap. */
  block?: string;
  tap?: string;
  /** "all" (every text row), "padding_only" (text[padding]), "content_only" (text[content]), or "group". */
  mode?: "all" | "padding_only" | "content_only" | "group";
  /** With mode "group": the target rows; the same group is taken from the source run. */
  group?: string;
  /** "replace" (default) or "add" (steering: rows += alpha · source rows). */
  op?: "replace" | "add";
  alpha?: number;
  steps?: string | number[];
  /** "per-step" (target step k from source step k, default) or "fixed" (source step `sourceStep` at every step). */
  schedule?: "per-step" | "fixed";
  sourceStep?: number;
  source: SourceRunSpec;
}

export interface LensSpec {
  type: "lens";
  /** The block whose text rows of this (editing) run are decoded. */
  block: string;
  /** "diagonal": they replace the same block's text rows of the target; "input_to_block0": they replace
   * context_embedder's output at every target step. */
  mode: "diagonal" | "input_to_block0";
  /** Steps of the editing (source) run; default 1. */
  sourceSteps?: number;
  /** Which step of the source run is decoded; default 0. */
  sourceStep?: number;
  /** Steps of the text-to-image target; default 1 for diagonal, 4 for input_to_block0. */
  targetSteps?: number;
  /** Prompt of the target; default "". */
  targetPrompt?: string;
  /** The target's seed is the run's seed plus this; default 1 (the paper's convention: target seed = source seed + 1). */
  targetSeedOffset?: number;
  /** Initial latents of the target (safetensors); overrides the seed. */
  targetLatents?: string;
  /** Text rows decoded: "all" (default), "padding_only", "content_only" or a token group, resolved on this (the
   * source) run's prompt and copied to the same positions of the target, which keeps its own rows elsewhere. */
  group?: string;
}

export type InterventionSpec = KnockoutSpec | PatchSpecJson | LensSpec;

/** Attention flow by token group in the output run (interventions/attention_flow.ts): per chosen block and step,
 * the probability mass each query group sends to each key group, per head and averaged over heads. */
export interface AttentionFlowSpec {
  /** Default all. */
  blocks?: Selection;
  /** Steps read back; default all. */
  steps?: string | number[];
  /** Token groups of each side; default text[content], text[scaffold], text[pad], image, ref[0], ref[1], …. */
  queryGroups?: string[];
  keyGroups?: string[];
  /** Heads whose own tables are kept; default all (the mean over all heads is always kept). */
  heads?: number[];
  /** A query group whose per-key masses are kept too. */
  tokenGroup?: string;
  /** In a guided run: "cond" (default) or "uncond". */
  forward?: "cond" | "uncond";
}

/** Intervention effects (studies/effects.ts): the run's baseline — the same spec without its interventions; for a lens,
 * the target run without the lens patch — runs too, and per chosen block and step the text and image rows of both
 * runs are compared (relative L2 change, cosine similarity), with the attention-flow change when the spec asks for
 * an attention flow. Written as effects.json (and baseline.png). */
export interface EffectsSpec {
  /** Blocks compared; default all. */
  blocks?: Selection;
  /** Steps compared; default all. */
  steps?: string | number[];
}

/** A control for the spec's knockouts (needs `effects`): each setting's query group is replaced by a seeded random
 * subset of text[pad] of the same size (studies/effects.ts, controlKnockouts), run as its own run with its own
 * effects against the same baseline. */
export interface ControlSpec {
  seed: number;
}

export interface RunSpec {
  kleinscope?: { version: string; spec: number; fingerprint?: string };
  model: string;
  prompt: string;
  refs?: string[];
  width?: number;
  height?: number;
  steps?: number;
  guidance?: number;
  /** Text rows the prompt is padded (or truncated) to, the reference pipeline's max_sequence_length; default 512. Every
   * run of the spec (patch and lens sources, lens targets, effects baselines) uses it. */
  maxSequenceLength?: number;
  /** Run the checkpoint as guidance-distilled (true) or as a base model (false); default: its model_index.json. */
  distilled?: boolean;
  seed?: number;
  /** How the seed becomes noise: "kleinscope" (default), "torch-cpu" (torch.randn on a CPU generator, float32) or
   * "torch-cpu-bf16" (the same in bfloat16, as the reference pipeline draws it for a bf16 model). */
  noise?: NoiseSource;
  /** Initial latents: a safetensors file, or `file.safetensors#tensor` for one tensor of it. */
  latents?: string;
  captures?: CaptureSpec[];
  /** Host memory the captured rows may hold, in MiB (default 4096): in memory the whole capture must fit; written to an
   * output folder, captures stream to disk and the rows read back but not yet written must. */
  captureBudget?: number;
  interventions?: InterventionSpec[];
  attentionFlow?: AttentionFlowSpec;
  /** `true` or the blocks and steps to compare with the baseline run. */
  effects?: true | EffectsSpec;
  /** A control run of the knockouts (needs `effects`). */
  control?: ControlSpec;
  /** Output folder. */
  output?: string;
}

const F: JsonFields = new JsonFields("spec");

function selection(o: Record<string, unknown>, k: string, path: string): Selection | undefined {
  const v = o[k];
  if (v === undefined) return undefined;
  if (typeof v === "string") return v;
  if (Array.isArray(v) && v.every((x) => typeof x === "string" || (typeof x === "number" && Number.isInteger(x)))) return v as Selection;
  F.fail(`${path}${k}`, `expected "all", a string like "0..3,single" or a list of block indices/names, got ${JSON.stringify(v)}`);
}

function bool(o: Record<string, unknown>, k: string, path: string): boolean | undefined {
  const v = o[k];
  if (v === undefined) return undefined;
  if (typeof v !== "boolean") F.fail(`${path}${k}`, `expected true or false, got ${JSON.stringify(v)}`);
  return v;
}

function steps(o: Record<string, unknown>, k: string, path: string): string | number[] | undefined {
  const v = o[k];
  if (v === undefined) return undefined;
  if (typeof v === "string") return v;
  if (Array.isArray(v) && v.every((x) => typeof x === "number" && Number.isInteger(x) && x >= 0)) return v as number[];
  F.fail(`${path}${k}`, `expected "all", a string like "0,2" or "1..3", or a list of step indices, got ${JSON.stringify(v)}`);
}

function parseSource(v: unknown, path: string): SourceRunSpec {
  const o = F.obj(v, path);
  F.only(o, path, ["prompt", "refs", "seed", "latents", "steps"]);
  const p = `${path}.`;
  return {
    prompt: F.str(o, "prompt", p),
    refs: F.strList(o, "refs", p),
    seed: F.int(o, "seed", p, 0),
    latents: F.str(o, "latents", p),
    steps: F.int(o, "steps", p, 1),
  };
}

function parseKnockoutSetting(v: unknown, path: string): KnockoutSettingSpec {
  const o = F.obj(v, path);
  const p = `${path}.`;
  const setting = F.str(o, "setting", p, { required: true })!;
  if (setting.split("->").length !== 2) F.fail(`${path}.setting`, `"${setting}" must look like "A->B", e.g. "ref->text"`);
  if (o.type === undefined) F.only(o, path, ["setting", "blocks", "steps"]);
  return { setting, blocks: selection(o, "blocks", p), steps: steps(o, "steps", p) };
}

function parseIntervention(v: unknown, path: string): InterventionSpec {
  const o = F.obj(v, path);
  const p = `${path}.`;
  const type = F.oneOf(o, "type", p, ["knockout", "patch", "lens"] as const);
  if (!type) F.fail(`${path}.type`, `is required ("knockout", "patch" or "lens")`);
  if (type === "knockout") {
    F.only(o, path, ["type", "setting", "blocks", "steps", "settings"]);
    if (o.settings !== undefined) {
      if (o.setting !== undefined || o.blocks !== undefined || o.steps !== undefined) {
        F.fail(
          `${path}.settings`,
          `give either "settings" (a list of {setting, blocks, steps}) or one "setting" with its "blocks" and "steps"`,
        );
      }
      if (!Array.isArray(o.settings) || !o.settings.length) {
        F.fail(`${path}.settings`, "expected a non-empty list of {setting, blocks, steps}");
      }
      return { type, settings: o.settings.map((v, i) => parseKnockoutSetting(v, `${path}.settings[${i}]`)) };
    }
    return { type, ...parseKnockoutSetting(o, path) };
  }
  if (type === "patch") {
    F.only(o, path, ["type", "block", "tap", "mode", "group", "op", "alpha", "steps", "schedule", "sourceStep", "source"]);
    const block = F.str(o, "block", p), tap = F.str(o, "tap", p);
    if (!block === !tap) F.fail(`${path}.block`, `give exactly one of "block" (patch that block's text rows) or "tap"`);
    const mode = F.oneOf(o, "mode", p, ["all", "padding_only", "content_only", "group"] as const);
    const group = F.str(o, "group", p);
    if (mode === "group" && !group) F.fail(`${path}.group`, `is required with mode "group"`);
    if (group && mode !== "group") F.fail(`${path}.group`, `only goes with mode "group"`);
    if (o.source === undefined) F.fail(`${path}.source`, "is required (the run the rows come from)");
    const schedule = F.oneOf(o, "schedule", p, ["per-step", "fixed"] as const);
    const sourceStep = F.int(o, "sourceStep", p, 0);
    if (sourceStep !== undefined && schedule !== "fixed") F.fail(`${path}.sourceStep`, `only goes with schedule "fixed"`);
    return {
      type,
      block,
      tap,
      mode,
      group,
      op: F.oneOf(o, "op", p, ["replace", "add"] as const),
      alpha: F.num(o, "alpha", p),
      steps: steps(o, "steps", p),
      schedule,
      sourceStep,
      source: parseSource(o.source, `${path}.source`),
    };
  }
  F.only(o, path, [
    "type",
    "block",
    "mode",
    "sourceSteps",
    "sourceStep",
    "targetSteps",
    "targetPrompt",
    "targetSeedOffset",
    "targetLatents",
    "group",
  ]);
  const mode = F.oneOf(o, "mode", p, ["diagonal", "input_to_block0"] as const);
  if (!mode) F.fail(`${path}.mode`, `is required ("diagonal" or "input_to_block0")`);
  return {
    type,
    block: F.str(o, "block", p, { required: true })!,
    mode,
    sourceSteps: F.int(o, "sourceSteps", p, 1),
    sourceStep: F.int(o, "sourceStep", p, 0),
    targetSteps: F.int(o, "targetSteps", p, 1),
    targetPrompt: F.str(o, "targetPrompt", p),
    targetSeedOffset: F.int(o, "targetSeedOffset", p, -(2 ** 31)),
    targetLatents: F.str(o, "targetLatents", p),
    group: F.str(o, "group", p),
  };
}

function parseAttentionFlow(v: unknown, path: string): AttentionFlowSpec {
  const o = F.obj(v, path);
  F.only(o, path, ["blocks", "steps", "queryGroups", "keyGroups", "heads", "tokenGroup", "forward"]);
  const p = `${path}.`;
  const groups = (k: string) => {
    const list = F.strList(o, k, p);
    if (list && !list.length) F.fail(`${p}${k}`, "expected a non-empty list of token groups (leave it out for the default groups)");
    return list;
  };
  const heads = o.heads;
  if (heads !== undefined && (!Array.isArray(heads) || !heads.length || heads.some((h) => !Number.isSafeInteger(h) || h < 0))) {
    F.fail(`${p}heads`, `expected a non-empty list of head indices, got ${JSON.stringify(heads)}`);
  }
  return {
    blocks: selection(o, "blocks", p),
    steps: steps(o, "steps", p),
    queryGroups: groups("queryGroups"),
    keyGroups: groups("keyGroups"),
    heads: heads as number[] | undefined,
    tokenGroup: F.str(o, "tokenGroup", p, { nonEmpty: true }),
    forward: F.oneOf(o, "forward", p, ["cond", "uncond"] as const),
  };
}

/** `maxSequenceLength` of a spec or an experiment file (errors named through `fields`): a whole number of tokens in
 * [1, MAX_SEQUENCE_LENGTH]. */
export function sequenceLengthField(fields: JsonFields, o: Record<string, unknown>, path: string): number | undefined {
  const v = fields.int(o, "maxSequenceLength", path, 1);
  if (v !== undefined && v > MAX_SEQUENCE_LENGTH) {
    fields.fail(`${path}maxSequenceLength`, `${v} is above the longest supported text sequence, ${MAX_SEQUENCE_LENGTH} tokens`);
  }
  return v;
}

/** Check a parsed JSON value and return it as a RunSpec; every problem names its field. */
export function parseSpec(raw: unknown): RunSpec {
  const o = F.obj(raw, "(root)");
  F.only(o, "", [
    "kleinscope",
    "model",
    "prompt",
    "refs",
    "width",
    "height",
    "steps",
    "guidance",
    "maxSequenceLength",
    "distilled",
    "seed",
    "noise",
    "latents",
    "captures",
    "captureBudget",
    "interventions",
    "attentionFlow",
    "effects",
    "control",
    "output",
  ]);
  const spec: RunSpec = {
    model: F.str(o, "model", "", { required: true })!,
    prompt: F.str(o, "prompt", "", { required: true })!,
    refs: F.strList(o, "refs", ""),
    width: F.int(o, "width", "", 16),
    height: F.int(o, "height", "", 16),
    steps: F.int(o, "steps", "", 1),
    guidance: F.num(o, "guidance", ""),
    maxSequenceLength: sequenceLengthField(F, o, ""),
    distilled: bool(o, "distilled", ""),
    seed: F.int(o, "seed", "", 0),
    noise: F.oneOf(o, "noise", "", NOISE_SOURCES),
    latents: F.str(o, "latents", ""),
    output: F.str(o, "output", ""),
  };
  const budget = F.num(o, "captureBudget", "");
  if (budget !== undefined) {
    if (budget <= 0) F.fail("captureBudget", `expected a number of MiB above 0, got ${budget}`);
    spec.captureBudget = budget;
  }
  if (spec.seed !== undefined && spec.latents !== undefined) F.fail("latents", `give either "seed" or "latents", not both`);
  if (spec.noise !== undefined && spec.latents !== undefined) F.fail("noise", `"noise" draws from the seed; it does not go with "latents"`);
  for (const k of ["width", "height"] as const) if (spec[k] !== undefined && spec[k]! % 16) F.fail(k, `${spec[k]} is not a multiple of 16`);
  if (o.kleinscope !== undefined) spec.kleinscope = F.obj(o.kleinscope, "kleinscope") as RunSpec["kleinscope"];
  if (o.captures !== undefined) {
    if (!Array.isArray(o.captures)) F.fail("captures", "expected a list");
    spec.captures = o.captures.map((c, i) => {
      const path = `captures[${i}]`;
      const co = F.obj(c, path);
      F.only(co, path, ["tap", "group", "steps", "forward"]);
      return {
        tap: F.str(co, "tap", `${path}.`, { required: true })!,
        group: F.str(co, "group", `${path}.`),
        steps: steps(co, "steps", `${path}.`),
        forward: F.oneOf(co, "forward", `${path}.`, ["cond", "uncond"] as const),
      };
    });
  }
  if (o.interventions !== undefined) {
    if (!Array.isArray(o.interventions)) F.fail("interventions", "expected a list");
    spec.interventions = o.interventions.map((v, i) => parseIntervention(v, `interventions[${i}]`));
    const lenses = spec.interventions.filter((i) => i.type === "lens").length;
    if (lenses > 1 || (lenses === 1 && spec.interventions.length > 1)) {
      F.fail("interventions", "a lens run takes no other intervention (its run is the lens's source; the output is the lens's target)");
    }
  }
  if (o.attentionFlow !== undefined) {
    spec.attentionFlow = parseAttentionFlow(o.attentionFlow, "attentionFlow");
    if (spec.interventions?.some((i) => i.type === "lens")) F.fail("attentionFlow", "is not supported in a lens run");
  }
  if (o.effects !== undefined && o.effects !== false) {
    spec.effects = parseEffects(o.effects);
    if (!spec.interventions?.length) {
      F.fail("effects", "compares an intervention run with its baseline, and this spec has no intervention");
    }
  }
  if (o.control !== undefined) {
    const c = F.obj(o.control, "control");
    F.only(c, "control", ["seed"]);
    spec.control = { seed: F.int(c, "seed", "control.", 0) ?? F.fail("control.seed", "is required (an integer ≥ 0)") };
    if (!spec.effects) F.fail("control", `needs "effects" (the control is measured against the same baseline)`);
    const other = spec.interventions!.findIndex((i) => i.type !== "knockout");
    if (other >= 0) {
      F.fail("control", `replaces knockout settings, and interventions[${other}] is a ${spec.interventions![other].type}`);
    }
  }
  return spec;
}

function parseEffects(v: unknown): true | EffectsSpec {
  if (v === true) return true;
  if (!v || typeof v !== "object" || Array.isArray(v)) {
    F.fail("effects", `expected true or {"blocks": …, "steps": …}, got ${JSON.stringify(v)}`);
  }
  const o = v as Record<string, unknown>;
  F.only(o, "effects", ["blocks", "steps"]);
  return { blocks: selection(o, "blocks", "effects."), steps: steps(o, "steps", "effects.") };
}

export async function readSpec(path: string): Promise<RunSpec> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    throw new Error(`cannot read spec ${path}: ${(e as Error).message}`);
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new Error(`spec ${path} is not valid JSON: ${(e as Error).message}`);
  }
  try {
    return parseSpec(raw);
  } catch (e) {
    throw new Error(`${path}: ${(e as Error).message}`);
  }
}
