// The experiment file: a checkpoint, a task file, an output folder and a list of conditions, each of which becomes one
// RunSpec per task. Paths inside it are relative to the experiment file's folder.
//
//   { "model": "…/klein-4b", "tasks": "tasks.jsonl", "output": "runs/colour", "steps": 4,
//     "conditions": [
//       { "name": "baseline" },
//       { "name": "t2i_clean", "textOnly": true },
//       { "name": "ko_ref_text", "interventions": [ {"type": "knockout", "setting": "ref->text", "blocks": "all"} ] },
//       { "name": "lens_single0", "interventions": [ {"type": "lens", "block": "single.0", "mode": "diagonal"} ] },
//       { "name": "patch_padding", "patch": { "block": "double.1", "mode": "padding_only", "pairing": "shift" } } ],
//     "judge": { "provider": "anthropic", "questions": [ {"template": "color.knockout_lost", "conditions": ["ko_ref_text"]} ] } }
//
// Condition fields: name (names its folder), prompt (default "{instruction}"; {metadata.KEY} also works), textOnly
// (no reference images), seedOffset (the run's seed is the task's plus this; default 0 — the paper's "t2i clean"
// bookend of the lens is textOnly at seedOffset 1, the lens target's seed), steps, interventions (knockout / lens /
// patch with an explicit source, as in a RunSpec), patch (a patch whose source run is chosen by the pairing rule:
// "shift", see generators.ts, or "task", the source a pair task file names on each line, see pairings.ts), captures,
// attentionFlow, effects and control (as in a RunSpec), sweep (see below).
//
// Block sweeps. A condition with `"sweep": {"kind": K, "L": "all" | [L, …], "window": k}` stands for one condition
// per L (0 … blocks − 1, the blocks of the checkpoint's transformer/config.json), named `<name>@<kind>-<L>` and
// carrying `sweep: {family: <name>, kind, L, blocks}` (read by stats.ts sweepOf). The swept blocks, by kind:
//   suffix  [L, n)        prefix  [0, L] (L = 0 is block 0 alone, L = n − 1 every block: the study's prefix mode)
//   single  {L}           window  [L, L + k), k = "window" (default 3); kind "window<k>"; with "L": "all" only the
//                                 windows that fit are made (L ≤ n − k), a listed L past that is refused.
// Knockouts get the selection as the blocks of every setting; a lens or patch takes one block (kind "single" only).
//
// Token modes of the padding dose-response (padding_dose.ts): "instruction_only" and "filler_only" name the prompt's
// instruction and its appended filler (from the space on). A patch condition takes them as its `mode`, a lens as its
// `group`, a knockout setting as a side ("ref->filler_only"); per task they become `text[chars:i..j]` from its
// metadata.padding_base_instruction (interventions/groups.ts). Tasks without that metadata are refused.
// Top-level overrides: steps, width, height (every task), guidance, noise ("torch-cpu" draws as torch.randn on a CPU
// generator), maxSequenceLength (text rows of every run, default 512; see RunSpec); refsRoot (root of the task file's relative paths);
// strictTasks (refuse a task file with a malformed line instead of skipping it).

import { dirname, resolve } from "node:path";
import { join } from "node:path";
import {
  type AttentionFlowSpec,
  type CaptureSpec,
  type ControlSpec,
  type EffectsSpec,
  type InterventionSpec,
  parseSpec,
  type PatchSpecJson,
  type RunSpec,
  sequenceLengthField,
} from "../studies/spec.ts";
import { blockNames, parseFlux2Config } from "../model/flux2/config.ts";
import type { SweepPoint } from "./stats.ts";
import { checkpointFingerprint } from "../weights/fingerprint.ts";
import { NOISE_SOURCES, type NoiseSource } from "../model/pipeline.ts";
import { canonicalJson, fileSha256, readJsonFile, sha256Hex } from "./files.ts";
import { PAIRING_RULES, type PairingRule, type TaskPair } from "./generators.ts";
import { parseTemplate, parseTemplateLines, type QuestionTemplate, templateCatalogue } from "./judge_templates.ts";
import type { Task } from "./tasks.ts";
import { JsonFields } from "../studies/json_fields.ts";

