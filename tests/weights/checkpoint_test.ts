import assert from "node:assert/strict";
import { Checkpoint, closestName, naturalCompare, readJson } from "../../weights/checkpoint.ts";
import { inspectCheckpoint, inspectMain } from "../../weights/inspect.ts";
import { writeSafetensors } from "../../weights/safetensors_writer.ts";
import { SafetensorsFile } from "../../weights/safetensors.ts";
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
      assert.ok(e.message.startsWith(`checkpoint index ${dir}/diffusion_pytorch_model.safetensors.index.json: `), e.message);
      assert.match(e.message, /shard "diffusion_pytorch_model-00003-of-00004\.safetensors" is missing/);
      assert.match(e.message, /it holds tensor "[a-z_.0-9]+" and \d+ more/);
      assert.ok(!e.message.includes("\n"));
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
      /tensor "made.up.weight" is listed in shard "diffusion_pytorch_model-00001-of-00004.safetensors", but that file has no such tensor/,
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
    // The index's own shape: an object whose weight_map maps tensor names to plain file names in the folder.
    const shard1 = "diffusion_pytorch_model-00001-of-00004.safetensors";
    const entry = `"x_embedder.weight": "${shard1}"`;
    const cases: [string, RegExp][] = [
      ["{", /not valid JSON/],
      ["[]", /is \[\], expected an object with "weight_map"/],
      [`[{"weight_map": {${entry}}}]`, /is an array of 1|is \[…\], expected an object/],
      ['{"weight_map": 3}', /"weight_map" is 3, expected an object/],
      ['{"weight_map": []}', /"weight_map" is \[\], expected an object/],
      ['{"metadata": {}}', /"weight_map" is missing/],
      ['{"weight_map": {}}', /"weight_map" lists no tensors/],
      ['{"weight_map": {"a": 7}}', /tensor "a" maps to 7, expected a shard file name/],
      [`{"weight_map": {${entry}, ${entry}}}`, /duplicate key "x_embedder.weight"/],
      [`{"weight_map": {${entry}}, "metadata": [1]}`, /"metadata" is \[1\], expected an object/],
      ['{"weight_map": {"a": ""}}', /tensor "a" maps to "", expected a file name in the same folder/],
      ['{"weight_map": {"a": ".."}}', /maps to "\.\.", expected a file name/],
      ['{"weight_map": {"a": "/etc/passwd"}}', /maps to "\/etc\/passwd", expected a file name in the same folder, not a path/],
      ['{"weight_map": {"a": "sub\\\\x.safetensors"}}', /not a path/],
      ['{"weight_map": {"a": "x\\u001b[2J.safetensors"}}', /maps to "x\\x1b\[2J.safetensors", a file name with control characters/],
      ['{"weight_map": {"a\\u001b[2J": "gone.safetensors"}}', /shard "gone.safetensors" is missing .* \(it holds tensor "a\\x1b\[2J"\)/],
    ];
    for (const [text, pattern] of cases) {
      await Deno.writeTextFile(indexPath, text);
      await assert.rejects(() => Checkpoint.open(dir), (e: Error) => {
        assert.match(e.message, pattern, text);
        assert.ok(e.message.startsWith(`checkpoint index ${indexPath}: `), e.message);
        // deno-lint-ignore no-control-regex
        assert.ok(!/[\n\x1b]/.test(e.message), e.message);
        return true;
      });
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

Deno.test("checkpoint: a shard whose length or offsets lie is refused when opened, naming the shard", async () => {
  const dir = await copyFolder(TRANSFORMER);
  const name = "diffusion_pytorch_model-00002-of-00004.safetensors";
  const shard = `${dir}/${name}`;
  const original = await Deno.readFile(shard);
  const headerEnd = 8 + Number(new DataView(original.buffer).getBigUint64(0, true));
  const refused = async (bytes: Uint8Array, pattern: RegExp) => {
    await Deno.writeFile(shard, bytes);
    await assert.rejects(() => Checkpoint.open(dir), (e: Error) => {
      assert.ok(e.message.startsWith(`safetensors file ${shard}: `), e.message);
      assert.match(e.message, pattern);
      return true;
    });
  };
  try {
    const grown = new Uint8Array(original.byteLength + 8);
    grown.set(original);
    await refused(grown, /8 trailing bytes no tensor owns/);
    // Bytes inserted before the data: every offset now points 8 bytes early, which would read shifted numbers.
    const shifted = new Uint8Array(original.byteLength + 8);
    shifted.set(original.subarray(0, headerEnd));
    shifted.set(original.subarray(headerEnd), headerEnd + 8);
    await refused(shifted, /8 trailing bytes no tensor owns/);
    await refused(original.subarray(0, original.byteLength - 2), /go past the end of the data section/);
    await Deno.writeFile(shard, original);
    (await Checkpoint.open(dir)).close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("checkpoint: only regular files are opened; a named pipe is refused at once, never waited on", async () => {
  const dir = await copyFolder(TRANSFORMER);
  const fifo = `${dir}/pipe.safetensors`;
  const made = await new Deno.Command("mkfifo", { args: [fifo] }).output().catch(() => null);
  if (!made?.success) {
    console.log("mkfifo is not available; skipped");
    await Deno.remove(dir, { recursive: true });
    return;
  }
  // A regression would block forever in open(); the race turns that into a failure.
  const within = <T>(p: Promise<T>) => {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error("still waiting after 5 s")), 5000)));
    return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
  };
  const kind = /is a named pipe \(FIFO\), not a regular file/;
  try {
    await assert.rejects(() => within(SafetensorsFile.open(fifo)), (e: Error) => kind.test(e.message) && e.message.includes(fifo));
    await assert.rejects(() => within(Checkpoint.open(fifo)), /neither a regular file nor a folder/);
    await assert.rejects(() => within(readJson(fifo)), (e: Error) => kind.test(e.message) && e.message.startsWith(fifo));
    await assert.rejects(() => within(inspectCheckpoint(fifo)), /neither a regular file nor a folder/);
    // An index that names the pipe as a shard.
    const indexPath = `${dir}/diffusion_pytorch_model.safetensors.index.json`;
    const index = JSON.parse(await Deno.readTextFile(indexPath));
    index.weight_map["x_embedder.weight"] = "pipe.safetensors";
    await Deno.writeTextFile(indexPath, JSON.stringify(index));
    await assert.rejects(
      () => within(Checkpoint.open(dir)),
      (e: Error) => /shard "pipe.safetensors" in .* is not a regular file/.test(e.message) && e.message.includes(indexPath),
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("checkpoint and inspect: names from a file are printed with control characters escaped", async () => {
  const dir = await Deno.makeTempDir();
  const path = `${dir}/evil.safetensors`;
  const evil = "\x1b[2J\x1b[Hcleared\x07";
  try {
    await writeSafetensors(path, {
      [evil]: { dtype: "F32", shape: [2], data: new Float32Array([1, 2]) },
      "plain.weight": { dtype: "F32", shape: [1], data: new Float32Array([3]) },
    });
    const table = await inspectCheckpoint(path);
    // deno-lint-ignore no-control-regex
    assert.ok(!/[\x00-\x08\x1b\x7f]/.test(table), JSON.stringify(table));
    assert.match(table, /\\x1b\[2J\\x1b\[Hcleared\\x07\s+F32\s+\[2\]/);
    const ckpt = await Checkpoint.open(path);
    try {
      assert.ok(ckpt.has(evil), "the name itself is kept as it is in the file");
      assert.throws(() => ckpt.info("\x1b[2J\x1b[Hcleared"), (e: Error) => !e.message.includes("\x1b") && e.message.includes("\\x1b[2J"));
    } finally {
      ckpt.close();
    }
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
