// Text-encoder benchmark: one prompt padded to 512 tokens through the 27 Qwen3 layers FLUX.2 klein uses, timed per
// encode (median of --runs), with the GPU memory the encoder holds (weights + plan).
//
//   deno run -A bench/text_encoder.ts [--model PIPELINE_DIR | --dir DIR [--small]] [--prompt TEXT] [--runs n]
//                                     [--compare [--python python3]]
//
// Without --model, a random Qwen3-8B-shaped checkpoint (hidden 4096, 32/8 heads, head dim 128, intermediate 12288,
// 27 layers, bf16; --small: a tiny one) is written to DIR/text_encoder as shards with an index, streamed tensor by
// tensor, next to a copy of the fixture's Qwen3 tokenizer; an existing one of the same shape in DIR is reused.
// --compare runs bench/torch_text_encoder.py on the same weights and token ids (PyTorch float32, TF32 off) and
// prints the relative L2 error of the WGSL embeddings against it, plus PyTorch's float32 and bf16 times.

import { join } from "node:path";
import { openGpu } from "../runtime/device.ts";
import { applyDeviceTuning } from "../kernels/tuning.ts";
import { maxAbsDiff, relativeL2 } from "../kernels/audit.ts";
import { TextEncoder as Qwen3TextEncoder } from "../model/qwen3/text_encoder.ts";
import { QWEN3_LAYERS_USED } from "../model/qwen3/config.ts";
import { parseBenchArgs } from "./common.ts";

const FIXTURE_TOKENIZER = new URL("../tests/fixtures/klein-tiny/model/tokenizer/", import.meta.url).pathname;
const TORCH_SCRIPT = new URL("./torch_text_encoder.py", import.meta.url).pathname;
const DEFAULT_PROMPT = "Replace the red mug on the wooden desk with a tall glass of iced coffee, keep the lighting and everything else.";

interface Shape {
  hidden_size: number;
  intermediate_size: number;
  num_attention_heads: number;
  num_key_value_heads: number;
  head_dim: number;
  vocab_size: number;
}

const QWEN3_8B: Shape = {
  hidden_size: 4096,
  intermediate_size: 12288,
  num_attention_heads: 32,
  num_key_value_heads: 8,
  head_dim: 128,
  vocab_size: 151936,
};
const SMALL: Shape = {
  hidden_size: 64,
  intermediate_size: 176,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  head_dim: 16,
  vocab_size: 151936,
};
const MAX_SHARD_BYTES = 2 * 1024 ** 3;

// ---- Random checkpoint, streamed ------------------------------------------------------------------------------

interface PlannedTensor {
  name: string;
  shape: number[];
  /** Values are uniform with this standard deviation around `mean`. */
  std: number;
  mean: number;
}

function plannedTensors(s: Shape): PlannedTensor[] {
  const D = s.hidden_size, I = s.intermediate_size, hd = s.head_dim;
  const q = s.num_attention_heads * hd, kv = s.num_key_value_heads * hd;
  const linear = (name: string, rows: number, cols: number) => ({ name, shape: [rows, cols], std: 1 / Math.sqrt(cols), mean: 0 });
  const norm = (name: string, n: number) => ({ name, shape: [n], std: 0.2, mean: 1 });
  const out: PlannedTensor[] = [{ name: "model.embed_tokens.weight", shape: [s.vocab_size, D], std: 1, mean: 0 }];
  for (let i = 0; i < QWEN3_LAYERS_USED; i++) {
    const l = `model.layers.${i}`;
    out.push(
      norm(`${l}.input_layernorm.weight`, D),
      linear(`${l}.self_attn.q_proj.weight`, q, D),
      linear(`${l}.self_attn.k_proj.weight`, kv, D),
      linear(`${l}.self_attn.v_proj.weight`, kv, D),
      norm(`${l}.self_attn.q_norm.weight`, hd),
      norm(`${l}.self_attn.k_norm.weight`, hd),
      linear(`${l}.self_attn.o_proj.weight`, D, q),
      norm(`${l}.post_attention_layernorm.weight`, D),
      linear(`${l}.mlp.gate_proj.weight`, I, D),
      linear(`${l}.mlp.up_proj.weight`, I, D),
      linear(`${l}.mlp.down_proj.weight`, D, I),
    );
  }
  // A 27-layer model takes hidden_states[27] after the final norm (as transformers records it).
  out.push(norm("model.norm.weight", D));
  return out;
}