/** Text subsets of a lengthened prompt, resolved per task from its padding dose-response metadata. */
export const TEXT_SPAN_MODES = ["instruction_only", "filler_only"] as const;
export type TextSpanMode = typeof TEXT_SPAN_MODES[number];
const isTextSpanMode = (v: unknown): v is TextSpanMode => TEXT_SPAN_MODES.includes(v as TextSpanMode);

/** A patch condition: a patch spec whose source run is chosen per task by the pairing rule. */
export interface PatchCondition extends Omit<PatchSpecJson, "type" | "source" | "mode"> {
  mode?: PatchSpecJson["mode"] | TextSpanMode;
  /** Steps of the source run (default: the condition's). */
  sourceSteps?: number;
  pairing?: PairingRule;
  /** The source run's seed is the target's plus this (default 1). */
  seedOffset?: number;
}

/** How a sweep chooses its blocks from L (see the header). */
export const SWEEP_KINDS = ["suffix", "prefix", "single", "window"] as const;
export type SweepKind = typeof SWEEP_KINDS[number];
export const DEFAULT_SWEEP_WINDOW = 3;

/** A sweep point's metadata: stats.ts's SweepPoint (family = the sweep condition's name; kind "suffix", "prefix",
 * "single" or "window<k>") and the block indices it selects. */
export interface ConditionSweep extends SweepPoint {
  blocks: number[];
}

export interface Condition {
  name: string;
  prompt?: string;
  textOnly?: boolean;
  /** The run's seed is the task's noise seed plus this (default 0). */
  seedOffset?: number;
  steps?: number;
  interventions?: InterventionSpec[];
  patch?: PatchCondition;
  captures?: CaptureSpec[];
  attentionFlow?: AttentionFlowSpec;
  /** As in a RunSpec (checked with the whole spec of each task, before anything runs). */
  effects?: true | EffectsSpec;
  control?: ControlSpec;
  /** Set on the conditions a sweep stands for. */
  sweep?: ConditionSweep;
}

export interface JudgeQuestionRule {
  template: string;
  /** Conditions asked (default all): names (a sweep's name covers all its points), or a prefix ending in "*". */
  conditions?: string[];
  /** Task families asked (default all). */
  families?: string[];
}

/** How verdicts are obtained: an OpenAI-compatible chat-completions endpoint, Anthropic's Messages API, or the
 * offline stub (verdicts from image statistics, for tests and dry runs). */
export type JudgeProvider = "openai" | "anthropic" | "stub";

export interface JudgeSettings {
  /** Default "openai". */
  provider?: JudgeProvider;
  url?: string;
  model?: string;
  /** Longest reply, in tokens (default 200). */
  maxTokens?: number;
  /** The condition behind the "baseline" image role (default "baseline"). */
  baseline?: string;
  /** The condition behind the "t2i_clean" image role (default "t2i_clean"). */
  t2iClean?: string;
  /** The experiment's own question templates: written inline, and read from templateFiles (JSON Lines, one
   * template a line) when the experiment file is read, so the run's manifest holds them all. */
  templates?: QuestionTemplate[];
  templateFiles?: string[];
  /** Questions; without any, each condition gets its family's default question for its intervention. */
  questions?: JudgeQuestionRule[];
}

export interface Experiment {
  model: string;
  tasks: string;
  output: string;
  refsRoot?: string;
  strictTasks?: boolean;
  steps?: number;
  width?: number;
  height?: number;
  guidance?: number;
  /** Text rows of every run (see RunSpec.maxSequenceLength); default 512. */
  maxSequenceLength?: number;
  /** How task seeds become noise (see RunSpec.noise); default "kleinscope". */
  noise?: NoiseSource;
  conditions: Condition[];
  judge?: JudgeSettings;
}

export interface LoadedExperiment {
  /** The experiment file (absolute), or "(inline)". */
  file: string;
  /** Paths resolved to absolute ones. */
  experiment: Experiment;
  /** The definition as written (for the manifest). */
  raw: Record<string, unknown>;
}

/** Names written in an experiment file; "@" is kept for the points of a sweep (`<name>@<kind>-<L>`). */
export const CONDITION_NAME_PATTERN = /^[A-Za-z0-9_][A-Za-z0-9._+-]*$/;

const F: JsonFields = new JsonFields("experiment");

function names(o: Record<string, unknown>, k: string, path: string): string[] | undefined {
  const v = o[k];
  if (v === undefined) return undefined;
  if (!Array.isArray(v) || v.some((x) => typeof x !== "string")) F.fail(`${path}${k}`, "expected a list of names");
  return v as string[];
}

