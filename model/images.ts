// Images at the pipeline's boundary: reading reference images, preparing them the way diffusers' Flux2KleinPipeline
// does, and writing results as PNG (encodePng: 8-bit RGB, per-row filter choice, node:zlib deflate).
//
// Reading (loadImage, decodeImage) gives what PIL gives for Image.open(path).convert("RGB"), the conversion diffusers'
// image processor applies:
//   - PNG is decoded here (node:zlib inflates; filters, Adam7 and sample unpacking below), every colour type and bit
//     depth the format allows. Alpha and tRNS transparency are dropped, never composited. Greyscale is repeated into
//     R, G and B; 1-, 2- and 4-bit grey is scaled to 0..255 (×255, ×85, ×17). 16-bit samples keep their high byte, except
//     16-bit grey without alpha, which PIL opens as 32-bit integers and clips to 255 (so 0x0100 and above read as 255).
//     Decoded PNGs match PIL exactly.
//   - JPEG (baseline, extended and progressive Huffman, 8-bit, greyscale or three components) is entropy-decoded and
//     inverse-transformed by jpeg-js; chroma upsampling ("fancy", triangular) and the YCbCr → RGB conversion are
//     libjpeg's, reproduced below, so pixels stay within 3 levels of PIL, 0.25 on average (jpeg-js's IDCT rounds a
//     sample differently by up to 1, and the colour matrix scales that by up to 1.772). jpeg-js misreads one valid
//     layout, a one-component scan whose last restart interval is partial; such files are refused by name.
//     EXIF orientation is not applied (convert("RGB") does not apply it either).
//   - Before any decoding, the size in the header (PNG IHDR, JPEG SOFn) is checked against a pixel limit:
//     DEFAULT_MAX_PIXELS, raised by the maxPixels option or the KLEINSCOPE_MAX_PIXELS environment variable.
//   - Only regular files are opened (a FIFO would block the read forever). Anything unreadable, truncated or corrupt
//     is one Error naming the file and the fault.
//
// Reference preprocessing (Flux2KleinPipeline.__call__ with Flux2ImageProcessor), reproduced step by step:
//   1. refuse images with a side under 64 px or an aspect ratio over 8:1 (the reference's check_image_input);
//   2. if the area exceeds 1024², resize with Lanczos to about 1024² keeping the aspect ratio
//      (width = ⌊w·s⌋, height = ⌊h·s⌋, s = √(1024² / (w·h)); PIL's LANCZOS resampling, reimplemented below);
//   3. centre-crop to the largest multiples of 16 (no resize);
//   4. map 8-bit values v to 2·(v/255) − 1 in float32, planes in R, G, B order.

import { crc32 } from "../runtime/crc32.ts";
import jpegJs from "npm:jpeg-js@0.4.4";
import { dirname, join } from "node:path";
import { deflateSync, inflateSync } from "node:zlib";
import { printable } from "../runtime/printable.ts";

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

/** Largest width × height read by default: 4096 × 4096 (16.8 MP). The pipeline shrinks every reference to about
 * 1024² anyway, so more pixels only cost time and memory; 16.8 MP holds a 12 MP phone photo (4032 × 3024) or a 4K
 * frame, and decoding it needs a few hundred MB (a JPEG's coefficient blocks take about 12 bytes a pixel). */
export const DEFAULT_MAX_PIXELS = 4096 * 4096;
/** Environment variable that overrides DEFAULT_MAX_PIXELS (a whole number of pixels). */
export const MAX_PIXELS_ENV = "KLEINSCOPE_MAX_PIXELS";

export interface LoadImageOptions {
  /** Largest width × height accepted; default: $KLEINSCOPE_MAX_PIXELS if set, else DEFAULT_MAX_PIXELS. */
  maxPixels?: number;
}

/** The pixel limit in force: the option, else the environment variable, else the default. */
export function resolveMaxPixels(options: LoadImageOptions = {}): number {
  if (options.maxPixels !== undefined) {
    if (!Number.isSafeInteger(options.maxPixels) || options.maxPixels <= 0) {
      throw new Error(`maxPixels ${options.maxPixels}: must be a positive whole number of pixels`);
    }
    return options.maxPixels;
  }
  let env: string | undefined;
  try {
    env = Deno.env.get(MAX_PIXELS_ENV);
  } catch {
    env = undefined; // no permission to read the environment: the variable cannot have been meant
  }
  if (env === undefined || env.trim() === "") return DEFAULT_MAX_PIXELS;
  const n = /^\s*\d+\s*$/.test(env) ? Number(env) : NaN;
  if (!Number.isSafeInteger(n) || n <= 0) {
    throw new Error(`${MAX_PIXELS_ENV}=${printable(env)}: must be a positive whole number of pixels (e.g. 36000000 for 6000×6000)`);
  }
  return n;
}

/** A fault of the image file itself; loadImage/decodeImage prefix it with the file's name. */
class ImageFault extends Error {}

