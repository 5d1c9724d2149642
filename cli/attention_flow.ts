// `deno task attention-flow`: a run with an attention flow (and optionally a knockout in the same run), built as an
// experiment spec and executed through the same spec → study → output-folder path as `deno task run`.

import { parseArgs } from "node:util";
import { type AttentionFlowSpec, type InterventionSpec, parseSpec, type RunSpec } from "../studies/spec.ts";
import { defaultOut, runSpecToFolder } from "./experiment_io.ts";
import { integerOption, numberOption, parseOrUsageError, sideOption, UsageError } from "./common.ts";

const DEFAULT_MODEL = "tests/fixtures/klein-tiny/model";

const HELP = `usage: deno task attention-flow --prompt TEXT [--ref IMG] [--blocks SEL] [--flow-steps SEL] [options]

Attention flow by token group: for the chosen blocks and steps, the softmax probability mass each query group sends
to each key group, per head and averaged over heads, computed on the GPU from the attention's own q and k (after
RoPE, under any knockout of the run). Writes attention_flow.json (groups with their sizes; per block and step the
tables [heads + 1][query groups][key groups], the last slice the mean over all heads) and attention_flow.safetensors
(the same tables, and the per-key masses of --token-group) next to image.png, spec.json and run.json.

flow:
  --blocks SEL           all (default), double, single, 3, 0..4, first:k, last:k, window:i:k, double.2 (comma-separated)
  --flow-steps SEL       denoising steps read back: all (default), 0,2 or 1..3
  --query-groups LIST    token groups of the queries, comma-separated (commas inside [...] belong to the group);
                         default text[content],text[scaffold],text[pad],image,ref[0],ref[1],… (groups empty in
                         this run are dropped with a warning; groups of one side must not overlap; at most 16)
  --key-groups LIST      the same for the keys (default the same groups: they cover the sequence, so rows sum to 1)
  --heads LIST           heads whose own tables are kept, e.g. 0,5 (default all; the mean over all heads is kept)
  --token-group G        one of the query groups: also keep the mass each key receives from it
  --forward cond|uncond  which forward of a guided step (default cond)
knockout in the same run (the flow sees its mask):
  --setting "A->B"       queries in B may not read keys in A (repeatable)
  --knockout-blocks SEL  default all        --knockout-steps SEL   default all
effects of the knockout (with --setting), written as effects.json with baseline.png:
  --effects              also run the baseline (this run without the knockout) and record, per block and step, the
                         relative L2 change and cosines of the text and image rows and the change of the flow tables
  --control SEED         also a control run: each setting's query group replaced by a seeded random subset of
                         text[pad] of the same size, with its own effects (control.png); implies --effects
run:
  --model DIR            pipeline folder (default: ${DEFAULT_MODEL}, a tiny random checkpoint)
  --prompt TEXT          the instruction (required)      --ref IMG   a reference image (repeatable, in order)
  --width N --height N   output size, multiples of 16    --steps N   denoising steps
  --seed N               noise seed (default 0)          --latents FILE   initial latents (safetensors)
  --max-sequence-length N  text rows the prompt is padded to (default 512)
  --guidance G --base    classifier-free guidance, running the checkpoint as a base (non-distilled) model
  --out DIR              output folder (default out/attention-flow-<time>)   --overwrite
  --print-spec           print the spec as JSON and stop (run it later with deno task run)

example: deno task attention-flow --prompt "draw a couch in this color" --ref tests/fixtures/klein-tiny/images/ref0_80x64.png --blocks all --flow-steps 0 --token-group text[content] --setting "ref->text[padding]"`;

/** Split a comma-separated list of token groups, keeping commas inside brackets (text[1,2,3]) with their group. */
export function splitGroupList(value: string, flag: string): string[] {
  const items: string[] = [];
  let depth = 0, start = 0;
  for (let i = 0; i <= value.length; i++) {
    const c = value[i];
    if (c === "[") depth++;
    else if (c === "]") depth--;
    if (depth < 0) throw new UsageError(`--${flag}: unbalanced "]" in ${JSON.stringify(value)}`);
    if (i === value.length || (c === "," && depth === 0)) {
      const item = value.slice(start, i).trim();
      if (!item) throw new UsageError(`--${flag}: empty group in ${JSON.stringify(value)}`);
      items.push(item);
      start = i + 1;
    }
  }
  if (depth !== 0) throw new UsageError(`--${flag}: unbalanced "[" in ${JSON.stringify(value)}`);
  return items;
}