/** Validate RunSpec parts with the spec's own parser, renaming its field paths to the experiment's. */
function viaSpecParser(probe: Partial<RunSpec>, rename: (message: string) => string): RunSpec {
  try {
    return parseSpec({ model: "-", prompt: "-", ...probe });
  } catch (e) {
    throw new Error(rename((e as Error).message));
  }
}

function parsePatch(v: unknown, path: string): PatchCondition {
  const o = F.obj(v, path);
  const specFields = ["block", "tap", "mode", "group", "op", "alpha", "steps", "schedule", "sourceStep"];
  F.only(o, path, [...specFields, "sourceSteps", "pairing", "seedOffset"]);
  const p = `${path}.`;
  const pairing = o.pairing ?? "shift";
  if (!PAIRING_RULES.includes(pairing as PairingRule)) {
    F.fail(`${path}.pairing`, `expected ${PAIRING_RULES.map((r) => `"${r}"`).join(" or ")}, got ${JSON.stringify(pairing)}`);
  }
  const seedOffset = o.seedOffset;
  if (seedOffset !== undefined && (typeof seedOffset !== "number" || !Number.isSafeInteger(seedOffset))) {
    F.fail(`${path}.seedOffset`, `expected an integer, got ${JSON.stringify(seedOffset)}`);
  }
  const sourceSteps = F.int(o, "sourceSteps", p, 1);
  const spanMode = isTextSpanMode(o.mode) ? o.mode : undefined;
  if (spanMode && o.group !== undefined) F.fail(`${path}.group`, `does not go with mode "${spanMode}" (the mode names the rows)`);
  // A token mode is checked as the group it becomes per task.
  const probe = Object.fromEntries(
    specFields.filter((k) => o[k] !== undefined).map((k) => [k, k === "mode" && spanMode ? "group" : o[k]]),
  );
  if (spanMode) probe.group = "text";
  const spec = viaSpecParser(
    { interventions: [{ type: "patch", ...probe, source: {} } as PatchSpecJson] },
    (m) => m.replace(/^spec\.interventions\[0\]/, `experiment.${path}`),
  );
  const parsed = spec.interventions![0] as PatchSpecJson;
  const { type: _t, source: _s, ...fields } = parsed;
  if (spanMode) Object.assign(fields, { mode: spanMode, group: undefined });
  return JSON.parse(JSON.stringify({ ...fields, sourceSteps, pairing, seedOffset }));
}

const CONDITION_FIELDS = [
  "name",
  "prompt",
  "textOnly",
  "seedOffset",
  "steps",
  "interventions",
  "patch",
  "captures",
  "attentionFlow",
  "effects",
  "control",
];

/** One condition as written (a sweep's points come here with their block filled in and `sweep` taken off). */
function parseCondition(v: unknown, path: string): Condition {
  const o = F.obj(v, path);
  F.only(o, path, CONDITION_FIELDS);
  const p = `${path}.`;
  const name = F.str(o, "name", p, { required: true, nonEmpty: true })!;
  if (!CONDITION_NAME_PATTERN.test(name)) F.fail(`${path}.name`, `"${name}" cannot name a folder (letters, digits, . _ + -)`);
  const seedOffset = o.seedOffset;
  if (seedOffset !== undefined && (typeof seedOffset !== "number" || !Number.isSafeInteger(seedOffset))) {
    F.fail(`${path}.seedOffset`, `expected an integer, got ${JSON.stringify(seedOffset)}`);
  }
  const cond: Condition = {
    name,
    prompt: F.str(o, "prompt", p, { nonEmpty: true }),
    textOnly: F.bool(o, "textOnly", p),
    seedOffset: seedOffset || undefined,
    steps: F.int(o, "steps", p, 1),
  };
  if (o.interventions !== undefined || o.captures !== undefined || o.attentionFlow !== undefined) {
    const spec = viaSpecParser(
      {
        interventions: o.interventions as InterventionSpec[],
        captures: o.captures as CaptureSpec[],
        attentionFlow: o.attentionFlow as AttentionFlowSpec,
      },
      (m) => m.replace(/^spec\./, `experiment.${path}.`),
    );
    cond.interventions = spec.interventions;
    cond.captures = spec.captures;
    cond.attentionFlow = spec.attentionFlow;
  }
  // Effects and their control need the condition's interventions, a patch condition's included: they are checked with
  // each task's whole spec (conditionToSpec), which the runner builds for every task before anything runs.
  if (o.effects !== undefined && o.effects !== false) {
    if (o.effects !== true && (!o.effects || typeof o.effects !== "object" || Array.isArray(o.effects))) {
      F.fail(`${path}.effects`, `expected true or {"blocks": …, "steps": …}, got ${JSON.stringify(o.effects)}`);
    }
    cond.effects = o.effects as true | EffectsSpec;
  }
  if (o.control !== undefined) cond.control = F.obj(o.control, `${path}.control`) as unknown as ControlSpec;
  if (o.patch !== undefined) {
    cond.patch = parsePatch(o.patch, `${path}.patch`);
    if (cond.interventions?.some((iv) => iv.type === "lens")) F.fail(`${path}.patch`, "a lens run takes no patch");
  }
  return JSON.parse(JSON.stringify(cond));
}