function tensorBytes(t: PlannedTensor): number {
  return t.shape.reduce((a, b) => a * b, 2);
}

/** bf16 values of a tensor, `chunk` elements at a time: uniform (xorshift32, seeded per tensor) with the planned
 * mean and standard deviation, rounded to bf16 by truncation. Only one chunk exists at a time. */
function* randomBf16(t: PlannedTensor, seed: number, chunk = 8 << 20): Generator<Uint8Array> {
  const total = tensorBytes(t) / 2;
  let state = (seed * 2654435761 + 0x9e3779b9) >>> 0 || 1;
  const halfWidth = Math.sqrt(3) * t.std;
  const f32 = new Float32Array(Math.min(chunk, total));
  const u32 = new Uint32Array(f32.buffer);
  for (let done = 0; done < total; done += f32.length) {
    const n = Math.min(f32.length, total - done);
    for (let i = 0; i < n; i++) {
      state ^= state << 13;
      state ^= state >>> 17;
      state ^= state << 5;
      f32[i] = t.mean + halfWidth * (2 * ((state >>> 0) / 4294967296) - 1);
    }
    const out = new Uint16Array(n);
    for (let i = 0; i < n; i++) out[i] = u32[i] >>> 16;
    yield new Uint8Array(out.buffer);
  }
}

async function writeAll(file: Deno.FsFile, bytes: Uint8Array): Promise<void> {
  for (let at = 0; at < bytes.byteLength;) at += await file.write(bytes.subarray(at));
}

/** One safetensors shard written header first, then each tensor's bytes as they are generated. */
async function writeShard(path: string, tensors: PlannedTensor[], seedOf: (t: PlannedTensor) => number): Promise<void> {
  const header: Record<string, unknown> = { __metadata__: { format: "pt" } };
  let offset = 0;
  for (const t of tensors) {
    header[t.name] = { dtype: "BF16", shape: t.shape, data_offsets: [offset, offset + tensorBytes(t)] };
    offset += tensorBytes(t);
  }
  let json = new TextEncoder().encode(JSON.stringify(header));
  const padded = new Uint8Array(Math.ceil(json.byteLength / 8) * 8).fill(0x20);
  padded.set(json);
  json = padded;
  const tmp = `${path}.partial`;
  const file = await Deno.open(tmp, { write: true, create: true, truncate: true });
  try {
    const length = new Uint8Array(8);
    new DataView(length.buffer).setBigUint64(0, BigInt(json.byteLength), true);
    await writeAll(file, length);
    await writeAll(file, json);
    for (const t of tensors) for (const bytes of randomBf16(t, seedOf(t))) await writeAll(file, bytes);
  } finally {
    file.close();
  }
  await Deno.rename(tmp, path);
}

