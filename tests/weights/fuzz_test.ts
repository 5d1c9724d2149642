// Fuzzing the safetensors reader: a small file written here and the fixture VAE file, mutated many ways (seeded, so
// every run is the same). Every outcome must be either a one-line Error naming the file, or a file that the
// reference rules accept — checked against `referenceVerdict` below, a plain statement of those rules written
// independently of weights/ (JSON.parse for syntax, a token scan for duplicate keys and depth). A file the rules
// accept must open, and then every tensor reads within bounds. Nothing may crash, hang or allocate more than the file holds.

import assert from "node:assert/strict";
import { MAX_HEADER_BYTES, SafetensorsFile } from "../../weights/safetensors.ts";
import { encodeSafetensors } from "../../weights/safetensors_writer.ts";
import { Rng } from "../../runtime/random.ts";
import { VAE_FILE } from "./util.ts";

// ---- The reference rules, stated independently --------------------------------------------------------------------

const REFERENCE_DTYPE_BYTES: Record<string, bigint> = {
  BOOL: 1n,
  U8: 1n,
  I8: 1n,
  F8_E5M2: 1n,
  F8_E4M3: 1n,
  I16: 2n,
  U16: 2n,
  F16: 2n,
  BF16: 2n,
  I32: 4n,
  U32: 4n,
  F32: 4n,
  F64: 8n,
  I64: 8n,
  U64: 8n,
};
const U64_MAX = 2n ** 64n - 1n;

interface Verdict {
  /** null when the rules accept the file, else the rule it breaks. */
  refused: string | null;
  /** Accepted, but with a dimension past 2^53 − 1 (legal when another dimension is 0): the reader may refuse it. */
  hugeDimension?: boolean;
}

/** Duplicate keys in any object, or nesting deeper than 128, found by scanning tokens of text JSON.parse accepted. */
function duplicateKeyOrDepth(text: string): string | null {
  const stack: (Set<string> | null)[] = [];
  const tokens = [...text.matchAll(/"(?:[^"\\]|\\.)*"|[{}[\]:]/g)].map((m) => m[0]);
  for (let i = 0; i < tokens.length; i++) {
    const t = tokens[i];
    if (t === "{" || t === "[") {
      stack.push(t === "{" ? new Set() : null);
      if (stack.length > 128) return "nested too deep";
    } else if (t === "}" || t === "]") stack.pop();
    else if (t.startsWith('"') && tokens[i + 1] === ":") {
      const keys = stack[stack.length - 1]!;
      const key = JSON.parse(t);
      if (keys.has(key)) return `duplicate key ${t}`;
      keys.add(key);
    }
  }
  return null;
}

/** Is `s` (the source text of a JSON number) a non-negative integer written with digits only? */
const isCountLiteral = (s: string | undefined) => s !== undefined && /^(0|[1-9]\d*)$/.test(s) && BigInt(s) <= U64_MAX;

