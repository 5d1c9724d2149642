// The Qwen3 decoder forward as a graph of named nodes, for FLUX.2 klein's prompt embeddings: token embeddings, then
// QWEN3_LAYERS_USED decoder layers, with hidden_states[9], [18] and [27] copied side by side into one state tensor
// [S, 3·hidden]. No LM head, and no final norm for the published 36-layer model, whose hidden_states[27] is an
// intermediate state. transformers records the last entry of hidden_states after the final norm, though, so a model
// of exactly 27 layers has its hidden_states[27] normed (model.norm): the graph applies the norm there too
// (qwen3AppliesFinalNorm), as node `qwen3.norm` with tap `qwen3.norm`.
//
// One decoder layer (transformers' Qwen3DecoderLayer):
//   n = rmsnorm(x) · input_layernorm;  q, k, v = n · [q_proj; k_proj; v_proj]ᵀ (one fused matmul)
//   q, k = per-head rmsnorm (q_norm, k_norm), then rotate-half RoPE;  a = attention(q, k, v), causal, GQA
//   h = x + a · o_projᵀ;  n2 = rmsnorm(h) · post_attention_layernorm
//   out = h + down_proj(silu(gate_proj(n2)) · up_proj(n2))   (gate and up fused into one matmul)
//
// Masking: key j is visible to query i iff j ≤ i and position j is a real token (attention_mask 1), which is what the
// reference's causal mask combined with the padding mask gives; pad positions still produce hidden states (with right
// padding, a pad query sees every real token). The padding mask is a per-run input — the attention kernel's group
// mask with one rule: every query carries bit 0, and pad keys carry bit 0 — so one compiled plan serves any prompt.
// A knockout that replaces the group mask of these attention nodes must keep that bit in its own bits.
// RoPE positions are 0..S-1 for every row, pad rows included, as in the reference.
//
// Names: layer N (0-based, the checkpoint's `model.layers.N`) has nodes `qwen3.layers.N.<module path>`, e.g.
// `qwen3.layers.3.self_attn.qkv_proj`, and its output is the tap `qwen3.layer.N`, which is HF hidden_states[N + 1].
// The embeddings (hidden_states[0]) are the tap `qwen3.embed`.

import type { Graph } from "../../runtime/graph.ts";
import type { DType } from "../../runtime/tensor.ts";
import { embedding } from "../../kernels/embedding.ts";
import { rmsNorm } from "../../kernels/norm.ts";
import { matmul } from "../../kernels/matmul.ts";
import { copyCols, sliceCols } from "../../kernels/rows.ts";
import { rope } from "../../kernels/rope.ts";
import { qwenRopeTables } from "../../kernels/rope_tables.ts";
import { attention } from "../../kernels/attention.ts";
import { add, swiglu } from "../../kernels/elementwise.ts";
import { promptEmbedWidth, QWEN3_EMBED_HIDDEN_STATES, QWEN3_LAYERS_USED, qwen3AppliesFinalNorm, type Qwen3Config } from "./config.ts";
import {
  QWEN3_EMBED_WEIGHT,
  QWEN3_NORM_WEIGHT,
  qwen3LayerModule,
  qwen3LayerShapes,
  type Qwen3LayerWeight,
  qwen3LayerWeight,
} from "./weights.ts";

/** Names of the tensors a caller writes or reads around a run. */
export const QWEN3_TENSORS = {
  /** input, u32 [S]: token ids. */
  inputIds: "qwen3.input_ids",
  /** input, u32 [S]: 1 at pad positions (attention_mask 0), else 0 — see qwen3PadKeyBits. */
  padKeyBits: "qwen3.pad_key_bits",
  /** state, f32 [S, 3·hidden]: the prompt embeddings. */
  promptEmbeds: "qwen3.prompt_embeds",
} as const;

/** The padding rule's bit: queries carry it, pad keys carry it, so no query reads a pad key. */
const PAD_RULE_BIT = 1;

export interface Qwen3EncoderOptions {
  /** Sequence length (512 in FLUX.2 klein). */
  seqLen: number;
  /** GPU type of each weight (from the upload); default bf16 for all. */
  weightDType?: (name: string) => DType;
}

export interface Qwen3EncoderGraph {
  /** The state tensor [S, 3·hidden] holding the prompt embeddings. */
  promptEmbeds: number;
  /** Names of the attention nodes in layer order. */
  attentionNodes: string[];
}

/** Key bits for the padding rule from an attention mask (1 real, 0 pad): bit 0 set on pad keys. */
export function qwen3PadKeyBits(attentionMask: ArrayLike<number>): Uint32Array {
  const bits = new Uint32Array(attentionMask.length);
  for (let j = 0; j < bits.length; j++) bits[j] = attentionMask[j] ? 0 : PAD_RULE_BIT;
  return bits;
}

/** Build the encoder forward for `seqLen` tokens. Inputs: QWEN3_TENSORS.inputIds and .padKeyBits; output: the state
 * tensor QWEN3_TENSORS.promptEmbeds. The RoPE tables are constants of the graph (positions never change). */
