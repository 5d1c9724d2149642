import assert from "node:assert/strict";
import { getGpu } from "../../runtime/device.ts";
import { readBuffer } from "../../runtime/buffers.ts";
import type { TensorSpec } from "../../runtime/tensor.ts";
import { Checkpoint } from "../../weights/checkpoint.ts";
import { PendingUpload, WeightStore } from "../../weights/store.ts";
import { writeSafetensors } from "../../weights/safetensors_writer.ts";
import { bf16ToF32, f16ToF32, f32ToBf16 } from "../../weights/dtypes.ts";
import { BFL, bytesEqual, TRANSFORMER, VAE } from "./util.ts";

function spec(name: string, shape: number[], dtype: "bf16" | "f32"): TensorSpec {
  return { id: 0, name, shape, dtype, role: "weight" };
}

async function gpuBytes(store: WeightStore, name: string, shape: number[], dtype: "bf16" | "f32", bytes: number): Promise<Uint8Array> {
  const gpu = await getGpu();
  const { buffer, offset } = store.bufferFor(name, spec(name, shape, dtype));
  return new Uint8Array(await readBuffer(gpu, buffer, offset, bytes));
}

Deno.test("weight store: bf16 tensors upload bit-exactly, in small chunks too", async () => {
  const gpu = await getGpu();
  const ckpt = await Checkpoint.open(TRANSFORMER);
  const store = new WeightStore(gpu);
  try {
    const names = ["context_embedder.weight", "transformer_blocks.0.attn.norm_q.weight", "x_embedder.weight", "proj_out.weight"];
    for (const n of names) store.add(n, { shape: ckpt.info(n).shape, dtype: "bf16", pieces: [{ checkpoint: ckpt, tensor: n }] });
    const progress: number[] = [];
    // 1000-byte chunks: many chunk boundaries inside every tensor.
    await store.upload({ chunkBytes: 1000, onProgress: (p) => progress.push(p.doneBytes) });
    const total = names.reduce((s, n) => s + ckpt.info(n).byteLength, 0);
    assert.equal(progress.at(-1), total);
    assert.ok(progress.length > names.length);
    assert.equal(store.bytes(), names.reduce((s, n) => s + Math.ceil(ckpt.info(n).byteLength / 4) * 4, 0));
    for (const n of names) {
      const t = ckpt.info(n);
      assert.ok(bytesEqual(await gpuBytes(store, n, t.shape, "bf16", t.byteLength), await ckpt.readBytes(n)), n);
    }
  } finally {
    store.release();
    ckpt.close();
  }
});

Deno.test("weight store: row ranges of several tensors concatenate — diffusers q,k,v equal BFL's fused qkv", async () => {
  const gpu = await getGpu();
  const diffusers = await Checkpoint.open(TRANSFORMER);
  const bfl = await Checkpoint.open(BFL);
  const store = new WeightStore(gpu);
  try {
    const attn = "transformer_blocks.0.attn";
    store.add("double.0.img_qkv", {
      shape: [768, 256],
      dtype: "bf16",
      pieces: ["to_q", "to_k", "to_v"].map((p) => ({ checkpoint: diffusers, tensor: `${attn}.${p}.weight` })),
    });
    // BFL stores the final modulation as (shift, scale), diffusers as (scale, shift): swap the halves.
    store.add("final.mod", {
      shape: [512, 256],
      dtype: "bf16",
      pieces: [
        { checkpoint: bfl, tensor: "final_layer.adaLN_modulation.1.weight", rowStart: 256, rowCount: 256 },
        { checkpoint: bfl, tensor: "final_layer.adaLN_modulation.1.weight", rowStart: 0, rowCount: 256 },
      ],
    });
    // Two row ranges of two different tensors, as f32.
    store.add("mixed", {
      shape: [3, 256],
      dtype: "f32",
      pieces: [
        { checkpoint: bfl, tensor: "double_blocks.0.img_attn.qkv.weight", rowStart: 5, rowCount: 2 },
        { checkpoint: diffusers, tensor: "transformer_blocks.0.attn.to_out.0.weight", rowStart: 255 },
      ],
    });
    await store.upload({ chunkBytes: 4096 });
    assert.ok(bytesEqual(
      await gpuBytes(store, "double.0.img_qkv", [768, 256], "bf16", 768 * 256 * 2),
      await bfl.readBytes("double_blocks.0.img_attn.qkv.weight"),
    ));
    assert.ok(bytesEqual(
      await gpuBytes(store, "final.mod", [512, 256], "bf16", 512 * 256 * 2),
      await diffusers.readBytes("norm_out.linear.weight"),
    ));
    const mixed = new Float32Array((await gpuBytes(store, "mixed", [3, 256], "f32", 3 * 256 * 4)).buffer);
    const qkv = await bfl.readF32("double_blocks.0.img_attn.qkv.weight");
    const out = await diffusers.readF32("transformer_blocks.0.attn.to_out.0.weight");
    assert.deepEqual(mixed.subarray(0, 512), qkv.subarray(5 * 256, 7 * 256));
    assert.deepEqual(mixed.subarray(512), out.subarray(255 * 256));
  } finally {
    store.release();
    diffusers.close();
    bfl.close();
  }
});

