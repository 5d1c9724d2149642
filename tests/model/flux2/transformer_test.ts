import assert from "node:assert/strict";
import { join } from "node:path";
import { getGpu } from "../../../runtime/device.ts";
import { Flux2Transformer } from "../../../model/flux2/transformer.ts";
import { parseFlux2Config } from "../../../model/flux2/config.ts";
import { forwardWithCaptures } from "../../../conformance/dit_forward.ts";
import { concatIds, imageIds, textIds } from "../../../model/flux2/positions.ts";
import { SafetensorsFile } from "../../../weights/safetensors.ts";
import { writeSafetensors } from "../../../weights/safetensors_writer.ts";
import { Rng } from "../../../runtime/random.ts";

const FIX = new URL("../../fixtures/klein-tiny/", import.meta.url).pathname;
const DIFFUSERS = join(FIX, "model/transformer");
const BFL = join(FIX, "transformer-bfl.safetensors");

Deno.test("the BFL single file gives bit-identical output to the diffusers folder", async () => {
  const gpu = await getGpu();
  const a = await Flux2Transformer.load(gpu, DIFFUSERS);
  const b = await Flux2Transformer.load(gpu, BFL);
  try {
    assert.equal(a.layout, "diffusers");
    assert.equal(b.layout, "bfl");
    assert.deepEqual(a.config, b.config);
    const rng = new Rng(3);
    const cfg = a.config;
    const grid = { h: 3, w: 5 }, refGrid = { h: 2, w: 4 };
    const imageRows = grid.h * grid.w + refGrid.h * refGrid.w, textRows = 17;
    const inp = {
      x: rng.normalArray(imageRows * cfg.inChannels),
      ctx: rng.normalArray(textRows * cfg.jointAttentionDim),
      ids: concatIds(textIds(textRows), imageIds(grid, [refGrid])),
      timestep: 612.5,
    };
    const ra = await forwardWithCaptures(a, inp);
    const rb = await forwardWithCaptures(b, inp);
    for (const key of Object.keys(ra)) {
      assert.ok(ra[key].every((v) => Number.isFinite(v)), `${key} is finite`);
      assert.deepEqual(new Uint32Array(rb[key].buffer), new Uint32Array(ra[key].buffer), `${key} differs between layouts`);
    }
  } finally {
    a.release();
    b.release();
  }
});

async function rewriteBfl(dir: string, edit: (tensors: Record<string, { dtype: "BF16"; shape: number[]; data: Uint8Array }>) => void) {
  const f = await SafetensorsFile.open(BFL);
  const tensors: Record<string, { dtype: "BF16"; shape: number[]; data: Uint8Array }> = {};
  for (const [name, info] of f.tensors) tensors[name] = { dtype: "BF16", shape: info.shape, data: await f.readBytes(name) };
  f.close();
  edit(tensors);
  const path = join(dir, "t.safetensors");
  await writeSafetensors(path, tensors);
  return path;
}

