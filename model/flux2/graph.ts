// The FLUX.2 transformer forward pass as a graph of named nodes. Sequence order inside the model is
// [text ; image rows], where the image rows are the noise tokens followed by every reference's tokens.
// Every block output, both embedders and each attention's q/k/v/output are tap points.

import type { Graph } from "../../runtime/graph.ts";
import { matmul } from "../../kernels/matmul.ts";
import { layerNormModulate, rmsNorm } from "../../kernels/norm.ts";
import { rope } from "../../kernels/rope.ts";
import { concatRows, copyCols, sliceCols } from "../../kernels/rows.ts";
import { attention, type AttentionArgs } from "../../kernels/attention.ts";
import { gatedSum, silu, swiglu } from "../../kernels/elementwise.ts";
import type { Flux2Config } from "./config.ts";

export interface Flux2Inputs {
  /** Image rows [imageRows, in_channels]: noise tokens then reference tokens. */
  x: number;
  /** Prompt embeddings [textRows, joint_attention_dim]. */
  ctx: number;
  /** Sinusoidal timestep features [1, timestep_channels]. */
  tembIn: number;
  /** RoPE tables [textRows + imageRows, head_dim/2] for the [text ; image] sequence. */
  ropeCos: number;
  ropeSin: number;
}

export interface Flux2Outputs {
  /** Velocity for every image row [imageRows, out_channels]. */
  output: number;
  /** The attention nodes in block order, with the arguments they were built from (knockout rebuilds them with a
   * group mask). */
  attention: { node: string; args: AttentionArgs & { out: number } }[];
}

/** Byte offset of row `row` in an f32 tensor of `cols` columns (views need 256-byte alignment). */
function rowOffset(row: number, cols: number): number {
  return row * cols * 4;
}

export interface Flux2GraphOptions {
  /** Multiply in f16 in the blocks' projections (kernels/matmul.ts `f16`); the embedders, modulations and the
   * output projection stay f32. */
  f16?: boolean;
}

