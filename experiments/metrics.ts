// Image metrics computed locally (no network), on 8-bit RGB images:
//   - CIELAB (sRGB, D65 white) and the CIEDE2000 colour difference ΔE00 (Sharma, Wu & Dalal 2005);
//   - the dominant colour: the mode of a Lab histogram (cubes of `bin` ΔE*ab units, smoothed over the 3×3×3
//     neighbourhood so a colour on a bin edge is not split), as the mean colour of the pixels in the winning
//     neighbourhood, and its ΔE00 to a reference colour;
//   - colour-histogram distance: Hellinger distance between joint RGB histograms (8 levels per channel):
//     √(1 − Σ √(p·q)), 0 for the same histogram, 1 for disjoint ones;
//   - SSIM on luminance, as image-js 1.7.0's computeSsim computes it (the "original" algorithm of ssim.js 3.5, a
//     port of Wang et al.'s ssim.m), reimplemented below with its arithmetic in the same order: grey =
//     (77·R + 150·G + 29·B + 128) >> 8; when the shorter side is ~384 px or more, images are first box-filtered
//     by f = round(shorter side / 256) with symmetric borders and every f-th row and column kept; then a Gaussian
//     window (side min(11, width, height) of the original image, σ = 1.5, normalised), K1 = 0.01, K2 = 0.03,
//     L = 255, only where the window fits inside the image ("valid"), and the mean over that map;
//   - mean absolute pixel change: mean over pixels and channels of |a − b|, in 8-bit levels (0..255);
//   - the transfer index of a patch: with d the mean absolute pixel change,
//       TI = (d(out, target baseline) − d(out, source baseline)) / d(source baseline, target baseline)
//     which lies in [−1, 1] (triangle inequality): 1 when the output equals the source's baseline (the patch carried
//     everything over), −1 when it equals the target's own baseline (nothing transferred), 0 half-way.

import type { RgbImage } from "../model/images.ts";

export type Lab = [number, number, number];
export type Rgb = [number, number, number];

/** D65 reference white (2° observer), Y normalised to 1. */
const WHITE = [0.95047, 1.0, 1.08883];

const LINEAR = Float64Array.from({ length: 256 }, (_, v) => {
  const c = v / 255;
  return c <= 0.04045 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4;
});

function labF(t: number): number {
  const d = 6 / 29;
  return t > d ** 3 ? Math.cbrt(t) : t / (3 * d * d) + 4 / 29;
}

/** sRGB (0..255 integers) → CIELAB. */
export function srgbToLab(rgb: readonly number[]): Lab {
  const [r, g, b] = rgb.map((v) => {
    if (!Number.isInteger(v) || v < 0 || v > 255) throw new Error(`sRGB value ${v} is not an integer in 0..255`);
    return LINEAR[v];
  });
  const x = 0.4124564 * r + 0.3575761 * g + 0.1804375 * b;
  const y = 0.2126729 * r + 0.7151522 * g + 0.072175 * b;
  const z = 0.0193339 * r + 0.119192 * g + 0.9503041 * b;
  const fx = labF(x / WHITE[0]), fy = labF(y / WHITE[1]), fz = labF(z / WHITE[2]);
  return [116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)];
}

const deg = (r: number) => (r * 180) / Math.PI;
const rad = (d: number) => (d * Math.PI) / 180;