function fault(message: string): never {
  throw new ImageFault(message);
}

function megapixels(n: number): string {
  return `${(n / 1e6).toFixed(1)} MP`;
}

function checkPixelLimit(width: number, height: number, limit: number): void {
  const n = width * height;
  if (n > limit) {
    fault(
      `${width}×${height} is ${megapixels(n)}, over the limit of ${limit} pixels (${megapixels(limit)}); ` +
        `to read it, set ${MAX_PIXELS_ENV}=${n} or pass { maxPixels: ${n} }`,
    );
  }
}

/** Read a PNG or JPEG as 8-bit RGB the way PIL's Image.open(path).convert("RGB") does (see the header). Only regular
 * files are opened; a missing, unreadable, oversized or corrupt file throws one Error naming the path. */
export async function loadImage(path: string, options: LoadImageOptions = {}): Promise<RgbImage> {
  const what = `image ${printable(path)}`;
  let info: Deno.FileInfo;
  try {
    info = await Deno.stat(path);
  } catch (e) {
    const why = e instanceof Deno.errors.NotFound ? "no such file" : oneLine(e);
    throw new Error(`${what}: cannot read it: ${why}`);
  }
  if (!info.isFile) throw new Error(`${what}: not a regular file (it is ${fileKind(info)}); only image files can be read`);
  if (info.size === 0) throw new Error(`${what}: it is empty (0 bytes)`);
  let bytes: Uint8Array;
  try {
    bytes = await Deno.readFile(path);
  } catch (e) {
    throw new Error(`${what}: cannot read it: ${oneLine(e)}`);
  }
  return decodeImage(bytes, path, options);
}

function fileKind(info: Deno.FileInfo): string {
  if (info.isDirectory) return "a folder";
  if (info.isFifo) return "a named pipe (FIFO)";
  if (info.isCharDevice) return "a character device";
  if (info.isBlockDevice) return "a block device";
  if (info.isSocket) return "a socket";
  return "not a plain file";
}

function oneLine(e: unknown): string {
  return printable(String(e instanceof Error ? e.message : e).replace(/\s+/g, " ").trim());
}

/** Decode PNG or JPEG bytes (see loadImage); `name` names the source in errors. */
export function decodeImage(bytes: Uint8Array, name: string, options: LoadImageOptions = {}): RgbImage {
  const limit = resolveMaxPixels(options);
  try {
    if (bytes.length === 0) fault("it is empty (0 bytes)");
    if (startsWith(bytes, PNG_SIGNATURE)) return decodePng(bytes, limit);
    if (startsWith(bytes, [0xff, 0xd8, 0xff])) return decodeJpeg(bytes, limit);
    const head = [...bytes.subarray(0, 8)].map((b) => b.toString(16).padStart(2, "0")).join(" ");
    fault(`not a readable PNG or JPEG (it starts with bytes ${head}, not a PNG or JPEG signature)`);
  } catch (e) {
    if (e instanceof ImageFault) throw new Error(`image ${printable(name)}: ${e.message}`);
    // Anything else (an allocation failing, say) is still reported against this file, on one line.
    throw new Error(`image ${printable(name)}: cannot decode it (${oneLine(e)})`);
  }
}

/** Width and height from the header alone (PNG IHDR, JPEG SOFn), without decoding; throws like decodeImage. */
export function imageSize(bytes: Uint8Array, name: string): { format: "png" | "jpeg"; width: number; height: number } {
  try {
    if (startsWith(bytes, PNG_SIGNATURE)) {
      const { width, height } = pngHeader(bytes);
      return { format: "png", width, height };
    }
    if (startsWith(bytes, [0xff, 0xd8, 0xff])) {
      const { width, height } = jpegFrame(bytes);
      return { format: "jpeg", width, height };
    }
    fault("not a readable PNG or JPEG");
  } catch (e) {
    if (e instanceof ImageFault) throw new Error(`image ${printable(name)}: ${e.message}`);
    throw e;
  }
}

function startsWith(bytes: Uint8Array, prefix: number[]): boolean {
  return bytes.length >= prefix.length && prefix.every((b, i) => bytes[i] === b);
}

// ---- PNG ---------------------------------------------------------------------------------------------------

const PNG_SIGNATURE = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];
const PNG_CHANNELS: Record<number, number> = { 0: 1, 2: 3, 3: 1, 4: 2, 6: 4 };
const PNG_DEPTHS: Record<number, number[]> = { 0: [1, 2, 4, 8, 16], 2: [8, 16], 3: [1, 2, 4, 8], 4: [8, 16], 6: [8, 16] };
/** Adam7 passes: first column, first row, column step, row step. */
const ADAM7 = [[0, 0, 8, 8], [4, 0, 8, 8], [0, 4, 4, 8], [2, 0, 4, 4], [0, 2, 2, 4], [1, 0, 2, 2], [0, 1, 1, 2]];

