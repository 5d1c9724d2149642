// Normalisation over f32 activations: LayerNorm without affine, LayerNorm fused with FLUX.2's shift/scale
// modulation, and RMSNorm with a weight over whole rows or over each head (q/k norm).

import type { DeviceCapabilities } from "../runtime/device.ts";
import type { Graph } from "../runtime/graph.ts";
import { grid1d, type KernelSpec } from "../runtime/kernel.ts";
import { elementCount, shapeString } from "../runtime/tensor.ts";

export const normKernel: KernelSpec = {
  name: "norm",
  source: new URL("./norm.wgsl", import.meta.url),
  bindings: [
    { name: "x", type: "array<f32>", access: "read" },
    // Per-column parameters as 32-bit words: a bf16 weight (packed pairs), an f32 weight or an f32 modulation vector.
    { name: "p", type: "array<u32>", access: "read" },
    { name: "out", type: "array<f32>", access: "read_write" },
  ],
  params: [
    { name: "groups", type: "u32" },
    { name: "groupSize", type: "u32" },
    { name: "eps", type: "f32" },
    { name: "scaleOffset", type: "u32" },
    { name: "shiftOffset", type: "u32" },
  ],
};

/** What follows the normalisation, per column k of the group. */
export type NormAffine =
  | { kind: "none" }
  | { kind: "modulate"; mod: number; scaleOffset: number; shiftOffset: number }
  | { kind: "weight"; weight: number };

export interface NormArgs {
  /** "layer": subtract the mean, divide by the standard deviation; "rms": divide by the root mean square. */
  stats: "layer" | "rms";
  x: number;
  out: number;
  /** Each contiguous run of groupSize values is normalised on its own; must divide the row width. */
  groupSize: number;
  eps: number;
  affine: NormAffine;
  /** Threads per group (a power of two, 1–256); default: chosen for the device the plan is compiled on. */
  threads?: number;
}

/** Threads per workgroup: enough to cover small groups in one sweep, at most 256. A software adapter runs a
 * workgroup's threads as batches of SIMD lanes and pays for every barrier of the reduction once per batch, so there
 * 8 threads (one AVX2 batch) loop over the group: on llvmpipe (2 cores, the fixture transformer) the norms of a
 * forward take 24 ms instead of 80–180 ms with 256 threads. */
function workgroupSize(groupSize: number, device: DeviceCapabilities | null): number {
  if (device?.software) return SOFTWARE_WORKGROUP;
  let wg = 32;
  while (wg < groupSize && wg < 256) wg *= 2;
  return wg;
}

const SOFTWARE_WORKGROUP = 8;

function rowWidth(g: Graph, id: number): number {
  const s = g.shape(id);
  return s[s.length - 1];
}

function requireF32(g: Graph, where: string, what: string, id: number): void {
  const t = g.get(id);
  if (t.dtype !== "f32") throw new Error(`${where}: ${what} ${t.name} must be f32, got ${t.dtype}`);
}

