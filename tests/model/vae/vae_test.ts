import assert from "node:assert/strict";
import { join } from "node:path";
import { getGpu } from "../../../runtime/device.ts";
import { parseVaeConfig } from "../../../model/vae/config.ts";
import { vaeTensorShapes } from "../../../model/vae/weights.ts";
import { Vae } from "../../../model/vae/vae.ts";
import { loadSuite, runCase } from "../../../conformance/runner.ts";
import { releaseSharedVaes, vaeDecodeKind, vaeEncodeKind } from "../../../conformance/vae.ts";
import { SafetensorsFile } from "../../../weights/safetensors.ts";
import { type TensorToWrite, writeSafetensors } from "../../../weights/safetensors_writer.ts";

const FIXTURES = new URL("../../fixtures/klein-tiny/", import.meta.url).pathname;
const VAE_DIR = join(FIXTURES, "model", "vae");

async function fixtureConfig(): Promise<Record<string, unknown>> {
  return JSON.parse(await Deno.readTextFile(join(VAE_DIR, "config.json")));
}

Deno.test("the fixture's VAE config parses, with the reference's fixed norm eps", async () => {
  const cfg = parseVaeConfig(await fixtureConfig(), "config.json");
  assert.deepEqual(cfg.blockOutChannels, [16, 32, 32, 32]);
  assert.deepEqual(cfg.decoderBlockOutChannels, [16, 32, 32, 32]);
  assert.equal(cfg.latentChannels, 8);
  assert.equal(cfg.normGroups, 8);
  assert.equal(cfg.normEps, 1e-6);
  assert.equal(cfg.batchNormEps, 1e-4);
  assert.equal(cfg.scaleFactor, 8);
  assert.equal(cfg.sizeMultiple, 16);
  // Every tensor of the checkpoint is accounted for by the two parts (bookkeeping aside).
  const expected = new Set([...vaeTensorShapes(cfg, "encoder").keys(), ...vaeTensorShapes(cfg, "decoder").keys()]);
  const file = await SafetensorsFile.open(join(VAE_DIR, "diffusion_pytorch_model.safetensors"));
  try {
    const names = [...file.tensors.keys()].filter((n) => n !== "bn.num_batches_tracked").sort();
    assert.deepEqual(names, [...expected].sort());
  } finally {
    file.close();
  }
});

Deno.test("an invalid VAE config is refused with every problem listed and the file named", async () => {
  const raw = await fixtureConfig();
  const bad = {
    ...raw,
    norm_num_groups: 5,
    patch_size: [1, 1],
    act_fn: "gelu",
    scaling_factor: 0.3611,
    down_block_types: ["DownEncoderBlock2D", "DownEncoderBlock2D"],
    use_quant_conv: "yes",
  };
  assert.throws(() => parseVaeConfig(bad, "/x/vae/config.json"), (e: Error) => {
    const m = e.message;
    return m.startsWith("/x/vae/config.json: invalid AutoencoderKLFlux2 config") &&
      m.includes("16 channels cannot be split into norm_num_groups = 5 groups") &&
      m.includes("patch_size [1,1] is not supported") &&
      m.includes('act_fn "gelu" is not supported') &&
      m.includes("unknown keys scaling_factor") &&
      m.includes('down_block_types must list 4 × "DownEncoderBlock2D"') &&
      m.includes("use_quant_conv must be true or false");
  });
  assert.throws(
    () => parseVaeConfig({ ...raw, _class_name: "AutoencoderKL" }, "c.json"),
    /_class_name is "AutoencoderKL", expected "AutoencoderKLFlux2"/,
  );
  assert.throws(() => parseVaeConfig([], "c.json"), /c\.json: expected a JSON object/);
});

Deno.test("absurd or mistyped VAE config fields are refused by field, in one line naming the file", async () => {
  const raw = await fixtureConfig();
  const refuses = (patch: Record<string, unknown>, pattern: RegExp) =>
    assert.throws(() => parseVaeConfig({ ...raw, ...patch }, "v/config.json"), (e: Error) => {
      assert.match(e.message, /^v\/config\.json: invalid AutoencoderKLFlux2 config: /);
      assert.match(e.message, pattern);
      assert.ok(!e.message.includes("\n"), e.message);
      return true;
    });
  refuses({ layers_per_block: 1e9 }, /layers_per_block must be an integer from 1 to 16 \(got 1000000000\)/);
  refuses({ block_out_channels: Array(40).fill(32) }, /block_out_channels must be a list of 1 to 8 integers from 1 to 8192/);
  refuses({ block_out_channels: [16, 1e12, 32, 32] }, /block_out_channels must be a list/);
  refuses({ latent_channels: "8" }, /latent_channels must be an integer from 1 to 1024 \(got "8"\)/);
  refuses({ in_channels: 1e6 }, /in_channels must be an integer from 1 to 64/);
  refuses({ norm_num_groups: 0 }, /norm_num_groups must be an integer from 1 to 1024/);
  refuses({ batch_norm_eps: 5 }, /batch_norm_eps must be a number from 0 up to/);
  refuses({ batch_norm_momentum: "0.1" }, /batch_norm_momentum must be a number from 0 to 1/);
  refuses({ sample_size: -1 }, /sample_size must be an integer from 1 to 65536/);
  refuses({ force_upcast: 1 }, /force_upcast must be true or false/);
});

