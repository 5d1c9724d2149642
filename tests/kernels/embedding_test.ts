import assert from "node:assert/strict";
import { getGpu } from "../../runtime/device.ts";
import { runAuditCase } from "../../kernels/audit.ts";
import { embeddingAuditCases } from "../../kernels/reference/embedding.ts";
import { Graph } from "../../runtime/graph.ts";
import { embedding } from "../../kernels/embedding.ts";

for (const c of embeddingAuditCases) {
  Deno.test(`embedding audit: ${c.label}`, async () => {
    const r = await runAuditCase(await getGpu(), c);
    assert.ok(r.pass, `${c.label}: rel L2 ${r.relL2} > ${r.tolerance} (max |Δ| ${r.maxAbs})`);
    assert.equal(r.maxAbs, 0, "a lookup copies values exactly");
  });
}

Deno.test("embedding refuses bad operands with the node name", () => {
  const g = new Graph();
  const table = g.input("table", [100, 16], "bf16");
  const ids = g.input("ids", [7], "u32");
  assert.deepEqual(g.shape(embedding(g, "embed_tokens", table, ids)), [7, 16]);
  assert.throws(() => embedding(g, "a", g.input("t3", [2, 3, 4]), ids), /a: table t3 must be \[vocab, dim\], got \[2×3×4\]/);
  assert.throws(() => embedding(g, "b", g.input("ti", [100, 16], "i32"), ids), /b: table ti must be bf16 or f32, got i32/);
  assert.throws(() => embedding(g, "c", table, g.input("fid", [7])), /c: ids fid must be a u32 vector \[S\], got f32 \[7\]/);
});