function referenceVerdict(bytes: Uint8Array): Verdict {
  const no = (refused: string): Verdict => ({ refused });
  if (bytes.byteLength < 8) return no("shorter than 8 bytes");
  const n = new DataView(bytes.buffer, bytes.byteOffset).getBigUint64(0, true);
  if (n > 100_000_000n) return no("header too large");
  if (8n + n > BigInt(bytes.byteLength)) return no("header runs past the end");
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(bytes.subarray(8, 8 + Number(n)));
  } catch {
    return no("not UTF-8");
  }
  // JSON.parse refuses a leading byte-order mark itself (it is not JSON whitespace); the reviver records the
  // source text of every number, keyed by the array or object that holds it.
  const literals = new WeakMap<object, Map<string, string>>();
  let header: unknown;
  try {
    header = JSON.parse(text, function (this: object, key: string, value: unknown, context?: { source?: string }) {
      if (typeof value === "number") {
        if (!literals.has(this)) literals.set(this, new Map());
        literals.get(this)!.set(key, context!.source!);
      }
      return value;
    });
  } catch {
    return no("not JSON");
  }
  const structural = duplicateKeyOrDepth(text);
  if (structural) return no(structural);
  const strings: string[] = [];
  const collect = (v: unknown) => {
    if (typeof v === "string") strings.push(v);
    else if (v && typeof v === "object") {
      for (const [k, x] of Object.entries(v)) {
        strings.push(k);
        collect(x);
      }
    }
  };
  collect(header);
  if (!strings.every((s) => s.isWellFormed())) return no("lone surrogate");
  if (header === null || typeof header !== "object" || Array.isArray(header)) return no("header is not an object");
  const counts = (arr: unknown[]) => arr.every((_, i) => isCountLiteral(literals.get(arr)?.get(String(i))));
  const tensors: { begin: bigint; end: bigint }[] = [];
  let hugeDimension = false;
  for (const [name, entry] of Object.entries(header)) {
    if (name === "__metadata__") {
      if (entry === null) continue;
      if (typeof entry !== "object" || Array.isArray(entry)) return no("bad __metadata__");
      if (!Object.values(entry).every((v) => typeof v === "string")) return no("__metadata__ value not a string");
      continue;
    }
    if (entry === null || typeof entry !== "object" || Array.isArray(entry)) return no("tensor entry not an object");
    const { dtype, shape, data_offsets: offsets } = entry as Record<string, unknown>;
    if (typeof dtype !== "string" || !Object.hasOwn(REFERENCE_DTYPE_BYTES, dtype)) return no("unknown dtype");
    if (!Array.isArray(shape) || !counts(shape)) return no("bad shape");
    if (!Array.isArray(offsets) || offsets.length !== 2 || !counts(offsets)) return no("bad offsets");
    const dims = shape.map((_, i) => BigInt(literals.get(shape)!.get(String(i))!));
    const [begin, end] = offsets.map((_, i) => BigInt(literals.get(offsets)!.get(String(i))!));
    if (end < begin) return no("end before begin");
    let elements = 1n;
    for (const d of dims) {
      elements *= d;
      if (elements > U64_MAX) return no("element count overflows");
    }
    if (elements * REFERENCE_DTYPE_BYTES[dtype] > U64_MAX) return no("byte size overflows");
    if (elements * REFERENCE_DTYPE_BYTES[dtype] !== end - begin) return no("size does not match the offsets");
    if (dims.some((d) => d > BigInt(Number.MAX_SAFE_INTEGER))) hugeDimension = true;
    tensors.push({ begin, end });
  }
  tensors.sort((a, b) => (a.begin < b.begin ? -1 : a.begin > b.begin ? 1 : a.end < b.end ? -1 : a.end > b.end ? 1 : 0));
  let at = 0n;
  for (const t of tensors) {
    if (t.begin !== at) return no("offsets do not tile the data");
    at = t.end;
  }
  if (at + 8n + n !== BigInt(bytes.byteLength)) return no("data not covered exactly");
  return { refused: null, hugeDimension };
}

// ---- The reader, probed ---------------------------------------------------------------------------------------------

const BASE_TENSORS = {
  "w.bf16": { dtype: "BF16" as const, shape: [3, 5], data: new Uint8Array(30).map((_, i) => 3 * i + 1) },
  "b.f32": { dtype: "F32" as const, shape: [4], data: new Float32Array([1, -2, 0.5, 1e30]) },
  "count": { dtype: "I64" as const, shape: [], data: new BigInt64Array([7n]) },
  "mask": { dtype: "BOOL" as const, shape: [2, 3], data: new Uint8Array([1, 0, 1, 1, 0, 0]) },
  "h.f16": { dtype: "F16" as const, shape: [2, 2, 2], data: new Uint16Array([0x3c00, 0xc000, 0x7c00, 0x0001, 0, 1, 2, 3]) },
  "empty": { dtype: "F32" as const, shape: [0, 4], data: new Uint8Array(0) },
  "bytes": { dtype: "U8" as const, shape: [7], data: new Uint8Array([9, 8, 7, 6, 5, 4, 3]) },
};

// deno-lint-ignore no-explicit-any
type Header = Record<string, any>;

/** A file with the given header object (or raw header text) and data section. */
function withHeader(header: Header | string, data: Uint8Array): Uint8Array {
  const json = new TextEncoder().encode(typeof header === "string" ? header : JSON.stringify(header));
  const out = new Uint8Array(8 + json.byteLength + data.byteLength);
  new DataView(out.buffer).setBigUint64(0, BigInt(json.byteLength), true);
  out.set(json, 8);
  out.set(data, 8 + json.byteLength);
  return out;
}

function withHeaderLength(file: Uint8Array, n: bigint): Uint8Array {
  const out = file.slice();
  new DataView(out.buffer).setBigUint64(0, BigInt.asUintN(64, n), true);
  return out;
}

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((s, p) => s + p.byteLength, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.byteLength;
  }
  return out;
}

interface Outcome {
  opened: boolean;
  message?: string;
}

