import assert from "node:assert/strict";
import { Checkpoint, closestName, naturalCompare, readJson } from "../../weights/checkpoint.ts";
import { inspectCheckpoint, inspectMain } from "../../weights/inspect.ts";
import { writeSafetensors } from "../../weights/safetensors_writer.ts";
import { BFL, bytesEqual, copyFolder, PIPELINE, rawTensorBytes, TEXT_ENCODER, TRANSFORMER, VAE, VAE_FILE } from "./util.ts";

Deno.test("checkpoint: every fixture layout opens and lists its tensors", async () => {
  const cases = [
    { path: TRANSFORMER, layout: "sharded", tensors: 49, shards: 4 },
    { path: TEXT_ENCODER, layout: "sharded", tensors: 321, shards: 2 },
    { path: VAE, layout: "folder", tensors: 247, shards: 1 },
    { path: VAE_FILE, layout: "file", tensors: 247, shards: 1 },
    { path: BFL, layout: "file", tensors: 41, shards: 1 },
    { path: `${TRANSFORMER}/diffusion_pytorch_model.safetensors.index.json`, layout: "sharded", tensors: 49, shards: 4 },
  ];
  for (const c of cases) {
    const ckpt = await Checkpoint.open(c.path);
    try {
      assert.equal(ckpt.layout, c.layout, c.path);
      assert.equal(ckpt.names().length, c.tensors, c.path);
      assert.equal(ckpt.files.length, c.shards, c.path);
    } finally {
      ckpt.close();
    }
  }
});

Deno.test("checkpoint: a sharded checkpoint routes every tensor to the shard its index names", async () => {
  const index = await readJson<{ weight_map: Record<string, string>; metadata: { total_size: number } }>(
    `${TRANSFORMER}/diffusion_pytorch_model.safetensors.index.json`,
  );
  const ckpt = await Checkpoint.open(TRANSFORMER);
  try {
    assert.equal(ckpt.totalBytes(), index.metadata.total_size);
    for (const name of ckpt.names()) {
      const shard = `${TRANSFORMER}/${index.weight_map[name]}`;
      assert.equal(ckpt.info(name).file, shard);
      assert.ok(bytesEqual(await ckpt.readBytes(name), await rawTensorBytes(shard, name)), name);
    }
    // The two published layouts hold the same numbers: diffusers' context_embedder is BFL's txt_in.
    const bfl = await Checkpoint.open(BFL);
    try {
      assert.deepEqual(await ckpt.readF32("context_embedder.weight"), await bfl.readF32("txt_in.weight"));
    } finally {
      bfl.close();
    }
    const names = ckpt.names();
    assert.ok(names.indexOf("transformer_blocks.1.attn.to_q.weight") < names.indexOf("x_embedder.weight"));
    assert.throws(
      () => ckpt.info("transformer_blocks.0.attn.to_q.weights"),
      /checkpoint .*transformer has no tensor "transformer_blocks.0.attn.to_q.weights" \(did you mean "transformer_blocks.0.attn.to_q.weight"\?\)/,
    );
    assert.throws(() => ckpt.info("something.else.entirely"), (e: Error) => !e.message.includes("did you mean"));
    await assert.rejects(() => ckpt.readBytes("nope"), /has no tensor "nope"/);
  } finally {
    ckpt.close();
  }
});

