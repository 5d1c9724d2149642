import assert from "node:assert/strict";
import { join } from "node:path";
import { deflateSync, inflateSync } from "node:zlib";
import {
  centreCrop,
  checkReferenceImage,
  decodeImage,
  DEFAULT_MAX_PIXELS,
  encodePng,
  imageSize,
  loadImage,
  MAX_PIXELS_ENV,
  preprocessReference,
  referenceResize,
  resizeLanczos,
  resolveMaxPixels,
  type RgbImage,
  savePng,
  toModelPixels,
  toUnitRange,
} from "../../model/images.ts";
import { SafetensorsFile } from "../../weights/safetensors.ts";

const FIXTURES = new URL("../fixtures/klein-tiny/", import.meta.url).pathname;

async function casePixels(name: string): Promise<Float32Array> {
  const f = await SafetensorsFile.open(join(FIXTURES, "cases", `${name}.safetensors`));
  try {
    return await f.readF32("pixels");
  } finally {
    f.close();
  }
}

/** Deterministic test pattern, the same formula as the PIL reference below was computed from. */
function pattern(width: number, height: number): RgbImage {
  const data = new Uint8Array(width * height * 3);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      for (let c = 0; c < 3; c++) data[(y * width + x) * 3 + c] = (x * 37 + y * 91 + c * 53 + ((x * y) % 17) * 11) % 256;
    }
  }
  return { width, height, data };
}

Deno.test("loadImage reads the fixture PNGs, and their pixels match the reference preprocessing bit for bit", async () => {
  for (const [file, w, h] of [["ref0_80x64.png", 80, 64], ["ref1_64x80.png", 64, 80]] as const) {
    const img = await loadImage(join(FIXTURES, "images", file));
    assert.equal(img.width, w);
    assert.equal(img.height, h);
    assert.equal(img.data.length, w * h * 3);
    const prepared = preprocessReference(img);
    assert.equal(prepared.width, w);
    assert.equal(prepared.height, h);
    assert.deepEqual(prepared.pixels, await casePixels(`vae_encode_${file.slice(0, -4)}`));
  }
});

Deno.test("centreCrop takes the reference's window ((w − cw) // 2, (h − ch) // 2)", () => {
  const img = pattern(37, 29);
  const c = centreCrop(img, 32, 16);
  assert.equal(c.width, 32);
  assert.equal(c.height, 16);
  const left = 2, top = 6;
  for (let y = 0; y < 16; y++) {
    for (let x = 0; x < 32; x++) {
      for (let k = 0; k < 3; k++) assert.equal(c.data[(y * 32 + x) * 3 + k], img.data[((y + top) * 37 + x + left) * 3 + k]);
    }
  }
  assert.throws(() => centreCrop(img, 38, 16), /cannot crop a 37×29 image to 38×16/);
});

Deno.test("preprocessReference crops to multiples of 16 and refuses what the reference refuses", () => {
  const p = preprocessReference(pattern(100, 70));
  assert.equal(p.width, 96);
  assert.equal(p.height, 64);
  assert.deepEqual(p.pixels, toModelPixels(centreCrop(pattern(100, 70), 96, 64)));
  assert.throws(() => checkReferenceImage({ width: 63, height: 200 }), /63×200 is too small, both sides must be at least 64 px/);
  assert.throws(() => checkReferenceImage({ width: 1000, height: 100 }), /aspect ratio of 10\.0:1, at most 8:1/);
  assert.deepEqual(referenceResize(1100, 1000), { width: 1073, height: 976 });
  assert.deepEqual(referenceResize(1024, 1024), { width: 1024, height: 1024 });
});

