// FLUX.2 transformer configuration (diffusers' transformer/config.json), validated before anything is built.

export interface Flux2Config {
  inChannels: number;
  outChannels: number;
  numDoubleBlocks: number;
  numSingleBlocks: number;
  heads: number;
  headDim: number;
  /** heads · headDim */
  hidden: number;
  jointAttentionDim: number;
  timestepChannels: number;
  mlpHidden: number;
  axesDimsRope: number[];
  ropeTheta: number;
  eps: number;
}

const KNOWN_KEYS = new Set([
  "_class_name",
  "_diffusers_version",
  "_name_or_path",
  "attention_head_dim",
  "axes_dims_rope",
  "eps",
  "guidance_embeds",
  "in_channels",
  "joint_attention_dim",
  "mlp_ratio",
  "num_attention_heads",
  "num_layers",
  "num_single_layers",
  "out_channels",
  "patch_size",
  "rope_theta",
  "timestep_guidance_channels",
]);

function positiveInt(raw: Record<string, unknown>, key: string, fallback: number | undefined, problems: string[]): number {
  const v = raw[key] ?? fallback;
  if (typeof v !== "number" || !Number.isInteger(v) || v <= 0) {
    problems.push(`${key} must be a positive integer (got ${JSON.stringify(raw[key])})`);
    return 1;
  }
  return v;
}

/** Parse and check a config object; `where` names the file for messages. */
export function parseFlux2Config(raw: unknown, where: string): Flux2Config {
  if (!raw || typeof raw !== "object" || Array.isArray(raw)) throw new Error(`${where}: expected a JSON object`);
  const r = raw as Record<string, unknown>;
  const problems: string[] = [];
  const unknown = Object.keys(r).filter((k) => !KNOWN_KEYS.has(k));
  if (unknown.length) problems.push(`unknown keys ${unknown.join(", ")}`);
  if (r._class_name !== undefined && r._class_name !== "Flux2Transformer2DModel") {
    problems.push(`_class_name is ${JSON.stringify(r._class_name)}, expected "Flux2Transformer2DModel"`);
  }
  const patch = r.patch_size ?? 1;
  if (patch !== 1) problems.push(`patch_size ${patch} is not supported (FLUX.2 klein uses 1)`);
  if (r.guidance_embeds === true) problems.push("guidance_embeds=true (a guidance-distilled model) is not supported; klein has none");
  const inChannels = positiveInt(r, "in_channels", 128, problems);
  const outChannels = r.out_channels === null || r.out_channels === undefined
    ? inChannels
    : positiveInt(r, "out_channels", undefined, problems);
  const heads = positiveInt(r, "num_attention_heads", 48, problems);
  const headDim = positiveInt(r, "attention_head_dim", 128, problems);
  const axes = (r.axes_dims_rope ?? [32, 32, 32, 32]) as unknown;
  let axesDimsRope = [32, 32, 32, 32];
  if (!Array.isArray(axes) || axes.length !== 4 || axes.some((a) => !Number.isInteger(a) || a <= 0 || a % 2)) {
    problems.push(`axes_dims_rope must be four positive even integers (got ${JSON.stringify(axes)})`);
  } else {
    axesDimsRope = axes as number[];
    const sum = axesDimsRope.reduce((a, b) => a + b, 0);
    if (sum !== headDim) problems.push(`axes_dims_rope sums to ${sum} but attention_head_dim is ${headDim}`);
  }
  const mlpRatio = r.mlp_ratio ?? 3.0;
  if (typeof mlpRatio !== "number" || !(mlpRatio > 0)) problems.push(`mlp_ratio must be a positive number`);
  const hidden = heads * headDim;
  const mlpHidden = Math.floor(hidden * (mlpRatio as number));
  const eps = r.eps ?? 1e-6;
  if (typeof eps !== "number" || !(eps > 0)) problems.push("eps must be a positive number");
  const theta = r.rope_theta ?? 2000;
  if (typeof theta !== "number" || !(theta > 0)) problems.push("rope_theta must be a positive number");
  const cfg: Flux2Config = {
    inChannels,
    outChannels,
    numDoubleBlocks: positiveInt(r, "num_layers", 8, problems),
    numSingleBlocks: positiveInt(r, "num_single_layers", 48, problems),
    heads,
    headDim,
    hidden,
    jointAttentionDim: positiveInt(r, "joint_attention_dim", 15360, problems),
    timestepChannels: positiveInt(r, "timestep_guidance_channels", 256, problems),
    mlpHidden,
    axesDimsRope,
    ropeTheta: theta as number,
    eps: eps as number,
  };
  if (cfg.timestepChannels % 2) problems.push("timestep_guidance_channels must be even");
  if (problems.length) throw new Error(`${where}: invalid FLUX.2 transformer config:\n  - ${problems.join("\n  - ")}`);
  return cfg;
}

/** Block names in absolute order: double.0 … double.N-1, single.0 … single.M-1. */
export function blockNames(cfg: Flux2Config): string[] {
  return [
    ...Array.from({ length: cfg.numDoubleBlocks }, (_, i) => `double.${i}`),
    ...Array.from({ length: cfg.numSingleBlocks }, (_, i) => `single.${i}`),
  ];
}
