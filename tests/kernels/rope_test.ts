import assert from "node:assert/strict";
import { getGpu } from "../../runtime/device.ts";
import { runAuditCase } from "../../kernels/audit.ts";
import { ropeAuditCases } from "../../kernels/reference/rope.ts";
import { Graph } from "../../runtime/graph.ts";
import { rope, type RopeLayout, ropeNode } from "../../kernels/rope.ts";
import { fluxRopeTables, qwenRopeTables } from "../../kernels/rope_tables.ts";

for (const c of ropeAuditCases) {
  Deno.test(`rope audit: ${c.kernel} ${c.label}`, async () => {
    const r = await runAuditCase(await getGpu(), c);
    assert.ok(r.pass, `${c.kernel} ${c.label}: rel L2 ${r.relL2} > ${r.tolerance} (max |Δ| ${r.maxAbs})`);
  });
}

const f32 = Math.fround;

Deno.test("fluxRopeTables: pair 0 of each axis rotates by the position itself, axes in order", () => {
  const ids = new Float64Array([3, 5, 7, 11, 0, 0, 0, 0]);
  const { cos, sin } = fluxRopeTables(ids, 2);
  assert.equal(cos.length, 2 * 64);
  // Axis a owns pairs 16a .. 16a + 15; its pair 0 has frequency 1.
  assert.equal(cos[0], f32(-0.9899924966004454)); // cos 3
  assert.equal(sin[0], f32(0.1411200080598672)); // sin 3
  assert.equal(cos[16], f32(0.28366218546322625)); // cos 5
  assert.equal(sin[16], f32(-0.9589242746631385)); // sin 5
  assert.equal(cos[32], f32(0.7539022543433046)); // cos 7
  assert.equal(sin[48], f32(-0.9999902065507035)); // sin 11
  // Pair j of a 32-dimensional axis has frequency 2000^(-2j/32): pair 8 of axis 0 is 3 / 2000^0.5.
  assert.equal(cos[8], f32(Math.cos(3 / Math.sqrt(2000))));
  // Position 0 gives the identity rotation.
  for (let p = 64; p < 128; p++) assert.ok(cos[p] === 1 && sin[p] === 0);
});

Deno.test("fluxRopeTables refuses ids of the wrong size", () => {
  assert.throws(() => fluxRopeTables(new Float64Array(7), 2), /ids must be \[2, 4\] \(8 values\), got 7 values/);
  assert.throws(() => fluxRopeTables(new Float64Array(3), 1, [3, 4, 4]), /axis dimensions must be positive even integers/);
});

Deno.test("qwenRopeTables: float32 angles as transformers computes them", () => {
  const S = 512, D = 128;
  const { cos, sin } = qwenRopeTables(S, D);
  assert.equal(cos.length, S * D / 2);
  for (let j = 0; j < D / 2; j++) assert.ok(cos[j] === 1 && sin[j] === 0, "position 0 is the identity");
  // Pair 0 has inverse frequency exactly 1: its angle is the position.
  assert.equal(cos[5 * 64], f32(0.28366218546322625)); // cos 5
  assert.equal(sin[5 * 64], f32(-0.9589242746631385)); // sin 5
  // Pair 32 has inverse frequency 1/theta^0.5 = 1/1000 rounded to float32 (0.0010000000474974513).
  assert.equal(cos[100 * 64 + 32], f32(Math.cos(f32(f32(0.001) * 100))));
  // The float32 angle differs measurably from a float64 one at large positions (this is the reference's result).
  let maxDiff = 0;
  for (let s = 0; s < S; s++) {
    for (let j = 0; j < D / 2; j++) {
      const exact = Math.cos(s / 1e6 ** ((2 * j) / D));
      maxDiff = Math.max(maxDiff, Math.abs(cos[s * 64 + j] - exact));
    }
  }
  assert.ok(maxDiff > 1e-6 && maxDiff < 1e-4, `float32 vs float64 angle difference ${maxDiff}`);
  assert.throws(() => qwenRopeTables(4, 7), /head dimension must be a positive even integer, got 7/);
});

Deno.test("rope refuses mismatched operands with the node name", () => {
  const g = new Graph();
  const x = g.input("x", [10, 2 * 16]);
  const cos = g.input("cos", [10, 8]), sin = g.input("sin", [10, 8]);
  const layout: RopeLayout = "rotate_half";
  assert.deepEqual(g.shape(rope(g, "ok", x, cos, sin, { heads: 2, headDim: 16, layout })), [10, 32]);
  assert.throws(
    () => rope(g, "layers.3.q_rope", x, cos, sin, { heads: 4, headDim: 16, layout }),
    /layers\.3\.q_rope: input must be \[S, 4·16\], got \[10×32\]/,
  );
  const shortCos = g.input("short", [9, 8]);
  assert.throws(() => rope(g, "a", x, shortCos, sin, { heads: 2, headDim: 16, layout }), /a: cos table must be \[10, 8\], got \[9×8\]/);
  const x2 = g.input("x2", [10, 2 * 15]);
  assert.throws(
    () => rope(g, "b", x2, cos, sin, { heads: 2, headDim: 15, layout }),
    /b: head dimension must be a positive even integer, got 15/,
  );
  assert.throws(() => rope(g, "c", x, cos, sin, { heads: 2, headDim: 16, layout: "neox" as RopeLayout }), /c: unknown RoPE layout "neox"/);
  assert.throws(() => ropeNode(g, "d", { x, cos, sin, out: x, heads: 2, headDim: 16, layout }), /d: RoPE writes a new tensor/);
});