export function buildQwen3Encoder(g: Graph, cfg: Qwen3Config, options: Qwen3EncoderOptions): Qwen3EncoderGraph {
  const S = options.seqLen;
  if (!Number.isInteger(S) || S < 1) throw new Error(`Qwen3 encoder: sequence length must be a positive integer, got ${S}`);
  const D = cfg.hiddenSize, hd = cfg.headDim, H = cfg.heads, Hkv = cfg.kvHeads, eps = cfg.rmsNormEps;
  const qCols = H * hd, kvCols = Hkv * hd;
  const dtypeOf = options.weightDType ?? (() => "bf16" as DType);
  const shapes = qwen3LayerShapes(cfg);
  const layerWeight = (i: number, part: Qwen3LayerWeight) => {
    const name = qwen3LayerWeight(i, part);
    return g.weight(name, shapes[part], dtypeOf(name));
  };

  const ids = g.input(QWEN3_TENSORS.inputIds, [S], "u32");
  const padKeyBits = g.input(QWEN3_TENSORS.padKeyBits, [S], "u32");
  const queryBits = g.constant("qwen3.pad_query_bits", [S], "u32", new Uint32Array(S).fill(PAD_RULE_BIT));
  const tables = qwenRopeTables(S, hd, cfg.ropeTheta);
  const ropeCos = g.constant("qwen3.rope_cos", [S, hd / 2], "f32", tables.cos);
  const ropeSin = g.constant("qwen3.rope_sin", [S, hd / 2], "f32", tables.sin);
  const promptEmbeds = g.state(QWEN3_TENSORS.promptEmbeds, [S, promptEmbedWidth(cfg)]);

  let x = g.tap(
    "qwen3.embed",
    embedding(g, "qwen3.embed_tokens", g.weight(QWEN3_EMBED_WEIGHT, [cfg.vocabSize, D], dtypeOf(QWEN3_EMBED_WEIGHT)), ids),
  );
  const attentionNodes: string[] = [];
  for (let i = 0; i < QWEN3_LAYERS_USED; i++) {
    const node = (part: Qwen3LayerWeight) => qwen3LayerModule(i, part);
    const l = `qwen3.layers.${i}`;
    // Self-attention.
    const n = rmsNorm(g, node("input_layernorm"), x, layerWeight(i, "input_layernorm"), { eps });
    const qkv = matmul(g, node("qkv_proj"), n, layerWeight(i, "qkv_proj"));
    const qRaw = sliceCols(g, `${l}.self_attn.q`, qkv, 0, qCols);
    const kRaw = sliceCols(g, `${l}.self_attn.k`, qkv, qCols, kvCols);
    const v = g.tap(`${l}.attn.v`, sliceCols(g, `${l}.self_attn.v`, qkv, qCols + kvCols, kvCols));
    const qNorm = rmsNorm(g, node("q_norm"), qRaw, layerWeight(i, "q_norm"), { eps, groupSize: hd });
    const kNorm = rmsNorm(g, node("k_norm"), kRaw, layerWeight(i, "k_norm"), { eps, groupSize: hd });
    const q = g.tap(
      `${l}.attn.q`,
      rope(g, `${l}.self_attn.q_rope`, qNorm, ropeCos, ropeSin, { heads: H, headDim: hd, layout: "rotate_half" }),
    );
    const k = g.tap(
      `${l}.attn.k`,
      rope(g, `${l}.self_attn.k_rope`, kNorm, ropeCos, ropeSin, { heads: Hkv, headDim: hd, layout: "rotate_half" }),
    );
    const attnName = `${l}.self_attn.attn`;
    const a = g.tap(
      `${l}.attn.out`,
      attention(g, attnName, { q, k, v, heads: H, kvHeads: Hkv, headDim: hd, causal: true, groupMask: { queryBits, keyBits: padKeyBits } }),
    );
    attentionNodes.push(attnName);
    const h = add(g, `${l}.attn_residual`, x, matmul(g, node("o_proj"), a, layerWeight(i, "o_proj")));
    // Feed-forward.
    const n2 = rmsNorm(g, node("post_attention_layernorm"), h, layerWeight(i, "post_attention_layernorm"), { eps });
    const gateUp = matmul(g, node("gate_up_proj"), n2, layerWeight(i, "gate_up_proj"));
    const mlp = matmul(g, node("down_proj"), swiglu(g, `${l}.mlp.act`, gateUp), layerWeight(i, "down_proj"));
    x = g.tap(`qwen3.layer.${i}`, add(g, `${l}.out`, h, mlp));
    // Copy a hidden state the embeddings use as soon as it exists, so the layer output's memory can be reused.
    const slot = QWEN3_EMBED_HIDDEN_STATES.indexOf((i + 1) as (typeof QWEN3_EMBED_HIDDEN_STATES)[number]);
    if (slot < 0) continue;
    // The model's last hidden state is recorded after the final norm (only when the layer count is a selected index).
    const state = i + 1 === cfg.numLayers && qwen3AppliesFinalNorm(cfg)
      ? g.tap("qwen3.norm", rmsNorm(g, "qwen3.norm", x, g.weight(QWEN3_NORM_WEIGHT, [D], dtypeOf(QWEN3_NORM_WEIGHT)), { eps }))
      : x;
    copyCols(g, `qwen3.prompt_embeds.${slot}`, state, promptEmbeds, { dstCol: slot * D });
  }
  return { promptEmbeds, attentionNodes };
}