Deno.test("resizeLanczos matches PIL's Image.resize(LANCZOS) exactly", () => {
  // PIL 9.4: Image.frombytes("RGB", (37, 29), pattern).resize((11, 8), Image.LANCZOS).tobytes()
  const expected = [
    115,
    137,
    131,
    142,
    129,
    125,
    95,
    106,
    144,
    132,
    138,
    116,
    138,
    113,
    124,
    113,
    121,
    121,
    120,
    125,
    128,
    137,
    160,
    131,
    131,
    114,
    124,
    133,
    134,
    111,
    135,
    119,
    111,
    130,
    136,
    129,
    118,
    119,
    124,
    138,
    93,
    147,
    131,
    109,
    153,
    151,
    128,
    111,
    147,
    107,
    122,
    142,
    122,
    125,
    117,
    149,
    124,
    145,
    103,
    148,
    127,
    130,
    122,
    125,
    132,
    127,
    138,
    113,
    159,
    121,
    101,
    141,
    110,
    121,
    129,
    127,
    110,
    129,
    120,
    123,
    117,
    132,
    121,
    132,
    133,
    119,
    149,
    128,
    156,
    118,
    121,
    129,
    141,
    119,
    155,
    150,
    120,
    134,
    120,
    142,
    134,
    126,
    151,
    120,
    140,
    175,
    109,
    129,
    120,
    165,
    152,
    121,
    108,
    132,
    124,
    148,
    120,
    149,
    127,
    122,
    97,
    121,
    141,
    147,
    84,
    94,
    147,
    130,
    108,
    125,
    116,
    132,
    120,
    163,
    110,
    145,
    144,
    110,
    97,
    135,
    191,
    137,
    185,
    148,
    127,
    126,
    118,
    119,
    157,
    118,
    120,
    122,
    122,
    164,
    119,
    102,
    146,
    69,
    101,
    116,
    108,
    133,
    122,
    128,
    126,
    136,
    147,
    120,
    136,
    130,
    126,
    110,
    108,
    127,
    134,
    125,
    136,
    106,
    128,
    131,
    125,
    121,
    138,
    142,
    118,
    111,
    124,
    153,
    127,
    122,
    133,
    136,
    141,
    133,
    124,
    117,
    124,
    130,
    147,
    121,
    147,
    120,
    132,
    144,
    135,
    112,
    117,
    130,
    106,
    140,
    147,
    117,
    120,
    133,
    114,
    124,
    137,
    135,
    124,
    121,
    136,
    118,
    134,
    106,
    156,
    111,
    133,
    149,
    114,
    130,
    135,
    126,
    134,
    129,
    123,
    105,
    128,
    122,
    140,
    127,
    132,
    135,
    119,
    116,
    113,
    125,
    103,
    123,
    132,
    127,
    117,
    154,
    121,
    122,
    132,
    127,
    117,
    134,
    119,
    119,
    138,
    140,
    125,
    137,
  ];
  const got = resizeLanczos(pattern(37, 29), 11, 8);
  assert.deepEqual([...got.data], expected);
  const flat: RgbImage = { width: 40, height: 30, data: new Uint8Array(40 * 30 * 3).fill(77) };
  assert.ok(resizeLanczos(flat, 17, 45).data.every((v) => v === 77));
});

