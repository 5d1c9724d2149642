// Building blocks shared by the VAE encoder and decoder graphs: ResNet blocks and the mid-block spatial attention.
// Images are channel-major f32 [C, H·W] (batch 1); the attention works token-major [H·W, C] in between.

import type { Graph } from "../../runtime/graph.ts";
import type { DType } from "../../runtime/tensor.ts";
import { conv2d, conv2dNode, type Conv2dOptions, conv2dShape } from "../../kernels/conv2d.ts";
import { groupNorm } from "../../kernels/groupnorm.ts";
import { transpose } from "../../kernels/transpose.ts";
import { matmul } from "../../kernels/matmul.ts";
import { attention } from "../../kernels/attention.ts";
import type { VaeConfig } from "./config.ts";

/** Shape and dtype of every weight the graph may use, by checkpoint name. */
export type VaeWeightTable = Map<string, { shape: number[]; dtype: DType }>;

/** What every block builder needs: the graph, the configuration and the weight table. */
export interface VaeBuildContext {
  g: Graph;
  cfg: VaeConfig;
  weights: VaeWeightTable;
}

/** The graph tensor of checkpoint weight `name`. */
export function vaeWeight(ctx: VaeBuildContext, name: string): number {
  const w = ctx.weights.get(name);
  if (!w) throw new Error(`VAE graph: no weight ${name} is loaded (was this part of the VAE loaded?)`);
  return ctx.g.weight(name, w.shape, w.dtype);
}

/** A channel-major image in the graph with its spatial size. */
export interface Image2d {
  id: number;
  height: number;
  width: number;
}

/** Convolution `prefix`.weight/.bias of an image, output named `prefix` (or written into the tensor `into`). */
export function convLayer(ctx: VaeBuildContext, prefix: string, x: Image2d, extra: Partial<Conv2dOptions> = {}, into?: number): Image2d {
  const options: Conv2dOptions = {
    weight: vaeWeight(ctx, `${prefix}.weight`),
    bias: vaeWeight(ctx, `${prefix}.bias`),
    height: x.height,
    width: x.width,
    ...extra,
  };
  const shape = conv2dShape(ctx.g, prefix, x.id, options);
  let id: number;
  if (into === undefined) id = conv2d(ctx.g, prefix, x.id, options);
  else conv2dNode(ctx.g, prefix, x.id, id = into, options);
  return { id, height: shape.outHeight, width: shape.outWidth };
}

/** GroupNorm `prefix`.weight/.bias (config groups, eps), optionally with SiLU. */
export function normLayer(ctx: VaeBuildContext, prefix: string, x: Image2d, silu: boolean): Image2d {
  const id = groupNorm(ctx.g, prefix, x.id, {
    gamma: vaeWeight(ctx, `${prefix}.weight`),
    beta: vaeWeight(ctx, `${prefix}.bias`),
    groups: ctx.cfg.normGroups,
    eps: ctx.cfg.normEps,
    silu,
  });
  return { ...x, id };
}

/** diffusers' ResnetBlock2D without time embedding: conv2(SiLU(norm2(conv1(SiLU(norm1(x)))))) + shortcut(x). */
export function resnetBlock(ctx: VaeBuildContext, prefix: string, x: Image2d, outChannels: number): Image2d {
  const inChannels = ctx.g.shape(x.id)[0];
  const h1 = convLayer(ctx, `${prefix}.conv1`, normLayer(ctx, `${prefix}.norm1`, x, true));
  const h2 = normLayer(ctx, `${prefix}.norm2`, h1, true);
  const skip = inChannels !== outChannels ? convLayer(ctx, `${prefix}.conv_shortcut`, x) : x;
  return convLayer(ctx, `${prefix}.conv2`, h2, { residual: skip.id });
}

/** The mid-block attention (one head over all H·W positions, head dim = channels), residual included. */
export function spatialAttention(ctx: VaeBuildContext, prefix: string, x: Image2d): Image2d {
  const { g } = ctx;
  const channels = g.shape(x.id)[0];
  const normed = normLayer(ctx, `${prefix}.group_norm`, x, false);
  const tokens = transpose(g, `${prefix}.tokens`, normed.id);
  const linear = (name: string, input: number) =>
    matmul(g, `${prefix}.${name}`, input, vaeWeight(ctx, `${prefix}.${name}.weight`), { bias: vaeWeight(ctx, `${prefix}.${name}.bias`) });
  const q = linear("to_q", tokens);
  const k = linear("to_k", tokens);
  const v = linear("to_v", tokens);
  const o = attention(g, `${prefix}.attn`, { q, k, v, heads: 1, kvHeads: 1, headDim: channels });
  const projected = linear("to_out.0", o);
  const id = transpose(g, `${prefix}.out`, projected, x.id);
  return { ...x, id };
}

/** UNetMidBlock2D: resnet, attention (when configured), resnet. */
export function midBlock(ctx: VaeBuildContext, prefix: string, x: Image2d): Image2d {
  const channels = ctx.g.shape(x.id)[0];
  let h = resnetBlock(ctx, `${prefix}.resnets.0`, x, channels);
  if (ctx.cfg.midBlockAttention) h = spatialAttention(ctx, `${prefix}.attentions.0`, h);
  return resnetBlock(ctx, `${prefix}.resnets.1`, h, channels);
}
