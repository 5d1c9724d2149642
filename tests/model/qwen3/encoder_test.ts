// The Qwen3 text encoder against the reference's text_encoder cases, and its refusals of bad configs and checkpoints.

import assert from "node:assert/strict";
import { join } from "node:path";
import { getGpu } from "../../../runtime/device.ts";
import { loadSuite, runCase } from "../../../conformance/runner.ts";
import { releaseTextEncoders, textEncoderKind } from "../../../conformance/text_encoder.ts";
import { parseQwen3Config, QWEN3_LAYERS_USED } from "../../../model/qwen3/config.ts";
import { uploadQwen3Weights } from "../../../model/qwen3/weights.ts";
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
    assert.match(e.message, /^te\/config\.json: invalid Qwen3 text encoder config/);
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
  refuses({ ...qwen3_8b, hidden_size: 0 }, /hidden_size must be a positive integer/);
  refuses({ ...qwen3_8b, model_type: "llama" }, /model_type is "llama"/);
  refuses({ ...qwen3_8b, head_dim: 130 }, /head_dim 130 must be a multiple of 4/);
  refuses([1, 2], /cfg: expected a JSON object/);
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