/** Write DIR/text_encoder (config, shards, index last) and DIR/tokenizer, unless a checkpoint of this shape is there. */
async function ensureRandomCheckpoint(dir: string, shape: Shape): Promise<void> {
  const encoderDir = join(dir, "text_encoder");
  const indexPath = join(encoderDir, "model.safetensors.index.json");
  const config = {
    architectures: ["Qwen3ForCausalLM"],
    model_type: "qwen3",
    attention_bias: false,
    hidden_act: "silu",
    ...shape,
    num_hidden_layers: QWEN3_LAYERS_USED,
    max_position_embeddings: 40960,
    rms_norm_eps: 1e-6,
    rope_theta: 1000000,
    rope_scaling: null,
    tie_word_embeddings: false,
    use_sliding_window: false,
    torch_dtype: "bfloat16",
  };
  try {
    const existing = JSON.parse(await Deno.readTextFile(join(encoderDir, "config.json")));
    await Deno.stat(indexPath);
    if (JSON.stringify(existing) === JSON.stringify(config)) {
      console.log(`reusing the random checkpoint in ${encoderDir}`);
      return;
    }
  } catch {
    // Nothing usable there yet.
  }
  await Deno.mkdir(encoderDir, { recursive: true });
  await Deno.remove(indexPath).catch(() => {});
  await Deno.mkdir(join(dir, "tokenizer"), { recursive: true });
  for (const f of ["tokenizer.json", "tokenizer_config.json"]) await Deno.copyFile(join(FIXTURE_TOKENIZER, f), join(dir, "tokenizer", f));
  await Deno.writeTextFile(join(encoderDir, "config.json"), JSON.stringify(config, null, 2));

  const tensors = plannedTensors(shape);
  const shards: PlannedTensor[][] = [[]];
  let shardBytes = 0;
  for (const t of tensors) {
    if (shardBytes > 0 && shardBytes + tensorBytes(t) > MAX_SHARD_BYTES) {
      shards.push([]);
      shardBytes = 0;
    }
    shards[shards.length - 1].push(t);
    shardBytes += tensorBytes(t);
  }
  const total = tensors.reduce((s, t) => s + tensorBytes(t), 0);
  console.log(`writing a random checkpoint of ${(total / 1e9).toFixed(2)} GB in ${shards.length} shards to ${encoderDir}`);
  const t0 = performance.now();
  const weightMap: Record<string, string> = {};
  const seeds = new Map(tensors.map((t, i) => [t.name, i + 1]));
  for (const [i, shard] of shards.entries()) {
    const file = `model-${String(i + 1).padStart(5, "0")}-of-${String(shards.length).padStart(5, "0")}.safetensors`;
    await writeShard(join(encoderDir, file), shard, (t) => seeds.get(t.name)!);
    for (const t of shard) weightMap[t.name] = file;
  }
  await Deno.writeTextFile(indexPath, JSON.stringify({ metadata: { total_size: total }, weight_map: weightMap }, null, 2));
  console.log(`  written in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
}

// ---- Benchmark ------------------------------------------------------------------------------------------------

function median(values: number[]): number {
  const s = [...values].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

function gib(bytes: number): string {
  return `${(bytes / 1024 ** 3).toFixed(3)} GiB`;
}

async function compareWithTorch(python: string, model: string, ids: Int32Array, mask: Int32Array, embeds: Float32Array): Promise<void> {
  const workDir = await Deno.makeTempDir({ prefix: "kleinscope-qwen3-compare-" });
  try {
    await compareIn(python, workDir, model, ids, mask, embeds);
  } finally {
    await Deno.remove(workDir, { recursive: true });
  }
}

async function compareIn(
  python: string,
  workDir: string,
  model: string,
  ids: Int32Array,
  mask: Int32Array,
  embeds: Float32Array,
): Promise<void> {
  const idsPath = join(workDir, "bench_ids.i32"), maskPath = join(workDir, "bench_mask.i32"), outPath = join(workDir, "bench_torch.f32");
  await Deno.writeFile(idsPath, new Uint8Array(ids.buffer, ids.byteOffset, ids.byteLength));
  await Deno.writeFile(maskPath, new Uint8Array(mask.buffer, mask.byteOffset, mask.byteLength));
  const args = [TORCH_SCRIPT, "--model", model, "--ids", idsPath, "--mask", maskPath, "--out", outPath, "--bf16-iters", "5"];
  console.log(`running ${python} ${args.join(" ")}`);
  const result = await new Deno.Command(python, { args, stdout: "piped", stderr: "inherit" }).output();
  const stdout = new TextDecoder().decode(result.stdout);
  if (!result.success) throw new Error(`bench/torch_text_encoder.py failed (exit ${result.code}):\n${stdout}`);
  const lines = stdout.trim().split("\n");
  const report = JSON.parse(lines[lines.length - 1]);
  const reference = new Float32Array((await Deno.readFile(outPath)).buffer);
  if (reference.length !== embeds.length) throw new Error(`PyTorch wrote ${reference.length} values, the encoder ${embeds.length}`);
  console.log(
    `PyTorch (${report.device}): float32 forward ${report.float32_ms?.toFixed(2)} ms (TF32 off), ` +
      `bf16 forward ${report.bf16_ms?.toFixed(2) ?? "-"} ms, bf16 peak ${report.bf16_peak_bytes ? gib(report.bf16_peak_bytes) : "-"}`,
  );
  console.log(
    `WGSL vs PyTorch float32: rel L2 ${relativeL2(embeds, reference).toExponential(2)}, ` +
      `max |Δ| ${maxAbsDiff(embeds, reference).toExponential(2)}`,
  );
}

export const USAGE = `usage: deno task bench text_encoder [--model PIPELINE_DIR | --dir DIR [--small]] [--prompt TEXT] [--runs n]
         [--compare [--python python3]]
The Qwen3 text encoder's prompt encoding (load, encode, readback), optionally against PyTorch on the same weights.`;

async function main(): Promise<void> {
  const parsed = parseBenchArgs(Deno.args, {
    model: { type: "string" },
    dir: { type: "string" },
    small: { type: "boolean", default: false },
    prompt: { type: "string", default: DEFAULT_PROMPT },
    runs: { type: "string", default: "5" },
    compare: { type: "boolean", default: false },
    python: { type: "string", default: "python3" },
  }, USAGE);
  if (parsed === "help") return;
  const values = parsed;
  const runs = Number(values.runs);
  if (!Number.isInteger(runs) || runs < 1) throw new Error(`--runs must be a positive integer, got ${values.runs}`);
  if (values.model && values.small) throw new Error("--small shapes the random checkpoint; it does not apply with --model");

  let model = values.model;
  let tempDir: string | null = null;
  if (!model) {
    model = values.dir ?? (tempDir = await Deno.makeTempDir({ prefix: "kleinscope-qwen3-bench-" }));
    await ensureRandomCheckpoint(model, values.small ? SMALL : QWEN3_8B);
  }
  try {
    const gpu = await openGpu();
    await applyDeviceTuning(gpu);
    console.log(`adapter: ${gpu.adapterDescription}`);
    const t0 = performance.now();
    const encoder = await Qwen3TextEncoder.load(gpu, model);
    const loadMs = performance.now() - t0;
    try {
      const c = encoder.config;
      console.log(
        `Qwen3: hidden ${c.hiddenSize}, ${c.heads}/${c.kvHeads} heads × ${c.headDim}, intermediate ${c.intermediateSize}, ` +
          `${QWEN3_LAYERS_USED} of ${c.numLayers} layers; load + plan ${(loadMs / 1000).toFixed(2)} s`,
      );
      const first = await encoder.encode(values.prompt);
      console.log(`prompt: ${first.prompt.realTokens} real tokens of ${encoder.seqLen}`);
      const times: number[] = [];
      for (let i = 0; i < runs; i++) {
        const s = performance.now();
        await encoder.encode(values.prompt);
        times.push(performance.now() - s);
      }
      const mem = encoder.gpuBytes();
      console.log(
        `encode (template, tokens, forward, read back ${encoder.seqLen}×${encoder.embedWidth()}): median ` +
          `${median(times).toFixed(2)} ms over ${runs} runs (min ${Math.min(...times).toFixed(2)}, max ${Math.max(...times).toFixed(2)})`,
      );
      console.log(`GPU memory: weights ${gib(mem.weights)}, plan ${gib(mem.plan)}, peak ${gib(mem.total)}`);
      if (values.compare) {
        await compareWithTorch(values.python, model, first.prompt.inputIds, first.prompt.attentionMask, first.embeds);
      }
    } finally {
      encoder.release();
    }
  } finally {
    if (tempDir) await Deno.remove(tempDir, { recursive: true });
  }
}

if (import.meta.main) await main();