/** Whether a question rule's condition entry (a name, a sweep's name for all its points, or a prefix ending in "*")
 * covers a condition. */
export function ruleMatches(entry: string, condition: string): boolean {
  if (entry.endsWith("*")) return condition.startsWith(entry.slice(0, -1));
  return entry === condition || condition.startsWith(`${entry}@`);
}

// ---- block sweeps ------------------------------------------------------------------------------------------------

/** The blocks of a sweep point: [first, last) ranges as the block grammar writes them (interventions/intervention.ts). */
function sweepBlocks(kind: SweepKind, L: number, n: number, window: number): { selection: string; blocks: number[] } {
  const range = (a: number, b: number) => Array.from({ length: b - a }, (_, i) => a + i);
  switch (kind) {
    case "suffix":
      return { selection: `${L}..${n}`, blocks: range(L, n) };
    case "prefix":
      return { selection: `0..${L + 1}`, blocks: range(0, L + 1) };
    case "single":
      return { selection: String(L), blocks: [L] };
    case "window":
      return { selection: `${L}..${L + window}`, blocks: range(L, L + window) };
  }
}

/** The conditions a sweep condition stands for (see the header), as raw definitions with their `sweep` metadata. */
function expandSweep(
  o: Record<string, unknown>,
  path: string,
  blocks: string[] | undefined,
): { raw: Record<string, unknown>; sweep: ConditionSweep }[] {
  const sp = `${path}.sweep`;
  const s = F.obj(o.sweep, sp);
  F.only(s, sp, ["kind", "L", "window"]);
  const kind = F.oneOf(s, "kind", `${sp}.`, SWEEP_KINDS) ?? F.fail(`${sp}.kind`, `is required (${SWEEP_KINDS.join(", ")})`);
  if (s.window !== undefined && kind !== "window") F.fail(`${sp}.window`, `only goes with kind "window"`);
  const window = F.int(s, "window", `${sp}.`, 1) ?? DEFAULT_SWEEP_WINDOW;
  const family = F.str(o, "name", `${path}.`, { required: true, nonEmpty: true })!;
  if (!CONDITION_NAME_PATTERN.test(family)) F.fail(`${path}.name`, `"${family}" cannot name a folder (letters, digits, . _ + -)`);
  if (!blocks) {
    F.fail(
      sp,
      "a sweep needs the checkpoint's block count: read the experiment file (readExperiment), which takes it from <model>/transformer/config.json",
    );
  }
  const n = blocks.length;
  if (kind === "window" && window > n) F.fail(`${sp}.window`, `${window} is more than the model's ${n} blocks`);
  const last = kind === "window" ? n - window : n - 1;
  let Ls: number[];
  if (s.L === undefined || s.L === "all") Ls = Array.from({ length: last + 1 }, (_, i) => i);
  else if (Array.isArray(s.L) && s.L.length && s.L.every((x) => Number.isSafeInteger(x) && x >= 0)) {
    Ls = [...new Set(s.L as number[])].sort((a, b) => a - b);
    const bad = Ls.find((L) => L > last);
    if (bad !== undefined) {
      F.fail(
        `${sp}.L`,
        kind === "window"
          ? `${bad}: a window of ${window} from block ${bad} runs past the model's last block (${n - 1}); L goes up to ${last}`
          : `${bad} is beyond the model's blocks (0..${n - 1})`,
      );
    }
  } else F.fail(`${sp}.L`, `expected "all" or a non-empty list of block indices, got ${JSON.stringify(s.L)}`);
  const kindName = kind === "window" ? `window${window}` : kind;
  const single = (what: string) => {
    if (kind !== "single") F.fail(`${sp}.kind`, `${what} takes one block, so it sweeps with kind "single" only`);
  };
  return Ls.map((L) => {
    const { selection, blocks: chosen } = sweepBlocks(kind, L, n, window);
    const raw = structuredClone(o);
    delete raw.sweep;
    raw.name = `${family}@${kindName}-${L}`;
    let swept = 0;
    const setBlocks = (target: Record<string, unknown>, where: string) => {
      if (target.blocks !== undefined) F.fail(`${where}.blocks`, "is set by the sweep; leave it out");
      target.blocks = selection;
      swept++;
    };
    if (Array.isArray(raw.interventions)) {
      raw.interventions.forEach((iv: unknown, k: number) => {
        const where = `${path}.interventions[${k}]`;
        const x = F.obj(iv, where);
        if (x.type === "knockout") {
          if (Array.isArray(x.settings)) {
            x.settings.forEach((st: unknown, j: number) => setBlocks(F.obj(st, `${where}.settings[${j}]`), `${where}.settings[${j}]`));
          } else setBlocks(x, where);
        } else if (x.type === "lens" || x.type === "patch") {
          single(`a ${x.type}`);
          if (x.block !== undefined || x.tap !== undefined) F.fail(`${where}.block`, "is set by the sweep; leave it out");
          x.block = blocks[L];
          swept++;
        }
      });
    }
    if (raw.patch !== undefined) {
      const x = F.obj(raw.patch, `${path}.patch`);
      single("a patch");
      if (x.block !== undefined || x.tap !== undefined) F.fail(`${path}.patch.block`, "is set by the sweep; leave it out");
      x.block = blocks[L];
      swept++;
    }
    if (!swept) F.fail(sp, "the condition has no knockout, lens or patch whose blocks the sweep could choose");
    return { raw, sweep: { family, kind: kindName, L, blocks: chosen } };
  });
}