Deno.test("a checkpoint with missing, extra and mis-shaped tensors is refused with every problem listed", async () => {
  const gpu = await getGpu();
  const dir = await Deno.makeTempDir();
  try {
    const path = await rewriteBfl(dir, (t) => {
      delete t["double_blocks.1.txt_mlp.2.weight"];
      t["extra.weight"] = { dtype: "BF16", shape: [2], data: new Uint8Array(4) };
      const s = t["single_blocks.0.linear2.weight"];
      t["single_blocks.0.linear2.weight"] = { ...s, shape: [s.shape[1], s.shape[0]] };
    });
    await assert.rejects(() => Flux2Transformer.load(gpu, path), (e: Error) => {
      assert.match(e.message, /missing tensor double_blocks\.1\.txt_mlp\.2\.weight/);
      assert.match(e.message, /unexpected tensor extra\.weight/);
      assert.match(e.message, /tensor single_blocks\.0\.linear2\.weight has shape \[1024, 256\], expected \[256, 1024\]/);
      return true;
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a config that does not match the weights is refused", async () => {
  const gpu = await getGpu();
  const dir = await Deno.makeTempDir();
  try {
    const cfg = JSON.parse(await Deno.readTextFile(join(DIFFUSERS, "config.json")));
    cfg.num_attention_heads = 3;
    const cfgPath = join(dir, "config.json");
    await Deno.writeTextFile(cfgPath, JSON.stringify(cfg));
    await assert.rejects(
      () => Flux2Transformer.load(gpu, DIFFUSERS, { configPath: cfgPath }),
      /does not match its configuration[\s\S]*x_embedder\.weight has shape \[256, 32\], expected \[384, 32\]/,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("inconsistent or unknown configs are refused with a clear message", () => {
  assert.throws(
    () => parseFlux2Config({ attention_head_dim: 128, axes_dims_rope: [32, 32, 32, 16] }, "c.json"),
    /axes_dims_rope sums to 112 but attention_head_dim is 128/,
  );
  assert.throws(() => parseFlux2Config({ num_layers: -1 }, "c.json"), /num_layers must be an integer from 1 to 256 \(got -1\)/);
  assert.throws(() => parseFlux2Config({ bogus: 1 }, "c.json"), /unknown keys bogus/);
  assert.throws(() => parseFlux2Config({ guidance_embeds: true }, "c.json"), /guidance_embeds=true/);
  assert.throws(() => parseFlux2Config([], "c.json"), /expected a JSON object/);
});

Deno.test("absurd or mistyped config fields are refused by field, in one line naming the file, before anything is allocated", () => {
  const base = JSON.parse(Deno.readTextFileSync(join(DIFFUSERS, "config.json")));
  const refuses = (patch: Record<string, unknown>, pattern: RegExp) =>
    assert.throws(() => parseFlux2Config({ ...base, ...patch }, "t/config.json"), (e: Error) => {
      assert.match(e.message, /^t\/config\.json: invalid FLUX.2 transformer config: /);
      assert.match(e.message, pattern);
      assert.ok(!e.message.includes("\n"), e.message);
      return true;
    });
  refuses({ num_layers: 1e9 }, /num_layers must be an integer from 1 to 256 \(got 1000000000\)/);
  refuses({ num_single_layers: 2 ** 31 }, /num_single_layers must be an integer from 1 to 256/);
  refuses({ num_single_layers: 1e300 }, /num_single_layers must be an integer/);
  refuses({ num_layers: "2" }, /num_layers must be an integer from 1 to 256 \(got "2"\)/);
  refuses({ num_layers: 2.5 }, /num_layers must be an integer/);
  refuses({ num_attention_heads: 0 }, /num_attention_heads must be an integer from 1 to 256/);
  refuses(
    { num_attention_heads: 256, attention_head_dim: 512, axes_dims_rope: [128, 128, 128, 128] },
    /256 × 512 = 131072 is more than the 65536/,
  );
  refuses({ attention_head_dim: 130, axes_dims_rope: [34, 32, 32, 32] }, /attention_head_dim 130 must be a multiple of 4/);
  refuses({ joint_attention_dim: 1e7 }, /joint_attention_dim must be an integer from 1 to 65536/);
  refuses({ in_channels: -3 }, /in_channels must be an integer from 1 to 4096/);
  refuses({ out_channels: "32" }, /out_channels must be an integer/);
  refuses({ timestep_guidance_channels: 255 }, /timestep_guidance_channels 255 must be even/);
  refuses({ mlp_ratio: 1e9 }, /mlp_ratio must be a number greater than 0 and at most 16/);
  refuses({ mlp_ratio: "3" }, /mlp_ratio must be a number/);
  refuses({ eps: 0 }, /eps must be a number greater than 0/);
  refuses({ rope_theta: -1 }, /rope_theta must be a number greater than 0/);
  refuses({ guidance_embeds: "no" }, /guidance_embeds must be true or false/);
  refuses({ axes_dims_rope: [32, 32, 32] }, /axes_dims_rope must be four positive even integers/);
  refuses({ "\x1b[2Jbogus": 1 }, /unknown keys \\x1b\[2Jbogus/);
  assert.deepEqual(parseFlux2Config({ ...base, out_channels: null }, "t").outChannels, base.in_channels);
});

Deno.test("a config whose block counts differ from the checkpoint's is refused by field before any upload", async () => {
  const gpu = await getGpu();
  const dir = await Deno.makeTempDir();
  try {
    const cfg = JSON.parse(await Deno.readTextFile(join(DIFFUSERS, "config.json")));
    const cfgPath = join(dir, "config.json");
    for (
      const [patch, pattern] of [
        [{ num_layers: 256 }, /num_layers is 256, but the checkpoint holds double blocks: 2 \(0…1\)$/],
        [{ num_layers: 1 }, /num_layers is 1, but the checkpoint holds double blocks: 2 \(0…1\)$/],
        [
          { num_single_layers: 200, num_layers: 3 },
          /num_layers is 3, .*; num_single_layers is 200, but the checkpoint holds single blocks: 2/,
        ],
      ] as const
    ) {
      await Deno.writeTextFile(cfgPath, JSON.stringify({ ...cfg, ...patch }));
      await assert.rejects(() => Flux2Transformer.load(gpu, DIFFUSERS, { configPath: cfgPath }), (e: Error) => {
        assert.ok(e.message.startsWith(`${cfgPath} does not match ${DIFFUSERS}: `), e.message);
        assert.match(e.message, pattern);
        return true;
      });
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a transformer shard whose length lies is refused at load, so no image is made from shifted weights", async () => {
  const gpu = await getGpu();
  const dir = await Deno.makeTempDir();
  try {
    for await (const e of Deno.readDir(DIFFUSERS)) await Deno.copyFile(join(DIFFUSERS, e.name), join(dir, e.name));
    const shard = join(dir, "diffusion_pytorch_model-00001-of-00004.safetensors");
    const bytes = await Deno.readFile(shard);
    const headerEnd = 8 + Number(new DataView(bytes.buffer).getBigUint64(0, true));
    // Four bytes inserted at the start of the data: every tensor would be read 4 bytes early (bf16 pairs misaligned).
    const lying = new Uint8Array(bytes.byteLength + 4);
    lying.set(bytes.subarray(0, headerEnd));
    lying.set(bytes.subarray(headerEnd), headerEnd + 4);
    await Deno.writeFile(shard, lying);
    await assert.rejects(() => Flux2Transformer.load(gpu, dir), (e: Error) => {
      assert.ok(e.message.startsWith(`safetensors file ${shard}: `), e.message);
      assert.match(e.message, /4 trailing bytes no tensor owns/);
      return true;
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a missing transformer path names it", async () => {
  const gpu = await getGpu();
  await assert.rejects(() => Flux2Transformer.load(gpu, "/nonexistent/transformer"), /\/nonexistent\/transformer/);
});
