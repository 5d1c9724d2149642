// Fuzzing the safetensors reader: a small valid file, mutated many ways (seeded, so every run is the same).
// Every mutation must either open — and then every tensor reads within bounds — or throw an Error whose message
// names the file. Nothing may crash, hang or allocate more than the file holds.

import assert from "node:assert/strict";
import { SafetensorsFile } from "../../weights/safetensors.ts";
import { encodeSafetensors } from "../../weights/safetensors_writer.ts";
import { Rng } from "../../runtime/random.ts";

const BASE_TENSORS = {
  "w.bf16": { dtype: "BF16" as const, shape: [3, 5], data: new Uint8Array(30).map((_, i) => 3 * i + 1) },
  "b.f32": { dtype: "F32" as const, shape: [4], data: new Float32Array([1, -2, 0.5, 1e30]) },
  "count": { dtype: "I64" as const, shape: [], data: new BigInt64Array([7n]) },
  "mask": { dtype: "BOOL" as const, shape: [2, 3], data: new Uint8Array([1, 0, 1, 1, 0, 0]) },
  "h.f16": { dtype: "F16" as const, shape: [2, 2, 2], data: new Uint16Array([0x3c00, 0xc000, 0x7c00, 0x0001, 0, 1, 2, 3]) },
  "empty": { dtype: "F32" as const, shape: [0, 4], data: new Uint8Array(0) },
  "bytes": { dtype: "U8" as const, shape: [7], data: new Uint8Array([9, 8, 7, 6, 5, 4, 3]) },
};

type Header = Record<string, any>;

/** A file with the given header object (or raw header text) and `dataBytes` bytes of data. */
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

interface Outcome {
  opened: boolean;
  message?: string;
}

/** Open a mutated file and read every tensor every way; any throw must be an Error naming the file. */
async function probe(path: string, bytes: Uint8Array, label: string): Promise<Outcome> {
  await Deno.writeFile(path, bytes);
  let f: SafetensorsFile;
  try {
    f = await SafetensorsFile.open(path);
  } catch (e) {
    assert.ok(e instanceof Error, `${label}: threw a non-Error ${String(e)}`);
    assert.ok(e.message.includes(path), `${label}: message does not name the file: ${e.message}`);
    return { opened: false, message: e.message };
  }
  try {
    for (const t of f.tensors.values()) {
      assert.ok(t.fileOffset >= f.dataOffset && t.fileOffset + t.byteLength <= bytes.byteLength, `${label}: ${t.name} out of the file`);
      const whole = await f.readBytes(t.name);
      assert.equal(whole.byteLength, t.byteLength);
      assert.deepEqual(whole, bytes.subarray(t.fileOffset, t.fileOffset + t.byteLength), `${label}: ${t.name} bytes`);
      assert.equal((await f.readF32(t.name)).length, t.shape.reduce((a, b) => a * b, 1));
      let streamed = 0;
      for await (const c of f.readChunks(t.name, 5)) streamed += c.byteLength;
      assert.equal(streamed, t.byteLength);
      await assert.rejects(() => f.readBytes(t.name, 0, t.byteLength + 1), (e: Error) => e.message.includes(path));
    }
  } finally {
    f.close();
  }
  return { opened: true };
}