/** CIEDE2000 colour difference (kL = kC = kH = 1 by default). */
export function ciede2000(lab1: readonly number[], lab2: readonly number[], kL = 1, kC = 1, kH = 1): number {
  const [L1, a1, b1] = lab1, [L2, a2, b2] = lab2;
  const C1 = Math.hypot(a1, b1), C2 = Math.hypot(a2, b2);
  const Cbar7 = ((C1 + C2) / 2) ** 7;
  const G = 0.5 * (1 - Math.sqrt(Cbar7 / (Cbar7 + 25 ** 7)));
  const a1p = (1 + G) * a1, a2p = (1 + G) * a2;
  const C1p = Math.hypot(a1p, b1), C2p = Math.hypot(a2p, b2);
  const hue = (b: number, a: number) => {
    if (b === 0 && a === 0) return 0;
    const h = deg(Math.atan2(b, a));
    return h < 0 ? h + 360 : h;
  };
  const h1p = hue(b1, a1p), h2p = hue(b2, a2p);
  const dLp = L2 - L1, dCp = C2p - C1p;
  let dhp = 0;
  if (C1p * C2p !== 0) {
    dhp = h2p - h1p;
    if (dhp > 180) dhp -= 360;
    else if (dhp < -180) dhp += 360;
  }
  const dHp = 2 * Math.sqrt(C1p * C2p) * Math.sin(rad(dhp / 2));
  const Lbarp = (L1 + L2) / 2, Cbarp = (C1p + C2p) / 2;
  let hbarp = h1p + h2p;
  if (C1p * C2p !== 0) {
    if (Math.abs(h1p - h2p) <= 180) hbarp = (h1p + h2p) / 2;
    else hbarp = h1p + h2p < 360 ? (h1p + h2p + 360) / 2 : (h1p + h2p - 360) / 2;
  }
  const T = 1 - 0.17 * Math.cos(rad(hbarp - 30)) + 0.24 * Math.cos(rad(2 * hbarp)) + 0.32 * Math.cos(rad(3 * hbarp + 6)) -
    0.2 * Math.cos(rad(4 * hbarp - 63));
  const dTheta = 30 * Math.exp(-(((hbarp - 275) / 25) ** 2));
  const Cbarp7 = Cbarp ** 7;
  const RC = 2 * Math.sqrt(Cbarp7 / (Cbarp7 + 25 ** 7));
  const SL = 1 + (0.015 * (Lbarp - 50) ** 2) / Math.sqrt(20 + (Lbarp - 50) ** 2);
  const SC = 1 + 0.045 * Cbarp;
  const SH = 1 + 0.015 * Cbarp * T;
  const RT = -Math.sin(rad(2 * dTheta)) * RC;
  const l = dLp / (kL * SL), c = dCp / (kC * SC), h = dHp / (kH * SH);
  return Math.sqrt(l * l + c * c + h * h + RT * c * h);
}

function checkSameSize(a: RgbImage, b: RgbImage, what: string): void {
  if (a.width !== b.width || a.height !== b.height) {
    throw new Error(`${what}: the images differ in size (${a.width}×${a.height} and ${b.width}×${b.height})`);
  }
}

export interface DominantColour {
  rgb: Rgb;
  lab: Lab;
  /** Share of the pixels in the winning neighbourhood. */
  fraction: number;
}

/** The dominant colour of an image (see the header). `bin` is the histogram's cube side in Lab units (default 8). */
export function dominantColour(img: RgbImage, bin = 8): DominantColour {
  const n = img.width * img.height;
  if (!n) throw new Error("dominant colour of an empty image");
  // Lab of each distinct colour once: images have far fewer colours than pixels.
  const labOf = new Map<number, Lab>();
  const keys = new Int32Array(n);
  const lo = [0, -128, -128];
  const dims = [Math.ceil(101 / bin), Math.ceil(256 / bin), Math.ceil(256 / bin)];
  const counts = new Map<number, number>();
  for (let p = 0; p < n; p++) {
    const r = img.data[3 * p], g = img.data[3 * p + 1], b = img.data[3 * p + 2];
    const code = (r << 16) | (g << 8) | b;
    let lab = labOf.get(code);
    if (!lab) labOf.set(code, lab = srgbToLab([r, g, b]));
    const i = lab.map((v, k) => Math.min(dims[k] - 1, Math.max(0, Math.floor((v - lo[k]) / bin))));
    const key = (i[0] * dims[1] + i[1]) * dims[2] + i[2];
    keys[p] = key;
    counts.set(key, (counts.get(key) ?? 0) + 1);
  }
  const decode = (key: number) => [Math.floor(key / (dims[1] * dims[2])), Math.floor(key / dims[2]) % dims[1], key % dims[2]];
  const encode = (i: number[]) => (i[0] * dims[1] + i[1]) * dims[2] + i[2];
  let best = -1, bestCount = -1;
  for (const key of [...counts.keys()].sort((x, y) => x - y)) {
    const c = decode(key);
    let sum = 0;
    for (let dl = -1; dl <= 1; dl++) {
      for (let da = -1; da <= 1; da++) {
        for (let db = -1; db <= 1; db++) {
          const j = [c[0] + dl, c[1] + da, c[2] + db];
          if (j.every((v, k) => v >= 0 && v < dims[k])) sum += counts.get(encode(j)) ?? 0;
        }
      }
    }
    if (sum > bestCount) best = key, bestCount = sum;
  }
  const centre = decode(best);
  const near = (key: number) => decode(key).every((v, k) => Math.abs(v - centre[k]) <= 1);
  const rgbSum = [0, 0, 0], labSum = [0, 0, 0];
  let m = 0;
  for (let p = 0; p < n; p++) {
    if (!near(keys[p])) continue;
    m++;
    for (let c = 0; c < 3; c++) rgbSum[c] += img.data[3 * p + c];
    const code = (img.data[3 * p] << 16) | (img.data[3 * p + 1] << 8) | img.data[3 * p + 2];
    const lab = labOf.get(code)!;
    for (let c = 0; c < 3; c++) labSum[c] += lab[c];
  }
  return {
    rgb: rgbSum.map((v) => Math.round(v / m)) as Rgb,
    lab: labSum.map((v) => v / m) as Lab,
    fraction: m / n,
  };
}

