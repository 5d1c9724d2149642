// Images at the pipeline's boundary: reading reference images, preparing them the way diffusers' Flux2KleinPipeline
// does, and writing results as PNG.
//
// Reference preprocessing (Flux2KleinPipeline.__call__ with Flux2ImageProcessor), reproduced step by step:
//   1. refuse images with a side under 64 px or an aspect ratio over 8:1 (the reference's check_image_input);
//   2. if the area exceeds 1024², resize with Lanczos to about 1024² keeping the aspect ratio
//      (width = ⌊w·s⌋, height = ⌊h·s⌋, s = √(1024² / (w·h)); PIL's LANCZOS resampling, reimplemented below);
//   3. centre-crop to the largest multiples of 16 (no resize);
//   4. map 8-bit values v to 2·(v/255) − 1 in float32, planes in R, G, B order.
// Decoded PNGs match PIL exactly; JPEG decoders may differ from libjpeg by one level in places.

import { decode, encodePng, Image } from "image-js";
import { dirname, join } from "node:path";

/** An 8-bit RGB image, pixels interleaved row by row. */
export interface RgbImage {
  width: number;
  height: number;
  /** width · height · 3 values in 0..255. */
  data: Uint8Array;
}

/** Side and area limits of the reference pipeline. */
export const MIN_REFERENCE_SIDE = 64;
export const MAX_REFERENCE_ASPECT = 8;
export const MAX_REFERENCE_AREA = 1024 * 1024;
/** Reference sides are cropped to multiples of this (VAE scale 8 × 2×2 patches). */
export const REFERENCE_MULTIPLE = 16;

/** Read a PNG or JPEG as 8-bit RGB: alpha is dropped (not composited), greyscale is expanded, 16-bit values keep
 * their high byte. A missing or undecodable file throws one Error naming the path. */
export async function loadImage(path: string): Promise<RgbImage> {
  let bytes: Uint8Array;
  try {
    bytes = await Deno.readFile(path);
  } catch (e) {
    const why = e instanceof Deno.errors.NotFound ? "no such file" : (e as Error).message;
    throw new Error(`image ${path}: cannot read it: ${why}`);
  }
  let img: Image;
  try {
    img = decode(bytes);
  } catch (e) {
    throw new Error(`image ${path}: not a readable PNG or JPEG (${(e as Error).message})`);
  }
  const raw = img.getRawImage();
  const { width, height, channels, bitDepth } = raw;
  if (!width || !height) throw new Error(`image ${path}: it has no pixels (${width}×${height})`);
  const colours = img.components;
  if (colours !== 1 && colours !== 3) throw new Error(`image ${path}: unsupported colour model ${img.colorModel}`);
  const shift = bitDepth === 16 ? 8 : 0;
  const data = new Uint8Array(width * height * 3);
  for (let p = 0; p < width * height; p++) {
    for (let c = 0; c < 3; c++) data[3 * p + c] = raw.data[p * channels + (colours === 1 ? 0 : c)] >> shift;
  }
  return { width, height, data };
}

/** Refuses images the reference pipeline refuses (side < 64 px, aspect ratio > 8:1). */
export function checkReferenceImage(img: { width: number; height: number }, what = "reference image"): void {
  const { width, height } = img;
  if (width < MIN_REFERENCE_SIDE || height < MIN_REFERENCE_SIDE) {
    throw new Error(`${what}: ${width}×${height} is too small, both sides must be at least ${MIN_REFERENCE_SIDE} px`);
  }
  const aspect = Math.max(width / height, height / width);
  if (aspect > MAX_REFERENCE_ASPECT) {
    throw new Error(
      `${what}: ${width}×${height} has an aspect ratio of ${aspect.toFixed(1)}:1, at most ${MAX_REFERENCE_ASPECT}:1 is allowed`,
    );
  }
}

