// FLUX.2 transformer configuration (diffusers' transformer/config.json), validated before anything is built:
// every field's type and range (FLUX2_LIMITS), and the consistency between them (axes_dims_rope sums to the head
// dim); checkFlux2BlockCounts then compares the block counts with the checkpoint.

import { printable } from "../../runtime/printable.ts";

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

/** Bounds on every size: far above any FLUX.2 model (klein 4B: 5 double + 20 single blocks of 24 × 128; 9B: 8 + 24 of
 * 32 × 128; dev: 8 + 48 of 48 × 128), low enough that a mistyped or hostile config is refused before anything is
 * allocated for it. */
export const FLUX2_LIMITS = {
  channels: 4096,
  blocks: 256,
  heads: 256,
  headDim: 1024,
  hidden: 65536,
  jointAttentionDim: 65536,
  timestepChannels: 65536,
  mlpRatio: 16,
  ropeTheta: 1e9,
} as const;

/** An integer in [min, max] (null or absent: `fallback`); a problem naming the field otherwise. */
function intField(r: Record<string, unknown>, key: string, fallback: number, min: number, max: number, problems: string[]): number {
  const v = r[key] ?? fallback;
  if (typeof v !== "number" || !Number.isInteger(v) || v < min || v > max) {
    problems.push(`${key} must be an integer from ${min} to ${max} (got ${describe(r[key])})`);
    return fallback;
  }
  return v;
}

/** A finite number in (0, max] (null or absent: `fallback`). */
function positiveNumber(r: Record<string, unknown>, key: string, fallback: number, max: number, problems: string[]): number {
  const v = r[key] ?? fallback;
  if (typeof v !== "number" || !Number.isFinite(v) || v <= 0 || v > max) {
    problems.push(`${key} must be a number greater than 0 and at most ${max} (got ${describe(r[key])})`);
    return fallback;
  }
  return v;
}

function describe(v: unknown): string {
  if (v === undefined) return "nothing";
  const s = JSON.stringify(v) ?? String(v);
  return printable(s.length > 60 ? `${s.slice(0, 57)}...` : s);
}

/** Parse and check a config object; `where` names the file for messages. Every problem is listed, in one line. */
export function parseFlux2Config(raw: unknown, where: string): Flux2Config {
  if (!raw || typeof raw !== "object" || Array.isArray(raw)) {
    throw new Error(`${printable(where)}: expected a JSON object of FLUX.2 transformer settings, got ${describe(raw)}`);
  }
  const r = raw as Record<string, unknown>;
  const L = FLUX2_LIMITS;
  const problems: string[] = [];
  const unknown = Object.keys(r).filter((k) => !KNOWN_KEYS.has(k));
  if (unknown.length) problems.push(`unknown keys ${printable(unknown.join(", "))}`);
  if (r._class_name !== undefined && r._class_name !== "Flux2Transformer2DModel") {
    problems.push(`_class_name is ${describe(r._class_name)}, expected "Flux2Transformer2DModel"`);
  }
  for (const key of ["_diffusers_version", "_name_or_path"]) {
    if (r[key] !== undefined && r[key] !== null && typeof r[key] !== "string") {
      problems.push(`${key} must be a string (got ${describe(r[key])})`);
    }
  }
  const patch = r.patch_size ?? 1;
  if (patch !== 1) problems.push(`patch_size ${describe(patch)} is not supported (FLUX.2 klein uses 1)`);
  const guidance = r.guidance_embeds ?? false;
  if (guidance === true) problems.push("guidance_embeds=true (a guidance-distilled model) is not supported; klein has none");
  else if (guidance !== false) problems.push(`guidance_embeds must be true or false (got ${describe(guidance)})`);
  const inChannels = intField(r, "in_channels", 128, 1, L.channels, problems);
  const outChannels = intField(r, "out_channels", inChannels, 1, L.channels, problems);
  const heads = intField(r, "num_attention_heads", 48, 1, L.heads, problems);
  const headDim = intField(r, "attention_head_dim", 128, 4, L.headDim, problems);
  if (headDim % 4) problems.push(`attention_head_dim ${headDim} must be a multiple of 4 (the attention kernel reads vec4)`);
  const hidden = heads * headDim;
  if (hidden > L.hidden) {
    problems.push(`num_attention_heads × attention_head_dim = ${heads} × ${headDim} = ${hidden} is more than the ${L.hidden} supported`);
  }
  const axes = r.axes_dims_rope ?? [32, 32, 32, 32];
  let axesDimsRope = [32, 32, 32, 32];
  if (!Array.isArray(axes) || axes.length !== 4 || axes.some((a) => !Number.isInteger(a) || a <= 0 || a % 2 || a > L.headDim)) {
    problems.push(`axes_dims_rope must be four positive even integers (got ${describe(axes)})`);
  } else {
    axesDimsRope = axes as number[];
    const sum = axesDimsRope.reduce((a, b) => a + b, 0);
    if (sum !== headDim) problems.push(`axes_dims_rope sums to ${sum} but attention_head_dim is ${headDim}`);
  }
  const mlpRatio = positiveNumber(r, "mlp_ratio", 3.0, L.mlpRatio, problems);
  const mlpHidden = Math.floor(hidden * mlpRatio); // diffusers: int(dim * mlp_ratio)
  if (mlpHidden < 1) problems.push(`mlp_ratio ${mlpRatio} gives an MLP of ${mlpHidden} features for hidden size ${hidden}`);
  const eps = positiveNumber(r, "eps", 1e-6, 1, problems);
  const ropeTheta = positiveNumber(r, "rope_theta", 2000, L.ropeTheta, problems);
  const cfg: Flux2Config = {
    inChannels,
    outChannels,
    numDoubleBlocks: intField(r, "num_layers", 8, 1, L.blocks, problems),
    numSingleBlocks: intField(r, "num_single_layers", 48, 1, L.blocks, problems),
    heads,
    headDim,
    hidden,
    jointAttentionDim: intField(r, "joint_attention_dim", 15360, 1, L.jointAttentionDim, problems),
    timestepChannels: intField(r, "timestep_guidance_channels", 256, 2, L.timestepChannels, problems),
    mlpHidden,
    axesDimsRope,
    ropeTheta,
    eps,
  };
  if (cfg.timestepChannels % 2) problems.push(`timestep_guidance_channels ${cfg.timestepChannels} must be even`);
  if (problems.length) throw new Error(`${printable(where)}: invalid FLUX.2 transformer config: ${problems.join("; ")}`);
  return cfg;
}

