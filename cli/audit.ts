// `deno task audit [--only family,…] [--seed n]`: every kernel against its float64 reference.

import { parseArgs } from "node:util";
import { getGpu } from "../runtime/device.ts";
import { type AuditResult, formatAuditTable, runAuditCase } from "../kernels/audit.ts";
import { AUDIT_FAMILIES } from "../kernels/catalog.ts";
import { applyDeviceTuning } from "../kernels/tuning.ts";

const HELP = `usage: deno task audit [--only family,…] [--seed n]

Runs every kernel on random inputs of awkward sizes (not multiples of any tile) against its float64 CPU reference.
Outputs are poisoned with NaN before each run. Prints, per case, the relative L2 error, the largest absolute
difference and the GPU time of one run, then "N passed, M failed" (and the cases this adapter cannot run: no
shader-f16, tiles over its limits). Exit code 1 if any case is over its tolerance.

  --only families   comma-separated: ${Object.keys(AUDIT_FAMILIES).join(", ")}
  --seed n          random seed of the inputs (default 7)

example: deno task audit --only matmul,attention`;

export async function main(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: { only: { type: "string" }, seed: { type: "string" }, help: { type: "boolean", short: "h" } },
  });
  if (values.help) {
    console.log(HELP);
    return 0;
  }
  const only = values.only?.split(",").map((s) => s.trim());
  for (const f of only ?? []) {
    if (!(f in AUDIT_FAMILIES)) throw new Error(`unknown kernel family "${f}" (known: ${Object.keys(AUDIT_FAMILIES).join(", ")})`);
  }
  const gpu = await getGpu();
  await applyDeviceTuning(gpu);
  console.log(`adapter: ${gpu.adapterDescription}`);
  const results: AuditResult[] = [];
  for (const [family, cases] of Object.entries(AUDIT_FAMILIES)) {
    if (only && !only.includes(family)) continue;
    for (const c of cases) results.push(await runAuditCase(gpu, c, Number(values.seed ?? 7)));
  }
  console.log(formatAuditTable(results));
  const failed = results.filter((r) => !r.pass).length;
  const skipped = results.filter((r) => r.skipped).length;
  console.log(`${results.length - failed - skipped} passed, ${failed} failed${skipped ? `, ${skipped} skipped (see the table)` : ""}`);
  return failed ? 1 : 0;
}
