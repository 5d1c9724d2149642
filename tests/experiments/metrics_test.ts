// Local image metrics against known values: CIEDE2000 on Sharma, Wu & Dalal's 34 reference pairs, sRGB → Lab, SSIM
// (identity, and two flat images whose SSIM is the luminance term alone), dominant colour, histogram distance, pixel
// change and the transfer index.

import assert from "node:assert/strict";
import type { RgbImage } from "../../model/images.ts";
import {
  ciede2000,
  dominantColour,
  dominantColourDeltaE,
  histogramDistance,
  meanAbsoluteDifference,
  srgbToLab,
  ssim,
  transferIndex,
} from "../../experiments/metrics.ts";
import { Rng } from "../../runtime/random.ts";

// Sharma, Wu & Dalal (2005), "The CIEDE2000 Color-Difference Formula: Implementation Notes, Supplementary Test Data,
// and Mathematical Observations", Table 1: L1 a1 b1, L2 a2 b2, ΔE00.
const SHARMA: [number, number, number, number, number, number, number][] = [
  [50.0000, 2.6772, -79.7751, 50.0000, 0.0000, -82.7485, 2.0425],
  [50.0000, 3.1571, -77.2803, 50.0000, 0.0000, -82.7485, 2.8615],
  [50.0000, 2.8361, -74.0200, 50.0000, 0.0000, -82.7485, 3.4412],
  [50.0000, -1.3802, -84.2814, 50.0000, 0.0000, -82.7485, 1.0000],
  [50.0000, -1.1848, -84.8006, 50.0000, 0.0000, -82.7485, 1.0000],
  [50.0000, -0.9009, -85.5211, 50.0000, 0.0000, -82.7485, 1.0000],
  [50.0000, 0.0000, 0.0000, 50.0000, -1.0000, 2.0000, 2.3669],
  [50.0000, -1.0000, 2.0000, 50.0000, 0.0000, 0.0000, 2.3669],
  [50.0000, 2.4900, -0.0010, 50.0000, -2.4900, 0.0009, 7.1792],
  [50.0000, 2.4900, -0.0010, 50.0000, -2.4900, 0.0010, 7.1792],
  [50.0000, 2.4900, -0.0010, 50.0000, -2.4900, 0.0011, 7.2195],
  [50.0000, 2.4900, -0.0010, 50.0000, -2.4900, 0.0012, 7.2195],
  [50.0000, -0.0010, 2.4900, 50.0000, 0.0009, -2.4900, 4.8045],
  [50.0000, -0.0010, 2.4900, 50.0000, 0.0010, -2.4900, 4.8045],
  [50.0000, -0.0010, 2.4900, 50.0000, 0.0011, -2.4900, 4.7461],
  [50.0000, 2.5000, 0.0000, 50.0000, 0.0000, -2.5000, 4.3065],
  [50.0000, 2.5000, 0.0000, 73.0000, 25.0000, -18.0000, 27.1492],
  [50.0000, 2.5000, 0.0000, 61.0000, -5.0000, 29.0000, 22.8977],
  [50.0000, 2.5000, 0.0000, 56.0000, -27.0000, -3.0000, 31.9030],
  [50.0000, 2.5000, 0.0000, 58.0000, 24.0000, 15.0000, 19.4535],
  [50.0000, 2.5000, 0.0000, 50.0000, 3.1736, 0.5854, 1.0000],
  [50.0000, 2.5000, 0.0000, 50.0000, 3.2972, 0.0000, 1.0000],
  [50.0000, 2.5000, 0.0000, 50.0000, 1.8634, 0.5757, 1.0000],
  [50.0000, 2.5000, 0.0000, 50.0000, 3.2592, 0.3350, 1.0000],
  [60.2574, -34.0099, 36.2677, 60.4626, -34.1751, 39.4387, 1.2644],
  [63.0109, -31.0961, -5.8663, 62.8187, -29.7946, -4.0864, 1.2630],
  [61.2901, 3.7196, -5.3901, 61.4292, 2.2480, -4.9620, 1.8731],
  [35.0831, -44.1164, 3.7933, 35.0232, -40.0716, 1.5901, 1.8645],
  [22.7233, 20.0904, -46.6940, 23.0331, 14.9730, -42.5619, 2.0373],
  [36.4612, 47.8580, 18.3852, 36.2715, 50.5065, 21.2231, 1.4146],
  [90.8027, -2.0831, 1.4410, 91.1528, -1.6435, 0.0447, 1.4441],
  [90.9257, -0.5406, -0.9208, 88.6381, -0.8985, -0.7239, 1.5381],
  [6.7747, -0.2908, -2.4247, 5.8714, -0.0985, -2.2286, 0.6377],
  [2.0776, 0.0795, -1.1350, 0.9033, -0.0636, -0.5514, 0.9082],
];