/** Checkpoint name prefixes of the blocks, in the diffusers and Black Forest Labs layouts. */
const BLOCK_PREFIXES = {
  double: ["transformer_blocks.", "double_blocks."],
  single: ["single_transformer_blocks.", "single_blocks."],
} as const;

/** Throws a one-line error unless the checkpoint holds blocks 0 … N−1 of each kind, N as the config says: the counts
 * are compared before any per-block expectation is built, so a config that claims a thousand blocks is refused by
 * name instead of listing thousands of missing tensors. */
export function checkFlux2BlockCounts(cfg: Flux2Config, tensorNames: Iterable<string>, configWhere: string, checkpointWhere: string): void {
  const indices = { double: new Set<number>(), single: new Set<number>() };
  for (const name of tensorNames) {
    for (const kind of ["double", "single"] as const) {
      for (const prefix of BLOCK_PREFIXES[kind]) {
        if (!name.startsWith(prefix)) continue;
        const m = /^(\d+)\./.exec(name.slice(prefix.length));
        if (m) indices[kind].add(Number(m[1]));
      }
    }
  }
  const problems: string[] = [];
  for (
    const [kind, key, want] of [["double", "num_layers", cfg.numDoubleBlocks], [
      "single",
      "num_single_layers",
      cfg.numSingleBlocks,
    ]] as const
  ) {
    const have = indices[kind];
    let n = 0;
    while (have.has(n)) n++;
    if (n !== want || have.size !== n) {
      const held = have.size === 0 ? "none" : have.size === n ? `${n} (0…${n - 1})` : `${have.size}, not numbered 0…${have.size - 1}`;
      problems.push(`${key} is ${want}, but the checkpoint holds ${kind} blocks: ${held}`);
    }
  }
  if (problems.length) {
    throw new Error(`${printable(configWhere)} does not match ${printable(checkpointWhere)}: ${problems.join("; ")}`);
  }
}

/** Block names in absolute order: double.0 … double.N-1, single.0 … single.M-1. */
export function blockNames(cfg: Flux2Config): string[] {
  return [
    ...Array.from({ length: cfg.numDoubleBlocks }, (_, i) => `double.${i}`),
    ...Array.from({ length: cfg.numSingleBlocks }, (_, i) => `single.${i}`),
  ];
}
