// `deno task conformance <dir> [--only kind,…] [--case name,…]`

import { parseArgs } from "node:util";
import { runConformance } from "../conformance/runner.ts";
import { conformanceKinds } from "../conformance/kinds.ts";
import { releaseShared } from "../conformance/models.ts";

const HELP = `usage: deno task conformance <golden-dir> [--only kind,…] [--case name,…]

Replays every case of <golden-dir>/cases.json (the reference's inputs and outputs) with kleinscope and compares
each expected tensor under the reference's tolerances. Prints one row per case and closes with
"N passed, M failed, K skipped" (skipped = kinds this build does not implement). Exit code 1 if any case failed.

  --only kinds   comma-separated kinds to run (schedule, text_encoder, vae_encode, vae_decode, dit_forward,
                 pipeline, knockout, t2i_lens, i2i_patch)
  --case names   comma-separated case names to run

example: deno task conformance tests/fixtures/klein-tiny --only schedule,dit_forward`;

export async function main(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: { only: { type: "string" }, case: { type: "string" }, help: { type: "boolean", short: "h" } },
  });
  if (values.help) {
    console.log(HELP);
    return 0;
  }
  if (positionals.length !== 1) {
    console.error(HELP);
    return 2;
  }
  const split = (s?: string) => (s ? s.split(",").map((x) => x.trim()).filter(Boolean) : undefined);
  const summary = await runConformance(positionals[0], await conformanceKinds(), {
    only: split(values.only),
    cases: split(values.case),
    log: (line) => console.log(line),
  });
  await releaseShared();
  return summary.failed ? 1 : 0;
}