interface PngHeader {
  width: number;
  height: number;
  bitDepth: number;
  colourType: number;
  interlaced: boolean;
}

function u32(b: Uint8Array, at: number): number {
  return ((b[at] << 24) | (b[at + 1] << 16) | (b[at + 2] << 8) | b[at + 3]) >>> 0;
}

interface PngChunk {
  type: string;
  data: Uint8Array;
  /** Offset of the chunk's length field, for messages. */
  at: number;
  next: number;
}

/** The chunk at `at`, its length, type and CRC checked. */
function pngChunk(bytes: Uint8Array, at: number): PngChunk {
  if (at + 8 > bytes.length) fault(`truncated: the file ends inside the chunk header at byte ${at} (no IEND chunk)`);
  const length = u32(bytes, at);
  const typeBytes = bytes.subarray(at + 4, at + 8);
  if (![...typeBytes].every((c) => (c >= 65 && c <= 90) || (c >= 97 && c <= 122))) {
    fault(`corrupt chunk at byte ${at}: its type is not four letters`);
  }
  const type = String.fromCharCode(...typeBytes);
  if (length > 0x7fffffff || at + 12 + length > bytes.length) {
    fault(`truncated: the ${type} chunk at byte ${at} declares ${length} bytes of data, but the file ends at byte ${bytes.length}`);
  }
  const stored = u32(bytes, at + 8 + length);
  const computed = crc32(bytes.subarray(at + 4, at + 8 + length));
  if (stored !== computed) {
    fault(`the ${type} chunk at byte ${at} fails its CRC check (stored ${hex32(stored)}, computed ${hex32(computed)})`);
  }
  return { type, data: bytes.subarray(at + 8, at + 8 + length), at, next: at + 12 + length };
}

function hex32(n: number): string {
  return `0x${n.toString(16).padStart(8, "0")}`;
}

function pngHeader(bytes: Uint8Array): PngHeader & { next: number } {
  const c = pngChunk(bytes, 8);
  if (c.type !== "IHDR") fault(`the first chunk is ${c.type}, not IHDR`);
  if (c.data.length !== 13) fault(`IHDR has ${c.data.length} bytes, not 13`);
  const width = u32(c.data, 0), height = u32(c.data, 4);
  const [bitDepth, colourType, compression, filter, interlace] = c.data.subarray(8, 13);
  if (width === 0 || height === 0 || width > 0x7fffffff || height > 0x7fffffff) fault(`IHDR gives an invalid size ${width}×${height}`);
  if (!(colourType in PNG_DEPTHS)) fault(`IHDR gives colour type ${colourType}; PNG defines 0, 2, 3, 4 and 6`);
  if (!PNG_DEPTHS[colourType].includes(bitDepth)) {
    fault(`IHDR gives bit depth ${bitDepth} for colour type ${colourType}; allowed: ${PNG_DEPTHS[colourType].join(", ")}`);
  }
  if (compression !== 0) fault(`IHDR gives compression method ${compression}; PNG defines only 0`);
  if (filter !== 0) fault(`IHDR gives filter method ${filter}; PNG defines only 0`);
  if (interlace > 1) fault(`IHDR gives interlace method ${interlace}; PNG defines 0 and 1`);
  return { width, height, bitDepth, colourType, interlaced: interlace === 1, next: c.next };
}

/** The passes of an image: size in pixels and bytes per row (without the filter byte). */
function pngPasses(h: PngHeader): { x0: number; y0: number; dx: number; dy: number; cols: number; rows: number; rowBytes: number }[] {
  const bits = PNG_CHANNELS[h.colourType] * h.bitDepth;
  return (h.interlaced ? ADAM7 : [[0, 0, 1, 1]]).map(([x0, y0, dx, dy]) => {
    const cols = h.width > x0 ? Math.ceil((h.width - x0) / dx) : 0;
    const rows = h.height > y0 ? Math.ceil((h.height - y0) / dy) : 0;
    return { x0, y0, dx, dy, cols, rows, rowBytes: Math.ceil((cols * bits) / 8) };
  }).filter((p) => p.cols > 0 && p.rows > 0);
}

