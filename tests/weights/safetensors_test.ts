import assert from "node:assert/strict";
import { SafetensorsFile } from "../../weights/safetensors.ts";
import { encodeSafetensors, writeSafetensors } from "../../weights/safetensors_writer.ts";
import { bf16ToF32, decodeToF32 } from "../../weights/dtypes.ts";
import { parseStrictJson, StrictJsonError } from "../../weights/strict_json.ts";
import { BFL, bytesEqual, rawTensorBytes, TRANSFORMER, VAE_FILE } from "./util.ts";

Deno.test("safetensors: the fixture files open and list their tensors", async () => {
  const bfl = await SafetensorsFile.open(BFL);
  try {
    assert.equal(bfl.tensors.size, 41);
    assert.deepEqual(bfl.metadata, { format: "pt" });
    const qkv = bfl.info("double_blocks.0.img_attn.qkv.weight");
    assert.equal(qkv.dtype, "BF16");
    assert.deepEqual(qkv.shape, [768, 256]);
    assert.equal(qkv.byteLength, 768 * 256 * 2);
    assert.equal(qkv.file, BFL);
    assert.equal(qkv.fileOffset, bfl.dataOffset + 131584);
  } finally {
    bfl.close();
  }
  const vae = await SafetensorsFile.open(VAE_FILE);
  try {
    assert.equal(vae.tensors.size, 247);
    const nbt = vae.info("bn.num_batches_tracked");
    assert.equal(nbt.dtype, "I64");
    assert.deepEqual(nbt.shape, []);
    const bytes = await vae.readBytes("bn.num_batches_tracked");
    const value = new DataView(bytes.buffer).getBigInt64(0, true);
    assert.equal((await vae.readF32("bn.num_batches_tracked"))[0], Number(value));
  } finally {
    vae.close();
  }
  const shard = await SafetensorsFile.open(`${TRANSFORMER}/diffusion_pytorch_model-00001-of-00004.safetensors`);
  try {
    assert.ok(shard.has("context_embedder.weight"));
    assert.deepEqual(shard.info("context_embedder.weight").shape, [256, 96]);
  } finally {
    shard.close();
  }
});

Deno.test("safetensors: readF32 equals a manual bf16 decode of the file's bytes", async () => {
  const f = await SafetensorsFile.open(BFL);
  try {
    for (const name of ["double_blocks.0.img_attn.norm.key_norm.scale", "double_blocks.0.img_attn.proj.weight"]) {
      const raw = await rawTensorBytes(BFL, name);
      const want = new Float32Array(raw.byteLength / 2);
      for (let i = 0; i < want.length; i++) want[i] = bf16ToF32(raw[2 * i] | (raw[2 * i + 1] << 8));
      const got = await f.readF32(name);
      assert.deepEqual(got, want);
      assert.ok(got.some((v) => v !== 0), `${name} is all zeros`);
      assert.ok(bytesEqual(await f.readBytes(name), raw));
    }
  } finally {
    f.close();
  }
});

Deno.test("safetensors: byte ranges and chunked reads agree with the whole tensor, and bounds are checked", async () => {
  const f = await SafetensorsFile.open(BFL);
  try {
    const name = "double_blocks.0.img_attn.qkv.weight";
    const whole = await f.readBytes(name);
    assert.ok(bytesEqual(await f.readBytes(name, 1000, 777), whole.subarray(1000, 1777)));
    assert.ok(bytesEqual(await f.readBytes(name, whole.byteLength), new Uint8Array(0)));
    for (const [chunk, start, length] of [[4096, 0, undefined], [1000, 3, 99_999], [7, 5, 50], [1 << 30, 10, undefined]] as const) {
      const parts: Uint8Array[] = [];
      for await (const c of f.readChunks(name, chunk, start, length)) {
        assert.ok(c.byteLength <= chunk);
        parts.push(c);
      }
      const joined = new Uint8Array(parts.reduce((s, p) => s + p.byteLength, 0));
      let at = 0;
      for (const p of parts) {
        joined.set(p, at);
        at += p.byteLength;
      }
      assert.ok(bytesEqual(joined, whole.subarray(start, length === undefined ? undefined : start + length)));
    }
    const size = whole.byteLength;
    for (const [s, l] of [[-1, 4], [0, size + 1], [size, 1], [1.5, 2], [10, -1]]) {
      await assert.rejects(() => f.readBytes(name, s, l), (e: Error) => e.message.includes(BFL) && e.message.includes(name));
    }
    await assert.rejects(async () => {
      for await (const _ of f.readChunks(name, 0)) { /* nothing */ }
    }, /chunk size 0/);
    await assert.rejects(() => f.readBytes("no.such.tensor"), /has no tensor "no.such.tensor"/);
    // Concurrent reads on one handle must not interleave their seeks.
    const names = f.names();
    const together = await Promise.all(names.map((n) => f.readBytes(n)));
    for (let i = 0; i < names.length; i++) assert.ok(bytesEqual(together[i], await rawTensorBytes(BFL, names[i])), names[i]);
  } finally {
    f.close();
  }
  await assert.rejects(() => f.readBytes("txt_in.weight"), /is closed/);
});