Deno.test("CIEDE2000 matches the 34 pairs of Sharma, Wu & Dalal to 4 decimals, both ways round", () => {
  for (const [i, [L1, a1, b1, L2, a2, b2, want]] of SHARMA.entries()) {
    const got = ciede2000([L1, a1, b1], [L2, a2, b2]);
    assert.ok(Math.abs(got - want) < 5e-5, `pair ${i + 1}: ${got.toFixed(5)} ≠ ${want}`);
    assert.ok(Math.abs(ciede2000([L2, a2, b2], [L1, a1, b1]) - want) < 5e-5, `pair ${i + 1} reversed`);
  }
  assert.equal(ciede2000([37, 12, -5], [37, 12, -5]), 0);
});

Deno.test("sRGB → CIELAB (D65): white, black, primaries", () => {
  const near = (got: number[], want: number[], tol: number) =>
    got.forEach((v, i) => assert.ok(Math.abs(v - want[i]) < tol, `${got} ≠ ${want}`));
  near(srgbToLab([255, 255, 255]), [100, 0, 0], 1e-3);
  near(srgbToLab([0, 0, 0]), [0, 0, 0], 1e-9);
  near(srgbToLab([255, 0, 0]), [53.2408, 80.0925, 67.2032], 2e-3);
  near(srgbToLab([0, 255, 0]), [87.7347, -86.1827, 83.1793], 2e-3);
  near(srgbToLab([0, 0, 255]), [32.2970, 79.1875, -107.8602], 2e-3);
  near(srgbToLab([128, 128, 128]), [53.5850, 0, 0], 2e-3);
  assert.throws(() => srgbToLab([256, 0, 0]), /not an integer in 0\.\.255/);
});

function solid(w: number, h: number, rgb: number[]): RgbImage {
  const data = new Uint8Array(w * h * 3);
  for (let p = 0; p < w * h; p++) data.set(rgb, 3 * p);
  return { width: w, height: h, data };
}

function noise(w: number, h: number, seed: number): RgbImage {
  const u = new Rng(seed).uniformArray(w * h * 3, 0, 1);
  return { width: w, height: h, data: Uint8Array.from(u, (v) => Math.floor(v * 256) % 256) };
}

Deno.test("SSIM: 1 for identical images; flat images give the luminance term (2xy + C1)/(x² + y² + C1); symmetric", () => {
  const a = noise(53, 37, 1);
  assert.ok(Math.abs(ssim(a, a) - 1) < 1e-12);
  const C1 = (0.01 * 255) ** 2;
  for (const [x, y] of [[100, 120], [30, 200], [7, 9]]) {
    const want = (2 * x * y + C1) / (x * x + y * y + C1);
    const got = ssim(solid(40, 33, [x, x, x]), solid(40, 33, [y, y, y]));
    assert.ok(Math.abs(got - want) < 1e-9, `${x} vs ${y}: ${got} ≠ ${want}`);
  }
  const b = noise(53, 37, 2);
  const s = ssim(a, b);
  assert.ok(s < 0.2, `independent noise should be dissimilar, got ${s}`);
  assert.ok(Math.abs(s - ssim(b, a)) < 1e-12);
  assert.throws(() => ssim(a, noise(37, 53, 1)), /differ in size/);
});

