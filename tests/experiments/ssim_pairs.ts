// Image pairs for the SSIM agreement test. ssim_expected.json holds image-js 1.7.0's computeSsim (algorithm
// "original") on each pair, recorded by ssim_record.ts; the test and the recorder both build the images here.
// The sizes are awkward on purpose: windows narrower than 11 (9 and 10 px sides), and sides that make ssim.js
// downsample first (factor 2 from 384 px, factor 3 from 640 px on the shorter side).

import type { RgbImage } from "../../model/images.ts";

/** xorshift32: fast and reproducible for the few million samples the largest pair needs. */
function rng(seed: number): () => number {
  let s = (seed * 2654435761) >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s / 2 ** 32;
  };
}

/** Independent uniform samples in 0..255. */
export function noise(width: number, height: number, seed: number): RgbImage {
  const next = rng(seed);
  return { width, height, data: Uint8Array.from({ length: width * height * 3 }, () => Math.floor(next() * 256)) };
}

/** Colour gradients, stripes and discs whose placement depends on the seed: structure for SSIM to see. */
export function pattern(width: number, height: number, seed: number): RgbImage {
  const next = rng(seed);
  const discs = Array.from({ length: 4 }, () => ({
    x: next() * width,
    y: next() * height,
    r: (0.1 + 0.25 * next()) * Math.min(width, height),
    rgb: [next() * 255, next() * 255, next() * 255],
  }));
  const period = 3 + next() * 9, tilt = next() * Math.PI;
  const data = new Uint8Array(width * height * 3);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const stripe = Math.sin(((x * Math.cos(tilt) + y * Math.sin(tilt)) * 2 * Math.PI) / period) > 0 ? 40 : 0;
      let rgb = [(255 * x) / width, (255 * y) / height, 128 + stripe];
      for (const d of discs) if ((x - d.x) ** 2 + (y - d.y) ** 2 < d.r ** 2) rgb = d.rgb.map((v) => v - stripe / 2);
      for (let c = 0; c < 3; c++) data[(y * width + x) * 3 + c] = Math.max(0, Math.min(255, Math.round(rgb[c])));
    }
  }
  return { width, height, data };
}

/** `img` plus uniform noise in ±amplitude, clipped to 0..255. */
export function perturb(img: RgbImage, amplitude: number, seed: number): RgbImage {
  const next = rng(seed);
  const data = Uint8Array.from(img.data, (v) => Math.max(0, Math.min(255, Math.round(v + (2 * next() - 1) * amplitude))));
  return { width: img.width, height: img.height, data };
}

/** One colour everywhere. */
export function solid(width: number, height: number, rgb: readonly number[]): RgbImage {
  const data = new Uint8Array(width * height * 3);
  for (let p = 0; p < width * height; p++) data.set(rgb, 3 * p);
  return { width, height, data };
}

/** The pairs by name; each builds its two images when called. */
export const SSIM_PAIRS: Record<string, () => [RgbImage, RgbImage]> = {
  "noise vs noise 37×23": () => [noise(37, 23, 1), noise(37, 23, 2)],
  "noise vs perturbed 37×23": () => {
    const a = noise(37, 23, 3);
    return [a, perturb(a, 40, 4)];
  },
  "pattern vs perturbed 37×23": () => {
    const a = pattern(37, 23, 5);
    return [a, perturb(a, 25, 6)];
  },
  "pattern vs pattern 100×61": () => [pattern(100, 61, 7), pattern(100, 61, 8)],
  "pattern vs perturbed 100×61": () => {
    const a = pattern(100, 61, 9);
    return [a, perturb(a, 60, 10)];
  },
  "noise vs perturbed 61×100": () => {
    const a = noise(61, 100, 11);
    return [a, perturb(a, 15, 12)];
  },
  "window 9: pattern vs perturbed 9×14": () => {
    const a = pattern(9, 14, 13);
    return [a, perturb(a, 30, 14)];
  },
  "window 10: pattern vs perturbed 16×10": () => {
    const a = pattern(16, 10, 15);
    return [a, perturb(a, 30, 16)];
  },
  "flat colours 40×33": () => [solid(40, 33, [120, 50, 200]), solid(40, 33, [118, 53, 199])],
  "identical 100×61": () => [pattern(100, 61, 17), pattern(100, 61, 17)],
  "downsampled ×2: pattern vs perturbed 401×390": () => {
    const a = pattern(401, 390, 18);
    return [a, perturb(a, 35, 19)];
  },
  "downsampled ×3: pattern vs perturbed 777×770": () => {
    const a = pattern(777, 770, 20);
    return [a, perturb(a, 50, 21)];
  },
};