Deno.test("safetensors fuzz: truncations, flips and hostile headers end in an Error naming the file", async () => {
  const started = performance.now();
  const dir = await Deno.makeTempDir({ prefix: "kleinscope-fuzz-" });
  const path = `${dir}/fuzz.safetensors`;
  const rng = new Rng(20240611);
  const int = (n: number) => Math.floor(rng.uniform() * n);
  const base = encodeSafetensors(BASE_TENSORS, { format: "pt" });
  const headerLen = Number(new DataView(base.buffer).getBigUint64(0, true));
  const header: Header = JSON.parse(new TextDecoder().decode(base.subarray(8, 8 + headerLen)));
  const data = base.subarray(8 + headerLen);
  let opened = 0, refused = 0;
  const expectRefused = async (bytes: Uint8Array, label: string, pattern?: RegExp) => {
    const r = await probe(path, bytes, label);
    assert.ok(!r.opened, `${label}: opened but should have been refused`);
    if (pattern) assert.match(r.message!, pattern, `${label} gave: ${r.message}`);
    refused++;
  };
  const either = async (bytes: Uint8Array, label: string) => {
    if ((await probe(path, bytes, label)).opened) opened++;
    else refused++;
  };
  const mutate = (f: (h: Header) => void): Header => {
    const h = structuredClone(header);
    f(h);
    return h;
  };
  try {
    assert.ok((await probe(path, base, "base")).opened);

    // Truncation at every length short of the whole file.
    for (let n = 0; n < base.byteLength; n++) {
      await expectRefused(base.subarray(0, n), `truncated to ${n}`, n < 8 ? /shorter than the 8-byte header length/ : undefined);
    }

    // Header length: 0, small, huge, just past the file, 2^63, all ones.
    const lengths: [bigint, RegExp][] = [
      [0n, /header length is 0/],
      [1n, /not valid JSON/],
      [7n, /not valid JSON/],
      [BigInt(base.byteLength - 7), /larger than the \d+ bytes that follow/],
      [BigInt(100 * 1024 * 1024 + 1), /larger than the 104857600-byte limit/],
      [2n ** 32n, /limit/],
      [2n ** 53n + 1n, /limit/],
      [2n ** 63n, /limit/],
      [2n ** 64n - 1n, /limit/],
    ];
    for (const [n, pattern] of lengths) await expectRefused(withHeaderLength(base, n), `header length ${n}`, pattern);
    for (let i = 0; i < 40; i++) {
      await either(withHeaderLength(base, BigInt(int(headerLen + data.byteLength + 16))), `header length random ${i}`);
    }

    // Structurally bad headers.
    const bad: [Header | string, RegExp][] = [
      ["{", /not valid JSON/],
      ['{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},}', /not valid JSON/],
      ["", /header length is 0/],
      ["[]", /header is \[\], expected a JSON object/],
      ["[1, 2]", /expected a JSON object/],
      ["42", /header is 42/],
      ['"text"', /expected a JSON object/],
      ["null", /header is null/],
      ["true", /expected a JSON object/],
      [mutate((h) => (h.__metadata__ = 5)), /__metadata__ is 5/],
      [mutate((h) => (h.__metadata__ = ["a"])), /__metadata__ is \["a"\]/],
      [mutate((h) => (h.__metadata__ = { format: 1 })), /__metadata__ entry "format" is 1, expected a string/],
      [mutate((h) => (h["b.f32"] = 3)), /tensor "b.f32": entry is 3/],
      [mutate((h) => (h["b.f32"] = [1])), /tensor "b.f32": entry is \[1\]/],
      [mutate((h) => (h["b.f32"].dtype = "F8_E4M3")), /tensor "b.f32": dtype "F8_E4M3" is not one of BF16/],
      [mutate((h) => (h["b.f32"].dtype = "f32")), /dtype "f32" is not one of/],
      [mutate((h) => delete h["b.f32"].dtype), /dtype missing is not one of/],
      [mutate((h) => (h["b.f32"].dtype = 4)), /dtype 4 is not one of/],
      [mutate((h) => (h["b.f32"].dtype = "__proto__")), /dtype "__proto__" is not one of/],
      [mutate((h) => (h["b.f32"].dtype = "constructor")), /dtype "constructor" is not one of/],
      [mutate((h) => (h["b.f32"].shape = [-4])), /tensor "b.f32": shape \[-4\] is not an array of non-negative integers/],
      [mutate((h) => (h["b.f32"].shape = [4.5])), /shape \[4.5\] is not/],
      [mutate((h) => (h["b.f32"].shape = ["4"])), /shape \["4"\] is not/],
      [mutate((h) => (h["b.f32"].shape = 4)), /shape 4 is not/],
      [mutate((h) => delete h["b.f32"].shape), /shape missing is not/],
      [mutate((h) => (h["b.f32"].shape = [2 ** 60])), /shape \[1152921504606847000\] is not/],
      [mutate((h) => (h["b.f32"].shape = [2 ** 53 - 1, 2 ** 53 - 1])), /needs \d+ bytes, but data_offsets \[\d+, \d+\] hold 16/],
      // Products that overflow doubles, or wrap 2^64 (4 * 2^62 = 2^64 ≡ 0), must not pass as the right size.
      [mutate((h) => (h.empty.shape = [2 ** 31, 2 ** 31, 0, 2 ** 31])), null as unknown as RegExp],
      [mutate((h) => (h["b.f32"].shape = [2 ** 31, 2 ** 31, 2 ** 31, 2 ** 31])), /needs 85070591730234615865843651857942052864 bytes/],
      [mutate((h) => (h["b.f32"].shape = [2, 2, 1, 1, 0.0001])), /is not/],
      [mutate((h) => (h["b.f32"].shape = [2, 3])), /shape \[2, 3\] of F32 needs 24 bytes, but data_offsets \[\d+, \d+\] hold 16/],
      [mutate((h) => (h["b.f32"].dtype = "F64")), /shape \[4\] of F64 needs 32 bytes/],
      [mutate((h) => (h["b.f32"].dtype = "BF16")), /shape \[4\] of BF16 needs 8 bytes/],
      [mutate((h) => (h["count"].dtype = "I32")), /tensor "count": shape \[\] of I32 needs 4 bytes/],
      [
        mutate((h) => (h["b.f32"].data_offsets = h["b.f32"].data_offsets.toReversed())),
        /tensor "b.f32": data_offsets \[\d+, \d+\] end before they begin/,
      ],
      [mutate((h) => (h["b.f32"].data_offsets = [data.byteLength - 8, data.byteLength + 8])), /go past the end of the data section/],
      [mutate((h) => (h["b.f32"].data_offsets = [2 ** 53, 2 ** 53 + 16])), /is not \[begin, end\]|go past the end/],
      [mutate((h) => (h["b.f32"].data_offsets = [1e300, 1e300])), /is not \[begin, end\]/],
      [mutate((h) => (h["b.f32"].data_offsets = [-16, 0])), /is not \[begin, end\]/],
      [mutate((h) => (h["b.f32"].data_offsets = [0])), /data_offsets \[0\] is not/],
      [mutate((h) => (h["b.f32"].data_offsets = [0, 16, 32])), /is not \[begin, end\]/],
      [mutate((h) => (h["b.f32"].data_offsets = "0-16")), /is not \[begin, end\]/],
      [mutate((h) => delete h["b.f32"].data_offsets), /data_offsets missing/],
      [mutate((h) => (h["b.f32"].data_offsets = [0, 16])), /tensors "[^"]+" \[\d+, \d+\] and "[^"]+" \[\d+, \d+\] overlap/],
      [mutate((h) => (h["bytes"].data_offsets = [h["bytes"].data_offsets[0] - 1, h["bytes"].data_offsets[1] - 1])), /overlap/],
      [
        mutate((h) => (h["dup"] = { dtype: "U8", shape: [30], data_offsets: h["w.bf16"].data_offsets })),
        /tensors "(w.bf16|dup)" .* and "(w.bf16|dup)" .* overlap/,
      ],
    ];
    for (const [i, [h, pattern]] of bad.entries()) {
      if (pattern === null) {
        // A zero-element tensor with huge other dims is legal and holds no bytes.
        assert.ok((await probe(path, withHeader(h, data), `bad header ${i}`)).opened);
        opened++;
        continue;
      }
      await expectRefused(withHeader(h, data), `bad header ${i}: ${typeof h === "string" ? h : JSON.stringify(h).slice(0, 80)}`, pattern);
    }
    // Invalid UTF-8 in the header.
    const invalidUtf8 = base.slice();
    invalidUtf8[8 + 2] = 0xff;
    await expectRefused(invalidUtf8, "invalid UTF-8", /not valid UTF-8/);

    // Random byte flips: in the header (mostly refused, sometimes a legal rename) and in the data (always legal).
    for (let i = 0; i < 400; i++) {
      const bytes = base.slice();
      const flips = 1 + int(3);
      for (let k = 0; k < flips; k++) bytes[8 + int(headerLen)] ^= 1 << int(8);
      await either(bytes, `header flip ${i}`);
    }
    for (let i = 0; i < 100; i++) {
      const bytes = base.slice();
      for (let k = 0; k < 4; k++) bytes[8 + headerLen + int(data.byteLength)] = int(256);
      const r = await probe(path, bytes, `data flip ${i}`);
      assert.ok(r.opened, `data flip ${i}: ${r.message}`);
      opened++;
    }
    // Random bytes anywhere, including the length prefix.
    for (let i = 0; i < 200; i++) {
      const bytes = base.slice();
      bytes[int(bytes.byteLength)] = int(256);
      await either(bytes, `anywhere ${i}`);
    }
    // Random digits spliced into the numbers of the header.
    const text = new TextDecoder().decode(base.subarray(8, 8 + headerLen));
    const digitAt = [...text.matchAll(/\d/g)].map((m) => m.index!);
    for (let i = 0; i < 200; i++) {
      const at = digitAt[int(digitAt.length)];
      const insert = ["9", "99999999999999999999", "-", ".5", "e308", "0"][int(6)];
      await either(withHeader(text.slice(0, at) + insert + text.slice(at + 1), data), `digits ${i}`);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
  const seconds = (performance.now() - started) / 1000;
  assert.ok(opened > 150 && refused > 1000, `opened ${opened}, refused ${refused}`);
  assert.ok(seconds < 20, `fuzz took ${seconds.toFixed(1)} s`);
});