Deno.test("dominant colour: the mode of the Lab histogram, robust to a minority of other pixels", () => {
  const img = solid(37, 29, [200, 30, 40]);
  // A third of the pixels another colour, and some noise.
  for (let p = 0; p < img.width * img.height; p += 3) img.data.set([20, 200, 60], 3 * p);
  for (let p = 1; p < img.width * img.height; p += 17) img.data.set([p % 256, (p * 7) % 256, (p * 13) % 256], 3 * p);
  const d = dominantColour(img);
  assert.deepEqual(d.rgb, [200, 30, 40]);
  assert.ok(d.fraction > 0.5 && d.fraction < 0.7, `${d.fraction}`);
  assert.ok(dominantColourDeltaE(img, [200, 30, 40]) < 1, `${dominantColourDeltaE(img, [200, 30, 40])}`);
  assert.ok(dominantColourDeltaE(solid(9, 9, [200, 30, 40]), [200, 30, 40]) < 1e-9);
  assert.ok(dominantColourDeltaE(img, [0, 0, 255]) > 40);
  // Shades split by a bin edge still count as one colour: the neighbourhood sum wins over a single bin.
  const shades = solid(20, 20, [120, 120, 120]);
  for (let p = 0; p < 400; p += 2) shades.data.set([122, 122, 122], 3 * p);
  for (let p = 0; p < 130; p++) shades.data.set([0, 0, 250], 3 * (p * 3 % 400));
  assert.ok(Math.abs(dominantColour(shades).rgb[0] - 121) <= 1, `${dominantColour(shades).rgb}`);
});

Deno.test("histogram distance (Hellinger): 0 for the same colours, 1 for disjoint ones; pixel change; sizes checked", () => {
  const a = noise(30, 20, 3);
  assert.equal(histogramDistance(a, a), 0);
  // Shuffled pixels have the same histogram.
  const shuffled = { ...a, data: a.data.slice() };
  for (let p = 0; p < 300; p++) {
    const q = 599 - p;
    for (let c = 0; c < 3; c++) [shuffled.data[3 * p + c], shuffled.data[3 * q + c]] = [shuffled.data[3 * q + c], shuffled.data[3 * p + c]];
  }
  assert.ok(histogramDistance(a, shuffled) < 1e-7);
  assert.ok(Math.abs(histogramDistance(solid(5, 5, [0, 0, 0]), solid(9, 4, [255, 255, 255])) - 1) < 1e-12);
  // Half the pixels in common: BC = √(½·1) → distance √(1 − √½).
  const half = solid(10, 10, [0, 0, 0]);
  for (let p = 0; p < 50; p++) half.data.set([255, 255, 255], 3 * p);
  assert.ok(Math.abs(histogramDistance(half, solid(10, 10, [0, 0, 0])) - Math.sqrt(1 - Math.SQRT1_2)) < 1e-12);
  assert.equal(meanAbsoluteDifference(solid(3, 3, [10, 20, 30]), solid(3, 3, [13, 10, 30])), (3 + 10 + 0) / 3);
  assert.throws(() => meanAbsoluteDifference(solid(3, 3, [0, 0, 0]), solid(3, 4, [0, 0, 0])), /differ in size/);
});

Deno.test("transfer index: 1 at the source's baseline, −1 at the target's, 0 half-way; NaN when the baselines agree", () => {
  const source = solid(8, 8, [200, 0, 0]), target = solid(8, 8, [0, 0, 200]), mid = solid(8, 8, [100, 0, 100]);
  assert.equal(transferIndex(source, source, target), 1);
  assert.equal(transferIndex(target, source, target), -1);
  assert.equal(transferIndex(mid, source, target), 0);
  assert.ok(Number.isNaN(transferIndex(mid, source, source)));
  // Any distance: here ΔE00 between Lab colours.
  const labs = [[50, 10, 10], [50, 60, 10], [50, 10, 10]];
  assert.equal(transferIndex(labs[0], labs[1], labs[2], (a, b) => ciede2000(a, b)), -1);
});