/** The crop window the reference takes: (w − width) // 2, (h − height) // 2. */
export function centreCrop(img: RgbImage, width: number, height: number): RgbImage {
  if (!Number.isInteger(width) || !Number.isInteger(height) || width <= 0 || height <= 0 || width > img.width || height > img.height) {
    throw new Error(`cannot crop a ${img.width}×${img.height} image to ${width}×${height}`);
  }
  const left = Math.floor((img.width - width) / 2), top = Math.floor((img.height - height) / 2);
  const data = new Uint8Array(width * height * 3);
  for (let y = 0; y < height; y++) {
    const src = ((top + y) * img.width + left) * 3;
    data.set(img.data.subarray(src, src + width * 3), y * width * 3);
  }
  return { width, height, data };
}

/** 8-bit RGB → float32 planes [3, h·w] in [−1, 1], computed as the reference does: 2·(v/255) − 1 in float32. */
export function toModelPixels(img: RgbImage): Float32Array {
  const n = img.width * img.height;
  const out = new Float32Array(3 * n);
  for (let p = 0; p < n; p++) {
    for (let c = 0; c < 3; c++) out[c * n + p] = Math.fround(2 * Math.fround(img.data[3 * p + c] / 255) - 1);
  }
  return out;
}

/** The size a reference of width × height is resized to before cropping (itself when within 1024² pixels). */
export function referenceResize(width: number, height: number): { width: number; height: number } {
  if (width * height <= MAX_REFERENCE_AREA) return { width, height };
  const scale = Math.sqrt(MAX_REFERENCE_AREA / (width * height));
  return { width: Math.floor(width * scale), height: Math.floor(height * scale) };
}

/** A reference image prepared for the VAE encoder, with its final size (multiples of 16). */
export interface PreparedReference {
  pixels: Float32Array;
  width: number;
  height: number;
}

/** Flux2KleinPipeline's reference preparation (steps 1–4 in the header). */
export function preprocessReference(img: RgbImage, what = "reference image"): PreparedReference {
  checkReferenceImage(img, what);
  const size = referenceResize(img.width, img.height);
  const resized = size.width === img.width && size.height === img.height ? img : resizeLanczos(img, size.width, size.height);
  const width = Math.floor(resized.width / REFERENCE_MULTIPLE) * REFERENCE_MULTIPLE;
  const height = Math.floor(resized.height / REFERENCE_MULTIPLE) * REFERENCE_MULTIPLE;
  return { pixels: toModelPixels(centreCrop(resized, width, height)), width, height };
}

/** The pipeline's output mapping of decoder values: clamp(x / 2 + 0.5, 0, 1), in float32. */
export function toUnitRange(decoderOutput: Float32Array): Float32Array {
  const out = new Float32Array(decoderOutput.length);
  for (let i = 0; i < out.length; i++) {
    const v = Math.fround(decoderOutput[i] / 2 + 0.5);
    out[i] = v < 0 ? 0 : v > 1 ? 1 : v;
  }
  return out;
}

