// The VAE encoder graph (diffusers' Encoder with double_z, then quant_conv): pixels [3, H·W] in [−1, 1] →
// posterior moments [2·latent_channels, (H/f)·(W/f)], mean first. The pipeline uses the mean (the posterior's
// mode); nothing is sampled.

import { DOWNSAMPLE_PADDING } from "../../kernels/conv2d.ts";
import { convLayer, type Image2d, midBlock, normLayer, resnetBlock, type VaeBuildContext } from "./blocks.ts";
import { encoderLevels } from "./weights.ts";

/** Tap points: `encoder.down_blocks.<i>` (each level's output), `encoder.mid_block`, `encoder.moments`. */
export function buildEncoder(ctx: VaeBuildContext, pixels: Image2d): Image2d {
  const { g, cfg } = ctx;
  let h = convLayer(ctx, "encoder.conv_in", pixels);
  encoderLevels(cfg).forEach((level, i) => {
    const prefix = `encoder.down_blocks.${i}`;
    for (let j = 0; j < cfg.layersPerBlock; j++) h = resnetBlock(ctx, `${prefix}.resnets.${j}`, h, level.outChannels);
    if (level.downsample) h = convLayer(ctx, `${prefix}.downsamplers.0.conv`, h, { stride: 2, padding: DOWNSAMPLE_PADDING });
    g.tap(prefix, h.id);
  });
  h = midBlock(ctx, "encoder.mid_block", h);
  g.tap("encoder.mid_block", h.id);
  h = convLayer(ctx, "encoder.conv_out", normLayer(ctx, "encoder.conv_norm_out", h, true));
  if (cfg.useQuantConv) h = convLayer(ctx, "quant_conv", h);
  g.tap("encoder.moments", h.id);
  return h;
}
