import assert from "node:assert/strict";
import { timestepEmbedding } from "../../kernels/timestep_table.ts";

const f32 = Math.fround;

Deno.test("timestepEmbedding: [cos …, sin …] with channel 0 = cos t and channel half = sin t", () => {
  for (const arithmetic of ["float32", "float64"] as const) {
    const e = timestepEmbedding(700, 256, { arithmetic });
    assert.equal(e.length, 256);
    assert.equal(e[0], f32(-0.8391043258807425), arithmetic); // cos 700
    assert.equal(e[128], f32(0.5439705233633756), arithmetic); // sin 700
  }
  // Frequency i is 10000^(−i/128): channel 1 is cos(700 · 0.9305720409296989), channel 127 cos(700 · 10000^(−127/128)).
  const exact = timestepEmbedding(700, 256, { arithmetic: "float64" });
  assert.equal(exact[1], f32(-0.46182083637903487));
  assert.equal(exact[127], f32(0.9971721179629762));
  const e = timestepEmbedding(700);
  assert.ok(Math.abs(e[1] - -0.46182083637903487) < 1e-4);
});

Deno.test("timestepEmbedding: t = 0 gives cos 1 and sin 0 everywhere", () => {
  const e = timestepEmbedding(0, 256);
  for (let i = 0; i < 128; i++) assert.ok(e[i] === 1 && e[128 + i] === 0);
});

Deno.test("timestepEmbedding: sin first without the flip, shift, odd dim padded", () => {
  // dim 9 → half 4; with shift 1 the last frequency is exp(−ln(10000)·3/3) = 1e-4, so t = 5000 gives angle 0.5.
  const e = timestepEmbedding(5000, 9, { flipSinToCos: false, downscaleFreqShift: 1, arithmetic: "float64" });
  assert.equal(e.length, 9);
  assert.equal(e[3], f32(0.479425538604203)); // sin 0.5
  assert.equal(e[7], f32(0.8775825618903728)); // cos 0.5
  assert.equal(e[0], f32(Math.sin(5000)));
  assert.equal(e[8], 0);
});

Deno.test("timestepEmbedding: float32 arithmetic differs from float64 by the float32 angle error only", () => {
  let maxDiff = 0;
  for (const t of [999, 937.5, 523.25, 12.5]) {
    const a = timestepEmbedding(t), b = timestepEmbedding(t, 256, { arithmetic: "float64" });
    for (let i = 0; i < 256; i++) maxDiff = Math.max(maxDiff, Math.abs(a[i] - b[i]));
  }
  assert.ok(maxDiff > 1e-6 && maxDiff < 1e-4, `difference ${maxDiff}`);
});

Deno.test("timestepEmbedding refuses bad arguments", () => {
  assert.throws(() => timestepEmbedding(NaN), /timestep must be finite/);
  assert.throws(() => timestepEmbedding(1, 1), /dim must be an integer ≥ 2, got 1/);
  assert.throws(() => timestepEmbedding(1, 8, { downscaleFreqShift: 4 }), /leaves no frequency spacing/);
});
