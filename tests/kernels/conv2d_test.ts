import assert from "node:assert/strict";
import { getGpu } from "../../runtime/device.ts";
import { runAuditCase } from "../../kernels/audit.ts";
import { conv2dAuditCases } from "../../kernels/reference/conv2d.ts";
import { Graph } from "../../runtime/graph.ts";
import { conv2d } from "../../kernels/conv2d.ts";

for (const c of conv2dAuditCases) {
  Deno.test(`conv2d audit: ${c.label}`, async () => {
    const r = await runAuditCase(await getGpu(), c);
    assert.ok(r.pass, `${c.label}: rel L2 ${r.relL2} > ${r.tolerance} (max |Δ| ${r.maxAbs})`);
  });
}

Deno.test("conv2d refuses mismatched operands with the node name", () => {
  const g = new Graph();
  const x = g.input("x", [5, 13 * 11]);
  const w = g.input("w", [7, 4, 3, 3]);
  const b = g.input("b", [7]);
  assert.throws(() => conv2d(g, "enc.conv_in", x, { weight: w, bias: b, height: 13, width: 11 }), /enc\.conv_in: input must be \[4/);
  const w2 = g.input("w2", [7, 5, 3, 3]);
  const bad = g.input("bad", [6]);
  assert.throws(() => conv2d(g, "enc.conv1", x, { weight: w2, bias: bad, height: 13, width: 11 }), /enc\.conv1: bias must be \[7\]/);
  const wi = g.input("wi", [7, 5, 3, 3], "i32");
  assert.throws(() => conv2d(g, "enc.conv2", x, { weight: wi, bias: b, height: 13, width: 11 }), /must be bf16 or f32/);
  const tile = { tc: 64, tp: 64, rc: 8, rp: 4, bk: 16 };
  assert.throws(
    () => conv2d(g, "enc.conv3", x, { weight: w2, bias: b, height: 13, width: 11, tile }),
    /enc\.conv3: conv2d tile .* must be 256 threads/,
  );
});