/** Round half to even, as numpy's round does when the reference quantises images. */
function roundHalfEven(x: number): number {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** Write planes [3, h·w] with values in [0, 1] as an 8-bit RGB PNG (round(v·255), half to even, as the reference).
 * The file is written beside its destination under a temporary name and renamed, so a failure leaves no partial file. */
export async function savePng(path: string, chw: Float32Array, width: number, height: number): Promise<void> {
  const n = width * height;
  if (!Number.isInteger(width) || !Number.isInteger(height) || width <= 0 || height <= 0) {
    throw new Error(`PNG ${path}: invalid size ${width}×${height}`);
  }
  if (chw.length !== 3 * n) throw new Error(`PNG ${path}: a ${width}×${height} RGB image needs ${3 * n} values, got ${chw.length}`);
  const data = new Uint8Array(3 * n);
  for (let p = 0; p < n; p++) {
    for (let c = 0; c < 3; c++) {
      const v = chw[c * n + p];
      if (!(v >= 0 && v <= 1)) throw new Error(`PNG ${path}: value ${v} at channel ${c}, pixel ${p} is outside [0, 1]`);
      data[3 * p + c] = roundHalfEven(Math.fround(v * 255));
    }
  }
  const bytes = encodePng(new Image(width, height, { colorModel: "RGB", data }));
  const tmp = join(dirname(path), `.${crypto.randomUUID()}.png.tmp`);
  try {
    await Deno.writeFile(tmp, bytes);
    await Deno.rename(tmp, path);
  } catch (e) {
    await Deno.remove(tmp).catch(() => {});
    throw new Error(`PNG ${path}: cannot write it: ${(e as Error).message}`);
  }
}

// ---- Lanczos resampling, as PIL's Image.resize(…, LANCZOS) computes it for 8-bit images ----------------------
// Separable: a horizontal pass, then a vertical pass, each rounding to 8 bits. Per output sample, the filter
// (windowed sinc, support 3, widened by the scale when shrinking) is normalised and turned into fixed-point
// coefficients with 22 fractional bits; the sum starts at one half and is shifted back and clipped.

const PRECISION_BITS = 32 - 8 - 2;
const LANCZOS_SUPPORT = 3;

function sinc(x: number): number {
  if (x === 0) return 1;
  x *= Math.PI;
  return Math.sin(x) / x;
}

function lanczos(x: number): number {
  return x >= -LANCZOS_SUPPORT && x < LANCZOS_SUPPORT ? sinc(x) * sinc(x / LANCZOS_SUPPORT) : 0;
}

/** Per output index: first input index and fixed-point coefficients. */
function lanczosCoefficients(inSize: number, outSize: number): { start: number[]; coeffs: Int32Array[] } {
  const scale = inSize / outSize;
  const filterScale = Math.max(scale, 1);
  const support = LANCZOS_SUPPORT * filterScale;
  const start: number[] = [];
  const coeffs: Int32Array[] = [];
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    const xmin = Math.max(Math.trunc(center - support + 0.5), 0);
    const xmax = Math.min(Math.trunc(center + support + 0.5), inSize) - xmin;
    const k = new Float64Array(xmax);
    let sum = 0;
    for (let x = 0; x < xmax; x++) {
      k[x] = lanczos((x + xmin - center + 0.5) / filterScale);
      sum += k[x];
    }
    const fixed = new Int32Array(xmax);
    for (let x = 0; x < xmax; x++) {
      const w = sum !== 0 ? k[x] / sum : k[x];
      fixed[x] = w < 0 ? Math.trunc(-0.5 + w * (1 << PRECISION_BITS)) : Math.trunc(0.5 + w * (1 << PRECISION_BITS));
    }
    start.push(xmin);
    coeffs.push(fixed);
  }
  return { start, coeffs };
}

function clip8(acc: number): number {
  const v = Math.floor(acc / (1 << PRECISION_BITS));
  return v < 0 ? 0 : v > 255 ? 255 : v;
}

/** Resize an 8-bit RGB image with PIL's Lanczos filter. */
export function resizeLanczos(img: RgbImage, width: number, height: number): RgbImage {
  if (!Number.isInteger(width) || !Number.isInteger(height) || width <= 0 || height <= 0) {
    throw new Error(`cannot resize a ${img.width}×${img.height} image to ${width}×${height}`);
  }
  let src = img;
  if (width !== img.width) {
    const { start, coeffs } = lanczosCoefficients(img.width, width);
    const data = new Uint8Array(width * img.height * 3);
    for (let y = 0; y < img.height; y++) {
      for (let x = 0; x < width; x++) {
        const k = coeffs[x], x0 = start[x];
        for (let c = 0; c < 3; c++) {
          let acc = 1 << (PRECISION_BITS - 1);
          for (let i = 0; i < k.length; i++) acc += img.data[(y * img.width + x0 + i) * 3 + c] * k[i];
          data[(y * width + x) * 3 + c] = clip8(acc);
        }
      }
    }
    src = { width, height: img.height, data };
  }
  if (height !== src.height) {
    const { start, coeffs } = lanczosCoefficients(src.height, height);
    const data = new Uint8Array(width * height * 3);
    for (let y = 0; y < height; y++) {
      const k = coeffs[y], y0 = start[y];
      for (let x = 0; x < width; x++) {
        for (let c = 0; c < 3; c++) {
          let acc = 1 << (PRECISION_BITS - 1);
          for (let i = 0; i < k.length; i++) acc += src.data[((y0 + i) * width + x) * 3 + c] * k[i];
          data[(y * width + x) * 3 + c] = clip8(acc);
        }
      }
    }
    src = { width, height, data };
  }
  return src;
}
