// The VAE decoder graph (post_quant_conv, then diffusers' Decoder): latent [latent_channels, h·w] →
// image [out_channels, (h·f)·(w·f)], the raw decoder output (≈ [−1, 1], not clamped).
// Each level's nearest ×2 upsampling is fused into the convolution that follows it.

import { convLayer, type Image2d, midBlock, normLayer, resnetBlock, type VaeBuildContext } from "./blocks.ts";
import { decoderLevels } from "./weights.ts";

/** Tap points: `decoder.mid_block`, `decoder.up_blocks.<i>` (each level's output). The image is written into `out`
 * ([out_channels, H·W]) when given. */
export function buildDecoder(ctx: VaeBuildContext, latent: Image2d, out?: number): Image2d {
  const { g, cfg } = ctx;
  let h = latent;
  if (cfg.usePostQuantConv) h = convLayer(ctx, "post_quant_conv", h);
  h = convLayer(ctx, "decoder.conv_in", h);
  h = midBlock(ctx, "decoder.mid_block", h);
  g.tap("decoder.mid_block", h.id);
  decoderLevels(cfg).forEach((level, i) => {
    const prefix = `decoder.up_blocks.${i}`;
    for (let j = 0; j <= cfg.layersPerBlock; j++) h = resnetBlock(ctx, `${prefix}.resnets.${j}`, h, level.outChannels);
    if (level.upsample) h = convLayer(ctx, `${prefix}.upsamplers.0.conv`, h, { upsample: true });
    g.tap(prefix, h.id);
  });
  return convLayer(ctx, "decoder.conv_out", normLayer(ctx, "decoder.conv_norm_out", h, true), {}, out);
}