Deno.test("weight store: F32 and F16 sources convert to bf16 (round to nearest even) and f32", async () => {
  const gpu = await getGpu();
  const dir = await Deno.makeTempDir();
  const path = `${dir}/mixed.safetensors`;
  // Ties and near-ties of bf16 rounding, subnormals, infinities, NaN, and 1001 elements (an odd count, last piece).
  const values = new Float32Array(1001);
  const special = [1 + 2 ** -8, 1 + 3 * 2 ** -8, 1 + 2 ** -8 + 2 ** -20, -(1 + 2 ** -8), 2 ** -130, Infinity, -Infinity, NaN, 65504, -0];
  values.set(special);
  for (let i = special.length; i < values.length; i++) values[i] = Math.sin(i) * 10 ** ((i % 9) - 4);
  const f16 = new Uint16Array(1001).map((_, i) => (i * 40503) & 0xffff);
  await writeSafetensors(path, {
    f32: { dtype: "F32", shape: [1001], data: values },
    f16: { dtype: "F16", shape: [7, 143], data: f16 },
    i64: { dtype: "I64", shape: [2], data: new BigInt64Array([1n, 2n]) },
  });
  const ckpt = await Checkpoint.open(path);
  const store = new WeightStore(gpu);
  try {
    store.add("f32_as_bf16", { shape: [1001], dtype: "bf16", pieces: [{ checkpoint: ckpt, tensor: "f32" }] });
    store.add("f16_as_bf16", { shape: [7, 143], dtype: "bf16", pieces: [{ checkpoint: ckpt, tensor: "f16" }] });
    store.add("f16_as_f32", { shape: [7, 143], dtype: "f32", pieces: [{ checkpoint: ckpt, tensor: "f16" }] });
    assert.throws(
      () => store.add("ints", { shape: [2], dtype: "f32", pieces: [{ checkpoint: ckpt, tensor: "i64" }] }),
      /weight ints .*: piece i64 \[2\] I64 .* cannot be converted to f32/,
    );
    await store.upload({ chunkBytes: 24 });
    const asBf16 = new Uint16Array((await gpuBytes(store, "f32_as_bf16", [1001], "bf16", 2002)).buffer);
    for (let i = 0; i < values.length; i++) {
      const want = f32ToBf16(values[i]);
      assert.equal(asBf16[i], want, `element ${i} (${values[i]})`);
    }
    assert.deepEqual([...asBf16.subarray(0, 4)], [0x3f80, 0x3f82, 0x3f81, 0xbf80]);
    assert.ok(Number.isNaN(bf16ToF32(asBf16[7])));
    const f16bf = new Uint16Array((await gpuBytes(store, "f16_as_bf16", [7, 143], "bf16", 2002)).buffer);
    const f16f32 = new Float32Array((await gpuBytes(store, "f16_as_f32", [7, 143], "f32", 4004)).buffer);
    for (let i = 0; i < f16.length; i++) {
      const x = f16ToF32(f16[i]);
      assert.ok(Object.is(f16f32[i], Math.fround(x)) || (Number.isNaN(x) && Number.isNaN(f16f32[i])), `f16 ${i}`);
      assert.equal(f16bf[i], f32ToBf16(x), `f16→bf16 ${i}`);
    }
  } finally {
    store.release();
    ckpt.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("weight store: shape, alignment and lifecycle errors name the weight and the tensors", async () => {
  const gpu = await getGpu();
  const ckpt = await Checkpoint.open(TRANSFORMER);
  const store = new WeightStore(gpu);
  try {
    const q = { checkpoint: ckpt, tensor: "transformer_blocks.0.attn.to_q.weight" };
    const k = { checkpoint: ckpt, tensor: "transformer_blocks.0.attn.to_k.weight" };
    assert.throws(
      () => store.add("qk", { shape: [768, 256], dtype: "bf16", pieces: [q, k] }),
      /weight qk \[768×256\] bf16: the pieces give 512 rows, the weight needs 768 \(pieces: transformer_blocks.0.attn.to_q.weight \[256×256\] BF16; transformer_blocks.0.attn.to_k.weight/,
    );
    assert.throws(
      () => store.add("cols", { shape: [256, 128], dtype: "bf16", pieces: [q] }),
      /weight cols \[256×128\] bf16: piece transformer_blocks.0.attn.to_q.weight \[256×256\] BF16 has rows of 256 elements/,
    );
    assert.throws(
      () => store.add("range", { shape: [10, 256], dtype: "bf16", pieces: [{ ...q, rowStart: 250, rowCount: 10 }] }),
      /asks for rows 250..260, outside its 256 rows/,
    );
    assert.throws(
      () => store.add("typo", { shape: [256, 256], dtype: "bf16", pieces: [{ checkpoint: ckpt, tensor: "to_q.weight" }] }),
      /has no tensor "to_q.weight"/,
    );
    // bf16 norm weights of 127 elements would leave the next piece mid-word.
    const norm = { checkpoint: ckpt, tensor: "transformer_blocks.0.attn.norm_q.weight" };
    assert.throws(
      () => store.add("odd", { shape: [128], dtype: "bf16", pieces: [{ ...norm, rowCount: 127 }, { ...norm, rowStart: 127 }] }),
      /weight odd \[128\] bf16: piece transformer_blocks.0.attn.norm_q.weight \[128\] BF16 rows 127..128 would start at byte 254, not a 4-byte boundary/,
    );
    store.add("q", { shape: [256, 256], dtype: "bf16", pieces: [q] });
    assert.throws(() => store.add("q", { shape: [256, 256], dtype: "bf16", pieces: [q] }), /already added/);
    assert.throws(() => store.bufferFor("q", spec("q", [256, 256], "bf16")), /weight q has not been uploaded yet/);
    await store.upload();
    assert.throws(
      () => store.bufferFor("q", spec("q", [128, 512], "bf16")),
      /weight q: the graph wants \[128×512\] bf16, the store holds \[256×256\] bf16/,
    );
    assert.throws(
      () => store.bufferFor("q", spec("q", [256, 256], "f32")),
      /graph wants \[256×256\] f32, the store holds \[256×256\] bf16/,
    );
    assert.throws(() => store.bufferFor("k", spec("k", [256, 256], "bf16")), /the weight store has no weight k \(did you mean q\?\)/);
    assert.ok(store.bufferFor("q", spec("q", [256, 256], "bf16")).buffer);
  } finally {
    store.release();
    ckpt.close();
  }
  assert.throws(() => store.bufferFor("q", spec("q", [256, 256], "bf16")), /released/);
  assert.throws(() => store.add("x", { shape: [1], dtype: "f32", pieces: [] }), /released/);
  await assert.rejects(() => store.upload(), /released/);
});

Deno.test("weight store: a read failure during upload names the weight and the file", async () => {
  const gpu = await getGpu();
  const dir = await Deno.makeTempDir();
  const path = `${dir}/w.safetensors`;
  await writeSafetensors(path, { w: { dtype: "F32", shape: [64, 64], data: new Float32Array(4096).fill(1) } });
  const ckpt = await Checkpoint.open(path);
  const store = new WeightStore(gpu);
  try {
    store.add("w", { shape: [64, 64], dtype: "bf16", pieces: [{ checkpoint: ckpt, tensor: "w" }] });
    await Deno.truncate(path, 2000);
    await assert.rejects(() => store.upload(), (e: Error) => e.message.startsWith("weight w: upload failed") && e.message.includes(path));
    assert.throws(() => store.bufferFor("w", spec("w", [64, 64], "bf16")), /not been uploaded/);
  } finally {
    store.release();
    ckpt.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("weight store: trailing dims may be flattened (a conv kernel [O, I, 3, 3] as [O, I·9])", async () => {
  const gpu = await getGpu();
  const vae = await Checkpoint.open(VAE);
  const store = new WeightStore(gpu);
  try {
    const name = "decoder.conv_in.weight";
    assert.deepEqual(vae.info(name).shape, [32, 8, 3, 3]);
    store.add("vae.decoder.conv_in", { shape: [32, 72], dtype: "f32", pieces: [{ checkpoint: vae, tensor: name }] });
    await store.upload();
    const got = new Float32Array((await gpuBytes(store, "vae.decoder.conv_in", [32, 72], "f32", 32 * 72 * 4)).buffer);
    assert.deepEqual(got, await vae.readF32(name));
  } finally {
    store.release();
    vae.close();
  }
});

Deno.test("PendingUpload uploads once and closes its checkpoint once; discard closes without uploading; a failed upload releases the store", async () => {
  const log: string[] = [];
  const checkpoint = { close: () => log.push("close") };
  const store = (fail: boolean) =>
    ({
      upload: () => (log.push("upload"), fail ? Promise.reject(new Error("disk gone")) : Promise.resolve()),
      release: () => log.push("release"),
    }) as unknown as WeightStore;
  const ok = new PendingUpload(store(false), checkpoint);
  await ok.upload();
  await ok.upload();
  ok.discard();
  assert.deepEqual(log.splice(0), ["upload", "close"]);
  const dropped = new PendingUpload(store(false), checkpoint);
  dropped.discard();
  await dropped.upload();
  assert.deepEqual(log.splice(0), ["close"]);
  const failing = new PendingUpload(store(true), checkpoint);
  await assert.rejects(() => failing.upload(), /disk gone/);
  failing.discard();
  assert.deepEqual(log.splice(0), ["upload", "release", "close"]);
});