Deno.test("safetensors: a file truncated after it was opened gives a clear error", async () => {
  const dir = await Deno.makeTempDir();
  const path = `${dir}/t.safetensors`;
  try {
    const data = new Uint8Array(4000).map((_, i) => i * 7);
    await writeSafetensors(path, {
      a: { dtype: "U8", shape: [1000], data: data.subarray(0, 1000) },
      b: { dtype: "F32", shape: [750], data: data.subarray(1000) },
    });
    const f = await SafetensorsFile.open(path);
    try {
      await Deno.truncate(path, f.dataOffset + 1500);
      assert.ok(bytesEqual(await f.readBytes("a"), data.subarray(0, 1000)));
      await assert.rejects(
        () => f.readBytes("b"),
        (e: Error) => /truncated/.test(e.message) && e.message.includes(path) && e.message.includes('"b"'),
      );
      await assert.rejects(async () => {
        for await (const _ of f.readChunks("b", 256)) { /* nothing */ }
      }, /file ended at byte/);
    } finally {
      f.close();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("safetensors writer: round trip of every dtype, metadata, no temporary file left", async () => {
  const dir = await Deno.makeTempDir();
  const path = `${dir}/w.safetensors`;
  try {
    const tensors = {
      bf16: { dtype: "BF16" as const, shape: [3, 5], data: new Uint8Array(30).map((_, i) => i + 1) },
      f32: { dtype: "F32" as const, shape: [4], data: new Float32Array([1.5, -2, 3e-8, Infinity]) },
      i64: { dtype: "I64" as const, shape: [], data: new BigInt64Array([-42n]) },
      empty: { dtype: "F16" as const, shape: [0, 7], data: new Uint8Array(0) },
      u8: { dtype: "U8" as const, shape: [3], data: new Uint8Array([1, 2, 255]) },
    };
    await writeSafetensors(path, tensors, { format: "pt", note: "test" });
    assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name), ["w.safetensors"]);
    const f = await SafetensorsFile.open(path);
    try {
      assert.deepEqual(f.metadata, { format: "pt", note: "test" });
      assert.deepEqual(f.names(), Object.keys(tensors));
      assert.equal(f.headerLength % 8, 0);
      for (const [name, t] of Object.entries(tensors)) {
        assert.deepEqual(f.info(name).shape, t.shape);
        assert.ok(bytesEqual(await f.readBytes(name), new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength)), name);
      }
      assert.deepEqual([...await f.readF32("f32")], [1.5, -2, Math.fround(3e-8), Infinity]);
      assert.deepEqual([...await f.readF32("i64")], [-42]);
    } finally {
      f.close();
    }
    assert.throws(() => encodeSafetensors({ x: { dtype: "F32", shape: [3], data: new Uint8Array(8) } }), /needs 12 bytes, got 8/);
    await assert.rejects(() => writeSafetensors(`${dir}/missing/x.safetensors`, {}), /cannot write/);
    assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name), ["w.safetensors"]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("strict JSON: integers stay exact, duplicates and lone surrogates are refused, keys are only keys", () => {
  const v = parseStrictJson(' {"a": [0, 18446744073709551615, -3, 4.0, 4e0, -0, 1.5], "__proto__": {"k": "\\ud83d\\ude00"}}\n');
  assert.ok(v instanceof Map);
  assert.deepEqual(v.get("a"), [0n, 18446744073709551615n, -3n, 4, 4, -0, 1.5]);
  assert.ok(Object.is((v.get("a") as unknown[])[5], -0));
  assert.deepEqual((v.get("__proto__") as Map<string, unknown>).get("k"), "😀");
  const refused: [string, RegExp][] = [
    ['{"a": {"b": 1, "b": 2}}', /duplicate key "b" at character 15/],
    ['["\\ud800"]', /lone high surrogate/],
    ['["\\udfff"]', /lone low surrogate/],
    ['["\\ud800\\u0041"]', /lone high surrogate/],
    ["\ufeff{}", /byte-order mark/],
    ["[1,]", /the text ends where a value should be|unexpected character/],
    ["01", /unexpected text after the JSON value/],
    ["1e999", /out of range/],
    ['["a\u0001"]', /control character inside a string/],
    ["{} {}", /unexpected text after/],
    ["[".repeat(129) + "]".repeat(129), /nested more than 128 levels deep/],
  ];
  for (const [text, pattern] of refused) {
    assert.throws(() => parseStrictJson(text), (e: Error) => e instanceof StrictJsonError && pattern.test(e.message), text);
  }
  assert.doesNotThrow(() => parseStrictJson("[".repeat(128) + "]".repeat(128)));
});

Deno.test("dtypes: the reference's 8-bit floats and unsigned integers decode exactly", () => {
  const bytes = (xs: number[]) => new Uint8Array(xs);
  assert.deepEqual([...decodeToF32(bytes([0x38, 0xb8, 0x7e, 0x01, 0x7f, 0x00]), "F8_E4M3")].slice(0, 5), [1, -1, 448, 2 ** -9, NaN]);
  assert.deepEqual([...decodeToF32(bytes([0x3c, 0xc0, 0x7b, 0x7c, 0x01]), "F8_E5M2")], [1, -2, 57344, Infinity, 2 ** -16]);
  assert.deepEqual([...decodeToF32(new Uint8Array(new Uint16Array([65535, 1]).buffer), "U16")], [65535, 1]);
  assert.deepEqual([...decodeToF32(new Uint8Array(new Uint32Array([4294967295]).buffer), "U32")], [4294967296]);
  assert.deepEqual([...decodeToF32(new Uint8Array(new BigUint64Array([2n ** 40n]).buffer), "U64")], [2 ** 40]);
});
