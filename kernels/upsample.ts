// Nearest-neighbour ×2 upsampling of channel-major images (f32 [C, H·W] → [C, 2H·2W]).
// The VAE decoder fuses this into the convolution that follows (conv2d's `upsample` option); this standalone
// kernel serves graphs that need the upsampled image itself.

import type { Graph } from "../runtime/graph.ts";
import { ceilDiv, grid1d, type KernelSpec } from "../runtime/kernel.ts";

export const upsampleKernel: KernelSpec = {
  name: "upsample_nearest2x",
  source: new URL("./upsample.wgsl", import.meta.url),
  bindings: [
    { name: "x", type: "array<f32>", access: "read" },
    { name: "out", type: "array<f32>", access: "read_write" },
  ],
  params: [
    { name: "count", type: "u32" },
    { name: "h", type: "u32" },
    { name: "w", type: "u32" },
  ],
};

/** x [C, height·width] → [C, 2·height · 2·width]. */
export function upsampleNearest2x(g: Graph, name: string, x: number, height: number, width: number): number {
  const xs = g.shape(x);
  if (xs.length !== 2 || xs[1] !== height * width) {
    throw new Error(`${name}: upsample input must be [C, ${height}·${width}], got [${xs.join("×")}]`);
  }
  const out = g.activation(name, [xs[0], 4 * height * width]);
  const count = xs[0] * 4 * height * width;
  g.add({
    name,
    kernel: upsampleKernel,
    variant: {},
    bindings: { x, out },
    params: { count, h: height, w: width },
    workgroups: grid1d(ceilDiv(count, 256)),
  });
  return out;
}
