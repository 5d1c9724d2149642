// FLUX.2 VAE configuration (diffusers' AutoencoderKLFlux2 vae/config.json), validated before anything is built:
// every field's type and range (VAE_LIMITS) and the consistency between them. Every problem found is reported at
// once, in one line naming the file.

import { printable } from "../../runtime/printable.ts";

export interface VaeConfig {
  inChannels: number;
  outChannels: number;
  /** Encoder channels per resolution level, from full resolution down. */
  blockOutChannels: number[];
  /** Decoder channels per level (`decoder_block_out_channels`, or the encoder's when null). */
  decoderBlockOutChannels: number[];
  /** ResNet blocks per encoder level; decoder levels have one more. */
  layersPerBlock: number;
  latentChannels: number;
  normGroups: number;
  /** GroupNorm eps of every ResNet block, attention and output norm: fixed at 1e-6 by the reference, not configured. */
  normEps: number;
  /** eps of the latent batch-norm statistics (added to the running variance). */
  batchNormEps: number;
  useQuantConv: boolean;
  usePostQuantConv: boolean;
  midBlockAttention: boolean;
  /** Pixels per latent position along each side: 2^(levels − 1). */
  scaleFactor: number;
  /** Image sides must be multiples of this: scaleFactor · 2 (latents are packed in 2×2 patches). */
  sizeMultiple: number;
}

const KNOWN_KEYS = new Set([
  "act_fn",
  "batch_norm_eps",
  "batch_norm_momentum",
  "block_out_channels",
  "decoder_block_out_channels",
  "down_block_types",
  "force_upcast",
  "in_channels",
  "latent_channels",
  "layers_per_block",
  "mid_block_add_attention",
  "norm_num_groups",
  "out_channels",
  "patch_size",
  "sample_size",
  "up_block_types",
  "use_post_quant_conv",
  "use_quant_conv",
]);

/** The GroupNorm eps diffusers' Encoder, Decoder and mid-block attention hard-code. */
export const VAE_NORM_EPS = 1e-6;

/** Bounds on every size: far above FLUX.2's VAE (4 levels of 128…512 channels, 2 ResNets per level, 32 latent
 * channels), low enough that a mistyped or hostile config is refused before anything is allocated for it. */
export const VAE_LIMITS = {
  imageChannels: 64,
  levels: 8,
  channels: 8192,
  layersPerBlock: 16,
  latentChannels: 1024,
  normGroups: 1024,
  sampleSize: 65536,
} as const;

function describe(v: unknown): string {
  if (v === undefined) return "nothing";
  const s = JSON.stringify(v) ?? String(v);
  return printable(s.length > 60 ? `${s.slice(0, 57)}...` : s);
}

/** An integer in [1, max] (null or absent: `fallback`); a problem naming the field otherwise. */
function positiveInt(r: Record<string, unknown>, key: string, fallback: number, max: number, problems: string[]): number {
  const v = r[key] ?? fallback;
  if (typeof v !== "number" || !Number.isInteger(v) || v <= 0 || v > max) {
    problems.push(`${key} must be an integer from 1 to ${max} (got ${describe(r[key])})`);
    return fallback;
  }
  return v;
}

function channelList(r: Record<string, unknown>, key: string, fallback: number[], problems: string[]): number[] {
  const v = r[key] ?? fallback;
  const L = VAE_LIMITS;
  if (
    !Array.isArray(v) || v.length === 0 || v.length > L.levels || v.some((c) => !Number.isInteger(c) || c <= 0 || c > L.channels)
  ) {
    problems.push(`${key} must be a list of 1 to ${L.levels} integers from 1 to ${L.channels} (got ${describe(r[key])})`);
    return fallback;
  }
  return v as number[];
}

function flag(r: Record<string, unknown>, key: string, fallback: boolean, problems: string[]): boolean {
  const v = r[key] ?? fallback;
  if (typeof v !== "boolean") {
    problems.push(`${key} must be true or false (got ${describe(r[key])})`);
    return fallback;
  }
  return v;
}

