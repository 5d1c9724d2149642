// experiments/metrics.ts ssim against the values image-js 1.7.0's computeSsim (algorithm "original") gave on the
// same pairs, recorded in ssim_expected.json by ssim_record.ts (before kleinscope stopped depending on image-js).

import assert from "node:assert/strict";
import { ssim } from "../../experiments/metrics.ts";
import { SSIM_PAIRS } from "./ssim_pairs.ts";

const EXPECTED: { mssim: Record<string, number> } = JSON.parse(
  await Deno.readTextFile(new URL("ssim_expected.json", import.meta.url)),
);

Deno.test("SSIM agrees with image-js 1.7.0 to 1e-6 on every recorded pair (noise, structure, windows under 11, downsampling)", () => {
  assert.deepEqual(Object.keys(SSIM_PAIRS).sort(), Object.keys(EXPECTED.mssim).sort(), "the fixture records every pair");
  const spread = new Set<number>();
  for (const [name, make] of Object.entries(SSIM_PAIRS)) {
    const [a, b] = make();
    const got = ssim(a, b), want = EXPECTED.mssim[name];
    assert.ok(Math.abs(got - want) <= 1e-6, `${name}: ${got}, image-js ${want}`);
    spread.add(Math.round(want * 10));
  }
  // The recorded values span the range, so agreement is not agreement on a constant.
  assert.ok(spread.size >= 5, `values ${[...spread]}`);
});