/** The checkpoint's block names from its transformer config.json, when it has one (no weights are read). */
export async function modelBlockNames(model: string): Promise<string[] | undefined> {
  const path = join(model, "transformer", "config.json");
  let raw: unknown;
  try {
    raw = JSON.parse(await Deno.readTextFile(path));
  } catch {
    return undefined; // a single-file checkpoint, or none: the block names are checked once it is loaded
  }
  try {
    return blockNames(parseFlux2Config(raw, path));
  } catch {
    return undefined; // the loader reports a bad config with its own message
  }
}

function parseJudge(v: unknown, conditions: Condition[], baseDir: string): JudgeSettings {
  const o = F.obj(v, "judge");
  F.only(o, "judge", ["provider", "url", "model", "maxTokens", "baseline", "t2iClean", "templates", "templateFiles", "questions"]);
  const p = "judge.";
  const provider = o.provider ?? undefined;
  if (provider !== undefined && provider !== "openai" && provider !== "anthropic" && provider !== "stub") {
    F.fail("judge.provider", `expected "openai", "anthropic" or "stub", got ${JSON.stringify(provider)}`);
  }
  const out: JudgeSettings = {
    provider: provider as JudgeProvider | undefined,
    url: F.str(o, "url", p, { nonEmpty: true }),
    model: F.str(o, "model", p, { nonEmpty: true }),
    maxTokens: F.int(o, "maxTokens", p, 1),
    baseline: F.str(o, "baseline", p, { nonEmpty: true }),
    t2iClean: F.str(o, "t2iClean", p, { nonEmpty: true }),
  };
  const known = (name: string) => conditions.some((x) => x.name === name);
  for (const k of ["baseline", "t2iClean"] as const) {
    if (out[k] !== undefined && !known(out[k]!)) F.fail(`judge.${k}`, `no condition is named "${out[k]}"`);
  }
  const own: QuestionTemplate[] = [];
  if (o.templates !== undefined) {
    if (!Array.isArray(o.templates)) F.fail("judge.templates", "expected a list of templates");
    own.push(...o.templates.map((t, i) => {
      try {
        // Stored without its origin: the definition is part of the manifest and is read back as written.
        const { origin: _o, ...parsed } = parseTemplate(t, `judge.templates[${i}]`);
        return parsed;
      } catch (e) {
        throw new Error(`experiment.${(e as Error).message}`);
      }
    }));
  }
  const files = names(o, "templateFiles", p);
  if (files) {
    out.templateFiles = files.map((f) => resolve(baseDir, f));
    for (const file of out.templateFiles) {
      let text: string;
      try {
        text = Deno.readTextFileSync(file);
      } catch (e) {
        F.fail("judge.templateFiles", `cannot read ${file}: ${(e as Error).message}`);
      }
      own.push(...parseTemplateLines(text!, file).map(({ origin: _o, ...t }) => t));
    }
  }
  let catalogue: Map<string, QuestionTemplate>;
  try {
    catalogue = templateCatalogue(own);
  } catch (e) {
    throw new Error(`experiment.judge: ${(e as Error).message}`);
  }
  for (const t of own) {
    for (const [i, im] of t.images.entries()) {
      const name = im.role.startsWith("condition:") ? im.role.slice("condition:".length) : undefined;
      if (name !== undefined && !known(name)) F.fail(`judge template ${t.id}.images[${i}].role`, `no condition is named "${name}"`);
    }
  }
  if (own.length) out.templates = own;
  if (o.questions !== undefined) {
    if (!Array.isArray(o.questions)) F.fail("judge.questions", "expected a list");
    out.questions = o.questions.map((q, i) => {
      const path = `judge.questions[${i}]`;
      const qo = F.obj(q, path);
      F.only(qo, path, ["template", "conditions", "families"]);
      const template = F.str(qo, "template", `${path}.`, { required: true, nonEmpty: true })!;
      if (!catalogue.has(template)) {
        F.fail(`${path}.template`, `unknown question template "${template}" (known: ${[...catalogue.keys()].join(", ")})`);
      }
      const conds = names(qo, "conditions", `${path}.`);
      for (const c of conds ?? []) {
        if (!conditions.some((x) => ruleMatches(c, x.name))) F.fail(`${path}.conditions`, `no condition is named "${c}"`);
      }
      return JSON.parse(JSON.stringify({ template, conditions: conds, families: names(qo, "families", `${path}.`) }));
    });
  }
  return JSON.parse(JSON.stringify(out));
}

