// The intervention shortcuts build the same spec a user would write: repeated --setting gives one composite knockout.

import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { parseSpec } from "../../studies/spec.ts";

const CLI = fileURLToPath(new URL("../../cli.ts", import.meta.url));

async function printSpec(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command(Deno.execPath(), { args: ["run", "-A", CLI, "knockout", "--prompt", "p", ...args, "--print-spec"] })
    .output();
  return { code: out.code, stdout: new TextDecoder().decode(out.stdout), stderr: new TextDecoder().decode(out.stderr) };
}

Deno.test("repeated --setting, each with its own --blocks/--knockout-steps, is the composite spec", async () => {
  const r = await printSpec(
    "--blocks",
    "all",
    "--setting",
    "ref->text",
    "--knockout-steps",
    "0",
    "--setting",
    "ref->image",
    "--blocks",
    "single",
    "--setting",
    "image->ref",
  );
  assert.equal(r.code, 0, r.stderr);
  const printed = JSON.parse(r.stdout);
  const composite = parseSpec({
    model: printed.model,
    prompt: "p",
    refs: [],
    seed: 0,
    interventions: [{
      type: "knockout",
      settings: [
        { setting: "ref->text", blocks: "all", steps: "0" },
        { setting: "ref->image", blocks: "single" },
        { setting: "image->ref", blocks: "all" },
      ],
    }],
  });
  assert.deepEqual(parseSpec(printed).interventions, composite.interventions);
});

Deno.test("a second --blocks for one setting is a usage mistake (exit 2)", async () => {
  const r = await printSpec("--setting", "ref->text", "--blocks", "0", "--blocks", "1");
  assert.equal(r.code, 2);
  assert.match(r.stderr, /--blocks is given twice for setting "ref->text"/);
});