/** ΔE00 between an image's dominant colour and a reference sRGB colour. */
export function dominantColourDeltaE(img: RgbImage, reference: readonly number[]): number {
  return ciede2000(dominantColour(img).lab, srgbToLab(reference));
}

/** Joint RGB histogram, `levels` per channel, normalised to sum 1. */
export function colourHistogram(img: RgbImage, levels = 8): Float64Array {
  if (!Number.isInteger(levels) || levels < 1 || 256 % levels) throw new Error(`histogram levels ${levels} must divide 256`);
  const shift = Math.log2(256 / levels);
  const h = new Float64Array(levels ** 3);
  const n = img.width * img.height;
  for (let p = 0; p < n; p++) {
    const r = img.data[3 * p] >> shift, g = img.data[3 * p + 1] >> shift, b = img.data[3 * p + 2] >> shift;
    h[(r * levels + g) * levels + b]++;
  }
  for (let i = 0; i < h.length; i++) h[i] /= n;
  return h;
}

/** Hellinger distance between the colour histograms of two images (sizes may differ). */
export function histogramDistance(a: RgbImage, b: RgbImage, levels = 8): number {
  const p = colourHistogram(a, levels), q = colourHistogram(b, levels);
  let bc = 0;
  for (let i = 0; i < p.length; i++) bc += Math.sqrt(p[i] * q[i]);
  return Math.sqrt(Math.max(0, 1 - bc));
}

/** A grey plane, row by row. */
interface Plane {
  width: number;
  height: number;
  data: Float64Array;
}

/** ssim.js's integer grey conversion (its default rgb2grayVersion). */
function grey(img: RgbImage): Plane {
  const data = new Float64Array(img.width * img.height);
  for (let p = 0; p < data.length; p++) data[p] = (77 * img.data[3 * p] + 150 * img.data[3 * p + 1] + 29 * img.data[3 * p + 2] + 128) >> 8;
  return { width: img.width, height: img.height, data };
}

/** ssim.js's "original" downsampling: the mean of an f × f box over symmetric borders (box start at −⌊f/2⌋),
 * kept at every f-th row and column from 0. The box sums are of integers, hence exact; ssim.js then multiplies
 * by 1/f² rather than dividing by f², and so does this. */
function downsample(plane: Plane, f: number): Plane {
  const { width, height, data } = plane;
  const mirror = (i: number, n: number) => i < 0 ? -i - 1 : i >= n ? 2 * n - i - 1 : i;
  const half = Math.floor(f / 2), scale = 1 / (f * f);
  const outW = Math.ceil(width / f), outH = Math.ceil(height / f);
  const out = new Float64Array(outW * outH);
  for (let oy = 0; oy < outH; oy++) {
    for (let ox = 0; ox < outW; ox++) {
      let sum = 0;
      for (let dy = 0; dy < f; dy++) {
        const row = mirror(oy * f - half + dy, height) * width;
        for (let dx = 0; dx < f; dx++) sum += data[row + mirror(ox * f - half + dx, width)];
      }
      out[oy * outW + ox] = sum * scale;
    }
  }
  return { width: outW, height: outH, data: out };
}