/** Open a mutated file and read its tensors (all of them, or `sample` spread over the file); any throw must be a
 * one-line Error naming the file. */
async function probe(path: string, bytes: Uint8Array, label: string, sample = Infinity): Promise<Outcome> {
  await Deno.writeFile(path, bytes);
  let f: SafetensorsFile;
  try {
    f = await SafetensorsFile.open(path);
  } catch (e) {
    assert.ok(e instanceof Error, `${label}: threw a non-Error ${String(e)}`);
    assert.ok(e.message.includes(path), `${label}: message does not name the file: ${e.message}`);
    // deno-lint-ignore no-control-regex
    assert.ok(!/[\n\r\x1b]/.test(e.message), `${label}: message is not one printable line: ${JSON.stringify(e.message)}`);
    return { opened: false, message: e.message };
  }
  try {
    const all = [...f.tensors.values()];
    for (const t of all) {
      assert.ok(t.fileOffset >= f.dataOffset && t.fileOffset + t.byteLength <= bytes.byteLength, `${label}: ${t.name} out of the file`);
    }
    const step = Math.max(1, Math.floor(all.length / sample));
    for (let i = 0; i < all.length; i += step) {
      const t = all[i];
      const whole = await f.readBytes(t.name);
      const want = bytes.subarray(t.fileOffset, t.fileOffset + t.byteLength);
      assert.ok(whole.byteLength === want.byteLength && whole.every((b, j) => b === want[j]), `${label}: ${t.name} bytes`);
      assert.equal((await f.readF32(t.name)).length, t.shape.reduce((a, b) => a * b, 1));
      let streamed = 0;
      for await (const c of f.readChunks(t.name, Math.max(5, Math.ceil(t.byteLength / 3)))) streamed += c.byteLength;
      assert.equal(streamed, t.byteLength);
      await assert.rejects(() => f.readBytes(t.name, 0, t.byteLength + 1), (e: Error) => e.message.includes(path));
    }
  } finally {
    f.close();
  }
  return { opened: true };
}

/** The parts of a safetensors file: header object, its text, and the data section. */
function split(file: Uint8Array): { header: Header; text: string; data: Uint8Array } {
  const n = Number(new DataView(file.buffer, file.byteOffset).getBigUint64(0, true));
  const text = new TextDecoder().decode(file.subarray(8, 8 + n));
  return { header: JSON.parse(text), text, data: file.subarray(8 + n) };
}