export interface ParseOptions {
  /** The checkpoint's block names (modelBlockNames), which sweeps are expanded with. */
  blocks?: string[];
}

/** Check an experiment definition; relative paths are resolved against `baseDir`. Errors name the field. */
export function parseExperiment(raw: unknown, baseDir: string, options: ParseOptions = {}): Experiment {
  const o = F.obj(raw, "(root)");
  F.only(o, "", [
    "model",
    "tasks",
    "output",
    "refsRoot",
    "strictTasks",
    "steps",
    "width",
    "height",
    "guidance",
    "maxSequenceLength",
    "noise",
    "conditions",
    "judge",
  ]);
  const abs = (p: string | undefined) => p === undefined ? undefined : resolve(baseDir, p);
  const exp: Experiment = {
    model: abs(F.str(o, "model", "", { required: true, nonEmpty: true }))!,
    tasks: abs(F.str(o, "tasks", "", { required: true, nonEmpty: true }))!,
    output: abs(F.str(o, "output", "", { required: true, nonEmpty: true }))!,
    refsRoot: abs(F.str(o, "refsRoot", "", { nonEmpty: true })),
    strictTasks: F.bool(o, "strictTasks", ""),
    steps: F.int(o, "steps", "", 1),
    width: F.int(o, "width", "", 16),
    height: F.int(o, "height", "", 16),
    maxSequenceLength: sequenceLengthField(F, o, ""),
    conditions: [],
  };
  for (const k of ["width", "height"] as const) if (exp[k] !== undefined && exp[k]! % 16) F.fail(k, `${exp[k]} is not a multiple of 16`);
  exp.noise = F.oneOf(o, "noise", "", NOISE_SOURCES);
  if (o.guidance !== undefined) {
    if (typeof o.guidance !== "number" || !Number.isFinite(o.guidance)) {
      F.fail("guidance", `expected a number, got ${JSON.stringify(o.guidance)}`);
    }
    exp.guidance = o.guidance;
  }
  if (!Array.isArray(o.conditions) || o.conditions.length === 0) F.fail("conditions", "expected a non-empty list of conditions");
  const origin: number[] = [];
  exp.conditions = o.conditions.flatMap((v, i) => {
    const path = `conditions[${i}]`;
    const c = F.obj(v, path);
    if (c.sweep === undefined) {
      origin.push(i);
      return [parseCondition(c, path)];
    }
    F.only(c, path, [...CONDITION_FIELDS, "sweep"]);
    return expandSweep(c, path, options.blocks).map(({ raw, sweep }) => {
      origin.push(i);
      return { ...parseCondition({ ...raw, name: sweep.family }, path), name: raw.name as string, sweep };
    });
  });
  const seen = new Set<string>();
  for (const [k, c] of exp.conditions.entries()) {
    if (seen.has(c.name)) F.fail(`conditions[${origin[k]}].name`, `"${c.name}" is used twice`);
    seen.add(c.name);
  }
  if (o.judge !== undefined) exp.judge = parseJudge(o.judge, exp.conditions, baseDir);
  return JSON.parse(JSON.stringify(exp));
}

