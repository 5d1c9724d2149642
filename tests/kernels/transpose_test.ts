import assert from "node:assert/strict";
import { getGpu } from "../../runtime/device.ts";
import { runAuditCase } from "../../kernels/audit.ts";
import { transposeAuditCases } from "../../kernels/reference/transpose.ts";
import { Graph } from "../../runtime/graph.ts";
import { transpose } from "../../kernels/transpose.ts";

for (const c of transposeAuditCases) {
  Deno.test(`transpose audit: ${c.label}`, async () => {
    const r = await runAuditCase(await getGpu(), c);
    assert.ok(r.pass, `${c.label}: rel L2 ${r.relL2} > ${r.tolerance} (max |Δ| ${r.maxAbs})`);
  });
}

Deno.test("transpose refuses a residual of the wrong shape", () => {
  const g = new Graph();
  const x = g.input("x", [4, 6]);
  const res = g.input("res", [4, 6]);
  assert.throws(() => transpose(g, "attn.out_t", x, res), /attn\.out_t: residual must be \[6, 4\]/);
});
