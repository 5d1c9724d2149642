// The transformer's weights as the graph names them, and where each comes from in the two published layouts:
// diffusers (separate q/k/v, `norm_out.linear` in (scale, shift) order) and Black Forest Labs' single file
// (fused qkv, `final_layer.adaLN_modulation.1` in (shift, scale) order). Both load into the same graph weights.

import type { Checkpoint } from "../../weights/checkpoint.ts";
import type { Flux2Config } from "./config.ts";

export type Flux2Layout = "diffusers" | "bfl";

export interface SourcePiece {
  tensor: string;
  rowStart?: number;
  rowCount?: number;
}

export interface GraphWeight {
  /** Graph-side name, e.g. "double.3.img_qkv.weight". */
  name: string;
  shape: number[];
  /** Concatenated along rows, in order. */
  pieces: SourcePiece[];
}

/** Expected shape of each checkpoint tensor, for validation. */
type Expected = Map<string, number[]>;

export function detectLayout(names: Iterable<string>, where: string): Flux2Layout {
  const set = new Set(names);
  if (set.has("double_blocks.0.img_attn.qkv.weight") || set.has("img_in.weight")) return "bfl";
  if (set.has("x_embedder.weight") || set.has("transformer_blocks.0.attn.to_q.weight")) return "diffusers";
  throw new Error(`${where}: neither a diffusers FLUX.2 transformer (x_embedder.weight) nor a Black Forest Labs one (img_in.weight)`);
}

/** Infer the configuration of a Black Forest Labs single file from its tensor shapes (it carries no config). */
export function inferBflConfig(ckpt: Checkpoint, where: string): Record<string, unknown> {
  const shape = (n: string) => {
    if (!ckpt.has(n)) throw new Error(`${where}: cannot infer the configuration, tensor ${n} is missing`);
    return ckpt.info(n).shape;
  };
  const [hidden, inChannels] = shape("img_in.weight");
  const joint = shape("txt_in.weight")[1];
  const headDim = shape("double_blocks.0.img_attn.norm.query_norm.scale")[0];
  const mlpIn = shape("double_blocks.0.img_mlp.0.weight")[0];
  const count = (prefix: string) => {
    let n = 0;
    while (ckpt.has(`${prefix}.${n}.${prefix === "double_blocks" ? "img_attn.qkv.weight" : "linear1.weight"}`)) n++;
    return n;
  };
  return {
    in_channels: inChannels,
    out_channels: shape("final_layer.linear.weight")[0],
    num_layers: count("double_blocks"),
    num_single_layers: count("single_blocks"),
    attention_head_dim: headDim,
    num_attention_heads: hidden / headDim,
    joint_attention_dim: joint,
    timestep_guidance_channels: shape("time_in.in_layer.weight")[1],
    mlp_ratio: mlpIn / 2 / hidden,
  };
}

