// Row patching (activation patching and additive steering), switchable per run through a control tensor.

import type { Graph } from "../runtime/graph.ts";
import { ceilDiv, grid1d, type KernelSpec } from "../runtime/kernel.ts";

export const patchKernel: KernelSpec = {
  name: "patch",
  source: new URL("./patch.wgsl", import.meta.url),
  bindings: [
    { name: "src", type: "array<f32>", access: "read" },
    { name: "index", type: "array<u32>", access: "read" },
    { name: "control", type: "array<f32>", access: "read" },
    { name: "dst", type: "array<f32>", access: "read_write" },
  ],
  params: [
    { name: "count", type: "u32" },
    { name: "cols", type: "u32" },
    { name: "dst_rows", type: "u32" },
  ],
};

export type PatchMode = "replace" | "add";

/** dst[index[i]] ← src[i] (or += alpha·src[i]), in place; `control` is an f32 [2] tensor (enabled, alpha). */
export function patchRows(
  g: Graph,
  name: string,
  args: { src: number; dst: number; index: number; control: number; mode: PatchMode },
): void {
  const [count, cols] = g.shape(args.src);
  const [dstRows, dstCols] = g.shape(args.dst);
  if (cols !== dstCols) throw new Error(`${name}: patch rows have ${cols} columns, the patched tensor has ${dstCols}`);
  if (g.elementCount(args.index) !== count) throw new Error(`${name}: ${g.elementCount(args.index)} indices for ${count} rows`);
  const body = args.mode === "replace" ? "dst[d] = src[r * params.cols + c];" : "dst[d] = dst[d] + control[1] * src[r * params.cols + c];";
  g.add({
    name,
    kernel: patchKernel,
    variant: { BODY: body },
    bindings: { src: args.src, index: args.index, control: args.control, dst: args.dst },
    params: { count, cols, dst_rows: dstRows },
    workgroups: grid1d(ceilDiv(count * cols, 256)),
  });
}
