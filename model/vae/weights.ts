// The VAE's tensors as diffusers' AutoencoderKLFlux2 names them, derived from the configuration. The graph uses the
// checkpoint names unchanged; each tensor is uploaded in its stored precision (bf16 stays bf16, f32/f16 become f32),
// so the kernels see exactly the checkpoint's values.

import type { Checkpoint } from "../../weights/checkpoint.ts";
import type { WeightStore } from "../../weights/store.ts";
import type { VaeConfig } from "./config.ts";
import { checkpointProblems } from "../../weights/expected.ts";

export type VaePart = "encoder" | "decoder";

/** Checkpoint tensors that may be present but are not used (batch-norm bookkeeping). */
const IGNORED = new Set(["bn.num_batches_tracked"]);

/** Channel counts of the ResNet blocks of one level: [input, output] per block. */
export function resnetChannels(inChannels: number, outChannels: number, count: number): [number, number][] {
  return Array.from({ length: count }, (_, j) => [j === 0 ? inChannels : outChannels, outChannels]);
}

/** Decoder level i: its input and output channels (levels run from the lowest resolution up). */
export function decoderLevels(cfg: VaeConfig): { inChannels: number; outChannels: number; upsample: boolean }[] {
  const rev = [...cfg.decoderBlockOutChannels].reverse();
  return rev.map((out, i) => ({ inChannels: i === 0 ? rev[0] : rev[i - 1], outChannels: out, upsample: i < rev.length - 1 }));
}

/** Encoder level i: its input and output channels (levels run from full resolution down). */
export function encoderLevels(cfg: VaeConfig): { inChannels: number; outChannels: number; downsample: boolean }[] {
  const b = cfg.blockOutChannels;
  return b.map((out, i) => ({ inChannels: i === 0 ? b[0] : b[i - 1], outChannels: out, downsample: i < b.length - 1 }));
}

/** Expected tensor name → shape for one part of the VAE (the batch-norm statistics belong to both parts). */
export function vaeTensorShapes(cfg: VaeConfig, part: VaePart): Map<string, number[]> {
  const shapes = new Map<string, number[]>();
  const conv = (name: string, cout: number, cin: number, k: number) => {
    shapes.set(`${name}.weight`, [cout, cin, k, k]);
    shapes.set(`${name}.bias`, [cout]);
  };
  const norm = (name: string, c: number) => {
    shapes.set(`${name}.weight`, [c]);
    shapes.set(`${name}.bias`, [c]);
  };
  const resnet = (name: string, cin: number, cout: number) => {
    norm(`${name}.norm1`, cin);
    conv(`${name}.conv1`, cout, cin, 3);
    norm(`${name}.norm2`, cout);
    conv(`${name}.conv2`, cout, cout, 3);
    if (cin !== cout) conv(`${name}.conv_shortcut`, cout, cin, 1);
  };
  const midBlock = (name: string, c: number) => {
    resnet(`${name}.resnets.0`, c, c);
    if (cfg.midBlockAttention) {
      const a = `${name}.attentions.0`;
      norm(`${a}.group_norm`, c);
      for (const p of ["to_q", "to_k", "to_v", "to_out.0"]) {
        shapes.set(`${a}.${p}.weight`, [c, c]);
        shapes.set(`${a}.${p}.bias`, [c]);
      }
    }
    resnet(`${name}.resnets.1`, c, c);
  };
  const lc = cfg.latentChannels;
  if (part === "encoder") {
    const b = cfg.blockOutChannels;
    conv("encoder.conv_in", b[0], cfg.inChannels, 3);
    encoderLevels(cfg).forEach((level, i) => {
      for (const [j, [cin, cout]] of resnetChannels(level.inChannels, level.outChannels, cfg.layersPerBlock).entries()) {
        resnet(`encoder.down_blocks.${i}.resnets.${j}`, cin, cout);
      }
      if (level.downsample) conv(`encoder.down_blocks.${i}.downsamplers.0.conv`, level.outChannels, level.outChannels, 3);
    });
    const top = b[b.length - 1];
    midBlock("encoder.mid_block", top);
    norm("encoder.conv_norm_out", top);
    conv("encoder.conv_out", 2 * lc, top, 3);
    if (cfg.useQuantConv) conv("quant_conv", 2 * lc, 2 * lc, 1);
  } else {
    const d = cfg.decoderBlockOutChannels;
    const top = d[d.length - 1];
    if (cfg.usePostQuantConv) conv("post_quant_conv", lc, lc, 1);
    conv("decoder.conv_in", top, lc, 3);
    midBlock("decoder.mid_block", top);
    decoderLevels(cfg).forEach((level, i) => {
      for (const [j, [cin, cout]] of resnetChannels(level.inChannels, level.outChannels, cfg.layersPerBlock + 1).entries()) {
        resnet(`decoder.up_blocks.${i}.resnets.${j}`, cin, cout);
      }
      if (level.upsample) conv(`decoder.up_blocks.${i}.upsamplers.0.conv`, level.outChannels, level.outChannels, 3);
    });
    norm("decoder.conv_norm_out", d[0]);
    conv("decoder.conv_out", cfg.outChannels, d[0], 3);
  }
  shapes.set("bn.running_mean", [4 * lc]);
  shapes.set("bn.running_var", [4 * lc]);
  return shapes;
}

/** Every mismatch between the checkpoint and the full expected set (both parts), as readable lines. */
export function vaeCheckpointProblems(ckpt: Checkpoint, cfg: VaeConfig): string[] {
  const expected = new Map([...vaeTensorShapes(cfg, "encoder"), ...vaeTensorShapes(cfg, "decoder")]);
  return checkpointProblems(ckpt, expected, { reportUnexpected: true, ignore: IGNORED });
}

/** Declare the tensors of the given parts in the store under their checkpoint names (nothing is read yet). */
export function addVaeWeights(store: WeightStore, ckpt: Checkpoint, cfg: VaeConfig, parts: readonly VaePart[]): void {
  const names = new Map<string, number[]>();
  for (const part of parts) for (const [n, s] of vaeTensorShapes(cfg, part)) names.set(n, s);
  for (const [name, shape] of names) {
    store.add(name, { shape, dtype: ckpt.info(name).dtype === "BF16" ? "bf16" : "f32", pieces: [{ checkpoint: ckpt, tensor: name }] });
  }
}

/** Graph dtype of a weight as the store holds it. */
export function vaeWeightDType(ckpt: Checkpoint, name: string): "bf16" | "f32" {
  return ckpt.info(name).dtype === "BF16" ? "bf16" : "f32";
}