function headList(value: string | undefined): number[] | undefined {
  if (value === undefined) return undefined;
  return value.split(",").map((h) => integerOption("heads", h.trim(), 0)!);
}

export async function main(args: string[]): Promise<number> {
  const { values } = parseOrUsageError(() =>
    parseArgs({
      args,
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
        guidance: { type: "string" },
        base: { type: "boolean" },
        blocks: { type: "string" },
        "flow-steps": { type: "string" },
        "query-groups": { type: "string" },
        "key-groups": { type: "string" },
        heads: { type: "string" },
        "token-group": { type: "string" },
        forward: { type: "string" },
        setting: { type: "string", multiple: true },
        "knockout-blocks": { type: "string" },
        "knockout-steps": { type: "string" },
        effects: { type: "boolean" },
        control: { type: "string" },
        out: { type: "string" },
        overwrite: { type: "boolean" },
        "print-spec": { type: "boolean" },
        help: { type: "boolean", short: "h" },
      },
    })
  );
  if (values.help) {
    console.log(HELP);
    return 0;
  }
  if (values.prompt === undefined) throw new UsageError("--prompt is required");
  const forward = values.forward;
  if (forward !== undefined && forward !== "cond" && forward !== "uncond") {
    throw new UsageError(`--forward must be cond or uncond, got ${JSON.stringify(forward)}`);
  }
  if (!values.setting?.length && (values["knockout-blocks"] !== undefined || values["knockout-steps"] !== undefined)) {
    throw new UsageError(`--knockout-blocks and --knockout-steps go with a --setting "A->B"`);
  }
  if (!values.setting?.length && (values.effects || values.control !== undefined)) {
    throw new UsageError(`--${values.effects ? "effects" : "control"} measures a knockout against its baseline; give a --setting "A->B"`);
  }
  const control = integerOption("control", values.control, 0);
  if (values.guidance !== undefined && !values.base) throw new UsageError("--guidance needs --base (a distilled checkpoint runs unguided)");
  const flow: AttentionFlowSpec = {
    blocks: values.blocks,
    steps: values["flow-steps"],
    queryGroups: values["query-groups"] === undefined ? undefined : splitGroupList(values["query-groups"], "query-groups"),
    keyGroups: values["key-groups"] === undefined ? undefined : splitGroupList(values["key-groups"], "key-groups"),
    heads: headList(values.heads),
    tokenGroup: values["token-group"],
    forward,
  };
  const interventions: InterventionSpec[] = values.setting?.length
    ? [{
      type: "knockout",
      settings: values.setting.map((setting) => ({ setting, blocks: values["knockout-blocks"], steps: values["knockout-steps"] })),
    }]
    : [];
  const raw: RunSpec = {
    model: values.model ?? DEFAULT_MODEL,
    prompt: values.prompt,
    refs: values.ref ?? [],
    width: sideOption("width", values.width),
    height: sideOption("height", values.height),
    steps: integerOption("steps", values.steps, 1),
    guidance: numberOption("guidance", values.guidance),
    distilled: values.base ? false : undefined,
    seed: values.latents ? undefined : integerOption("seed", values.seed, 0) ?? 0,
    maxSequenceLength: integerOption("max-sequence-length", values["max-sequence-length"], 1),
    latents: values.latents,
    interventions,
    attentionFlow: flow,
    effects: values.effects || control !== undefined ? true : undefined,
    control: control === undefined ? undefined : { seed: control },
  };
  // Drop undefined fields so the printed spec is clean, then validate like any spec file.
  const spec = parseSpec(JSON.parse(JSON.stringify(raw)));
  if (values["print-spec"]) {
    console.log(JSON.stringify(spec, null, 2));
    return 0;
  }
  await runSpecToFolder(spec, values.out ?? defaultOut("attention-flow"), values.overwrite ?? false);
  return 0;
}
