// Shortcuts that build an experiment spec from flags and run it: knockout, patch, lens, capture.
// `--print-spec` prints the spec instead of running it (to save and edit for `deno task run`).

import { parseArgs } from "node:util";
import { type CaptureSpec, type InterventionSpec, type KnockoutSettingSpec, parseSpec, type RunSpec } from "../studies/spec.ts";
import { defaultOut, runSpecToFolder } from "./experiment_io.ts";
import { integerOption, numberOption, UsageError } from "./common.ts";

const DEFAULT_MODEL = "tests/fixtures/klein-tiny/model";

const COMMON = `common options:
  --model DIR          pipeline folder (default: ${DEFAULT_MODEL}, a tiny random checkpoint)
  --prompt TEXT        the instruction (required)
  --ref IMG            a reference image (repeatable, in order)
  --width N --height N output size, multiples of 16 (default: first reference's size, else 1024)
  --steps N            denoising steps (default 4 for distilled checkpoints)
  --seed N             noise seed (default 0)      --latents FILE   initial latents (safetensors)
  --max-sequence-length N  text rows the prompt is padded to (default 512; every run of the command)
  --capture TAP[@GROUP]  capture a tap point's rows, e.g. double.1.txt@text[content] (repeatable)
  --capture-budget MIB  host memory for captured rows not yet written to --out (default 4096)
  --out DIR            output folder (default out/<command>-<time>)   --overwrite
  --print-spec         print the spec as JSON and stop`;

const EFFECTS = `effects against the baseline (the same run without the intervention; for the lens, its target run
without the lens patch), written as effects.json with baseline.png:
  --effects            per block and step, the relative L2 change and cosines of the text and image rows`;
const CONTROL = `
  --control SEED       also a control run: each setting's query group replaced by a seeded random subset of
                       text[pad] of the same size, with its own effects (control.png); implies --effects`;

const HELP: Record<string, string> = {
  knockout: `usage: deno task knockout --prompt TEXT --ref IMG --setting "A->B" [--blocks SEL] [--knockout-steps SEL]

Attention knockout: queries in group B may not read keys in group A, in the selected blocks and steps.
Groups: text, text[content], text[scaffold], text[pad], text[padding], text[i..j], image, ref, ref[k]; join with +.
Blocks: all, double, single, 3, 0..4, first:k, last:k, window:i:k, double.2 (comma-separated).
  --setting "A->B"     repeatable: several settings in one run cut the union of their edges
  --blocks SEL         default all        --knockout-steps SEL   default all
                       given after a --setting, they apply to that setting; given before the first, to every
                       setting without its own. The paper's split schedule:
                       --setting "ref->text" --blocks 0..16 --setting "ref->image" --blocks 16..32

${EFFECTS}${CONTROL}

${COMMON}

example: deno task knockout --prompt "draw a couch in this color" --ref tests/fixtures/klein-tiny/images/ref0_80x64.png --setting "ref->text[padding]"`,
  patch: `usage: deno task patch --prompt TEXT --ref IMG --source-ref IMG --block NAME [--mode all|padding_only|content_only]

I2I-to-I2I patching: the text rows of a block's output in this (target) run are replaced, at each step k, by the
same rows of a source run at step k. The source run is this run with --source-* overrides.
  --block NAME         e.g. double.1 or single.3        --mode M   all (default), padding_only, content_only
  --group G            patch this token group instead of a mode
  --op replace|add     add = steering: rows += alpha · source rows      --alpha A   default 1
  --schedule per-step|fixed   --source-step N (with fixed)
  --source-prompt TEXT --source-ref IMG (repeatable) --source-seed N --source-steps N

${EFFECTS}

${COMMON}

example: deno task patch --prompt "draw a couch in this color" --ref tests/fixtures/klein-tiny/images/ref1_64x80.png --source-ref tests/fixtures/klein-tiny/images/ref0_80x64.png --block double.1 --mode padding_only`,
  lens: `usage: deno task lens --prompt TEXT --ref IMG --block NAME [--lens-mode diagonal|input_to_block0]

T2I lens: run the edit (the source, --source-steps steps, default 1), take a block's text rows, and decode them
through a text-to-image run with --target-prompt (default ""): diagonal = they replace the same block's text rows;
input_to_block0 = they replace the text input of the first block at every step.
  --block NAME  --lens-mode M  --source-steps N  --source-step N  --target-steps N  --target-prompt TEXT
  --target-seed-offset N   the target's seed is the source's + N (default 1, the paper's convention)
  --group G            decode only these text rows: all, padding_only, content_only or a group, resolved on the
                       source's prompt and copied to the same positions of the target

${EFFECTS}

${COMMON}

example: deno task lens --prompt "draw a couch in this color" --ref tests/fixtures/klein-tiny/images/ref0_80x64.png --block single.0`,
  capture: `usage: deno task capture --prompt TEXT [--ref IMG] --capture TAP[@GROUP] [--capture-steps SEL]

Runs a generation and writes the selected rows of the tap points, per step, to captures.safetensors with an index
(captures.json). Taps: double.N.txt, double.N.img, single.N, context_embedder, x_embedder, <block>.attn.q|k|v|out.
  --capture-steps SEL  default all

${COMMON}

example: deno task capture --prompt "draw a couch in this color" --ref tests/fixtures/klein-tiny/images/ref0_80x64.png --capture double.1.txt@text[content]`,
};