/** Parse and check a config object; `where` names the file for messages. */
export function parseVaeConfig(raw: unknown, where: string): VaeConfig {
  if (!raw || typeof raw !== "object" || Array.isArray(raw)) {
    throw new Error(`${printable(where)}: expected a JSON object of AutoencoderKLFlux2 settings, got ${describe(raw)}`);
  }
  const r = raw as Record<string, unknown>;
  const problems: string[] = [];
  const unknown = Object.keys(r).filter((k) => !k.startsWith("_") && !KNOWN_KEYS.has(k));
  if (unknown.length) {
    problems.push(`unknown keys ${printable(unknown.join(", "))} (this is not an AutoencoderKLFlux2 config this code knows)`);
  }
  if (r._class_name !== undefined && r._class_name !== "AutoencoderKLFlux2") {
    problems.push(`_class_name is ${describe(r._class_name)}, expected "AutoencoderKLFlux2"`);
  }
  const act = r.act_fn ?? "silu";
  if (act !== "silu") problems.push(`act_fn ${describe(act)} is not supported (only "silu")`);
  const blockOutChannels = channelList(r, "block_out_channels", [128, 256, 512, 512], problems);
  const levels = blockOutChannels.length;
  let decoderBlockOutChannels = blockOutChannels;
  if (r.decoder_block_out_channels !== null && r.decoder_block_out_channels !== undefined) {
    decoderBlockOutChannels = channelList(r, "decoder_block_out_channels", blockOutChannels, problems);
    if (decoderBlockOutChannels.length !== levels) {
      problems.push(`decoder_block_out_channels has ${decoderBlockOutChannels.length} levels, block_out_channels ${levels}`);
    }
  }
  for (const [key, want] of [["down_block_types", "DownEncoderBlock2D"], ["up_block_types", "UpDecoderBlock2D"]] as const) {
    const v = r[key] ?? Array(levels).fill(want);
    if (!Array.isArray(v) || v.length !== levels || v.some((t) => t !== want)) {
      problems.push(`${key} must list ${levels} × "${want}" (one per block_out_channels entry), got ${describe(v)}`);
    }
  }
  const patch = r.patch_size ?? [2, 2];
  if (!Array.isArray(patch) || patch.length !== 2 || patch[0] !== 2 || patch[1] !== 2) {
    problems.push(`patch_size ${describe(patch)} is not supported (FLUX.2 packs latents in 2×2 patches)`);
  }
  const L = VAE_LIMITS;
  const normGroups = positiveInt(r, "norm_num_groups", 32, L.normGroups, problems);
  for (const c of new Set([...blockOutChannels, ...decoderBlockOutChannels])) {
    if (c % normGroups !== 0) problems.push(`${c} channels cannot be split into norm_num_groups = ${normGroups} groups`);
  }
  const batchNormEps = r.batch_norm_eps ?? 1e-4;
  if (typeof batchNormEps !== "number" || !(batchNormEps >= 0) || !(batchNormEps < 1)) {
    problems.push(`batch_norm_eps must be a number from 0 up to (not including) 1 (got ${describe(r.batch_norm_eps)})`);
  }
  const momentum = r.batch_norm_momentum;
  if (momentum !== undefined && momentum !== null && (typeof momentum !== "number" || !(momentum >= 0 && momentum <= 1))) {
    problems.push(`batch_norm_momentum must be a number from 0 to 1 (got ${describe(momentum)})`);
  }
  const sample = r.sample_size;
  if (
    sample !== undefined && sample !== null &&
    (typeof sample !== "number" || !Number.isInteger(sample) || sample <= 0 || sample > L.sampleSize)
  ) {
    problems.push(`sample_size must be an integer from 1 to ${L.sampleSize} (got ${describe(sample)})`);
  }
  for (const key of ["force_upcast"]) {
    if (r[key] !== undefined && r[key] !== null && typeof r[key] !== "boolean") {
      problems.push(`${key} must be true or false (got ${describe(r[key])})`);
    }
  }
  const cfg: VaeConfig = {
    inChannels: positiveInt(r, "in_channels", 3, L.imageChannels, problems),
    outChannels: positiveInt(r, "out_channels", 3, L.imageChannels, problems),
    blockOutChannels,
    decoderBlockOutChannels,
    layersPerBlock: positiveInt(r, "layers_per_block", 2, L.layersPerBlock, problems),
    latentChannels: positiveInt(r, "latent_channels", 32, L.latentChannels, problems),
    normGroups,
    normEps: VAE_NORM_EPS,
    batchNormEps: batchNormEps as number,
    useQuantConv: flag(r, "use_quant_conv", true, problems),
    usePostQuantConv: flag(r, "use_post_quant_conv", true, problems),
    midBlockAttention: flag(r, "mid_block_add_attention", true, problems),
    scaleFactor: 2 ** (levels - 1),
    sizeMultiple: 2 ** levels,
  };
  if (cfg.midBlockAttention) {
    for (const c of [blockOutChannels[levels - 1], decoderBlockOutChannels[levels - 1]]) {
      if (c % 4) problems.push(`the mid-block attention needs a channel count divisible by 4, got ${c}`);
    }
  }
  if (problems.length) throw new Error(`${printable(where)}: invalid AutoencoderKLFlux2 config: ${problems.join("; ")}`);
  return cfg;
}

/** Throws unless an image of width × height can go through this VAE (both sides multiples of sizeMultiple). */
export function checkImageSize(cfg: VaeConfig, width: number, height: number, what: string): void {
  const m = cfg.sizeMultiple;
  if (!Number.isInteger(width) || !Number.isInteger(height) || width <= 0 || height <= 0 || width % m || height % m) {
    throw new Error(`${what}: image size ${width}×${height} must be positive multiples of ${m} on both sides`);
  }
}