Deno.test("loadImage expands greyscale, drops alpha, and names the path of an unreadable file", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const grey = join(dir, "grey.png");
    // Grey with alpha (colour type 4), rows filtered with "none": 3×2.
    await Deno.writeFile(grey, png(ihdr(3, 2, 8, 4), idat([0, 10, 255, 20, 0, 30, 128, 0, 40, 255, 50, 1, 60, 2]), IEND));
    const g = await loadImage(grey);
    assert.deepEqual([...g.data], [10, 10, 10, 20, 20, 20, 30, 30, 30, 40, 40, 40, 50, 50, 50, 60, 60, 60]);
    const rgba = join(dir, "rgba.png");
    await Deno.writeFile(rgba, png(ihdr(1, 2, 8, 6), idat([0, 1, 2, 3, 0, 0, 4, 5, 6, 200]), IEND));
    assert.deepEqual([...(await loadImage(rgba)).data], [1, 2, 3, 4, 5, 6]);
    const missing = join(dir, "missing.png");
    await assert.rejects(loadImage(missing), (e: Error) => e.message.includes(missing) && /no such file/.test(e.message));
    const junk = join(dir, "junk.png");
    await Deno.writeTextFile(junk, "this is not an image");
    await assert.rejects(loadImage(junk), (e: Error) => e.message.startsWith(`image ${junk}: not a readable PNG or JPEG`));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("savePng writes round(v·255) and reads back; toUnitRange clamps (x + 1) / 2", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const w = 5, h = 3;
    const decoded = Float32Array.from({ length: 3 * w * h }, (_, i) => -1.2 + (2.4 * i) / (3 * w * h - 1));
    const unit = toUnitRange(decoded);
    assert.equal(unit[0], 0);
    assert.equal(unit[unit.length - 1], 1);
    unit.forEach((v, i) => assert.equal(v, Math.min(1, Math.max(0, Math.fround(decoded[i] / 2 + 0.5)))));
    const path = join(dir, "out.png");
    await savePng(path, unit, w, h);
    const back = await loadImage(path);
    for (let p = 0; p < w * h; p++) {
      for (let c = 0; c < 3; c++) assert.equal(back.data[3 * p + c], Math.round(Math.fround(unit[c * w * h + p] * 255)));
    }
    const bytes = await Deno.readFile(path);
    assert.deepEqual([...bytes.subarray(12, 16)], [..."IHDR"].map((c) => c.charCodeAt(0)));
    assert.deepEqual([bytes[24], bytes[25]], [8, 2], "8-bit RGB");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("encodePng: every filter type, read back exactly at awkward sizes; smooth images deflate small; bad input refused", () => {
  let state = 12345;
  const random = () => (state = (state * 1103515245 + 12345) >>> 0) >>> 24;
  const images: RgbImage[] = [
    { width: 1, height: 1, data: Uint8Array.from([7, 200, 33]) },
    { width: 5, height: 1, data: Uint8Array.from({ length: 15 }, random) },
    { width: 1, height: 7, data: Uint8Array.from({ length: 21 }, random) },
    { width: 37, height: 23, data: Uint8Array.from({ length: 37 * 23 * 3 }, random) },
    pattern(61, 40),
    // Horizontal, vertical and diagonal ramps, so that sub, up, average and Paeth each win some rows.
    { width: 33, height: 29, data: Uint8Array.from({ length: 33 * 29 * 3 }, (_, i) => (Math.floor(i / 3) % 33) * 7 + (i % 3)) },
    { width: 33, height: 29, data: Uint8Array.from({ length: 33 * 29 * 3 }, (_, i) => Math.floor(i / 99) * 8 + (i % 3)) },
    {
      width: 33,
      height: 29,
      data: Uint8Array.from({ length: 33 * 29 * 3 }, (_, i) => (Math.floor(i / 99) * 3 + (Math.floor(i / 3) % 33) * 5) % 256),
    },
  ];
  const filters = new Set<number>();
  for (const img of images) {
    const bytes = encodePng(img);
    const back = decodeImage(bytes, `${img.width}×${img.height}`); // checks the signature, every CRC and the sizes
    assert.deepEqual([back.width, back.height], [img.width, img.height]);
    assert.deepEqual(back.data, img.data, `${img.width}×${img.height} pixels`);
    assert.deepEqual([bytes[24], bytes[25], bytes[28]], [8, 2, 0], "8-bit RGB, not interlaced");
    const idatAt = bytes.findIndex((_, i) => String.fromCharCode(...bytes.subarray(i, i + 4)) === "IDAT");
    const length = new DataView(bytes.buffer, bytes.byteOffset).getUint32(idatAt - 4);
    const raw = inflateSync(bytes.subarray(idatAt + 4, idatAt + 4 + length));
    for (let y = 0; y < img.height; y++) filters.add(raw[y * (img.width * 3 + 1)]);
  }
  assert.deepEqual([...filters].sort(), [0, 1, 2, 3, 4]);
  const smooth = encodePng(pattern(200, 150));
  assert.ok(smooth.length < (200 * 150 * 3) / 4, `a smooth 200×150 image takes ${smooth.length} bytes`);
  assert.throws(() => encodePng({ width: 2, height: 2, data: new Uint8Array(11) }), /a 2×2 RGB image needs 12 bytes, got 11/);
  assert.throws(() => encodePng({ width: 0, height: 2, data: new Uint8Array(0) }), /invalid size 0×2/);
});

Deno.test("a failing savePng leaves neither a partial file nor a temporary one", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const good = new Float32Array(3 * 4 * 4).fill(0.5);
    // Values outside [0, 1]: refused before anything is written; an existing file stays as it was.
    const existing = join(dir, "keep.png");
    await savePng(existing, good, 4, 4);
    const before = await Deno.readFile(existing);
    const bad = good.slice();
    bad[7] = NaN;
    await assert.rejects(savePng(existing, bad, 4, 4), /outside \[0, 1\]/);
    assert.deepEqual(await Deno.readFile(existing), before);
    // The destination is a folder: the rename fails after the data was written; the temporary file is removed.
    const folder = join(dir, "a-folder");
    await Deno.mkdir(folder);
    await Deno.writeTextFile(join(folder, "inside.txt"), "x");
    await assert.rejects(savePng(folder, good, 4, 4), (e: Error) => e.message.startsWith(`PNG ${folder}: cannot write it`));
    // A missing folder.
    await assert.rejects(savePng(join(dir, "no", "such", "dir.png"), good, 4, 4), /cannot write it/);
    const left = [];
    for await (const e of Deno.readDir(dir)) left.push(e.name);
    assert.deepEqual(left.sort(), ["a-folder", "keep.png"]);
    assert.equal((await Deno.stat(folder)).isDirectory, true);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

// ---- Decoding against Pillow, limits and hostile files ---------------------------------------------------------
// tests/fixtures/images/make_images.py writes the fixtures and expected.json: Pillow's Image.open(f).convert("RGB").

const IMAGES = new URL("../fixtures/images/", import.meta.url).pathname;
const expected: Record<string, { width: number; height: number; pillowMode: string; rgb: string }> =
  JSON.parse(await Deno.readTextFile(join(IMAGES, "expected.json"))).images;
const fixture = (name: string) => Deno.readFile(join(IMAGES, name));
const base64Bytes = (s: string) => Uint8Array.from(atob(s), (c) => c.charCodeAt(0));

/** Valid JPEGs whose layout jpeg-js 0.4.4 misreads (a one-component scan with a partial last restart interval). */
const JPEG_UNREADABLE = ["cjpeg420_progressive_restart.jpg", "cjpeg_gray_restart.jpg"];

Deno.test("every PNG colour type and bit depth, Adam7 or not, with or without tRNS, decodes exactly as Pillow's convert('RGB')", async () => {
  const names = Object.keys(expected).filter((n) => n.endsWith(".png"));
  const required = [
    ...[1, 2, 4, 8, 16].map((d) => `gray${d}`),
    ...[1, 2, 4, 8].map((d) => `palette${d}`),
    ...[8, 16].flatMap((d) => [`rgb${d}`, `grayalpha${d}`, `rgba${d}`]),
  ].flatMap((n) => [`${n}.png`, `${n}_adam7.png`]);
  for (const n of [...required, "gray1_trns.png", "gray16_adam7_trns.png", "rgb16_trns.png", "palette4_adam7_trns.png"]) {
    assert.ok(names.includes(n), `fixture ${n} is missing`);
  }
  for (const name of names) {
    const want = expected[name];
    const img = decodeImage(await fixture(name), name);
    assert.equal(img.width, want.width, name);
    assert.equal(img.height, want.height, name);
    const ref = base64Bytes(want.rgb);
    const first = ref.findIndex((v, i) => img.data[i] !== v);
    assert.equal(first, -1, `${name}: value ${first} is ${img.data[first]}, Pillow gives ${ref[first]}`);
  }
});

Deno.test("JPEGs stay within 3 levels of Pillow (libjpeg), mean under 0.25; greyscale and RGB-coded within 1", async () => {
  // jpeg-js's inverse DCT rounds differently from libjpeg's (a sample can differ by 1); chroma upsampling and the
  // colour conversion are libjpeg's, and the YCbCr → RGB matrix turns ±1 in Y and Cb into up to ±3 in blue.
  const names = Object.keys(expected).filter((n) => n.endsWith(".jpg") && !JPEG_UNREADABLE.includes(n));
  assert.ok(names.length >= 15);
  for (const name of names) {
    const img = decodeImage(await fixture(name), name);
    const ref = base64Bytes(expected[name].rgb);
    assert.equal(img.data.length, ref.length, name);
    let max = 0, sum = 0;
    for (let i = 0; i < ref.length; i++) {
      const d = Math.abs(img.data[i] - ref[i]);
      max = Math.max(max, d);
      sum += d;
    }
    const noColourTransform = name.startsWith("gray") || name.startsWith("rgb_ids");
    assert.ok(max <= (noColourTransform ? 1 : 3), `${name}: max |Δ| ${max}`);
    assert.ok(sum / ref.length <= 0.25, `${name}: mean |Δ| ${sum / ref.length}`);
  }
  for (const name of JPEG_UNREADABLE) {
    assert.throws(() => decodeImage(new Uint8Array(0), name), /it is empty/);
    const bytes = await fixture(name);
    assert.throws(
      () => decodeImage(bytes, name),
      /one-component scan of \d+ blocks with restart markers every \d+, a valid layout .*cannot read/,
    );
  }
});

// A PNG writer for crafting broken files: chunks with correct CRCs around whatever data a test gives.
const CRC = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});
function crc(bytes: Uint8Array): number {
  let c = 0xffffffff;
  for (const b of bytes) c = CRC[(c ^ b) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}
function chunk(type: string, data: Uint8Array): Uint8Array {
  const out = new Uint8Array(12 + data.length);
  const view = new DataView(out.buffer);
  view.setUint32(0, data.length);
  out.set(new TextEncoder().encode(type), 4);
  out.set(data, 8);
  view.setUint32(8 + data.length, crc(out.subarray(4, 8 + data.length)));
  return out;
}
function ihdr(width: number, height: number, depth: number, colourType: number, interlace = 0): Uint8Array {
  const d = new Uint8Array(13);
  new DataView(d.buffer).setUint32(0, width);
  new DataView(d.buffer).setUint32(4, height);
  d.set([depth, colourType, 0, 0, interlace], 8);
  return chunk("IHDR", d);
}
function png(...chunks: Uint8Array[]): Uint8Array {
  return Uint8Array.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, ...chunks.flatMap((c) => [...c])]);
}
const IEND = chunk("IEND", new Uint8Array(0));
const idat = (raw: number[] | Uint8Array) => chunk("IDAT", deflateSync(Uint8Array.from(raw)));