export async function readExperiment(path: string): Promise<LoadedExperiment> {
  const file = resolve(path);
  const raw = await readJsonFile<Record<string, unknown>>(file);
  try {
    // Sweeps are expanded with the checkpoint's block count; only they need it.
    const sweeps = Array.isArray(raw?.conditions) && raw.conditions.some((c) => c && typeof c === "object" && "sweep" in c);
    let blocks: string[] | undefined;
    if (sweeps && typeof raw.model === "string") {
      const model = resolve(dirname(file), raw.model);
      blocks = await modelBlockNames(model);
      if (!blocks) {
        throw new Error(
          `experiment.model: a sweep needs the block count from ${join(model, "transformer", "config.json")}, which cannot be read`,
        );
      }
    }
    return { file, experiment: parseExperiment(raw, dirname(file), { blocks }), raw };
  } catch (e) {
    throw new Error(`${path}: ${(e as Error).message}`);
  }
}

/** What determines the outputs: the definition without its paths and judge, the task file's bytes and the
 * checkpoint's fingerprint — so machines that keep the model or the task file in different places agree. Runs and
 * shards with different hashes are never mixed. */
export async function experimentHash(loaded: LoadedExperiment): Promise<{ hash: string; tasksSha256: string; fingerprint: string }> {
  const { output: _o, judge: _j, model: _m, tasks: _t, refsRoot: _r, ...definition } = loaded.experiment;
  let tasksSha256: string;
  try {
    tasksSha256 = await fileSha256(loaded.experiment.tasks);
  } catch (e) {
    throw new Error(`task file ${loaded.experiment.tasks}: cannot read it: ${(e as Error).message}`);
  }
  let fingerprint: string;
  try {
    fingerprint = await checkpointFingerprint(loaded.experiment.model);
  } catch (e) {
    throw new Error(`model folder ${loaded.experiment.model}: cannot read it: ${(e as Error).message}`);
  }
  const hash = await sha256Hex(canonicalJson({ definition, tasksSha256, fingerprint }));
  return { hash: `sha256:${hash}`, tasksSha256: `sha256:${tasksSha256}`, fingerprint };
}

export function isPatchCondition(c: Condition): boolean {
  return c.patch !== undefined;
}

/** A patch condition on a task that the pairing rule gives no source. */
export class UnpairedTaskError extends Error {}

function renderPrompt(template: string, task: Task, where: string): string {
  return template.replace(/\{([a-zA-Z_.]+)\}/g, (_m, key: string) => {
    if (key === "instruction") return task.instruction;
    if (key.startsWith("metadata.")) {
      const v = task.metadata[key.slice("metadata.".length)];
      if (v === undefined || v === null) throw new Error(`${where}: task ${task.task_id} has no ${key}`);
      return String(v);
    }
    throw new Error(`${where}: unknown placeholder {${key}} (use {instruction} or {metadata.KEY})`);
  });
}

export interface SpecContext {
  /** Patch sources by target task_id. */
  pairs: Map<string, TaskPair>;
  /** The reference images of a task (its refs, or its generated synthetic reference). */
  refsOf: (task: Task) => string[];
}

/** The token group of a text subset of a lengthened prompt: its characters in `prompt` (the condition's rendered
 * prompt), from the task's padding dose-response metadata. */
