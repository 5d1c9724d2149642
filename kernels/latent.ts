// Packing of VAE latents into transformer tokens and back, as FLUX.2's pipeline does it: 2×2 patchify
// (feature c·4 + dy·2 + dx), tokens in raster order of the patches, and the VAE's batch-norm statistics
// (running mean/var of its `bn` layer, eps from the config) applied per feature.
//   encode side: latent [C', h·w] (first C channels used) → tokens [(h/2)·(w/2), 4C], normalised
//   decode side: tokens [(h/2)·(w/2), 4C] → latent [C, h·w], denormalised

import type { Graph } from "../runtime/graph.ts";
import { ceilDiv, grid1d, type KernelSpec } from "../runtime/kernel.ts";
import { weightIsBf16 } from "./conv2d.ts";

export const latentKernel: KernelSpec = {
  name: "latent_pack",
  source: new URL("./latent.wgsl", import.meta.url),
  bindings: [
    { name: "x", type: "array<f32>", access: "read" },
    { name: "mean", type: "array<u32>", access: "read" },
    { name: "variance", type: "array<u32>", access: "read" },
    { name: "out", type: "array<f32>", access: "read_write" },
  ],
  params: [
    { name: "count", type: "u32" },
    { name: "channels", type: "u32" },
    { name: "h", type: "u32" },
    { name: "w", type: "u32" },
    { name: "eps", type: "f32" },
  ],
};

/** The VAE's batch-norm statistics over the 4·C packed features. */
export interface LatentStats {
  /** [4C] running mean and running variance, bf16 or f32. */
  mean: number;
  variance: number;
  eps: number;
}

export interface LatentLayout {
  /** Latent channels C (before patchify). */
  channels: number;
  /** Latent height and width (before patchify; both even). */
  height: number;
  width: number;
  /** Normalise (encode side) or denormalise (decode side) with these statistics; omitted: plain reshuffle. */
  stats?: LatentStats;
}

function checkLayout(g: Graph, name: string, l: LatentLayout): void {
  if (l.height % 2 || l.width % 2 || l.height <= 0 || l.width <= 0) {
    throw new Error(`${name}: latent size ${l.height}×${l.width} must be even on both sides for 2×2 patches`);
  }
  if (l.stats) {
    for (const [label, id] of [["mean", l.stats.mean], ["variance", l.stats.variance]] as const) {
      const s = g.shape(id);
      if (s.length !== 1 || s[0] !== 4 * l.channels) {
        throw new Error(`${name}: batch-norm ${label} must be [${4 * l.channels}], got [${s.join("×")}]`);
      }
    }
    if (weightIsBf16(g, name, l.stats.mean) !== weightIsBf16(g, name, l.stats.variance)) {
      throw new Error(`${name}: batch-norm mean and variance must have the same dtype`);
    }
  }
}

function checkShape(g: Graph, name: string, label: string, id: number, want: number[]): void {
  const s = g.shape(id);
  if (s.length !== want.length || s.some((d, i) => d !== want[i])) {
    throw new Error(`${name}: ${label} must be [${want.join("×")}], got [${s.join("×")}]`);
  }
}

function addNode(g: Graph, name: string, op: "patchify" | "unpatchify", x: number, out: number, l: LatentLayout): void {
  const count = g.elementCount(out);
  g.add({
    name,
    kernel: latentKernel,
    variant: { OP: op, BN: !!l.stats, STATS_BF16: l.stats ? weightIsBf16(g, name, l.stats.mean) : false },
    bindings: { x, mean: l.stats?.mean ?? x, variance: l.stats?.variance ?? x, out },
    params: { count, channels: l.channels, h: l.height, w: l.width, eps: l.stats?.eps ?? 0 },
    workgroups: grid1d(ceilDiv(count, 256)),
  });
}

/** Latent x [C' ≥ C, h·w] (its first C channels) → packed tokens [(h/2)·(w/2), 4C], normalised when `stats` is given.
 * Writes into `out` when given, else into a new activation. */
export function patchifyLatents(g: Graph, name: string, x: number, l: LatentLayout, out?: number): number {
  checkLayout(g, name, l);
  const xs = g.shape(x);
  if (xs.length !== 2 || xs[0] < l.channels || xs[1] !== l.height * l.width) {
    throw new Error(`${name}: latent must be [≥${l.channels}, ${l.height}·${l.width}], got [${xs.join("×")}]`);
  }
  const shape = [(l.height / 2) * (l.width / 2), 4 * l.channels];
  const target = out ?? g.activation(name, shape);
  checkShape(g, name, "output", target, shape);
  addNode(g, name, "patchify", x, target, l);
  return target;
}

/** Packed tokens [(h/2)·(w/2), 4C] → latent [C, h·w], denormalised when `stats` is given.
 * Writes into `out` when given, else into a new activation. */
export function unpatchifyTokens(g: Graph, name: string, tokens: number, l: LatentLayout, out?: number): number {
  checkLayout(g, name, l);
  const ts = g.shape(tokens);
  const want = [(l.height / 2) * (l.width / 2), 4 * l.channels];
  if (ts.length !== 2 || ts[0] !== want[0] || ts[1] !== want[1]) {
    throw new Error(
      `${name}: tokens must be [${want.join("×")}] for a ${l.channels}-channel ${l.height}×${l.width} latent, got [${ts.join("×")}]`,
    );
  }
  const shape = [l.channels, l.height * l.width];
  const target = out ?? g.activation(name, shape);
  checkShape(g, name, "output", target, shape);
  addNode(g, name, "unpatchify", tokens, target, l);
  return target;
}
