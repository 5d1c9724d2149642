import assert from "node:assert/strict";
import { getGpu } from "../../runtime/device.ts";
import { runAuditCase } from "../../kernels/audit.ts";
import { normAuditCases } from "../../kernels/reference/norm.ts";
import { Graph } from "../../runtime/graph.ts";
import { layerNorm, layerNormModulate, normNode, rmsNorm } from "../../kernels/norm.ts";
import type { DeviceCapabilities } from "../../runtime/device.ts";

for (const c of normAuditCases) {
  Deno.test(`norm audit: ${c.kernel} ${c.label}`, async () => {
    const r = await runAuditCase(await getGpu(), c);
    assert.ok(r.pass, `${c.kernel} ${c.label}: rel L2 ${r.relL2} > ${r.tolerance} (max |Δ| ${r.maxAbs})`);
  });
}

Deno.test("norm builders give outputs shaped like their input", () => {
  const g = new Graph();
  const x = g.input("x", [7, 256]);
  assert.deepEqual(g.shape(layerNorm(g, "ln", x, { eps: 1e-6 })), [7, 256]);
  const mod = g.input("mod", [3 * 256]);
  assert.deepEqual(g.shape(layerNormModulate(g, "lnm", x, mod, { eps: 1e-6, scaleOffset: 256, shiftOffset: 0 })), [7, 256]);
  const w = g.input("w", [64], "bf16");
  assert.deepEqual(g.shape(rmsNorm(g, "qk", x, w, { eps: 1e-6, groupSize: 64 })), [7, 256]);
  assert.equal(g.nodes.length, 3);
});

Deno.test("norm builders refuse bad operands with the node name", () => {
  const g = new Graph();
  const x = g.input("x", [7, 256]);
  const w = g.input("w", [64], "bf16");
  assert.throws(() => rmsNorm(g, "single.0.norm_q", x, w, { eps: 1e-6 }), /single\.0\.norm_q: weight w \[64\] must have 256 values/);
  assert.throws(
    () => rmsNorm(g, "a", x, w, { eps: 1e-6, groupSize: 60 }),
    /a: group size 60 must be a positive divisor of the row width 256/,
  );
  const wi = g.input("wi", [64], "i32");
  assert.throws(() => rmsNorm(g, "b", x, wi, { eps: 1e-6, groupSize: 64 }), /b: weight wi must be bf16 or f32, got i32/);
  const mod = g.input("mod", [2 * 256]);
  assert.throws(
    () => layerNormModulate(g, "double.1.norm1", x, mod, { eps: 1e-6, scaleOffset: 300, shiftOffset: 0 }),
    /double\.1\.norm1: scale offset 300 \+ width 256 exceeds the modulation vector of 512 values/,
  );
  const xb = g.input("xb", [7, 256], "bf16");
  assert.throws(() => layerNorm(g, "c", xb, { eps: 1e-6 }), /c: input xb must be f32, got bf16/);
  assert.throws(() => layerNorm(g, "d", x, { eps: NaN }), /d: eps must be a finite number/);
  const out = g.state("out", [7, 256]);
  for (const threads of [0, 3, 512]) {
    assert.throws(
      () => normNode(g, "e", { stats: "rms", x, out, groupSize: 256, eps: 1e-6, affine: { kind: "none" }, threads }),
      new RegExp(`e: threads must be a power of two from 1 to 256, got ${threads}`),
    );
  }
});

Deno.test("norm threads follow the device: 8 on a software adapter, enough to cover the group (up to 256) elsewhere", () => {
  const caps = (software: boolean) => ({ software } as unknown as DeviceCapabilities);
  const g = new Graph();
  const x = g.input("x", [3, 64]), out = g.state("out", [3, 64]);
  normNode(g, "n64", { stats: "layer", x, out, groupSize: 64, eps: 1e-6, affine: { kind: "none" } });
  const y = g.input("y", [3, 1024]), out2 = g.state("out2", [3, 1024]);
  normNode(g, "n1024", { stats: "layer", x: y, out: out2, groupSize: 1024, eps: 1e-6, affine: { kind: "none" } });
  normNode(g, "fixed", { stats: "layer", x: y, out: out2, groupSize: 1024, eps: 1e-6, affine: { kind: "none" }, threads: 16 });
  const wg = () => g.nodes.map((n) => n.variant.WG);
  g.chooseTiles(caps(false));
  assert.deepEqual(wg(), [64, 256, 16]);
  g.chooseTiles(caps(true));
  assert.deepEqual(wg(), [8, 8, 16]);
});
