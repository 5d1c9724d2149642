// FLUX.2 VAE configuration (diffusers' AutoencoderKLFlux2 vae/config.json), validated before anything is built.
// Every problem found is reported at once, naming the file.

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

function positiveInt(r: Record<string, unknown>, key: string, fallback: number, problems: string[]): number {
  const v = r[key] ?? fallback;
  if (typeof v !== "number" || !Number.isInteger(v) || v <= 0) {
    problems.push(`${key} must be a positive integer (got ${JSON.stringify(r[key])})`);
    return 1;
  }
  return v;
}

function channelList(r: Record<string, unknown>, key: string, fallback: number[], problems: string[]): number[] {
  const v = r[key] ?? fallback;
  if (!Array.isArray(v) || v.length === 0 || v.some((c) => !Number.isInteger(c) || c <= 0)) {
    problems.push(`${key} must be a non-empty list of positive integers (got ${JSON.stringify(r[key])})`);
    return fallback;
  }
  return v as number[];
}

function flag(r: Record<string, unknown>, key: string, fallback: boolean, problems: string[]): boolean {
  const v = r[key] ?? fallback;
  if (typeof v !== "boolean") {
    problems.push(`${key} must be true or false (got ${JSON.stringify(r[key])})`);
    return fallback;
  }
  return v;
}

/** Parse and check a config object; `where` names the file for messages. */
export function parseVaeConfig(raw: unknown, where: string): VaeConfig {
  if (!raw || typeof raw !== "object" || Array.isArray(raw)) {
    throw new Error(`${where}: expected a JSON object, got ${JSON.stringify(raw)}`);
  }
  const r = raw as Record<string, unknown>;
  const problems: string[] = [];
  const unknown = Object.keys(r).filter((k) => !k.startsWith("_") && !KNOWN_KEYS.has(k));
  if (unknown.length) problems.push(`unknown keys ${unknown.join(", ")} (this is not an AutoencoderKLFlux2 config this code knows)`);
  if (r._class_name !== undefined && r._class_name !== "AutoencoderKLFlux2") {
    problems.push(`_class_name is ${JSON.stringify(r._class_name)}, expected "AutoencoderKLFlux2"`);
  }
  const act = r.act_fn ?? "silu";
  if (act !== "silu") problems.push(`act_fn ${JSON.stringify(act)} is not supported (only "silu")`);
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
      problems.push(`${key} must list ${levels} × "${want}" (one per block_out_channels entry), got ${JSON.stringify(v)}`);
    }
  }
  const patch = r.patch_size ?? [2, 2];
  if (!Array.isArray(patch) || patch.length !== 2 || patch[0] !== 2 || patch[1] !== 2) {
    problems.push(`patch_size ${JSON.stringify(patch)} is not supported (FLUX.2 packs latents in 2×2 patches)`);
  }
  const normGroups = positiveInt(r, "norm_num_groups", 32, problems);
  for (const c of new Set([...blockOutChannels, ...decoderBlockOutChannels])) {
    if (c % normGroups !== 0) problems.push(`${c} channels cannot be split into norm_num_groups = ${normGroups} groups`);
  }
  const batchNormEps = r.batch_norm_eps ?? 1e-4;
  if (typeof batchNormEps !== "number" || !(batchNormEps >= 0)) problems.push(`batch_norm_eps must be a non-negative number`);
  const cfg: VaeConfig = {
    inChannels: positiveInt(r, "in_channels", 3, problems),
    outChannels: positiveInt(r, "out_channels", 3, problems),
    blockOutChannels,
    decoderBlockOutChannels,
    layersPerBlock: positiveInt(r, "layers_per_block", 2, problems),
    latentChannels: positiveInt(r, "latent_channels", 32, problems),
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
  if (problems.length) throw new Error(`${where}: invalid AutoencoderKLFlux2 config:\n  - ${problems.join("\n  - ")}`);
  return cfg;
}

/** Throws unless an image of width × height can go through this VAE (both sides multiples of sizeMultiple). */
export function checkImageSize(cfg: VaeConfig, width: number, height: number, what: string): void {
  const m = cfg.sizeMultiple;
  if (!Number.isInteger(width) || !Number.isInteger(height) || width <= 0 || height <= 0 || width % m || height % m) {
    throw new Error(`${what}: image size ${width}×${height} must be positive multiples of ${m} on both sides`);
  }
}
