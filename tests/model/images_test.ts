import assert from "node:assert/strict";
import { join } from "node:path";
import { decode, encodePng, Image } from "image-js";
import {
  centreCrop,
  checkReferenceImage,
  loadImage,
  preprocessReference,
  referenceResize,
  resizeLanczos,
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
    await Deno.writeFile(
      grey,
      encodePng(new Image(3, 2, { colorModel: "GREYA", data: new Uint8Array([10, 255, 20, 0, 30, 128, 40, 255, 50, 1, 60, 2]) })),
    );
    const g = await loadImage(grey);
    assert.deepEqual([...g.data], [10, 10, 10, 20, 20, 20, 30, 30, 30, 40, 40, 40, 50, 50, 50, 60, 60, 60]);
    const rgba = join(dir, "rgba.png");
    await Deno.writeFile(rgba, encodePng(new Image(1, 2, { colorModel: "RGBA", data: new Uint8Array([1, 2, 3, 0, 4, 5, 6, 200]) })));
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
    assert.equal(decode(await Deno.readFile(path)).colorModel, "RGB");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
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