Deno.test("safetensors fuzz: every mutation is refused in one line naming the file, or is accepted by the reference rules", async () => {
  const started = performance.now();
  const dir = await Deno.makeTempDir({ prefix: "kleinscope-fuzz-" });
  const path = `${dir}/fuzz.safetensors`;
  const rng = new Rng(20240611);
  const int = (n: number) => Math.floor(rng.uniform() * n);
  const pick = <T>(xs: readonly T[]): T => xs[int(xs.length)];
  const small = encodeSafetensors(BASE_TENSORS, { format: "pt" });
  const vae = await Deno.readFile(VAE_FILE);
  let opened = 0, refused = 0;
  const seen = new Map<string, number>(); // reason → count, to show the mutations reach every rule

  /** The reader and the rules must agree (a huge legal dimension may be refused by the reader). */
  const agree = async (bytes: Uint8Array, label: string): Promise<Outcome> => {
    const verdict = referenceVerdict(bytes);
    // The VAE file has 247 tensors: an accepted mutation of it reads a sample of them.
    const r = await probe(path, bytes, label, bytes.byteLength > 100_000 ? 12 : Infinity);
    if (r.opened) {
      assert.equal(verdict.refused, null, `${label}: the reader opened a file the rules refuse (${verdict.refused})`);
      opened++;
    } else {
      assert.ok(verdict.refused !== null || verdict.hugeDimension, `${label}: the rules accept it, the reader refused: ${r.message}`);
      seen.set(verdict.refused ?? "huge dimension", (seen.get(verdict.refused ?? "huge dimension") ?? 0) + 1);
      refused++;
    }
    return r;
  };
  const expectRefused = async (bytes: Uint8Array, label: string, pattern?: RegExp) => {
    const r = await agree(bytes, label);
    assert.ok(!r.opened, `${label}: opened but should have been refused`);
    if (pattern) assert.match(r.message!, pattern, `${label} gave: ${r.message}`);
  };
  const expectOpened = async (bytes: Uint8Array, label: string) => {
    const r = await agree(bytes, label);
    assert.ok(r.opened, `${label}: refused: ${r.message}`);
  };

  try {
    const base = split(small);
    const mutate = (f: (h: Header) => void): Header => {
      const h = structuredClone(base.header);
      f(h);
      return h;
    };
    await expectOpened(small, "small base");
    await expectOpened(vae, "vae base");

    // Truncation at every length of the small file, and at random lengths of the VAE file.
    for (let n = 0; n < small.byteLength; n++) {
      await expectRefused(small.subarray(0, n), `truncated to ${n}`, n < 8 ? /shorter than the 8-byte header length/ : undefined);
    }
    for (let i = 0; i < 20; i++) await expectRefused(vae.subarray(0, int(vae.byteLength)), `vae truncated ${i}`);

    // Header lengths: 0, small, just past the file, the limit, huge.
    const lengths: [bigint, RegExp][] = [
      [0n, /header length is 0/],
      [1n, /not valid JSON/],
      [7n, /not valid JSON/],
      [BigInt(small.byteLength - 7), /larger than the \d+ bytes that follow/],
      [BigInt(MAX_HEADER_BYTES + 1), /header length 100000001 is larger than the 100000000-byte limit/],
      [100n * 1024n * 1024n, /larger than the 100000000-byte limit/],
      [2n ** 32n, /limit/],
      [2n ** 63n, /limit/],
      [2n ** 64n - 1n, /limit/],
    ];
    for (const [n, pattern] of lengths) await expectRefused(withHeaderLength(small, n), `header length ${n}`, pattern);
    for (let i = 0; i < 40; i++) await agree(withHeaderLength(small, BigInt(int(small.byteLength + 16))), `header length random ${i}`);

    // The classes testers found, each as a hand-made case with the message it must give.
    const classes: [Uint8Array, RegExp][] = [
      [concat(small, new Uint8Array([0])), /cover \d+ bytes of data, but the file holds \d+ bytes after the header \(1 trailing bytes/],
      [concat(vae, new Uint8Array(4096)), /4096 trailing bytes no tensor owns/],
      [withHeader("\ufeff" + base.text, base.data), /header starts with a UTF-8 byte-order mark/],
      [
        withHeader(base.text.replace("{", '{"bytes": {"dtype": "U8", "shape": [7], "data_offsets": [0, 7]}, '), base.data),
        /duplicate key "bytes"/,
      ],
      [withHeader(base.text.replace('"dtype":"F32"', '"dtype":"F32","dtype":"F32"'), base.data), /duplicate key "dtype"/],
      [withHeader(base.text.replace('"b.f32"', '"b\\ud800.f32"'), base.data), /lone high surrogate/],
      [withHeader(base.text.replace('"b.f32"', '"b\\udc00.f32"'), base.data), /lone low surrogate/],
      [
        withHeader(base.text.replace('"shape":[4]', '"shape":[4.0]'), base.data),
        /tensor "b.f32": shape \[4.0\] is not an array of non-negative integers/,
      ],
      [withHeader(base.text.replace('"shape":[4]', '"shape":[4e0]'), base.data), /shape \[4.0\] is not/],
      [withHeader(base.text.replace('"shape":[4]', '"shape":[-0]'), base.data), /shape \[-0\] is not/],
      [
        withHeader(base.text.replace(/"data_offsets":\[(\d+),(\d+)\]/, (_, a, b) => `"data_offsets":[${a}.0,${b}]`), base.data),
        /data_offsets/,
      ],
      // A zero-size tensor inside another's bytes.
      [
        withHeader(mutate((h) => (h.inside = { dtype: "F32", shape: [0], data_offsets: [4, 4] })), base.data),
        /tensor "inside" \[4, 4\] overlaps tensor "w.bf16" \[0, 30\]/,
      ],
      // A gap between two tensors (the later ones moved up, the data section grown to match).
      [
        withHeader(
          mutate((h) => {
            for (const t of Object.values(h)) {
              if (t.data_offsets && t.data_offsets[0] >= 30) {
                t.data_offsets = t.data_offsets.map((o: number) => o + 2);
              }
            }
          }),
          concat(base.data.subarray(0, 30), new Uint8Array(2), base.data.subarray(30)),
        ),
        /begins at byte 32 of the data section, but tensor "w.bf16" \[0, 30\] before it ends at 30 \(a gap of 2 bytes/,
      ],
      [
        withHeader(mutate((h) => (h["w.bf16"].data_offsets = [2, 32])), concat(new Uint8Array(2), base.data)),
        /the first tensor "w.bf16" begins at byte 2, not 0/,
      ],
    ];
    for (const [i, [bytes, pattern]] of classes.entries()) await expectRefused(bytes, `class ${i}`, pattern);

    // Legal variations the reader must keep accepting.
    const legal: (Header | string)[] = [
      mutate((h) => (h.__metadata__ = null)),
      mutate((h) => delete h.__metadata__),
      mutate((h) => (h["b.f32"].extra_field = { anything: [1, 2.5, null] })),
      mutate((h) => (h["\u001b[2J\u0007 clear"] = { dtype: "U8", shape: [0], data_offsets: [30, 30] })),
      base.text.replace("{", '{"__proto__":{"dtype":"F16","shape":[0,3],"data_offsets":[30,30]},'),
      mutate((h) => (h["empty"].shape = [2 ** 31, 2 ** 31, 0, 2 ** 31])),
      Object.fromEntries(Object.entries(base.header).reverse()),
      " \t\r\n" + base.text + "\n  ",
      base.text.replace('"b.f32"', '"b\\ud83d\\ude00.f32"'),
    ];
    for (const [i, h] of legal.entries()) await expectOpened(withHeader(h, base.data), `legal ${i}`);

    // Structurally bad headers, each with its message.
    const bad: [Header | string, RegExp][] = [
      ["{", /not valid JSON/],
      ['{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},}', /not valid JSON/],
      ["[]", /header is an empty array|header is \[\], expected a JSON object/],
      ["42", /header is 42, expected a JSON object/],
      ["null", /header is null/],
      [base.text + "\u0000", /not valid JSON \(unexpected text after the JSON value/],
      ["[".repeat(200) + "]".repeat(200), /nested more than 128 levels deep/],
      [mutate((h) => (h.__metadata__ = 5)), /__metadata__ is 5/],
      [mutate((h) => (h.__metadata__ = { format: 1 })), /__metadata__ entry "format" is 1, expected a string/],
      [mutate((h) => (h["b.f32"] = 3)), /tensor "b.f32": entry is 3/],
      [mutate((h) => (h["b.f32"].dtype = "F8_E4M3FNUZ")), /tensor "b.f32": dtype "F8_E4M3FNUZ" is not one of BF16/],
      [mutate((h) => (h["b.f32"].dtype = "__proto__")), /dtype "__proto__" is not one of/],
      [mutate((h) => delete h["b.f32"].dtype), /dtype missing is not one of/],
      [mutate((h) => (h["b.f32"].shape = [-4])), /tensor "b.f32": shape \[-4\] is not an array of non-negative integers/],
      [mutate((h) => (h["b.f32"].shape = ["4"])), /shape \["4"\] is not/],
      [mutate((h) => (h["b.f32"].shape = [2 ** 53 - 1, 2 ** 53 - 1])), /has more elements than 64 bits can count/],
      [mutate((h) => (h["b.f32"].shape = [2 ** 31, 2 ** 31])), /needs 18446744073709551616 bytes|more bytes than 64 bits/],
      [mutate((h) => (h.empty.shape = [2 ** 32, 2 ** 32, 0])), /has more elements than 64 bits can count/],
      [mutate((h) => (h["b.f32"].shape = [2, 3])), /shape \[2, 3\] of F32 needs 24 bytes, but data_offsets \[\d+, \d+\] hold 16/],
      [mutate((h) => (h["count"].dtype = "I32")), /tensor "count": shape \[\] of I32 needs 4 bytes/],
      [mutate((h) => (h["b.f32"].data_offsets = h["b.f32"].data_offsets.toReversed())), /data_offsets \[\d+, \d+\] end before they begin/],
      [mutate((h) => (h["b.f32"].data_offsets = [base.data.byteLength - 8, base.data.byteLength + 8])), /go past the end/],
      [mutate((h) => (h["b.f32"].data_offsets = [0])), /data_offsets \[0\] is not/],
      [mutate((h) => (h["b.f32"].data_offsets = [0, 16])), /tensor "[^"]+" \[\d+, \d+\] overlaps tensor "[^"]+" \[\d+, \d+\]/],
      [mutate((h) => (h["dup"] = { dtype: "U8", shape: [30], data_offsets: h["w.bf16"].data_offsets })), /overlaps/],
    ];
    for (const [i, [h, pattern]] of bad.entries()) {
      await expectRefused(
        withHeader(h, base.data),
        `bad header ${i}: ${typeof h === "string" ? h.slice(0, 40) : JSON.stringify(h).slice(0, 80)}`,
        pattern,
      );
    }
    const invalidUtf8 = small.slice();
    invalidUtf8[8 + 2] = 0xff;
    await expectRefused(invalidUtf8, "invalid UTF-8", /not valid UTF-8/);

    // Random mutations of both files, judged only by the rules.
    const v = split(vae);
    const sources = [{ name: "small", file: small, ...base }, { name: "vae", file: vae, ...v }];
    for (const src of sources) {
      const headerLen = src.file.byteLength - src.data.byteLength - 8;
      const rounds = src.name === "small" ? 300 : 45;
      for (let i = 0; i < rounds; i++) {
        const bytes = src.file.slice();
        for (let k = 1 + int(3); k > 0; k--) bytes[8 + int(headerLen)] ^= 1 << int(8);
        await agree(bytes, `${src.name} header flip ${i}`);
      }
      for (let i = 0; i < rounds / 3; i++) {
        const bytes = src.file.slice();
        bytes[int(bytes.byteLength)] = int(256);
        await agree(bytes, `${src.name} byte anywhere ${i}`);
      }
      for (let i = 0; i < rounds / 3; i++) {
        await agree(concat(src.file, new Uint8Array(1 + int(64))), `${src.name} trailing ${i}`);
      }
      // Tokens spliced into the header text: numbers in every form JSON allows or almost allows, structure, escapes.
      const splices = [
        "9",
        "99999999999999999999",
        "-",
        "-1",
        ".5",
        "e308",
        "0",
        "4.0",
        "1e1",
        "-0",
        "01",
        ",",
        "}",
        "]",
        "[",
        '"',
        ":",
        "\\u",
        "\\ud800",
        "\\udc00",
        "\\u001b",
        "\ufeff",
        "null",
        " ",
        "\t",
        "\u0000",
        "__metadata__",
        '"z":{"dtype":"U8","shape":[0],"data_offsets":[0,0]},',
      ];
      for (let i = 0; i < rounds; i++) {
        const at = int(src.text.length);
        const text = src.text.slice(0, at) + pick(splices) + src.text.slice(at + int(2));
        await agree(withHeader(text, src.data), `${src.name} splice ${i}`);
      }
      // Numbers of the header replaced in place (shapes and offsets): most break the size or tiling rules.
      const numberAt = [...src.text.matchAll(/\d+/g)].map((m) => [m.index!, m[0].length] as const);
      for (let i = 0; i < rounds; i++) {
        const [at, len] = pick(numberAt);
        const text = src.text.slice(0, at) + pick(["0", "1", "2", "7", "8", "16", "4.0", "-1", "1e2", "18446744073709551616"]) +
          src.text.slice(at + len);
        await agree(withHeader(text, src.data), `${src.name} number ${i}`);
      }
      // A zero-size tensor placed at a random offset: legal on a boundary between tensors, refused inside one.
      for (let i = 0; i < rounds / 3; i++) {
        const h = structuredClone(src.header);
        const o = int(src.data.byteLength + 1);
        h[`zero.${i}`] = { dtype: "F32", shape: [0], data_offsets: [o, o] };
        await agree(withHeader(h, src.data), `${src.name} zero-size at ${o}`);
      }
      // One tensor's offsets moved by a few bytes, with or without the data section resized to match.
      const named = Object.keys(src.header).filter((k) => k !== "__metadata__");
      for (let i = 0; i < rounds / 3; i++) {
        const h = structuredClone(src.header);
        const t = h[pick(named)];
        const d = 1 + int(8);
        t.data_offsets = [t.data_offsets[0] + d, t.data_offsets[1] + d];
        const data = i % 2 ? concat(src.data, new Uint8Array(d)) : src.data;
        await agree(withHeader(h, data), `${src.name} shifted ${i}`);
      }
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
  const seconds = (performance.now() - started) / 1000;
  assert.ok(opened > 40 && refused > 800, `opened ${opened}, refused ${refused}`);
  for (
    const reason of [
      "not JSON",
      "duplicate key",
      "bad shape",
      "size does not match the offsets",
      "offsets do not tile the data",
      "data not covered exactly",
    ]
  ) {
    assert.ok(
      [...seen.keys()].some((k) => k.startsWith(reason)),
      `no mutation was refused for "${reason}" (${[...seen.keys()].join(", ")})`,
    );
  }
  assert.ok(seconds < 20, `fuzz took ${seconds.toFixed(1)} s`);
});