/** Recompute every chunk's CRC in place, where the chunk structure still holds, so mutations reach inflate and filters. */
function fixCrcs(bytes: Uint8Array): void {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  for (let at = 8; at + 12 <= bytes.length;) {
    const length = view.getUint32(at);
    if (at + 12 + length > bytes.length) return;
    view.setUint32(at + 8 + length, crc(bytes.subarray(at + 4, at + 8 + length)));
    at += 12 + length;
  }
}

function assertOneLine(fn: () => unknown, name: string, pattern: RegExp): void {
  assert.throws(fn, (e: Error) => {
    assert.ok(e.message.startsWith(`image ${name}: `), e.message);
    assert.ok(!e.message.includes("\n"), e.message);
    assert.match(e.message, pattern);
    return true;
  });
}

Deno.test("broken PNGs and JPEGs end in one line naming the file and the fault", async () => {
  const rgb8 = await fixture("rgb8.png");
  const flipped = rgb8.slice();
  const idatAt = rgb8.findIndex((_, i) => String.fromCharCode(...rgb8.subarray(i, i + 4)) === "IDAT");
  flipped[idatAt + 20] ^= 0x10; // inside the IDAT data
  assertOneLine(() => decodeImage(flipped, "crc.png"), "crc.png", /the IDAT chunk at byte \d+ fails its CRC check/);
  assertOneLine(() => decodeImage(rgb8.subarray(0, 80), "cut.png"), "cut.png", /truncated/);
  assertOneLine(() => decodeImage(rgb8.subarray(0, rgb8.length - 12), "noend.png"), "noend.png", /ends before its IEND chunk/);
  assertOneLine(() => decodeImage(new Uint8Array(0), "empty.png"), "empty.png", /it is empty \(0 bytes\)/);
  assertOneLine(() => decodeImage(new TextEncoder().encode("hello, not an image"), "t.png"), "t.png", /not a readable PNG or JPEG/);
  assertOneLine(() => decodeImage(rgb8.subarray(0, 8), "sig.png"), "sig.png", /truncated/);

  // 2×2 8-bit grey: rows are a filter byte and two samples.
  const rows = [0, 1, 2, 0, 3, 4];
  assert.deepEqual([...decodeImage(png(ihdr(2, 2, 8, 0), idat(rows), IEND), "ok.png").data], [1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]);
  const zlibCut = deflateSync(Uint8Array.from(rows)).subarray(0, 6);
  assertOneLine(
    () => decodeImage(png(ihdr(2, 2, 8, 0), chunk("IDAT", zlibCut), IEND), "z.png"),
    "z.png",
    /IDAT\) is corrupt or truncated \(zlib/,
  );
  assertOneLine(() => decodeImage(png(ihdr(2, 2, 8, 0), idat(rows.slice(0, 4)), IEND), "s.png"), "s.png", /inflates to 4 of the 6 bytes/);
  assertOneLine(() => decodeImage(png(ihdr(2, 2, 8, 0), idat([...rows, 0]), IEND), "l.png"), "l.png", /more than the 6 bytes/);
  assertOneLine(() => decodeImage(png(ihdr(2, 2, 8, 0), idat([0, 1, 2, 7, 3, 4]), IEND), "f.png"), "f.png", /row 1 has filter type 7/);
  assertOneLine(() => decodeImage(png(ihdr(2, 2, 3, 0), idat([0, 0, 0]), IEND), "d.png"), "d.png", /bit depth 3 for colour type 0/);
  assertOneLine(() => decodeImage(png(ihdr(2, 1, 8, 3), idat([0, 0, 1]), IEND), "p.png"), "p.png", /palette image without a PLTE/);
  const plte = chunk("PLTE", Uint8Array.from([9, 8, 7, 6, 5, 4]));
  assert.deepEqual([...decodeImage(png(ihdr(2, 1, 8, 3), plte, idat([0, 1, 0]), IEND), "p.png").data], [6, 5, 4, 9, 8, 7]);
  assertOneLine(
    () => decodeImage(png(ihdr(2, 1, 8, 3), plte, idat([0, 1, 2]), IEND), "p.png"),
    "p.png",
    /pixel \(1, 0\) uses palette entry 2, but PLTE has only 2/,
  );
  assertOneLine(() => decodeImage(png(ihdr(2, 2, 8, 0), IEND), "n.png"), "n.png", /no IDAT chunk/);
  assertOneLine(
    () => decodeImage(png(ihdr(2, 2, 8, 0), chunk("ABCD", new Uint8Array(1)), idat(rows), IEND), "c.png"),
    "c.png",
    /unknown critical chunk ABCD/,
  );
  assertOneLine(() => decodeImage(png(ihdr(0, 2, 8, 0), idat(rows), IEND), "0.png"), "0.png", /invalid size 0×2/);

  const jpeg = await fixture("baseline420.jpg");
  assertOneLine(
    () => decodeImage(jpeg.subarray(0, jpeg.length - 20), "cut.jpg"),
    "cut.jpg",
    /truncated: the file ends before its end-of-image marker/,
  );
  assertOneLine(() => decodeImage(jpeg.subarray(0, 30), "head.jpg"), "head.jpg", /truncated/);
  const sof = jpeg.findIndex((b, i) => b === 0xff && jpeg[i + 1] === 0xc0);
  const arithmetic = jpeg.slice();
  arithmetic[sof + 1] = 0xc9;
  assertOneLine(() => decodeImage(arithmetic, "a.jpg"), "a.jpg", /arithmetic-coded sequential JPEG coding, which is not supported/);
  const twelveBit = jpeg.slice();
  twelveBit[sof + 4] = 12;
  assertOneLine(() => decodeImage(twelveBit, "12.jpg"), "12.jpg", /12-bit samples/);
  const name = "a\x1b[2Jb.png"; // control characters in a name are echoed escaped
  assertOneLine(() => decodeImage(new Uint8Array(3), name), "a\\x1b[2Jb.png", /not a readable PNG or JPEG/);
});

