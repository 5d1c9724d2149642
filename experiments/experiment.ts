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
// (no reference images), steps, interventions (knockout / lens / patch with an explicit source, as in a RunSpec),
// patch (a patch whose source run is chosen by the pairing rule: "shift", see generators.ts, or "task", the source a
// pair task file names on each line, see pairings.ts), captures.
// Top-level overrides: steps, width, height (every task), guidance, noise ("torch-cpu" draws as torch.randn on a CPU
// generator); refsRoot (root of the task file's relative paths);
// strictTasks (refuse a task file with a malformed line instead of skipping it).

import { dirname, resolve } from "node:path";
import { type CaptureSpec, type InterventionSpec, parseSpec, type PatchSpecJson, type RunSpec } from "../studies/spec.ts";
import { checkpointFingerprint } from "../weights/fingerprint.ts";
import { NOISE_SOURCES, type NoiseSource } from "../model/pipeline.ts";
import { canonicalJson, fileSha256, readJsonFile, sha256Hex } from "./files.ts";
import { PAIRING_RULES, type PairingRule, type TaskPair } from "./generators.ts";
import { parseTemplate, parseTemplateLines, type QuestionTemplate, templateCatalogue } from "./judge_templates.ts";
import type { Task } from "./tasks.ts";
import { JsonFields } from "../studies/json_fields.ts";

/** A patch condition: a patch spec whose source run is chosen per task by the pairing rule. */
export interface PatchCondition extends Omit<PatchSpecJson, "type" | "source"> {
  /** Steps of the source run (default: the condition's). */
  sourceSteps?: number;
  pairing?: PairingRule;
  /** The source run's seed is the target's plus this (default 1). */
  seedOffset?: number;
}

export interface Condition {
  name: string;
  prompt?: string;
  textOnly?: boolean;
  steps?: number;
  interventions?: InterventionSpec[];
  patch?: PatchCondition;
  captures?: CaptureSpec[];
}

export interface JudgeQuestionRule {
  template: string;
  /** Conditions asked (default all): names, or a prefix ending in "*" ("ko_ref_text@*" for a whole sweep). */
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
  const probe = Object.fromEntries(specFields.filter((k) => o[k] !== undefined).map((k) => [k, o[k]]));
  const spec = viaSpecParser(
    { interventions: [{ type: "patch", ...probe, source: {} } as PatchSpecJson] },
    (m) => m.replace(/^spec\.interventions\[0\]/, `experiment.${path}`),
  );
  const parsed = spec.interventions![0] as PatchSpecJson;
  const { type: _t, source: _s, ...fields } = parsed;
  return JSON.parse(JSON.stringify({ ...fields, sourceSteps, pairing, seedOffset }));
}

function parseCondition(v: unknown, i: number): Condition {
  const path = `conditions[${i}]`;
  const o = F.obj(v, path);
  F.only(o, path, ["name", "prompt", "textOnly", "steps", "interventions", "patch", "captures"]);
  const p = `${path}.`;
  const name = F.str(o, "name", p, { required: true, nonEmpty: true })!;
  if (!CONDITION_NAME_PATTERN.test(name)) F.fail(`${path}.name`, `"${name}" cannot name a folder (letters, digits, . _ + -)`);
  const cond: Condition = {
    name,
    prompt: F.str(o, "prompt", p, { nonEmpty: true }),
    textOnly: F.bool(o, "textOnly", p),
    steps: F.int(o, "steps", p, 1),
  };
  if (o.interventions !== undefined || o.captures !== undefined) {
    const spec = viaSpecParser(
      { interventions: o.interventions as InterventionSpec[], captures: o.captures as CaptureSpec[] },
      (m) => m.replace(/^spec\./, `experiment.${path}.`),
    );
    cond.interventions = spec.interventions;
    cond.captures = spec.captures;
  }
  if (o.patch !== undefined) {
    cond.patch = parsePatch(o.patch, `${path}.patch`);
    if (cond.interventions?.some((iv) => iv.type === "lens")) F.fail(`${path}.patch`, "a lens run takes no patch");
  }
  return JSON.parse(JSON.stringify(cond));
}

/** Whether a question rule's condition entry (a name, or a prefix ending in "*") covers a condition. */
export function ruleMatches(entry: string, condition: string): boolean {
  return entry.endsWith("*") ? condition.startsWith(entry.slice(0, -1)) : entry === condition;
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

/** Check an experiment definition; relative paths are resolved against `baseDir`. Errors name the field. */
export function parseExperiment(raw: unknown, baseDir: string): Experiment {
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
  exp.conditions = o.conditions.map(parseCondition);
  const seen = new Set<string>();
  for (const [i, c] of exp.conditions.entries()) {
    if (seen.has(c.name)) F.fail(`conditions[${i}].name`, `"${c.name}" is used twice`);
    seen.add(c.name);
  }
  if (o.judge !== undefined) exp.judge = parseJudge(o.judge, exp.conditions, baseDir);
  return JSON.parse(JSON.stringify(exp));
}

export async function readExperiment(path: string): Promise<LoadedExperiment> {
  const file = resolve(path);
  const raw = await readJsonFile<Record<string, unknown>>(file);
  try {
    return { file, experiment: parseExperiment(raw, dirname(file)), raw };
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

/** The RunSpec of one task under one condition. */
export function conditionToSpec(exp: Experiment, cond: Condition, task: Task, ctx: SpecContext): RunSpec {
  const where = `condition ${cond.name}`;
  const refs = cond.textOnly ? [] : ctx.refsOf(task);
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
    interventions.push({
      type: "patch",
      ...fields,
      source: { prompt: pair.source.instruction, refs: ctx.refsOf(pair.source), seed: sourceSeed, steps: sourceSteps },
    } as PatchSpecJson);
  }
  const raw: RunSpec = {
    model: exp.model,
    prompt: renderPrompt(cond.prompt ?? "{instruction}", task, where),
    refs,
    width: exp.width ?? task.width,
    height: exp.height ?? task.height,
    steps: cond.steps ?? exp.steps,
    guidance: exp.guidance,
    noise: exp.noise,
    seed: task.noise_seed,
    captures: cond.captures,
    interventions,
  };
  try {
    // Validated, then without its undefined fields (as it is written to spec.json).
    return JSON.parse(JSON.stringify(parseSpec(JSON.parse(JSON.stringify(raw)))));
  } catch (e) {
    throw new Error(`task ${task.task_id}, ${where}: ${(e as Error).message}`);
  }
}
