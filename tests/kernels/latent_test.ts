import assert from "node:assert/strict";
import { getGpu } from "../../runtime/device.ts";
import { runAuditCase } from "../../kernels/audit.ts";
import { latentAuditCases, patchifyReference, unpatchifyReference } from "../../kernels/reference/latent.ts";
import { Graph } from "../../runtime/graph.ts";
import { patchifyLatents, unpatchifyTokens } from "../../kernels/latent.ts";

for (const c of latentAuditCases) {
  Deno.test(`latent audit: ${c.kernel} ${c.label}`, async () => {
    const r = await runAuditCase(await getGpu(), c);
    assert.ok(r.pass, `${c.label}: rel L2 ${r.relL2} > ${r.tolerance} (max |Δ| ${r.maxAbs})`);
  });
}

Deno.test("latent references: unpatchify inverts patchify, and the feature order is c·4 + dy·2 + dx", () => {
  const channels = 3, height = 4, width = 6;
  const x = Float64Array.from({ length: channels * height * width }, (_, i) => i + 1);
  const stats = {
    mean: Float64Array.from({ length: 12 }, (_, i) => 0.1 * i),
    variance: Float64Array.from({ length: 12 }, (_, i) => 1 + i),
    eps: 1e-4,
  };
  const tokens = patchifyReference(x, channels, height, width, stats);
  const back = unpatchifyReference(tokens, channels, height, width, stats);
  back.forEach((v, i) => assert.ok(Math.abs(v - x[i]) < 1e-9));
  // Token 1 is the patch at (py 0, px 1); feature 1·4 + 1·2 + 0 is channel 1, pixel (1, 2).
  const plain = patchifyReference(x, channels, height, width);
  assert.equal(plain[1 * 12 + 6], x[(1 * height + 1) * width + 2]);
});

Deno.test("latent packing refuses odd sizes and mismatched tokens", () => {
  const g = new Graph();
  const x = g.input("x", [4, 15]);
  assert.throws(() => patchifyLatents(g, "ref.pack", x, { channels: 4, height: 3, width: 5 }), /ref\.pack: latent size 3×5 must be even/);
  const t = g.input("t", [6, 16]);
  assert.throws(
    () => unpatchifyTokens(g, "final.unpack", t, { channels: 4, height: 4, width: 4 }),
    /final\.unpack: tokens must be \[4×16\]/,
  );
});
