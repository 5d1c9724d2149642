// The Qwen3 text encoder against the reference's text_encoder cases, and its refusals of bad configs and checkpoints.

import assert from "node:assert/strict";
import { join } from "node:path";
import { getGpu } from "../../../runtime/device.ts";
import { loadSuite, runCase } from "../../../conformance/runner.ts";
import { releaseTextEncoders, textEncoderKind } from "../../../conformance/text_encoder.ts";
import { parseQwen3Config, QWEN3_LAYERS_USED, QWEN3_LIMITS, qwen3AppliesFinalNorm } from "../../../model/qwen3/config.ts";
import { uploadQwen3Weights } from "../../../model/qwen3/weights.ts";
import { TextEncoder } from "../../../model/qwen3/text_encoder.ts";
import { Rng } from "../../../runtime/random.ts";
import { Checkpoint } from "../../../weights/checkpoint.ts";
import { type TensorToWrite, writeSafetensors } from "../../../weights/safetensors_writer.ts";
import type { StoredDType } from "../../../weights/dtypes.ts";

const FIXTURES = new URL("../../fixtures/klein-tiny/", import.meta.url).pathname;
const TEXT_ENCODER = join(FIXTURES, "model", "text_encoder");
const fixtureConfig = JSON.parse(Deno.readTextFileSync(join(TEXT_ENCODER, "config.json")));

Deno.test("text encoder reproduces every reference text_encoder case (ids, mask, embeddings, content positions)", async () => {
  const suite = await loadSuite(FIXTURES);
  const cases = suite.cases.filter((c) => c.kind === "text_encoder");
  assert.ok(cases.length >= 2, "the fixture should hold several text_encoder cases");
  try {
    // One encoder and one plan serve every case: prompts of different real lengths reuse the compiled plan.
    for (const c of cases) {
      const r = await runCase(suite, c, textEncoderKind);
      assert.equal(r.verdict, "pass", `${c.name}: ${r.notes.join("; ")}`);
      assert.ok(r.worstRelL2 <= 1e-5, `${c.name}: rel L2 ${r.worstRelL2}`);
    }
  } finally {
    await releaseTextEncoders();
  }
});