function decodePng(bytes: Uint8Array, maxPixels: number): RgbImage {
  const header = pngHeader(bytes);
  const { width, height, bitDepth, colourType } = header;
  checkPixelLimit(width, height, maxPixels);
  let palette: Uint8Array | null = null;
  const idat: Uint8Array[] = [];
  let idatEnded = false;
  for (let at = header.next;;) {
    if (at >= bytes.length) fault("truncated: the file ends before its IEND chunk");
    const c = pngChunk(bytes, at);
    at = c.next;
    if (c.type === "IEND") break;
    if (c.type === "IDAT") {
      if (idatEnded) fault(`IDAT chunk at byte ${c.at} follows another chunk after the image data; IDAT chunks must be consecutive`);
      idat.push(c.data);
      continue;
    }
    if (idat.length > 0) idatEnded = true;
    if (c.type === "IHDR") fault(`a second IHDR chunk at byte ${c.at}`);
    if (c.type === "PLTE") {
      if (idat.length > 0) fault(`the PLTE chunk at byte ${c.at} comes after the image data`);
      if (palette) fault(`a second PLTE chunk at byte ${c.at}`);
      if (c.data.length === 0 || c.data.length % 3 !== 0 || c.data.length > 768) {
        fault(`the PLTE chunk has ${c.data.length} bytes; it must hold 1 to 256 RGB entries (3 bytes each)`);
      }
      palette = c.data; // a suggested palette in a grey or true-colour image is ignored, as PIL and libpng do
    } else if ((c.type.charCodeAt(0) & 0x20) === 0) {
      fault(`unknown critical chunk ${c.type} at byte ${c.at}`);
    } // other ancillary chunks (tRNS, gAMA, text, …) do not change what convert("RGB") gives
  }
  if (colourType === 3 && !palette) fault("a palette image without a PLTE chunk");
  if (idat.length === 0) fault("no IDAT chunk: the file holds no image data");

  const passes = pngPasses(header);
  const expected = passes.reduce((s, p) => s + p.rows * (1 + p.rowBytes), 0);
  const compressed = idat.length === 1 ? idat[0] : concatBytes(idat);
  let raw: Uint8Array;
  try {
    raw = inflateSync(compressed, { maxOutputLength: expected });
  } catch (e) {
    if ((e as { code?: string }).code === "ERR_BUFFER_TOO_LARGE") {
      fault(`the image data (IDAT) inflates to more than the ${expected} bytes a ${width}×${height} image needs`);
    }
    fault(`the image data (IDAT) is corrupt or truncated (zlib: ${oneLine(e)})`);
  }
  if (raw.length < expected) fault(`the image data (IDAT) is truncated: it inflates to ${raw.length} of the ${expected} bytes needed`);

  const out = new Uint8Array(width * height * 3);
  const channels = PNG_CHANNELS[colourType];
  const bpp = Math.max(1, (channels * bitDepth) >> 3); // bytes per complete pixel, for the filters
  const greyScale = bitDepth === 1 ? 255 : bitDepth === 2 ? 85 : bitDepth === 4 ? 17 : 1;
  const entries = palette ? palette.length / 3 : 0;
  let pos = 0;
  passes.forEach((p, passIndex) => {
    let prior = new Uint8Array(p.rowBytes), cur = new Uint8Array(p.rowBytes);
    for (let r = 0; r < p.rows; r++) {
      const filter = raw[pos];
      const src = raw.subarray(pos + 1, pos + 1 + p.rowBytes);
      pos += 1 + p.rowBytes;
      if (!unfilter(filter, src, prior, cur, bpp)) {
        fault(`row ${r}${header.interlaced ? ` of Adam7 pass ${passIndex + 1}` : ""} has filter type ${filter}; PNG defines 0 to 4`);
      }
      const y = p.y0 + r * p.dy;
      for (let i = 0; i < p.cols; i++) {
        const o = (y * width + p.x0 + i * p.dx) * 3;
        if (colourType === 3) {
          const k = subByteSample(cur, i, bitDepth);
          if (k >= entries) fault(`pixel (${p.x0 + i * p.dx}, ${y}) uses palette entry ${k}, but PLTE has only ${entries} entries`);
          out[o] = palette![3 * k];
          out[o + 1] = palette![3 * k + 1];
          out[o + 2] = palette![3 * k + 2];
        } else if (colourType === 0 || colourType === 4) {
          let v: number;
          if (bitDepth === 16) {
            const s = i * channels * 2;
            // Grey+alpha keeps the high byte (PIL's "LA;16B"); plain 16-bit grey becomes mode "I", clipped to 255.
            v = colourType === 4 ? cur[s] : cur[s] !== 0 ? 255 : cur[s + 1];
          } else if (bitDepth === 8) {
            v = cur[i * channels];
          } else {
            v = subByteSample(cur, i, bitDepth) * greyScale;
          }
          out[o] = out[o + 1] = out[o + 2] = v;
        } else {
          const s = i * channels * (bitDepth >> 3); // RGB or RGBA; 16-bit keeps the high byte ("RGB;16B")
          const step = bitDepth >> 3;
          out[o] = cur[s];
          out[o + 1] = cur[s + step];
          out[o + 2] = cur[s + 2 * step];
        }
      }
      [prior, cur] = [cur, prior];
    }
  });
  return { width, height, data: out };
}

/** Sample i of a row packed MSB first at 1, 2 or 4 bits (8 bits read directly). */
function subByteSample(row: Uint8Array, i: number, depth: number): number {
  if (depth === 8) return row[i];
  const bit = i * depth;
  return (row[bit >> 3] >> (8 - depth - (bit & 7))) & ((1 << depth) - 1);
}