/** ssim.js's fspecial("gaussian", size, σ), normalised once more as its originalSsim does. */
function gaussianWindow(size: number, sigma: number): Float64Array {
  const half = (size - 1) / 2;
  const w = new Float64Array(size * size);
  for (let x = 0; x < size; x++) {
    for (let y = 0; y < size; y++) w[x * size + y] = Math.exp(-((x - half) ** 2 + (y - half) ** 2) / (2 * sigma ** 2));
  }
  for (let pass = 0; pass < 2; pass++) {
    let total = 0;
    for (let i = 0; i < w.length; i++) total += w[i];
    for (let i = 0; i < w.length; i++) w[i] /= total;
  }
  return w;
}

/** filter2(w, x, "valid"): the window's weighted sums where it fits inside the plane, accumulated in ssim.js's
 * order (its conv2 walks the 180°-rotated window from its first element, i.e. this window from its last). */
function filterValid(w: Float64Array, size: number, x: Plane): Plane {
  const outW = x.width - size + 1, outH = x.height - size + 1;
  const out = new Float64Array(outW * outH);
  for (let a = size - 1; a >= 0; a--) {
    for (let b = size - 1; b >= 0; b--) {
      const weight = w[a * size + b];
      for (let i = 0; i < outH; i++) {
        const src = (i + a) * x.width + b, dst = i * outW;
        for (let j = 0; j < outW; j++) out[dst + j] += x.data[src + j] * weight;
      }
    }
  }
  return { width: outW, height: outH, data: out };
}

function elementwise(x: Plane, y: Plane, op: (u: number, v: number) => number): Plane {
  return { width: x.width, height: x.height, data: x.data.map((u, i) => op(u, y.data[i])) };
}

/** Mean SSIM on luminance (see the header). */
export function ssim(a: RgbImage, b: RgbImage): number {
  checkSameSize(a, b, "SSIM");
  if (!a.width || !a.height) throw new Error("SSIM of an empty image");
  const size = Math.min(11, a.width, a.height);
  let p1 = grey(a), p2 = grey(b);
  const f = Math.round(Math.min(a.width, a.height) / 256);
  if (f > 1) p1 = downsample(p1, f), p2 = downsample(p2, f);
  const w = gaussianWindow(size, 1.5);
  const c1 = (0.01 * 255) ** 2, c2 = (0.03 * 255) ** 2;
  const mu1 = filterValid(w, size, p1), mu2 = filterValid(w, size, p2);
  const s11 = filterValid(w, size, elementwise(p1, p1, (u, v) => u * v));
  const s22 = filterValid(w, size, elementwise(p2, p2, (u, v) => u * v));
  const s12 = filterValid(w, size, elementwise(p1, p2, (u, v) => u * v));
  let sum = 0;
  for (let i = 0; i < mu1.data.length; i++) {
    const m1 = mu1.data[i], m2 = mu2.data[i];
    const m1Sq = m1 * m1, m2Sq = m2 * m2, m12 = m1 * m2;
    const var1 = s11.data[i] - m1Sq, var2 = s22.data[i] - m2Sq, cov = s12.data[i] - m12;
    sum += ((m12 * 2 + c1) * (cov * 2 + c2)) / ((m1Sq + m2Sq + c1) * (var1 + var2 + c2));
  }
  return sum / mu1.data.length;
}

/** Mean absolute difference over pixels and channels, in 8-bit levels. */
export function meanAbsoluteDifference(a: RgbImage, b: RgbImage): number {
  checkSameSize(a, b, "mean absolute difference");
  let sum = 0;
  for (let i = 0; i < a.data.length; i++) sum += Math.abs(a.data[i] - b.data[i]);
  return sum / a.data.length;
}

/** Transfer index of a patched output (see the header), under any distance (default: mean absolute pixel
 * difference); NaN when the two baselines are at distance 0. */
export function transferIndex<T = RgbImage>(output: T, sourceBaseline: T, targetBaseline: T, distance?: (a: T, b: T) => number): number {
  const d = distance ?? (meanAbsoluteDifference as unknown as (a: T, b: T) => number);
  const between = d(sourceBaseline, targetBaseline);
  if (between === 0) return NaN;
  return (d(output, targetBaseline) - d(output, sourceBaseline)) / between;
}
