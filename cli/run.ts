// `deno task run <spec.json> [--out DIR] [--overwrite]`

import { parseArgs } from "node:util";
import { readSpec } from "../studies/spec.ts";
import { defaultOut, runSpecToFolder } from "./experiment_io.ts";

const HELP = `usage: deno task run <spec.json> [--out DIR] [--overwrite]

Runs the experiment a spec describes — checkpoint, prompt, references, size, steps, seed or initial latents,
captures and interventions (knockout, patch, lens) — and writes into the output folder:
  image.png          the result (for a lens: the text-to-image target)
  source.png         the run patch rows came from, or the editing run the lens decoded
  captures.*         captured rows (safetensors) and their index (JSON), when the spec asks for captures
  spec.json          the spec as it ran, with defaults filled in, the version and the checkpoint fingerprint:
                     \`deno task run out/x/spec.json --out out/y\` regenerates the same image
  run.json           sizes, stage times, token groups and warnings
Paths inside a spec are relative to the current folder. Everything is checked before any GPU work; a failed
run leaves no output folder behind.

  --out DIR      output folder (default: the spec's "output", else out/run-<time>)
  --overwrite    replace a non-empty output folder

example spec:
  { "model": "tests/fixtures/klein-tiny/model", "prompt": "draw a couch in this color",
    "refs": ["tests/fixtures/klein-tiny/images/ref0_80x64.png"], "steps": 4, "seed": 1,
    "interventions": [ { "type": "knockout", "setting": "ref->text[padding]", "blocks": "all" } ],
    "captures": [ { "tap": "double.1.txt", "group": "text[content]" } ] }`;

export async function main(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: { out: { type: "string" }, overwrite: { type: "boolean" }, help: { type: "boolean", short: "h" } },
  });
  if (values.help) {
    console.log(HELP);
    return 0;
  }
  if (positionals.length !== 1) {
    console.error(HELP);
    return 2;
  }
  const spec = await readSpec(positionals[0]);
  await runSpecToFolder(spec, values.out ?? spec.output ?? defaultOut("run"), values.overwrite ?? false);
  return 0;
}