export function flux2GraphWeights(cfg: Flux2Config, layout: Flux2Layout): { weights: GraphWeight[]; expected: Expected } {
  const D = cfg.hidden, F = cfg.mlpHidden, hd = cfg.headDim;
  const weights: GraphWeight[] = [];
  const expected: Expected = new Map();
  const src = (tensor: string, shape: number[], rowStart?: number, rowCount?: number): SourcePiece => {
    expected.set(tensor, shape);
    return { tensor, rowStart, rowCount };
  };
  const one = (name: string, shape: number[], tensor: string) =>
    weights.push({ name: `${name}.weight`, shape, pieces: [src(tensor, shape)] });
  const bfl = layout === "bfl";
  one(
    "time.linear_1",
    [D, cfg.timestepChannels],
    bfl ? "time_in.in_layer.weight" : "time_guidance_embed.timestep_embedder.linear_1.weight",
  );
  one("time.linear_2", [D, D], bfl ? "time_in.out_layer.weight" : "time_guidance_embed.timestep_embedder.linear_2.weight");
  one("mod.double_img", [6 * D, D], bfl ? "double_stream_modulation_img.lin.weight" : "double_stream_modulation_img.linear.weight");
  one("mod.double_txt", [6 * D, D], bfl ? "double_stream_modulation_txt.lin.weight" : "double_stream_modulation_txt.linear.weight");
  one("mod.single", [3 * D, D], bfl ? "single_stream_modulation.lin.weight" : "single_stream_modulation.linear.weight");
  if (bfl) {
    // BFL stores (shift, scale); the graph wants (scale, shift) like diffusers' AdaLayerNormContinuous.
    const t = "final_layer.adaLN_modulation.1.weight";
    weights.push({ name: "mod.final.weight", shape: [2 * D, D], pieces: [src(t, [2 * D, D], D, D), src(t, [2 * D, D], 0, D)] });
  } else {
    one("mod.final", [2 * D, D], "norm_out.linear.weight");
  }
  one("x_embedder", [D, cfg.inChannels], bfl ? "img_in.weight" : "x_embedder.weight");
  one("context_embedder", [D, cfg.jointAttentionDim], bfl ? "txt_in.weight" : "context_embedder.weight");
  for (let i = 0; i < cfg.numDoubleBlocks; i++) {
    const g = `double.${i}`;
    if (bfl) {
      const b = `double_blocks.${i}`;
      one(`${g}.img_qkv`, [3 * D, D], `${b}.img_attn.qkv.weight`);
      one(`${g}.txt_qkv`, [3 * D, D], `${b}.txt_attn.qkv.weight`);
      one(`${g}.img_norm_q`, [hd], `${b}.img_attn.norm.query_norm.scale`);
      one(`${g}.img_norm_k`, [hd], `${b}.img_attn.norm.key_norm.scale`);
      one(`${g}.txt_norm_q`, [hd], `${b}.txt_attn.norm.query_norm.scale`);
      one(`${g}.txt_norm_k`, [hd], `${b}.txt_attn.norm.key_norm.scale`);
      one(`${g}.img_out`, [D, D], `${b}.img_attn.proj.weight`);
      one(`${g}.txt_out`, [D, D], `${b}.txt_attn.proj.weight`);
      one(`${g}.img_ff_in`, [2 * F, D], `${b}.img_mlp.0.weight`);
      one(`${g}.img_ff_out`, [D, F], `${b}.img_mlp.2.weight`);
      one(`${g}.txt_ff_in`, [2 * F, D], `${b}.txt_mlp.0.weight`);
      one(`${g}.txt_ff_out`, [D, F], `${b}.txt_mlp.2.weight`);
    } else {
      const b = `transformer_blocks.${i}`;
      weights.push({
        name: `${g}.img_qkv.weight`,
        shape: [3 * D, D],
        pieces: ["to_q", "to_k", "to_v"].map((p) => src(`${b}.attn.${p}.weight`, [D, D])),
      });
      weights.push({
        name: `${g}.txt_qkv.weight`,
        shape: [3 * D, D],
        pieces: ["add_q_proj", "add_k_proj", "add_v_proj"].map((p) => src(`${b}.attn.${p}.weight`, [D, D])),
      });
      one(`${g}.img_norm_q`, [hd], `${b}.attn.norm_q.weight`);
      one(`${g}.img_norm_k`, [hd], `${b}.attn.norm_k.weight`);
      one(`${g}.txt_norm_q`, [hd], `${b}.attn.norm_added_q.weight`);
      one(`${g}.txt_norm_k`, [hd], `${b}.attn.norm_added_k.weight`);
      one(`${g}.img_out`, [D, D], `${b}.attn.to_out.0.weight`);
      one(`${g}.txt_out`, [D, D], `${b}.attn.to_add_out.weight`);
      one(`${g}.img_ff_in`, [2 * F, D], `${b}.ff.linear_in.weight`);
      one(`${g}.img_ff_out`, [D, F], `${b}.ff.linear_out.weight`);
      one(`${g}.txt_ff_in`, [2 * F, D], `${b}.ff_context.linear_in.weight`);
      one(`${g}.txt_ff_out`, [D, F], `${b}.ff_context.linear_out.weight`);
    }
  }
  for (let i = 0; i < cfg.numSingleBlocks; i++) {
    const g = `single.${i}`;
    const b = bfl ? `single_blocks.${i}` : `single_transformer_blocks.${i}.attn`;
    one(`${g}.qkv_mlp`, [3 * D + 2 * F, D], bfl ? `${b}.linear1.weight` : `${b}.to_qkv_mlp_proj.weight`);
    one(`${g}.out`, [D, D + F], bfl ? `${b}.linear2.weight` : `${b}.to_out.weight`);
    one(`${g}.norm_q`, [hd], bfl ? `${b}.norm.query_norm.scale` : `${b}.norm_q.weight`);
    one(`${g}.norm_k`, [hd], bfl ? `${b}.norm.key_norm.scale` : `${b}.norm_k.weight`);
  }
  one("proj_out", [cfg.outChannels, D], bfl ? "final_layer.linear.weight" : "proj_out.weight");
  return { weights, expected };
}