function intOpt(v: string | undefined, name: string): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isInteger(n)) throw new Error(`--${name} expects an integer, got "${v}"`);
  return n;
}

function parseCapture(v: string, steps?: string): CaptureSpec {
  const at = v.indexOf("@");
  return at < 0 ? { tap: v, steps } : { tap: v.slice(0, at), group: v.slice(at + 1), steps };
}

/** Knockout settings from the command line in order: `--blocks`/`--knockout-steps` after a `--setting` belong to
 * it; before the first `--setting` they are the default of every setting. */
function knockoutSettings(tokens: NonNullable<ReturnType<typeof parseArgs>["tokens"]>): KnockoutSettingSpec[] {
  const settings: KnockoutSettingSpec[] = [];
  const defaults: { blocks?: string; steps?: string } = {};
  for (const t of tokens) {
    if (t.kind !== "option" || typeof t.value !== "string") continue;
    const current = settings[settings.length - 1];
    if (t.name === "setting") settings.push({ setting: t.value });
    else if (t.name === "blocks" || t.name === "knockout-steps") {
      const key = t.name === "blocks" ? "blocks" : "steps";
      const target = current ?? defaults;
      if (target[key] !== undefined) {
        throw new UsageError(`--${t.name} is given twice for ${current ? `setting "${current.setting}"` : "every setting"}`);
      }
      target[key] = t.value;
    }
  }
  return settings.map((s) => ({ setting: s.setting, blocks: s.blocks ?? defaults.blocks, steps: s.steps ?? defaults.steps }));
}