Deno.test("text_encoder kind refuses content positions that differ from the reference's", async () => {
  const suite = await loadSuite(FIXTURES);
  const c = suite.cases.find((c) => c.kind === "text_encoder" && Array.isArray(c.content_positions) && c.content_positions.length > 0)!;
  const wrong = { ...c, content_positions: (c.content_positions as number[]).map((p) => p + 1) };
  try {
    await assert.rejects(() => runCase(suite, wrong, textEncoderKind), /content token positions are \[3, 4,.*the reference has \[4, 5,/);
  } finally {
    await releaseTextEncoders();
  }
});

// ---- Configuration -------------------------------------------------------------------------------------------

const qwen3_8b = {
  architectures: ["Qwen3ForCausalLM"],
  attention_bias: false,
  head_dim: 128,
  hidden_act: "silu",
  hidden_size: 4096,
  intermediate_size: 12288,
  max_position_embeddings: 40960,
  model_type: "qwen3",
  num_attention_heads: 32,
  num_hidden_layers: 36,
  num_key_value_heads: 8,
  rms_norm_eps: 1e-6,
  rope_scaling: null,
  rope_theta: 1000000,
  tie_word_embeddings: false,
  use_sliding_window: false,
  vocab_size: 151936,
};

Deno.test("Qwen3 config: the fixture (transformers 5 rope_parameters) and an 8B config (rope_theta) parse", () => {
  const tiny = parseQwen3Config(fixtureConfig, "fixture");
  assert.deepEqual(tiny, {
    hiddenSize: 32,
    intermediateSize: 96,
    numLayers: 29,
    heads: 4,
    kvHeads: 2,
    headDim: 16,
    vocabSize: 151936,
    rmsNormEps: 1e-6,
    ropeTheta: 1e6,
  });
  const big = parseQwen3Config(qwen3_8b, "8b");
  assert.equal(big.hiddenSize, 4096);
  assert.equal(big.heads / big.kvHeads, 4);
  assert.equal(big.headDim, 128);
  assert.equal(big.ropeTheta, 1e6);
  const noHeadDim = parseQwen3Config({ ...qwen3_8b, head_dim: undefined, num_key_value_heads: undefined }, "defaults");
  assert.equal(noHeadDim.headDim, 128);
  assert.equal(noHeadDim.kvHeads, 32);
});

Deno.test("Qwen3 config: every problem is reported at once, naming the file", () => {
  const bad = { ...qwen3_8b, num_key_value_heads: 5, num_hidden_layers: 20, rope_scaling: { rope_type: "yarn", factor: 4 } };
  delete (bad as Record<string, unknown>).vocab_size;
  assert.throws(() => parseQwen3Config(bad, "te/config.json"), (e: Error) => {
    assert.match(e.message, /^te\/config\.json: invalid Qwen3 text encoder config: /);
    assert.ok(!e.message.includes("\n"), "one line");
    assert.match(e.message, /missing keys: vocab_size/);
    assert.match(e.message, /num_attention_heads 32 is not a multiple of num_key_value_heads 5/);
    assert.match(e.message, new RegExp(`num_hidden_layers is 20.*at least ${QWEN3_LAYERS_USED} layers`));
    assert.match(e.message, /RoPE type "yarn".*not supported/);
    return true;
  });
});

Deno.test("Qwen3 config: refuses biases, other activations, sliding windows, no RoPE theta and non-objects", () => {
  const refuses = (raw: unknown, pattern: RegExp) => assert.throws(() => parseQwen3Config(raw, "cfg"), pattern);
  refuses({ ...qwen3_8b, attention_bias: true }, /attention_bias=true is not supported/);
  refuses({ ...qwen3_8b, hidden_act: "gelu" }, /hidden_act "gelu" is not supported/);
  refuses({ ...qwen3_8b, use_sliding_window: true }, /use_sliding_window=true is not supported/);
  refuses({ ...qwen3_8b, rope_theta: undefined }, /missing keys: rope_theta/);
  refuses({ ...qwen3_8b, hidden_size: 0 }, /hidden_size must be an integer from 1 to 65536 \(got 0\)/);
  refuses({ ...qwen3_8b, model_type: "llama" }, /model_type is "llama"/);
  refuses({ ...qwen3_8b, head_dim: 130 }, /head_dim 130 must be a multiple of 4/);
  refuses([1, 2], /cfg: expected a JSON object/);
});

Deno.test("Qwen3 config: absurd sizes and wrong types are refused by field, in one line, before anything is allocated", () => {
  const refuses = (patch: Record<string, unknown>, pattern: RegExp) =>
    assert.throws(() => parseQwen3Config({ ...qwen3_8b, ...patch }, "te/config.json"), (e: Error) => {
      assert.match(e.message, /^te\/config\.json: invalid Qwen3 text encoder config: /);
      assert.match(e.message, pattern);
      assert.ok(!e.message.includes("\n"), e.message);
      return true;
    });
  refuses({ num_hidden_layers: 1e9 }, /num_hidden_layers must be an integer from 1 to 1024 \(got 1000000000\)/);
  refuses({ num_hidden_layers: 2 ** 53 + 2 }, /num_hidden_layers must be an integer/);
  refuses({ num_hidden_layers: "36" }, /num_hidden_layers must be an integer from 1 to 1024 \(got "36"\)/);
  refuses({ num_hidden_layers: 36.5 }, /num_hidden_layers must be an integer/);
  refuses({ hidden_size: 1e300 }, /hidden_size must be an integer from 1 to 65536/);
  refuses({ vocab_size: 2 ** 40 }, new RegExp(`vocab_size must be an integer from 1 to ${QWEN3_LIMITS.vocabSize}`));
  refuses({ intermediate_size: -1 }, /intermediate_size must be an integer/);
  refuses({ head_dim: 0 }, /head_dim must be an integer from 1 to 1024/);
  refuses({ num_key_value_heads: 64 }, /num_attention_heads 32 is not a multiple of num_key_value_heads 64/);
  refuses({ rms_norm_eps: 2 }, /rms_norm_eps must be a number greater than 0 and less than 1/);
  refuses({ rope_theta: Infinity }, /rope_theta must be a number/);
  refuses({ rope_theta: 1e300 }, /rope_theta must be a number greater than 0 and at most 1000000000000/);
  refuses({ layer_types: Array(30).fill("full_attention") }, /layer_types has 30 entries, num_hidden_layers is 36/);
  refuses({ layer_types: "full_attention" }, /layer_types must be a list/);
  refuses({ tie_word_embeddings: "no" }, /tie_word_embeddings must be true or false/);
  refuses({ hidden_act: "\x1b[2Jsilu" }, /hidden_act "\\u001b\[2Jsilu" is not supported/);
});

// ---- Checkpoint validation -----------------------------------------------------------------------------------

/** The fixture's text encoder rewritten as one file, without `drop` and with `reshape` tensors given a wrong shape. */
async function alteredCheckpoint(drop: string[], reshape: Record<string, number[]>): Promise<string> {
  const src = await Checkpoint.open(TEXT_ENCODER);
  const dir = await Deno.makeTempDir({ prefix: "kleinscope-qwen3-" });
  try {
    const tensors: Record<string, TensorToWrite> = {};
    for (const name of src.names()) {
      if (drop.includes(name)) continue;
      const info = src.info(name);
      const shape = reshape[name] ?? info.shape;
      const count = shape.reduce((a, b) => a * b, 1);
      const bytes = count === info.shape.reduce((a, b) => a * b, 1) ? await src.readBytes(name) : new Uint8Array(count * 2).fill(0x3f);
      tensors[name] = { dtype: info.dtype as StoredDType, shape, data: bytes };
    }
    await writeSafetensors(join(dir, "model.safetensors"), tensors);
  } finally {
    src.close();
  }
  return dir;
}

Deno.test("text encoder weights: missing tensors and wrong shapes are listed together before any upload", async () => {
  const dir = await alteredCheckpoint(
    ["model.layers.5.mlp.up_proj.weight", "model.layers.26.self_attn.q_norm.weight"],
    { "model.layers.7.self_attn.k_proj.weight": [16, 32] },
  );
  const ckpt = await Checkpoint.open(dir);
  try {
    const cfg = parseQwen3Config(fixtureConfig, "fixture");
    const gpu = await getGpu();
    await assert.rejects(() => uploadQwen3Weights(gpu, ckpt, cfg, { where: "te" }), (e: Error) => {
      assert.match(e.message, /^te does not match its Qwen3 configuration/);
      assert.match(e.message, /missing tensor model\.layers\.5\.mlp\.up_proj\.weight \(expected shape \[96, 32\]\)/);
      assert.match(e.message, /missing tensor model\.layers\.26\.self_attn\.q_norm\.weight \(expected shape \[16\]\)/);
      assert.match(e.message, /tensor model\.layers\.7\.self_attn\.k_proj\.weight has shape \[16, 32\], expected \[32, 32\]/);
      return true;
    });
  } finally {
    ckpt.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("text encoder weights: layers past the 27th are never required", async () => {
  const dir = await alteredCheckpoint([
    "model.layers.27.mlp.down_proj.weight",
    "model.layers.28.self_attn.q_proj.weight",
    "model.norm.weight",
  ], {});
  const ckpt = await Checkpoint.open(dir);
  try {
    const { store } = await uploadQwen3Weights(await getGpu(), ckpt, parseQwen3Config(fixtureConfig, "fixture"));
    assert.ok(!store.names().some((n) => /layers\.(2[7-9])\./.test(n)), "no weight of layer 27 or later is uploaded");
    store.release();
  } finally {
    ckpt.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("text encoder weights: a config claiming more layers than the checkpoint holds is refused by name", async () => {
  const ckpt = await Checkpoint.open(TEXT_ENCODER);
  try {
    const cfg = parseQwen3Config({ ...fixtureConfig, num_hidden_layers: 36, layer_types: undefined }, "te/config.json");
    await assert.rejects(
      async () => uploadQwen3Weights(await getGpu(), ckpt, cfg, { where: "te" }),
      /^Error: te: config.json's num_hidden_layers is 36, but the checkpoint holds decoder layers 29 \(model\.layers\.0 … 28\)$/,
    );
  } finally {
    ckpt.close();
  }
});

/** A pipeline folder whose text encoder is the fixture's first `layers` layers (config and tensors), sharing its tokenizer. */
async function truncatedPipeline(layers: number): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "kleinscope-qwen3-truncated-" });
  const encoderDir = join(dir, "text_encoder");
  await Deno.mkdir(encoderDir);
  await Deno.symlink(join(FIXTURES, "model", "tokenizer"), join(dir, "tokenizer"));
  const config = { ...fixtureConfig, num_hidden_layers: layers, layer_types: fixtureConfig.layer_types.slice(0, layers) };
  await Deno.writeTextFile(join(encoderDir, "config.json"), JSON.stringify(config));
  const src = await Checkpoint.open(TEXT_ENCODER);
  try {
    const tensors: Record<string, TensorToWrite> = {};
    for (const name of src.names()) {
      const m = /^model\.layers\.(\d+)\./.exec(name);
      if (m && Number(m[1]) >= layers) continue;
      const info = src.info(name);
      tensors[name] = { dtype: info.dtype as StoredDType, shape: info.shape, data: await src.readBytes(name) };
    }
    await writeSafetensors(join(encoderDir, "model.safetensors"), tensors);
  } finally {
    src.close();
  }
  return dir;
}

function relL2(a: Float32Array | Float64Array, b: Float32Array | Float64Array): number {
  let num = 0, den = 0;
  for (let i = 0; i < a.length; i++) {
    num += (a[i] - b[i]) ** 2;
    den += b[i] ** 2;
  }
  return Math.sqrt(num / den);
}

Deno.test("text encoder: a 27-layer model's hidden_states[27] is taken after the final norm, as transformers records it", async () => {
  const S = 24, real = 19;
  const fixture = parseQwen3Config(fixtureConfig, "fixture");
  assert.equal(fixture.numLayers, 29);
  assert.ok(!qwen3AppliesFinalNorm(fixture), "29 layers: hidden_states[27] is an intermediate state");
  const dir = await truncatedPipeline(27);
  const gpu = await getGpu();
  const full = await TextEncoder.load(gpu, join(FIXTURES, "model"), { seqLen: S });
  const truncated = await TextEncoder.load(gpu, dir, { seqLen: S });
  try {
    assert.equal(truncated.config.numLayers, 27);
    assert.ok(qwen3AppliesFinalNorm(truncated.config));
    const rng = new Rng(27);
    const ids = Array.from({ length: S }, () => rng.int(fixture.vocabSize));
    const mask = Array.from({ length: S }, (_, i) => (i < real ? 1 : 0));
    const a = await full.encodeTokens(ids, mask);
    const b = await truncated.encodeTokens(ids, mask);
    const D = fixture.hiddenSize, W = 3 * D;
    const slot = (x: Float32Array, k: number) => {
      const out = new Float32Array(S * D);
      for (let r = 0; r < S; r++) out.set(x.subarray(r * W + k * D, r * W + (k + 1) * D), r * D);
      return out;
    };
    // hidden_states[9] and [18] do not depend on the layer count.
    for (const k of [0, 1]) assert.ok(relL2(slot(b, k), slot(a, k)) <= 1e-6, `slot ${k}: ${relL2(slot(b, k), slot(a, k))}`);
    // hidden_states[27]: the 29-layer model's (un-normed, checked against the reference by the conformance cases),
    // normed on the CPU in float64 with model.norm.weight, is what the 27-layer model must give.
    const src = await Checkpoint.open(TEXT_ENCODER);
    const w = await src.readF32("model.norm.weight");
    src.close();
    const raw = slot(a, 2);
    const want = new Float64Array(S * D);
    for (let r = 0; r < S; r++) {
      let ms = 0;
      for (let j = 0; j < D; j++) ms += raw[r * D + j] ** 2;
      const inv = 1 / Math.sqrt(ms / D + fixture.rmsNormEps);
      for (let j = 0; j < D; j++) want[r * D + j] = raw[r * D + j] * inv * w[j];
    }
    const got = slot(b, 2);
    assert.ok(got.every(Number.isFinite));
    assert.ok(relL2(got, want) <= 1e-5, `normed hidden_states[27]: rel L2 ${relL2(got, want)}`);
    assert.ok(relL2(got, raw) > 0.1, "the norm changes the state (the test could tell the two apart)");
  } finally {
    full.release();
    truncated.release();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("text encoder weights: a 27-layer checkpoint without its final norm is refused", async () => {
  const dir = await truncatedPipeline(27);
  try {
    const encoderDir = join(dir, "text_encoder");
    const src = await Checkpoint.open(encoderDir);
    const tensors: Record<string, TensorToWrite> = {};
    for (const name of src.names()) {
      if (name === "model.norm.weight") continue;
      const info = src.info(name);
      tensors[name] = { dtype: info.dtype as StoredDType, shape: info.shape, data: await src.readBytes(name) };
    }
    src.close();
    await writeSafetensors(join(encoderDir, "model.safetensors"), tensors);
    await assert.rejects(
      async () => TextEncoder.load(await getGpu(), dir, { seqLen: 8 }),
      /does not match its Qwen3 configuration: missing tensor model\.norm\.weight \(expected shape \[32\]\)/,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
