import assert from "node:assert/strict";
import { getGpu } from "../../runtime/device.ts";
import { runAuditCase } from "../../kernels/audit.ts";
import { upsampleAuditCases } from "../../kernels/reference/upsample.ts";
import { Graph } from "../../runtime/graph.ts";
import { upsampleNearest2x } from "../../kernels/upsample.ts";

for (const c of upsampleAuditCases) {
  Deno.test(`upsample audit: ${c.label}`, async () => {
    const r = await runAuditCase(await getGpu(), c);
    assert.ok(r.pass, `${c.label}: rel L2 ${r.relL2} > ${r.tolerance} (max |Δ| ${r.maxAbs})`);
  });
}

Deno.test("upsample refuses an input that does not match the stated size", () => {
  const g = new Graph();
  const x = g.input("x", [3, 20]);
  assert.throws(() => upsampleNearest2x(g, "dec.up", x, 4, 4), /dec\.up: upsample input must be \[C, 4·4\]/);
});
