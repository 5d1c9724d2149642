// The Qwen3 text encoder's weights as the graph names them, and where each comes from in a transformers checkpoint
// (`model.layers.N.self_attn.q_proj.weight`, …). q/k/v are fused into one [q + k + v, hidden] matrix and gate/up into
// one [2·intermediate, hidden] matrix (gate first, as `swiglu` expects), by concatenating checkpoint rows in the
// weight store. Only the embedding table and the first QWEN3_LAYERS_USED layers are read, and the final norm only
// for a model of exactly that many layers (qwen3AppliesFinalNorm); never the LM head.

import type { GpuContext } from "../../runtime/device.ts";
import type { Checkpoint } from "../../weights/checkpoint.ts";
import { type UploadProgress, WeightStore } from "../../weights/store.ts";
import type { UploadDType } from "../../weights/dtypes.ts";
import { QWEN3_LAYERS_USED, qwen3AppliesFinalNorm, type Qwen3Config } from "./config.ts";
import { checkpointProblems } from "../../weights/expected.ts";
import { printable } from "../../runtime/printable.ts";

/** Per-layer weights of the graph, in the order a layer uses them. */
export type Qwen3LayerWeight =
  | "input_layernorm"
  | "qkv_proj"
  | "q_norm"
  | "k_norm"
  | "o_proj"
  | "post_attention_layernorm"
  | "gate_up_proj"
  | "down_proj";

/** Where each layer weight sits in the layer, as in the checkpoint's module paths; the graph node that applies a
 * weight carries the same path (`qwen3.layers.3.self_attn.qkv_proj` applies `qwen3.layers.3.self_attn.qkv_proj.weight`). */
export const QWEN3_LAYER_MODULES: Record<Qwen3LayerWeight, string> = {
  input_layernorm: "input_layernorm",
  qkv_proj: "self_attn.qkv_proj",
  q_norm: "self_attn.q_norm",
  k_norm: "self_attn.k_norm",
  o_proj: "self_attn.o_proj",
  post_attention_layernorm: "post_attention_layernorm",
  gate_up_proj: "mlp.gate_up_proj",
  down_proj: "mlp.down_proj",
};

export const QWEN3_EMBED_WEIGHT = "qwen3.embed_tokens.weight";
/** The final RMSNorm's weight (`model.norm.weight`), read only when qwen3AppliesFinalNorm. */
export const QWEN3_NORM_WEIGHT = "qwen3.norm.weight";

/** Graph name of a layer's module, e.g. "qwen3.layers.3.self_attn.qkv_proj" (N is the checkpoint's layer index). */
export function qwen3LayerModule(layer: number, part: Qwen3LayerWeight): string {
  return `qwen3.layers.${layer}.${QWEN3_LAYER_MODULES[part]}`;
}

/** Graph name of a layer weight, e.g. "qwen3.layers.3.self_attn.qkv_proj.weight". */
export function qwen3LayerWeight(layer: number, part: Qwen3LayerWeight): string {
  return `${qwen3LayerModule(layer, part)}.weight`;
}

export interface Qwen3SourcePiece {
  tensor: string;
}

export interface Qwen3GraphWeight {
  name: string;
  shape: number[];
  /** Checkpoint tensors concatenated along rows, in order. */
  pieces: Qwen3SourcePiece[];
}

/** Shapes of a layer's weights in the graph. */
export function qwen3LayerShapes(cfg: Qwen3Config): Record<Qwen3LayerWeight, number[]> {
  const D = cfg.hiddenSize, I = cfg.intermediateSize, hd = cfg.headDim;
  const qCols = cfg.heads * hd, kvCols = cfg.kvHeads * hd;
  return {
    input_layernorm: [D],
    qkv_proj: [qCols + 2 * kvCols, D],
    q_norm: [hd],
    k_norm: [hd],
    o_proj: [D, qCols],
    post_attention_layernorm: [D],
    gate_up_proj: [2 * I, D],
    down_proj: [D, I],
  };
}

/** Throws a one-line error unless the checkpoint holds decoder layers 0 … num_hidden_layers − 1 (layers past that
 * are allowed: transformers ignores them too). Checked before anything else, so a config that claims more layers
 * than the checkpoint has is refused by name. */
export function checkQwen3LayerCount(cfg: Qwen3Config, names: Iterable<string>, prefix: string, where: string): void {
  const layers = new Set<number>();
  const start = `${prefix}layers.`;
  for (const name of names) {
    if (!name.startsWith(start)) continue;
    const m = /^(\d+)\./.exec(name.slice(start.length));
    if (m) layers.add(Number(m[1]));
  }
  let n = 0;
  while (layers.has(n)) n++;
  if (n < cfg.numLayers) {
    const held = layers.size === 0
      ? "none"
      : n === layers.size
      ? `${n} (${start}0 … ${n - 1})`
      : `${start}0 … ${n - 1}, then a gap at ${n}`;
    throw new Error(
      `${printable(where)}: config.json's num_hidden_layers is ${cfg.numLayers}, but the checkpoint holds decoder layers ${held}`,
    );
  }
}