/** Reverse one row's filter into `cur`; false for an unknown filter type. */
function unfilter(filter: number, src: Uint8Array, prior: Uint8Array, cur: Uint8Array, bpp: number): boolean {
  const n = src.length;
  switch (filter) {
    case 0:
      cur.set(src);
      return true;
    case 1:
      for (let i = 0; i < n; i++) cur[i] = src[i] + (i >= bpp ? cur[i - bpp] : 0);
      return true;
    case 2:
      for (let i = 0; i < n; i++) cur[i] = src[i] + prior[i];
      return true;
    case 3:
      for (let i = 0; i < n; i++) cur[i] = src[i] + (((i >= bpp ? cur[i - bpp] : 0) + prior[i]) >> 1);
      return true;
    case 4:
      for (let i = 0; i < n; i++) {
        const a = i >= bpp ? cur[i - bpp] : 0, b = prior[i], c = i >= bpp ? prior[i - bpp] : 0;
        const pa = Math.abs(b - c), pb = Math.abs(a - c), pc = Math.abs(a + b - 2 * c);
        cur[i] = src[i] + (pa <= pb && pa <= pc ? a : pb <= pc ? b : c);
      }
      return true;
    default:
      return false;
  }
}

function concatBytes(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((s, p) => s + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

// ---- JPEG --------------------------------------------------------------------------------------------------

interface JpegComponent {
  id: number;
  h: number;
  v: number;
}

interface JpegFrame {
  width: number;
  height: number;
  components: JpegComponent[];
  /** Three components hold R, G, B rather than Y, Cb, Cr (libjpeg's rule: no JFIF, and Adobe transform 0 or ids R G B). */
  rgb: boolean;
  /** Offsets of APP14 "Adobe" segments' transform bytes. */
  adobeTransformAt: number[];
}

const SOF_NAMES: Record<number, string> = {
  0xc3: "lossless",
  0xc5: "differential sequential",
  0xc6: "differential progressive",
  0xc7: "differential lossless",
  0xc9: "arithmetic-coded sequential",
  0xca: "arithmetic-coded progressive",
  0xcb: "arithmetic-coded lossless",
  0xcd: "arithmetic-coded differential sequential",
  0xce: "arithmetic-coded differential progressive",
  0xcf: "arithmetic-coded differential lossless",
};

/** Walk the marker structure from SOI to EOI: the frame header (SOFn) is read and checked, and a file cut off before
 * its end-of-image marker is refused (a decoder would otherwise fill the missing part with grey). */
function jpegFrame(bytes: Uint8Array): JpegFrame {
  const n = bytes.length;
  let frame: JpegFrame | null = null;
  let jfif = false, adobeTransform = -1, scans = 0, restartInterval = 0;
  let misreadScan = "";
  const adobeTransformAt: number[] = [];
  let at = 2;
  for (;;) {
    if (at >= n) {
      fault(frame ? "truncated: the file ends before its end-of-image marker" : "truncated: the file ends before its frame header (SOF)");
    }
    if (bytes[at] !== 0xff) fault(`corrupt: expected a marker at byte ${at}, found 0x${bytes[at].toString(16).padStart(2, "0")}`);
    while (at < n && bytes[at] === 0xff) at++; // fill bytes
    if (at >= n) continue;
    const marker = bytes[at++];
    if (marker === 0xd9) break; // EOI
    if ((marker >= 0xd0 && marker <= 0xd7) || marker === 0x01) continue; // stand-alone markers
    if (marker === 0xd8 || marker === 0x00) {
      fault(`corrupt: unexpected marker 0xff${marker.toString(16).padStart(2, "0")} at byte ${at - 2}`);
    }
    if (at + 2 > n) fault("truncated: the file ends inside a marker segment");
    const length = (bytes[at] << 8) | bytes[at + 1];
    if (length < 2 || at + length > n) {
      fault(`truncated or corrupt: the segment at byte ${at - 2} declares ${length} bytes, past the end of the file`);
    }
    const seg = bytes.subarray(at + 2, at + length);
    if (marker >= 0xc0 && marker <= 0xcf && marker !== 0xc4 && marker !== 0xc8 && marker !== 0xcc) {
      if (frame) fault("more than one frame header (SOF): multi-frame JPEGs are not supported");
      if (SOF_NAMES[marker]) fault(`it uses ${SOF_NAMES[marker]} JPEG coding, which is not supported (baseline and progressive are)`);
      if (seg.length < 6) fault("the frame header (SOF) is too short");
      const precision = seg[0], height = (seg[1] << 8) | seg[2], width = (seg[3] << 8) | seg[4], count = seg[5];
      if (precision !== 8) fault(`it has ${precision}-bit samples; only 8-bit JPEGs are supported`);
      if (width === 0 || height === 0) {
        fault(`the frame header gives a size of ${width}×${height} (a height set later by DNL is not supported)`);
      }
      if (seg.length < 6 + 3 * count) fault("the frame header (SOF) is too short for its components");
      const components: JpegComponent[] = [];
      for (let i = 0; i < count; i++) {
        const id = seg[6 + 3 * i], h = seg[7 + 3 * i] >> 4, v = seg[7 + 3 * i] & 15;
        if (h < 1 || h > 4 || v < 1 || v > 4) fault(`component ${id} has sampling factors ${h}×${v}; JPEG allows 1 to 4`);
        components.push({ id, h, v });
      }
      if (count === 4) fault("it has four components (CMYK or YCCK), which is not supported; convert it to RGB first");
      if (count !== 1 && count !== 3) fault(`it has ${count} colour components; greyscale (1) or colour (3) is expected`);
      const maxH = Math.max(...components.map((c) => c.h)), maxV = Math.max(...components.map((c) => c.v));
      for (const c of components) {
        if (maxH % c.h !== 0 || maxV % c.v !== 0) {
          fault(`component ${c.id} has sampling factors ${c.h}×${c.v}, a fraction of ${maxH}×${maxV}; not supported`);
        }
      }
      const ids = components.map((c) => c.id).join(",");
      const rgb = count === 3 && !jfif && (adobeTransform >= 0 ? adobeTransform === 0 : ids === "82,71,66");
      frame = { width, height, components, rgb, adobeTransformAt };
    } else if (marker === 0xe0 && seg.length >= 14 && startsWith(seg, [0x4a, 0x46, 0x49, 0x46, 0])) {
      jfif = true;
    } else if (marker === 0xee && seg.length >= 12 && startsWith(seg, [0x41, 0x64, 0x6f, 0x62, 0x65])) {
      adobeTransform = seg[11];
      adobeTransformAt.push(at + 2 + 11);
    } else if (marker === 0xdd && seg.length >= 2) {
      restartInterval = (seg[0] << 8) | seg[1];
    } else if (marker === 0xda) {
      if (!frame) fault("a scan (SOS) comes before the frame header (SOF)");
      scans++;
      // jpeg-js 0.4.4 reads past the end of a one-component scan whose last restart interval is partial.
      const only = seg[0] === 1 ? frame.components.find((c) => c.id === seg[1]) : undefined;
      if (only && restartInterval > 0 && !misreadScan) {
        const maxH = Math.max(...frame.components.map((c) => c.h)), maxV = Math.max(...frame.components.map((c) => c.v));
        const blocks = Math.ceil(Math.ceil((frame.width * only.h) / maxH) / 8) * Math.ceil(Math.ceil((frame.height * only.v) / maxV) / 8);
        if (blocks % restartInterval !== 0) {
          misreadScan = `a one-component scan of ${blocks} blocks with restart markers every ${restartInterval}`;
        }
      }
      // Entropy-coded data runs to the next marker other than a stuffed 0xff00 or a restart marker.
      at += length;
      while (at < n && !(bytes[at] === 0xff && at + 1 < n && bytes[at + 1] !== 0 && !(bytes[at + 1] >= 0xd0 && bytes[at + 1] <= 0xd7))) {
        at++;
      }
      continue;
    }
    at += length;
  }
  if (!frame) fault("no frame header (SOF) before the end-of-image marker");
  if (scans === 0) fault("no scan (SOS): the file holds no image data");
  if (misreadScan) {
    fault(
      `it has ${misreadScan}, a valid layout the JPEG decoder (jpeg-js 0.4.4) cannot read; re-save it without restart markers, or as PNG`,
    );
  }
  return frame;
}

// libjpeg's YCbCr → RGB tables (jdcolor.c): 16-bit fixed point, rounded.
const YCC = (() => {
  const fix = (x: number) => Math.floor(x * 65536 + 0.5);
  const crR = new Int32Array(256), cbB = new Int32Array(256), crG = new Int32Array(256), cbG = new Int32Array(256);
  for (let i = 0; i < 256; i++) {
    const x = i - 128;
    crR[i] = (fix(1.402) * x + 32768) >> 16;
    cbB[i] = (fix(1.772) * x + 32768) >> 16;
    crG[i] = -fix(0.71414) * x;
    cbG[i] = -fix(0.34414) * x + 32768;
  }
  return { crR, cbB, crG, cbG };
})();

function clampByte(v: number): number {
  return v < 0 ? 0 : v > 255 ? 255 : v;
}

function decodeJpeg(bytes: Uint8Array, maxPixels: number): RgbImage {
  const frame = jpegFrame(bytes);
  const { width, height, components } = frame;
  checkPixelLimit(width, height, maxPixels);
  // jpeg-js applies its own YCbCr conversion whenever an Adobe segment asks for one; with the transform byte zeroed
  // (in a copy) it hands back the components as decoded, for libjpeg's upsampling and conversion below.
  let source = bytes;
  if (frame.adobeTransformAt.length > 0) {
    source = bytes.slice();
    for (const i of frame.adobeTransformAt) source[i] = 0;
  }
  let decoded: { width: number; height: number; data: Uint8Array };
  try {
    decoded = jpegJs.decode(source, {
      useTArray: true,
      formatAsRGBA: false,
      colorTransform: false,
      tolerantDecoding: false,
      maxResolutionInMP: maxPixels / 1e6,
      // Coefficient blocks (256 bytes per 64 samples), component lines and output: about 24 bytes a pixel at most.
      maxMemoryUsageInMB: Math.ceil((maxPixels * 24) / 2 ** 20) + 16,
    }) as { width: number; height: number; data: Uint8Array };
  } catch (e) {
    fault(`corrupt JPEG data (${oneLine(e)})`);
  }
  if (decoded.width !== width || decoded.height !== height) {
    fault(`decoded ${decoded.width}×${decoded.height}, but the header says ${width}×${height}`);
  }
  const n = width * height;
  const out = new Uint8Array(n * 3);
  if (components.length === 1) {
    for (let p = 0; p < n; p++) out[3 * p] = out[3 * p + 1] = out[3 * p + 2] = decoded.data[3 * p];
    return { width, height, data: out };
  }
  const maxH = Math.max(...components.map((c) => c.h)), maxV = Math.max(...components.map((c) => c.v));
  const planes = components.map((c, k) => upsampleLikeLibjpeg(decoded.data, k, width, height, maxH / c.h, maxV / c.v));
  const [p0, p1, p2] = planes;
  if (frame.rgb) {
    for (let p = 0; p < n; p++) {
      out[3 * p] = p0[p];
      out[3 * p + 1] = p1[p];
      out[3 * p + 2] = p2[p];
    }
  } else {
    const { crR, cbB, crG, cbG } = YCC;
    for (let p = 0; p < n; p++) {
      const y = p0[p], cb = p1[p], cr = p2[p];
      out[3 * p] = clampByte(y + crR[cr]);
      out[3 * p + 1] = clampByte(y + ((cbG[cb] + crG[cr]) >> 16));
      out[3 * p + 2] = clampByte(y + cbB[cb]);
    }
  }
  return { width, height, data: out };
}

/** Component k at full size, upsampled by (rh, rv) as libjpeg's jdsample.c does by default: triangular ("fancy")
 * filters for 2×1, 2×2 (both only when the component is more than 2 samples wide) and 1×2; replication otherwise.
 * `full` is jpeg-js's output, which repeats each component sample over its rh × rv pixels. */
function upsampleLikeLibjpeg(full: Uint8Array, k: number, width: number, height: number, rh: number, rv: number): Uint8Array {
  const out = new Uint8Array(width * height);
  const dw = Math.ceil(width / rh), dh = Math.ceil(height / rv); // libjpeg's downsampled_width and _height
  const s = (i: number, j: number) => full[((rv * i) * width + rh * j) * 3 + k];
  if (rh === 1 && rv === 1) {
    for (let p = 0; p < out.length; p++) out[p] = full[3 * p + k];
  } else if (rh === 2 && rv === 1 && dw > 2) {
    const row = new Uint8Array(2 * dw);
    for (let y = 0; y < height; y++) {
      row[0] = s(y, 0);
      row[1] = (s(y, 0) * 3 + s(y, 1) + 2) >> 2;
      for (let j = 1; j < dw - 1; j++) {
        const c = s(y, j) * 3;
        row[2 * j] = (c + s(y, j - 1) + 1) >> 2;
        row[2 * j + 1] = (c + s(y, j + 1) + 2) >> 2;
      }
      row[2 * dw - 2] = (s(y, dw - 1) * 3 + s(y, dw - 2) + 1) >> 2;
      row[2 * dw - 1] = s(y, dw - 1);
      out.set(row.subarray(0, width), y * width);
    }
  } else if (rh === 2 && rv === 2 && dw > 2) {
    const row = new Uint8Array(2 * dw);
    const col = new Int32Array(dw);
    for (let y = 0; y < height; y++) {
      const i = y >> 1;
      // The nearer row counts three times, the other once; rows past the edges repeat the edge row.
      const other = y & 1 ? Math.min(i + 1, dh - 1) : Math.max(i - 1, 0);
      for (let j = 0; j < dw; j++) col[j] = s(i, j) * 3 + s(other, j);
      row[0] = (col[0] * 4 + 8) >> 4;
      row[1] = (col[0] * 3 + col[1] + 7) >> 4;
      for (let j = 1; j < dw - 1; j++) {
        row[2 * j] = (col[j] * 3 + col[j - 1] + 8) >> 4;
        row[2 * j + 1] = (col[j] * 3 + col[j + 1] + 7) >> 4;
      }
      row[2 * dw - 2] = (col[dw - 1] * 3 + col[dw - 2] + 8) >> 4;
      row[2 * dw - 1] = (col[dw - 1] * 4 + 7) >> 4;
      out.set(row.subarray(0, width), y * width);
    }
  } else if (rh === 1 && rv === 2) {
    for (let y = 0; y < height; y++) {
      const i = y >> 1, other = y & 1 ? Math.min(i + 1, dh - 1) : Math.max(i - 1, 0), bias = y & 1 ? 2 : 1;
      for (let x = 0; x < width; x++) out[y * width + x] = (s(i, x) * 3 + s(other, x) + bias) >> 2;
    }
  } else {
    for (let y = 0; y < height; y++) {
      for (let x = 0; x < width; x++) out[y * width + x] = s(Math.floor(y / rv), Math.floor(x / rh));
    }
  }
  return out;
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
  const bytes = encodePng({ width, height, data });
  const tmp = join(dirname(path), `.${crypto.randomUUID()}.png.tmp`);
  try {
    await Deno.writeFile(tmp, bytes);
    await Deno.rename(tmp, path);
  } catch (e) {
    await Deno.remove(tmp).catch(() => {});
    throw new Error(`PNG ${path}: cannot write it: ${(e as Error).message}`);
  }
}

// ---- PNG encoding ------------------------------------------------------------------------------------------------
// 8-bit RGB (colour type 2), not interlaced, one IDAT chunk deflated by node:zlib. Each row takes the filter whose
// output has the smallest sum of absolute values read as signed bytes (libpng's heuristic): it costs one pass per
// filter, and smooth images come out several times smaller than with unfiltered rows.

function encodeChunk(type: string, data: Uint8Array): Uint8Array {
  const out = new Uint8Array(12 + data.length);
  const view = new DataView(out.buffer);
  view.setUint32(0, data.length);
  for (let i = 0; i < 4; i++) out[4 + i] = type.charCodeAt(i);
  out.set(data, 8);
  view.setUint32(8 + data.length, crc32(out.subarray(4, 8 + data.length)));
  return out;
}

function paeth(a: number, b: number, c: number): number {
  const p = a + b - c;
  const pa = Math.abs(p - a), pb = Math.abs(p - b), pc = Math.abs(p - c);
  return pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
}

/** Row `y` filtered with `type` (0 none, 1 sub, 2 up, 3 average, 4 Paeth) into `out`; returns the heuristic's cost. */
function filterRow(data: Uint8Array, stride: number, y: number, type: number, out: Uint8Array): number {
  const row = y * stride, prev = row - stride;
  let cost = 0;
  for (let i = 0; i < stride; i++) {
    const x = data[row + i];
    const a = i >= 3 ? data[row + i - 3] : 0;
    const b = y > 0 ? data[prev + i] : 0;
    const c = i >= 3 && y > 0 ? data[prev + i - 3] : 0;
    const predicted = type === 0 ? 0 : type === 1 ? a : type === 2 ? b : type === 3 ? (a + b) >> 1 : paeth(a, b, c);
    const v = (x - predicted) & 0xff;
    out[i] = v;
    cost += v < 128 ? v : 256 - v;
  }
  return cost;
}

/** Encode an 8-bit RGB image as PNG bytes (see above). */
export function encodePng(img: RgbImage): Uint8Array {
  const { width, height, data } = img;
  if (!Number.isSafeInteger(width) || !Number.isSafeInteger(height) || width <= 0 || height <= 0) {
    throw new Error(`PNG encoding: invalid size ${width}×${height}`);
  }
  if (data.length !== width * height * 3) {
    throw new Error(`PNG encoding: a ${width}×${height} RGB image needs ${width * height * 3} bytes, got ${data.length}`);
  }
  const stride = width * 3;
  const raw = new Uint8Array((stride + 1) * height);
  const candidate = new Uint8Array(stride);
  for (let y = 0; y < height; y++) {
    const dest = raw.subarray(y * (stride + 1) + 1, (y + 1) * (stride + 1));
    let best = filterRow(data, stride, y, 0, dest), bestType = 0;
    for (let type = 1; type <= 4; type++) {
      const cost = filterRow(data, stride, y, type, candidate);
      if (cost < best) best = cost, bestType = type, dest.set(candidate);
    }
    raw[y * (stride + 1)] = bestType;
  }
  const header = new Uint8Array(13);
  new DataView(header.buffer).setUint32(0, width);
  new DataView(header.buffer).setUint32(4, height);
  header.set([8, 2, 0, 0, 0], 8); // bit depth 8, colour type 2 (RGB), deflate, adaptive filtering, no interlace
  const parts = [
    Uint8Array.from(PNG_SIGNATURE),
    encodeChunk("IHDR", header),
    encodeChunk("IDAT", deflateSync(raw)),
    encodeChunk("IEND", new Uint8Array(0)),
  ];
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) out.set(p, at), at += p.length;
  return out;
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