export function buildFlux2Forward(
  g: Graph,
  cfg: Flux2Config,
  inp: Flux2Inputs,
  outputTensor?: number,
  options: Flux2GraphOptions = {},
): Flux2Outputs {
  const blockMatmul: typeof matmul = (gr, name, x, weight, opts = {}) => matmul(gr, name, x, weight, { ...opts, f16: options.f16 });
  const D = cfg.hidden, F = cfg.mlpHidden, H = cfg.heads, hd = cfg.headDim, eps = cfg.eps;
  const [imageRows] = g.shape(inp.x);
  const [textRows] = g.shape(inp.ctx);
  const S = textRows + imageRows;
  const w = (name: string, shape: number[]) => g.weight(`${name}.weight`, shape, "bf16");
  const attentionNodes: Flux2Outputs["attention"] = [];
  const attend = (b: string, q: number, k: number, v: number) => {
    const args = { q, k, v, heads: H, kvHeads: H, headDim: hd };
    const out = g.tap(`${b}.attn.out`, attention(g, `${b}.attn`, args));
    attentionNodes.push({ node: g.nodes[g.nodes.length - 1].name, args: { ...args, out } });
    return out;
  };

  // Timestep embedding and the shared modulations.
  const t1 = matmul(g, "time.linear_1", inp.tembIn, w("time.linear_1", [D, cfg.timestepChannels]));
  const temb = matmul(g, "time.linear_2", silu(g, "time.silu", t1), w("time.linear_2", [D, D]));
  g.tap("temb", temb, null);
  const tembAct = silu(g, "temb.silu", temb);
  const modImg = matmul(g, "mod.double_img", tembAct, w("mod.double_img", [6 * D, D]));
  const modTxt = matmul(g, "mod.double_txt", tembAct, w("mod.double_txt", [6 * D, D]));
  const modSingle = matmul(g, "mod.single", tembAct, w("mod.single", [3 * D, D]));
  const modFinal = matmul(g, "mod.final", tembAct, w("mod.final", [2 * D, D]));

  let img = g.tap("x_embedder", matmul(g, "x_embedder", inp.x, w("x_embedder", [D, cfg.inChannels])), textRows);
  let txt = g.tap("context_embedder", matmul(g, "context_embedder", inp.ctx, w("context_embedder", [D, cfg.jointAttentionDim])));

  const headNorm = (name: string, x: number, weight: string) => rmsNorm(g, name, x, w(weight, [hd]), { eps, groupSize: hd });
  const ropeAll = (name: string, x: number) => rope(g, name, x, inp.ropeCos, inp.ropeSin, { heads: H, headDim: hd, layout: "interleaved" });

  for (let i = 0; i < cfg.numDoubleBlocks; i++) {
    const b = `double.${i}`;
    // Attention over [text ; image]: per-stream projections and q/k norms, then joint RoPE and attention.
    const nImg = layerNormModulate(g, `${b}.img_norm1`, img, modImg, { eps, scaleOffset: D, shiftOffset: 0 });
    const nTxt = layerNormModulate(g, `${b}.txt_norm1`, txt, modTxt, { eps, scaleOffset: D, shiftOffset: 0 });
    const qkvImg = blockMatmul(g, `${b}.img_qkv`, nImg, w(`${b}.img_qkv`, [3 * D, D]));
    const qkvTxt = blockMatmul(g, `${b}.txt_qkv`, nTxt, w(`${b}.txt_qkv`, [3 * D, D]));
    const qTxt = headNorm(`${b}.txt_q_norm`, sliceCols(g, `${b}.txt_q`, qkvTxt, 0, D), `${b}.txt_norm_q`);
    const kTxt = headNorm(`${b}.txt_k_norm`, sliceCols(g, `${b}.txt_k`, qkvTxt, D, D), `${b}.txt_norm_k`);
    const vTxt = sliceCols(g, `${b}.txt_v`, qkvTxt, 2 * D, D);
    const qImg = headNorm(`${b}.img_q_norm`, sliceCols(g, `${b}.img_q`, qkvImg, 0, D), `${b}.img_norm_q`);
    const kImg = headNorm(`${b}.img_k_norm`, sliceCols(g, `${b}.img_k`, qkvImg, D, D), `${b}.img_norm_k`);
    const vImg = sliceCols(g, `${b}.img_v`, qkvImg, 2 * D, D);
    const q = g.tap(`${b}.attn.q`, ropeAll(`${b}.q_rope`, concatRows(g, `${b}.q_joint`, [qTxt, qImg])));
    const k = g.tap(`${b}.attn.k`, ropeAll(`${b}.k_rope`, concatRows(g, `${b}.k_joint`, [kTxt, kImg])));
    const v = g.tap(`${b}.attn.v`, concatRows(g, `${b}.v_joint`, [vTxt, vImg]));
    const a = attend(b, q, k, v);
    const aTxt = g.view(`${b}.attn.out_txt`, a, 0, [textRows, D]);
    const aImg = g.view(`${b}.attn.out_img`, a, rowOffset(textRows, D), [imageRows, D]);
    // Image stream: gated attention residual, then the modulated SwiGLU feed-forward.
    const imgMid = gatedSum(g, `${b}.img_attn_res`, img, blockMatmul(g, `${b}.img_out`, aImg, w(`${b}.img_out`, [D, D])), modImg, 2 * D);
    const nImg2 = layerNormModulate(g, `${b}.img_norm2`, imgMid, modImg, { eps, scaleOffset: 4 * D, shiftOffset: 3 * D });
    const ffImg = blockMatmul(
      g,
      `${b}.img_ff_out`,
      swiglu(g, `${b}.img_swiglu`, blockMatmul(g, `${b}.img_ff_in`, nImg2, w(`${b}.img_ff_in`, [2 * F, D]))),
      w(`${b}.img_ff_out`, [D, F]),
    );
    const imgOut = gatedSum(g, `${b}.img`, imgMid, ffImg, modImg, 5 * D);
    // Text stream, the same with its own weights and modulation.
    const txtMid = gatedSum(g, `${b}.txt_attn_res`, txt, blockMatmul(g, `${b}.txt_out`, aTxt, w(`${b}.txt_out`, [D, D])), modTxt, 2 * D);
    const nTxt2 = layerNormModulate(g, `${b}.txt_norm2`, txtMid, modTxt, { eps, scaleOffset: 4 * D, shiftOffset: 3 * D });
    const ffTxt = blockMatmul(
      g,
      `${b}.txt_ff_out`,
      swiglu(g, `${b}.txt_swiglu`, blockMatmul(g, `${b}.txt_ff_in`, nTxt2, w(`${b}.txt_ff_in`, [2 * F, D]))),
      w(`${b}.txt_ff_out`, [D, F]),
    );
    const txtOut = gatedSum(g, `${b}.txt`, txtMid, ffTxt, modTxt, 5 * D);
    img = g.tap(`${b}.img`, imgOut, textRows);
    txt = g.tap(`${b}.txt`, txtOut);
  }

  // One stream [text ; image] through the single (parallel attention + MLP) blocks.
  let h = concatRows(g, "stream", [txt, img]);
  for (let i = 0; i < cfg.numSingleBlocks; i++) {
    const b = `single.${i}`;
    const n = layerNormModulate(g, `${b}.norm`, h, modSingle, { eps, scaleOffset: D, shiftOffset: 0 });
    const p = blockMatmul(g, `${b}.qkv_mlp`, n, w(`${b}.qkv_mlp`, [3 * D + 2 * F, D]));
    const q = g.tap(`${b}.attn.q`, ropeAll(`${b}.q_rope`, headNorm(`${b}.q_norm`, sliceCols(g, `${b}.q`, p, 0, D), `${b}.norm_q`)));
    const k = g.tap(`${b}.attn.k`, ropeAll(`${b}.k_rope`, headNorm(`${b}.k_norm`, sliceCols(g, `${b}.k`, p, D, D), `${b}.norm_k`)));
    const v = g.tap(`${b}.attn.v`, sliceCols(g, `${b}.v`, p, 2 * D, D));
    const a = attend(b, q, k, v);
    const mlp = swiglu(g, `${b}.swiglu`, sliceCols(g, `${b}.mlp_in`, p, 3 * D, 2 * F));
    const cat = g.activation(`${b}.attn_mlp`, [S, D + F]);
    copyCols(g, `${b}.cat_attn`, a, cat, { dstCol: 0 });
    copyCols(g, `${b}.cat_mlp`, mlp, cat, { dstCol: D });
    const o = blockMatmul(g, `${b}.out`, cat, w(`${b}.out`, [D, D + F]));
    h = g.tap(b, gatedSum(g, b, h, o, modSingle, 2 * D));
    // The stream's text and image rows as taps of their own, so that single blocks read like double blocks.
    g.tap(`${b}.txt`, g.view(`${b}.txt_rows`, h, 0, [textRows, D]));
    g.tap(`${b}.img`, g.view(`${b}.img_rows`, h, rowOffset(textRows, D), [imageRows, D]), textRows);
  }

  // Final modulated norm and projection over the image rows only.
  const imageStream = g.view("final.image_rows", h, rowOffset(textRows, D), [imageRows, D]);
  const nf = layerNormModulate(g, "final.norm", imageStream, modFinal, { eps, scaleOffset: 0, shiftOffset: D });
  const output = matmul(
    g,
    "proj_out",
    nf,
    w("proj_out", [cfg.outChannels, D]),
    outputTensor === undefined ? undefined : { out: outputTensor },
  );
  g.tap("output", output, textRows);
  return { output, attention: attentionNodes };
}