/** Whether checkpoint tensor names carry the `model.` prefix of Qwen3ForCausalLM (a bare Qwen3Model has none). */
export function detectQwen3Prefix(names: Iterable<string>, where: string): string {
  const set = new Set(names);
  if (set.has("model.embed_tokens.weight")) return "model.";
  if (set.has("embed_tokens.weight")) return "";
  throw new Error(
    `${
      printable(where)
    }: not a Qwen3 checkpoint: neither model.embed_tokens.weight (Qwen3ForCausalLM) nor embed_tokens.weight (Qwen3Model) is present`,
  );
}

/** The graph weights of the encoder and the checkpoint tensor each piece reads, with its expected shape. */
export function qwen3GraphWeights(cfg: Qwen3Config, prefix = "model."): { weights: Qwen3GraphWeight[]; expected: Map<string, number[]> } {
  const D = cfg.hiddenSize, I = cfg.intermediateSize, hd = cfg.headDim;
  const qCols = cfg.heads * hd, kvCols = cfg.kvHeads * hd;
  const expected = new Map<string, number[]>();
  const src = (tensor: string, shape: number[]): Qwen3SourcePiece => {
    expected.set(prefix + tensor, shape);
    return { tensor: prefix + tensor };
  };
  const shapes = qwen3LayerShapes(cfg);
  const weights: Qwen3GraphWeight[] = [{
    name: QWEN3_EMBED_WEIGHT,
    shape: [cfg.vocabSize, D],
    pieces: [src("embed_tokens.weight", [cfg.vocabSize, D])],
  }];
  for (let i = 0; i < QWEN3_LAYERS_USED; i++) {
    const l = `layers.${i}`;
    const add = (part: Qwen3LayerWeight, pieces: Qwen3SourcePiece[]) =>
      weights.push({ name: qwen3LayerWeight(i, part), shape: shapes[part], pieces });
    add("input_layernorm", [src(`${l}.input_layernorm.weight`, [D])]);
    add("qkv_proj", [
      src(`${l}.self_attn.q_proj.weight`, [qCols, D]),
      src(`${l}.self_attn.k_proj.weight`, [kvCols, D]),
      src(`${l}.self_attn.v_proj.weight`, [kvCols, D]),
    ]);
    add("q_norm", [src(`${l}.self_attn.q_norm.weight`, [hd])]);
    add("k_norm", [src(`${l}.self_attn.k_norm.weight`, [hd])]);
    add("o_proj", [src(`${l}.self_attn.o_proj.weight`, [D, qCols])]);
    add("post_attention_layernorm", [src(`${l}.post_attention_layernorm.weight`, [D])]);
    add("gate_up_proj", [src(`${l}.mlp.gate_proj.weight`, [I, D]), src(`${l}.mlp.up_proj.weight`, [I, D])]);
    add("down_proj", [src(`${l}.mlp.down_proj.weight`, [D, I])]);
  }
  if (qwen3AppliesFinalNorm(cfg)) weights.push({ name: QWEN3_NORM_WEIGHT, shape: [D], pieces: [src("norm.weight", [D])] });
  return { weights, expected };
}

/** GPU type of a graph weight: bf16 when every piece is stored as BF16, else f32 (F16 and F32 widen exactly;
 * rounding them to bf16 would change the model). */
export function uploadDType(ckpt: Checkpoint, w: Qwen3GraphWeight): UploadDType {
  return w.pieces.every((p) => ckpt.info(p.tensor).dtype === "BF16") ? "bf16" : "f32";
}

export interface Qwen3LoadedWeights {
  store: WeightStore;
  /** GPU type of each graph weight, for the graph builder. */
  dtypes: Map<string, UploadDType>;
}

/** Check the checkpoint against the configuration (every problem listed at once), then stream the weights to the GPU. */
export async function uploadQwen3Weights(
  gpu: GpuContext,
  ckpt: Checkpoint,
  cfg: Qwen3Config,
  options: { where?: string; onProgress?: (p: UploadProgress) => void } = {},
): Promise<Qwen3LoadedWeights> {
  const where = options.where ?? ckpt.path;
  const names = ckpt.names();
  const prefix = detectQwen3Prefix(names, where);
  checkQwen3LayerCount(cfg, names, prefix, where);
  const { weights, expected } = qwen3GraphWeights(cfg, prefix);
  // Tensors the encoder does not read (later layers, the final norm of a deeper model, an LM head) are not reported.
  const problems = checkpointProblems(ckpt, expected);
  if (problems.length) throw new Error(`${printable(where)} does not match its Qwen3 configuration: ${problems.join("; ")}`);
  const store = new WeightStore(gpu);
  const dtypes = new Map<string, UploadDType>();
  try {
    for (const w of weights) {
      const dtype = uploadDType(ckpt, w);
      dtypes.set(w.name, dtype);
      store.add(w.name, { shape: w.shape, dtype, pieces: w.pieces.map((p) => ({ checkpoint: ckpt, tensor: p.tensor })) });
    }
    await store.upload({ onProgress: options.onProgress });
  } catch (e) {
    store.release();
    throw e;
  }
  return { store, dtypes };
}
