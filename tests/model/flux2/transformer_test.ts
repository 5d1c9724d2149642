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
  assert.throws(() => parseFlux2Config({ num_layers: -1 }, "c.json"), /num_layers must be a positive integer/);
  assert.throws(() => parseFlux2Config({ bogus: 1 }, "c.json"), /unknown keys bogus/);
  assert.throws(() => parseFlux2Config({ guidance_embeds: true }, "c.json"), /guidance_embeds=true/);
  assert.throws(() => parseFlux2Config([], "c.json"), /expected a JSON object/);
});

Deno.test("a missing transformer path names it", async () => {
  const gpu = await getGpu();
  await assert.rejects(() => Flux2Transformer.load(gpu, "/nonexistent/transformer"), /\/nonexistent\/transformer/);
});