Deno.test("the pixel limit is checked from the header before decoding, and can be raised", async () => {
  assert.equal(DEFAULT_MAX_PIXELS, 4096 * 4096);
  const saved = Deno.env.get(MAX_PIXELS_ENV);
  const dir = await Deno.makeTempDir();
  try {
    Deno.env.delete(MAX_PIXELS_ENV);
    assert.equal(resolveMaxPixels(), DEFAULT_MAX_PIXELS);
    // A valid 16000×16000 1-bit PNG (all rows zero) of a few tens of KB.
    const width = 16000, height = 16000, rowBytes = 1 + width / 8;
    const big = png(ihdr(width, height, 1, 0), chunk("IDAT", deflateSync(new Uint8Array(rowBytes * height), { level: 9 })), IEND);
    const bigPath = join(dir, "big.png");
    await Deno.writeFile(bigPath, big);
    await assert.rejects(loadImage(bigPath), (e: Error) => {
      assert.equal(
        e.message,
        `image ${bigPath}: 16000×16000 is 256.0 MP, over the limit of ${DEFAULT_MAX_PIXELS} pixels (16.8 MP); ` +
          `to read it, set ${MAX_PIXELS_ENV}=256000000 or pass { maxPixels: 256000000 }`,
      );
      return true;
    });
    // Refused before decoding: the same header over image data that would not inflate.
    const garbage = png(ihdr(width, height, 1, 0), chunk("IDAT", new Uint8Array(64).fill(0xee)), IEND);
    assertOneLine(() => decodeImage(garbage, "g.png"), "g.png", /16000×16000 is 256\.0 MP, over the limit/);
    assert.deepEqual(imageSize(garbage, "g.png"), { format: "png", width, height });
    // A JPEG whose frame header claims 65500×65500.
    const jpeg = (await fixture("baseline444.jpg")).slice();
    const sof = jpeg.findIndex((b, i) => b === 0xff && jpeg[i + 1] === 0xc0);
    jpeg.set([0xff, 0xdc, 0xff, 0xdc], sof + 5);
    assertOneLine(() => decodeImage(jpeg, "huge.jpg"), "huge.jpg", /65500×65500 is 4290\.3 MP, over the limit of 16777216 pixels/);
    assert.deepEqual(imageSize(jpeg, "huge.jpg"), { format: "jpeg", width: 65500, height: 65500 });

    // At and above a lowered limit (gray8.png is 19×7 = 133 pixels): option, environment, option over environment.
    const small = await fixture("gray8.png");
    assert.equal(decodeImage(small, "s.png", { maxPixels: 133 }).width, 19);
    assertOneLine(() => decodeImage(small, "s.png", { maxPixels: 132 }), "s.png", /19×7 is 0\.0 MP, over the limit of 132 pixels/);
    Deno.env.set(MAX_PIXELS_ENV, "132");
    assert.equal(resolveMaxPixels(), 132);
    assertOneLine(() => decodeImage(small, "s.png"), "s.png", /over the limit of 132 pixels.*KLEINSCOPE_MAX_PIXELS=133/);
    assert.equal(decodeImage(small, "s.png", { maxPixels: 200 }).height, 7);
    Deno.env.set(MAX_PIXELS_ENV, "lots");
    assert.throws(() => decodeImage(small, "s.png"), /^Error: KLEINSCOPE_MAX_PIXELS=lots: must be a positive whole number of pixels/);
    assert.throws(() => resolveMaxPixels({ maxPixels: 0 }), /maxPixels 0: must be a positive whole number/);
  } finally {
    if (saved === undefined) Deno.env.delete(MAX_PIXELS_ENV);
    else Deno.env.set(MAX_PIXELS_ENV, saved);
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("only regular files are opened: a FIFO, a folder and a device are refused without blocking", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const fifo = join(dir, "pipe.png");
    const made = await new Deno.Command("mkfifo", { args: [fifo] }).output();
    assert.ok(made.success, "mkfifo failed");
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<string>((resolve) => timer = setTimeout(() => resolve("blocked"), 5000));
    const outcome = await Promise.race([loadImage(fifo).then(() => "read", (e: Error) => e.message), timeout]);
    clearTimeout(timer);
    assert.equal(outcome, `image ${fifo}: not a regular file (it is a named pipe (FIFO)); only image files can be read`);
    await assert.rejects(loadImage(dir), new RegExp(`^Error: image ${dir}: not a regular file \\(it is a folder\\)`));
    await assert.rejects(loadImage("/dev/null"), /^Error: image \/dev\/null: not a regular file \(it is a character device\)/);
    const empty = join(dir, "empty.png");
    await Deno.writeFile(empty, new Uint8Array(0));
    await assert.rejects(loadImage(empty), new RegExp(`image ${empty}: it is empty \\(0 bytes\\)`));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("seeded mutations of a PNG and a JPEG give a clean error or an image of the header's size", async () => {
  let seed = 0x5eed;
  const random = () => { // mulberry32
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const pick = (n: number) => Math.floor(random() * n);
  const start = performance.now();
  const outcomes = { decoded: 0, refused: 0 };
  for (const name of ["rgb8_adam7.png", "palette4.png", "grayalpha16.png", "baseline420.jpg", "progressive420.jpg"]) {
    const original = await fixture(name);
    for (let i = 0; i < 250; i++) {
      let bytes = original.slice();
      const kind = pick(4);
      if (kind === 0) {
        for (let k = 1 + pick(4); k > 0; k--) bytes[8 + pick(bytes.length - 8)] ^= 1 << pick(8);
      } else if (kind === 1) {
        bytes = bytes.subarray(0, pick(bytes.length));
      } else if (kind === 2) {
        const at = 8 + pick(bytes.length - 8), n = 1 + pick(16);
        bytes = Uint8Array.from([...bytes.subarray(0, at), ...bytes.subarray(at + n)]);
      } else {
        const at = 8 + pick(bytes.length - 8);
        bytes[at] = pick(256);
        bytes[at + 1 < bytes.length ? at + 1 : at] = [0x00, 0xff, 0xd9, 0xda][pick(4)];
      }
      if (name.endsWith(".png") && random() < 0.7) fixCrcs(bytes);
      const label = `${name}#${i}`;
      try {
        const img = decodeImage(bytes, label, { maxPixels: 1 << 16 });
        const size = imageSize(bytes, label);
        assert.equal(img.width, size.width, label);
        assert.equal(img.height, size.height, label);
        assert.equal(img.data.length, size.width * size.height * 3, label);
        outcomes.decoded++;
      } catch (e) {
        const message = (e as Error).message;
        assert.ok(message.startsWith(`image ${label}: `) && !message.includes("\n"), message);
        assert.doesNotMatch(message, /cannot decode it/, "an undiagnosed failure"); // every refusal names its fault
        outcomes.refused++;
      }
    }
  }
  assert.ok(outcomes.decoded > 50 && outcomes.refused > 500, JSON.stringify(outcomes));
  assert.ok(performance.now() - start < 10_000, `took ${performance.now() - start} ms`);
});