export function textSpanGroup(task: Task, prompt: string, mode: TextSpanMode): string {
  const base = task.metadata.padding_base_instruction;
  if (typeof base !== "string") {
    throw new Error(
      `"${mode}" needs the task's metadata.padding_base_instruction, and task ${task.task_id} has none ` +
        `(padding dose-response tasks have it: deno task tasks padding)`,
    );
  }
  if (!task.instruction.startsWith(base)) {
    throw new Error(`"${mode}": the instruction of task ${task.task_id} does not start with its metadata.padding_base_instruction`);
  }
  const at = prompt.indexOf(task.instruction);
  if (at < 0) throw new Error(`"${mode}": the condition's prompt does not hold the task's instruction`);
  const split = at + base.length, end = at + task.instruction.length;
  return mode === "instruction_only" ? `text[chars:${at}..${split}]` : `text[chars:${split}..${end}]`;
}

/** A group expression (parts joined by "+") with the token modes replaced by their groups. */
function withTextSpans(groups: string, span: (mode: TextSpanMode) => string): string {
  return groups.split("+").map((part) => isTextSpanMode(part.trim()) ? span(part.trim() as TextSpanMode) : part).join("+");
}

/** Token modes in knockout sides and lens and patch groups, resolved for one task. */
function resolveTextSpans(interventions: InterventionSpec[], span: (mode: TextSpanMode) => string): void {
  const setting = (s: string) => s.split("->").map((side) => withTextSpans(side, span)).join("->");
  for (const iv of interventions) {
    if (iv.type === "knockout") {
      if (iv.setting !== undefined) iv.setting = setting(iv.setting);
      for (const k of iv.settings ?? []) k.setting = setting(k.setting);
    } else if (iv.type === "lens" && iv.group !== undefined) iv.group = withTextSpans(iv.group, span);
    else if (iv.type === "patch" && iv.group !== undefined) iv.group = withTextSpans(iv.group, span);
  }
}

/** The RunSpec of one task under one condition. */
export function conditionToSpec(exp: Experiment, cond: Condition, task: Task, ctx: SpecContext): RunSpec {
  const where = `condition ${cond.name}`;
  const refs = cond.textOnly ? [] : ctx.refsOf(task);
  const prompt = renderPrompt(cond.prompt ?? "{instruction}", task, where);
  const interventions: InterventionSpec[] = structuredClone(cond.interventions ?? []);
  if (cond.patch) {
    const pair = ctx.pairs.get(task.task_id);
    if (cond.patch.pairing === "task" && !task.patch_source) {
      throw new UnpairedTaskError(`the task names no patch source (pairing "task" reads it from pair task files: deno task tasks pairs)`);
    }
    if (!pair) {
      throw new UnpairedTaskError(`no other task has the instruction "${task.instruction}" (${task.edit_type}) with a different reference`);
    }
    const { pairing: _p, seedOffset: _s, sourceSteps, ...fields } = cond.patch;
    const sourceSeed = cond.patch.seedOffset === undefined ? pair.sourceSeed : task.noise_seed + cond.patch.seedOffset;
    // A token mode names the rows as a group (the source shares the instruction, so the same characters).
    const mode = isTextSpanMode(fields.mode) ? { mode: "group", group: fields.mode } : {};
    interventions.push({
      type: "patch",
      ...fields,
      ...mode,
      source: { prompt: pair.source.instruction, refs: ctx.refsOf(pair.source), seed: sourceSeed, steps: sourceSteps },
    } as PatchSpecJson);
  }
  const raw: RunSpec = {
    model: exp.model,
    prompt,
    refs,
    width: exp.width ?? task.width,
    height: exp.height ?? task.height,
    steps: cond.steps ?? exp.steps,
    guidance: exp.guidance,
    maxSequenceLength: exp.maxSequenceLength,
    noise: exp.noise,
    seed: task.noise_seed + (cond.seedOffset ?? 0),
    captures: cond.captures,
    interventions,
    attentionFlow: cond.attentionFlow,
    effects: cond.effects,
    control: cond.control,
  };
  try {
    resolveTextSpans(interventions, (mode) => textSpanGroup(task, prompt, mode));
    // Validated, then without its undefined fields (as it is written to spec.json).
    return JSON.parse(JSON.stringify(parseSpec(JSON.parse(JSON.stringify(raw)))));
  } catch (e) {
    throw new Error(`task ${task.task_id}, ${where}: ${(e as Error).message}`);
  }
}