Deno.test("checkpoint: a missing shard is an error naming the shard and a tensor it holds", async () => {
  const dir = await copyFolder(TRANSFORMER);
  try {
    await Deno.remove(`${dir}/diffusion_pytorch_model-00003-of-00004.safetensors`);
    await assert.rejects(() => Checkpoint.open(dir), (e: Error) => {
      assert.match(e.message, /shard diffusion_pytorch_model-00003-of-00004\.safetensors is missing/);
      assert.match(e.message, /it holds tensor "[a-z_.0-9]+" and \d+ more/);
      return true;
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("checkpoint: index problems are refused with the file and tensor named", async () => {
  const dir = await copyFolder(TRANSFORMER);
  const indexPath = `${dir}/diffusion_pytorch_model.safetensors.index.json`;
  const original = await Deno.readTextFile(indexPath);
  try {
    const index = JSON.parse(original);
    // A tensor the index places in a shard that does not hold it.
    index.weight_map["made.up.weight"] = "diffusion_pytorch_model-00001-of-00004.safetensors";
    await Deno.writeTextFile(indexPath, JSON.stringify(index));
    await assert.rejects(
      () => Checkpoint.open(dir),
      /tensor "made.up.weight" is listed in shard diffusion_pytorch_model-00001-of-00004.safetensors, but that file has no such tensor/,
    );
    // Shard tensors the index does not list are ignored.
    delete index.weight_map["made.up.weight"];
    delete index.weight_map["x_embedder.weight"];
    await Deno.writeTextFile(indexPath, JSON.stringify(index));
    const ckpt = await Checkpoint.open(dir);
    assert.equal(ckpt.names().length, 48);
    assert.ok(!ckpt.has("x_embedder.weight"));
    ckpt.close();
    // A shard path that leaves the folder.
    index.weight_map["x_embedder.weight"] = "../x.safetensors";
    await Deno.writeTextFile(indexPath, JSON.stringify(index));
    await assert.rejects(() => Checkpoint.open(dir), /"x_embedder.weight" maps to "..\/x.safetensors"/);
    for (
      const [text, pattern] of [["{", /not valid JSON/], ["[]", /expected an object/], ['{"weight_map": 3}', /"weight_map" is 3/]] as const
    ) {
      await Deno.writeTextFile(indexPath, text);
      await assert.rejects(() => Checkpoint.open(dir), (e: Error) => pattern.test(e.message) && e.message.includes(indexPath));
    }
    // A corrupt shard: the error names the shard file.
    await Deno.writeTextFile(indexPath, original);
    const shard = `${dir}/diffusion_pytorch_model-00002-of-00004.safetensors`;
    await Deno.truncate(shard, 1000);
    await assert.rejects(() => Checkpoint.open(dir), (e: Error) => e.message.includes(shard));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("checkpoint: folders that hold no checkpoint, or more than one, are refused", async () => {
  await assert.rejects(() => Checkpoint.open("/no/such/checkpoint"), /checkpoint \/no\/such\/checkpoint: no such file or folder/);
  await assert.rejects(() => Checkpoint.open(PIPELINE), /is a pipeline folder .*text_encoder, tokenizer, transformer, vae/);
  await assert.rejects(() => Checkpoint.open(`${PIPELINE}/scheduler`), /holds no .safetensors file/);
  const dir = await Deno.makeTempDir();
  try {
    const t = { w: { dtype: "F32" as const, shape: [2], data: new Float32Array([1, 2]) } };
    await writeSafetensors(`${dir}/model.safetensors`, t);
    await writeSafetensors(`${dir}/model.fp16.safetensors`, t);
    await assert.rejects(() => Checkpoint.open(dir), /2 .safetensors files \(model.fp16.safetensors, model.safetensors\) and no/);
    await Deno.writeTextFile(`${dir}/a.safetensors.index.json`, "{}");
    await Deno.writeTextFile(`${dir}/b.safetensors.index.json`, "{}");
    await assert.rejects(() => Checkpoint.open(dir), /2 shard indexes/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("readJson names the file and the problem", async () => {
  assert.equal((await readJson<{ _class_name: string }>(`${PIPELINE}/model_index.json`))._class_name, "Flux2KleinPipeline");
  await assert.rejects(() => readJson("/no/such/config.json"), /\/no\/such\/config.json: no such file/);
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(`${dir}/config.json`, '{"a": 1,');
    await assert.rejects(() => readJson(`${dir}/config.json`), (e: Error) => e.message.startsWith(`${dir}/config.json: not valid JSON`));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("name helpers: natural order and close matches", () => {
  assert.deepEqual(["b.10.w", "b.2.w", "a", "b.2.v"].sort(naturalCompare), ["a", "b.2.v", "b.2.w", "b.10.w"]);
  assert.equal(closestName("blocks.0.qkv.weigth", ["blocks.0.qkv.weight", "blocks.1.qkv.weight"]), "blocks.0.qkv.weight");
  assert.equal(closestName("x", ["completely.different"]), null);
});

Deno.test("inspect: tables for a file, a sharded folder and a pipeline folder", async () => {
  const bfl = await inspectCheckpoint(BFL);
  assert.match(bfl, /double_blocks\.0\.img_attn\.qkv\.weight\s+BF16\s+\[768, 256\]/);
  assert.match(bfl, /41 tensors \(41 BF16\), .*12798976 bytes.*1 shard/);
  const te = await inspectCheckpoint(TEXT_ENCODER);
  assert.match(te, /model\.embed_tokens\.weight\s+BF16\s+\[151936, 32\]/);
  assert.match(te, /321 tensors .* 2 shards/);
  const all = await inspectCheckpoint(PIPELINE);
  for (const c of ["text_encoder/", "transformer/", "vae/"]) assert.ok(all.includes(c), c);
  assert.match(all, /bn\.num_batches_tracked\s+I64\s+\[\]/);
  assert.match(all, /3 components \(text_encoder, transformer, vae\), 617 tensors, .* 7 shards/);
});

Deno.test("inspect: errors print one line and exit code 1", async () => {
  const errors: string[] = [];
  const logs: string[] = [];
  const [err, log] = [console.error, console.log];
  console.error = (...a: unknown[]) => errors.push(a.join(" "));
  console.log = (...a: unknown[]) => logs.push(a.join(" "));
  try {
    assert.equal(await inspectMain(["/no/such/model"]), 1);
    assert.equal(await inspectMain([]), 1);
    assert.equal(await inspectMain([VAE]), 0);
  } finally {
    [console.error, console.log] = [err, log];
    Deno.exitCode = 0;
  }
  assert.equal(errors.length, 2);
  assert.equal(errors[0], "error: checkpoint /no/such/model: no such file or folder");
  assert.match(errors[1], /^error: expected one path, got 0/);
  assert.ok(errors.every((e) => !e.includes("\n")));
  assert.match(logs[0], /247 tensors \(246 BF16, 1 I64\)/);
});
