import assert from "node:assert/strict";
import { getGpu } from "../../runtime/device.ts";
import { runAuditCase } from "../../kernels/audit.ts";
import { groupNormAuditCases } from "../../kernels/reference/groupnorm.ts";
import { Graph } from "../../runtime/graph.ts";
import { groupNorm } from "../../kernels/groupnorm.ts";

for (const c of groupNormAuditCases) {
  Deno.test(`groupnorm audit: ${c.label}`, async () => {
    const r = await runAuditCase(await getGpu(), c);
    assert.ok(r.pass, `${c.label}: rel L2 ${r.relL2} > ${r.tolerance} (max |Δ| ${r.maxAbs})`);
  });
}

Deno.test("groupnorm refuses channels that do not split into the groups", () => {
  const g = new Graph();
  const x = g.input("x", [10, 20]);
  const gamma = g.input("gamma", [10]);
  const beta = g.input("beta", [10]);
  assert.throws(
    () => groupNorm(g, "mid.norm1", x, { gamma, beta, groups: 4, eps: 1e-6 }),
    /mid\.norm1: 10 channels cannot be split into 4 groups/,
  );
  const shortBeta = g.input("b2", [9]);
  assert.throws(() => groupNorm(g, "mid.norm2", x, { gamma, beta: shortBeta, groups: 5, eps: 1e-6 }), /mid\.norm2: beta must be \[10\]/);
});