/** A copy of the fixture VAE folder with `edit` applied to its tensors and config. */
async function editedVae(
  edit: (tensors: Record<string, TensorToWrite>, config: Record<string, unknown>) => void,
): Promise<string> {
  const dir = await Deno.makeTempDir();
  const file = await SafetensorsFile.open(join(VAE_DIR, "diffusion_pytorch_model.safetensors"));
  const tensors: Record<string, TensorToWrite> = {};
  try {
    for (const [name, info] of file.tensors) tensors[name] = { dtype: info.dtype, shape: info.shape, data: await file.readBytes(name) };
  } finally {
    file.close();
  }
  const config = await fixtureConfig();
  edit(tensors, config);
  await writeSafetensors(join(dir, "diffusion_pytorch_model.safetensors"), tensors);
  await Deno.writeTextFile(join(dir, "config.json"), JSON.stringify(config));
  return dir;
}

Deno.test("a checkpoint with a missing or misshapen tensor is refused, naming the tensor and the folder", async () => {
  const gpu = await getGpu();
  const missing = await editedVae((t) => delete t["decoder.mid_block.attentions.0.to_q.weight"]);
  try {
    await assert.rejects(Vae.load(gpu, missing), (e: Error) =>
      e.message.startsWith(`VAE ${missing} does not match its configuration`) &&
      e.message.includes("missing tensor decoder.mid_block.attentions.0.to_q.weight (expected shape [32, 32])"));
  } finally {
    await Deno.remove(missing, { recursive: true });
  }
  const wrong = await editedVae((_, c) => (c.latent_channels = 4));
  try {
    await assert.rejects(Vae.load(gpu, wrong), /tensor encoder\.conv_out\.weight has shape \[16, 32, 3, 3\], expected \[8, 32, 3, 3\]/);
  } finally {
    await Deno.remove(wrong, { recursive: true });
  }
  await assert.rejects(Vae.load(gpu, join(FIXTURES, "no-such-vae")), /no-such-vae\/config\.json: no such file/);
});

Deno.test("VAE conformance: the fixture's vae_encode and vae_decode cases within 1e-5 of the float64 reference", async () => {
  const suite = await loadSuite(FIXTURES);
  const handlers = new Map([[vaeEncodeKind.kind, vaeEncodeKind], [vaeDecodeKind.kind, vaeDecodeKind]]);
  const cases = suite.cases.filter((c) => handlers.has(c.kind));
  assert.equal(cases.length, 3);
  try {
    for (const c of cases) {
      const r = await runCase(suite, c, handlers.get(c.kind)!);
      assert.equal(r.verdict, "pass", `${c.name}: ${r.notes.join("; ")}`);
      assert.ok(r.worstRelL2 <= 1e-5, `${c.name}: rel L2 ${r.worstRelL2}`);
      console.log(`${c.name}: rel L2 ${r.worstRelL2.toExponential(2)}, max |Δ| ${r.worstAbs.toExponential(2)}`);
    }
  } finally {
    await releaseSharedVaes();
  }
});

Deno.test("Vae reuses its plan per resolution, checks sizes, and refuses use after release or of a part not loaded", async () => {
  const gpu = await getGpu();
  const vae = await Vae.load(gpu, VAE_DIR, { parts: ["decoder"] });
  try {
    const tokens = Float32Array.from({ length: 4 * 6 * 32 }, (_, i) => Math.sin(i * 0.37));
    const a = await vae.decodeTokens(tokens, 64, 96);
    const b = await vae.decodeTokens(tokens, 64, 96);
    assert.equal(a.length, 3 * 64 * 96);
    assert.deepEqual(a, b);
    assert.throws(() => vae.decodeTokens(tokens, 60, 96), /VAE decode: image size 60×96 must be positive multiples of 16/);
    assert.throws(() => vae.decodeTokens(tokens, 96, 96), /a 96×96 image needs 36×32 token values, got 768/);
    assert.throws(() => vae.encodeImage(new Float32Array(3 * 64 * 64), 64, 64), /cannot encode, its encoder was not loaded/);
  } finally {
    vae.release();
  }
  assert.throws(() => vae.decodeTokens(new Float32Array(768), 64, 96), /was released/);
});