export async function main(args: string[], command: string): Promise<number> {
  const { values, tokens } = parseArgs({
    args,
    tokens: true,
    options: {
      model: { type: "string" },
      prompt: { type: "string" },
      ref: { type: "string", multiple: true },
      width: { type: "string" },
      height: { type: "string" },
      steps: { type: "string" },
      seed: { type: "string" },
      "max-sequence-length": { type: "string" },
      latents: { type: "string" },
      capture: { type: "string", multiple: true },
      "capture-steps": { type: "string" },
      "capture-budget": { type: "string" },
      out: { type: "string" },
      overwrite: { type: "boolean" },
      "print-spec": { type: "boolean" },
      help: { type: "boolean", short: "h" },
      effects: { type: "boolean" },
      control: { type: "string" },
      setting: { type: "string", multiple: true },
      blocks: { type: "string", multiple: true },
      "knockout-steps": { type: "string", multiple: true },
      block: { type: "string" },
      mode: { type: "string" },
      group: { type: "string" },
      op: { type: "string" },
      alpha: { type: "string" },
      schedule: { type: "string" },
      "source-step": { type: "string" },
      "source-prompt": { type: "string" },
      "source-ref": { type: "string", multiple: true },
      "source-seed": { type: "string" },
      "source-steps": { type: "string" },
      "lens-mode": { type: "string" },
      "target-steps": { type: "string" },
      "target-prompt": { type: "string" },
      "target-seed-offset": { type: "string" },
    },
  });
  if (values.help) {
    console.log(HELP[command]);
    return 0;
  }
  if (values.prompt === undefined) {
    console.error(`--prompt is required\n\n${HELP[command]}`);
    return 2;
  }
  if (command === "capture" && (values.effects || values.control !== undefined)) {
    throw new UsageError(`--${values.effects ? "effects" : "control"} compares an intervention run with its baseline; capture runs none`);
  }
  if (values.control !== undefined && command !== "knockout") {
    throw new UsageError(`--control replaces knockout settings; it goes with deno task knockout, not ${command}`);
  }
  const control = integerOption("control", values.control, 0);
  const interventions: InterventionSpec[] = [];
  if (command === "knockout") {
    if (!values.setting?.length) throw new UsageError(`--setting "A->B" is required (e.g. --setting "ref->text")`);
    interventions.push({ type: "knockout", settings: knockoutSettings(tokens!) });
  } else if (command === "patch") {
    if (!values.block) throw new UsageError("--block is required (e.g. --block double.1)");
    interventions.push({
      type: "patch",
      block: values.block,
      mode: values.group ? "group" : (values.mode as "all" | "padding_only" | "content_only" | undefined) ?? "all",
      group: values.group,
      op: values.op as "replace" | "add" | undefined,
      alpha: values.alpha === undefined ? undefined : Number(values.alpha),
      schedule: values.schedule as "per-step" | "fixed" | undefined,
      sourceStep: intOpt(values["source-step"], "source-step"),
      source: {
        prompt: values["source-prompt"],
        refs: values["source-ref"],
        seed: intOpt(values["source-seed"], "source-seed"),
        steps: intOpt(values["source-steps"], "source-steps"),
      },
    });
  } else if (command === "lens") {
    if (!values.block) throw new UsageError("--block is required (e.g. --block single.0)");
    interventions.push({
      type: "lens",
      block: values.block,
      mode: (values["lens-mode"] as "diagonal" | "input_to_block0" | undefined) ?? "diagonal",
      sourceSteps: intOpt(values["source-steps"], "source-steps"),
      sourceStep: intOpt(values["source-step"], "source-step"),
      targetSteps: intOpt(values["target-steps"], "target-steps"),
      targetPrompt: values["target-prompt"],
      targetSeedOffset: intOpt(values["target-seed-offset"], "target-seed-offset"),
      group: values.group,
    });
  } else if (command === "capture" && !values.capture?.length) {
    throw new UsageError("--capture TAP[@GROUP] is required (e.g. --capture double.1.txt@text[content])");
  }
  const raw: RunSpec = {
    model: values.model ?? DEFAULT_MODEL,
    prompt: values.prompt,
    refs: values.ref ?? [],
    width: intOpt(values.width, "width"),
    height: intOpt(values.height, "height"),
    steps: intOpt(values.steps, "steps"),
    seed: values.latents ? undefined : intOpt(values.seed, "seed") ?? 0,
    maxSequenceLength: intOpt(values["max-sequence-length"], "max-sequence-length"),
    latents: values.latents,
    captures: values.capture?.map((c) => parseCapture(c, values["capture-steps"])),
    captureBudget: numberOption("capture-budget", values["capture-budget"]),
    interventions,
    effects: values.effects || control !== undefined ? true : undefined,
    control: control === undefined ? undefined : { seed: control },
  };
  // Drop undefined fields so the printed spec is clean, then validate like any spec file.
  const spec = parseSpec(JSON.parse(JSON.stringify(raw)));
  if (values["print-spec"]) {
    console.log(JSON.stringify(spec, null, 2));
    return 0;
  }
  await runSpecToFolder(spec, values.out ?? defaultOut(command), values.overwrite ?? false);
  return 0;
}