/** Adds one normalisation dispatch writing into `out` (same shape as x). */
export function normNode(g: Graph, name: string, args: NormArgs): void {
  const { x, out, groupSize, eps, affine } = args;
  requireF32(g, name, "input", x);
  requireF32(g, name, "output", out);
  const total = g.elementCount(x);
  if (g.elementCount(out) !== total) {
    throw new Error(`${name}: output ${shapeString(g.shape(out))} does not match input ${shapeString(g.shape(x))}`);
  }
  const cols = rowWidth(g, x);
  if (!Number.isInteger(groupSize) || groupSize <= 0 || cols % groupSize !== 0) {
    throw new Error(`${name}: group size ${groupSize} must be a positive divisor of the row width ${cols}`);
  }
  const t = args.threads;
  if (t !== undefined && !(Number.isInteger(t) && t >= 1 && t <= 256 && (t & (t - 1)) === 0)) {
    throw new Error(`${name}: threads must be a power of two from 1 to 256, got ${t}`);
  }
  if (!(eps >= 0) || !Number.isFinite(eps)) throw new Error(`${name}: eps must be a finite number ≥ 0, got ${eps}`);
  let p = x;
  let expression = "v";
  let scaleOffset = 0, shiftOffset = 0;
  if (affine.kind === "modulate") {
    requireF32(g, name, "modulation vector", affine.mod);
    const modLength = g.elementCount(affine.mod);
    for (const [label, offset] of [["scale", affine.scaleOffset], ["shift", affine.shiftOffset]] as const) {
      if (!Number.isInteger(offset) || offset < 0 || offset + groupSize > modLength) {
        throw new Error(`${name}: ${label} offset ${offset} + width ${groupSize} exceeds the modulation vector of ${modLength} values`);
      }
    }
    p = affine.mod;
    scaleOffset = affine.scaleOffset;
    shiftOffset = affine.shiftOffset;
    expression = "(1.0 + f32At(params.scaleOffset + k)) * v + f32At(params.shiftOffset + k)";
  } else if (affine.kind === "weight") {
    const w = g.get(affine.weight);
    if (elementCount(w.shape) !== groupSize) {
      throw new Error(`${name}: weight ${w.name} ${shapeString(w.shape)} must have ${groupSize} values (one per normalised column)`);
    }
    if (w.dtype === "bf16") expression = "v * bf16At(k)";
    else if (w.dtype === "f32") expression = "v * f32At(k)";
    else throw new Error(`${name}: weight ${w.name} must be bf16 or f32, got ${w.dtype}`);
    p = affine.weight;
  }
  const groups = total / groupSize;
  g.add({
    name,
    kernel: normKernel,
    variant: { LAYER: args.stats === "layer", AFFINE: expression, WG: args.threads ?? workgroupSize(groupSize, null) },
    bindings: { x, p, out },
    params: { groups, groupSize, eps, scaleOffset, shiftOffset },
    workgroups: grid1d(groups),
    flops: (args.stats === "layer" ? 7 : 4) * total,
    chooseTiles: args.threads === undefined
      ? (device) => ({ variant: { WG: workgroupSize(groupSize, device) }, workgroups: grid1d(groups) })
      : undefined,
  });
}

/** LayerNorm over each row without affine parameters (biased variance), like
 * torch.nn.LayerNorm(elementwise_affine=False). */
export function layerNorm(g: Graph, name: string, x: number, options: { eps: number }): number {
  const out = g.activation(name, g.shape(x));
  normNode(g, name, { stats: "layer", x, out, groupSize: rowWidth(g, x), eps: options.eps, affine: { kind: "none" } });
  return out;
}

/** FLUX.2's norm + modulation, fused: (1 + mod[scaleOffset + c]) · LN(x)[r, c] + mod[shiftOffset + c], with the
 * 1-D f32 modulation vector broadcast over rows. */
export function layerNormModulate(
  g: Graph,
  name: string,
  x: number,
  mod: number,
  options: { eps: number; scaleOffset: number; shiftOffset: number },
): number {
  const out = g.activation(name, g.shape(x));
  normNode(g, name, {
    stats: "layer",
    x,
    out,
    groupSize: rowWidth(g, x),
    eps: options.eps,
    affine: { kind: "modulate", mod, scaleOffset: options.scaleOffset, shiftOffset: options.shiftOffset },
  });
  return out;
}

/** x / sqrt(mean(x²) + eps) · weight over each contiguous group of groupSize columns (default: the whole row;
 * groupSize = head_dim gives the per-head q/k norm over [S, H·D]). weight is [groupSize], bf16 or f32. */
export function rmsNorm(g: Graph, name: string, x: number, weight: number, options: { eps: number; groupSize?: number }): number {
  const out = g.activation(name, g.shape(x));
  const groupSize = options.groupSize ?? rowWidth(g, x);
  normNode(g, name, { stats: "rms", x, out, groupSize, eps: options.eps, affine: { kind: "weight", weight } });
  return out;
}
