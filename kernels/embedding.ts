// Token embedding lookup from a bf16 (or f32) table into f32 activations.

import type { Graph } from "../runtime/graph.ts";
import { ceilDiv, grid1d, type KernelSpec } from "../runtime/kernel.ts";
import { shapeString } from "../runtime/tensor.ts";

export const embeddingKernel: KernelSpec = {
  name: "embedding",
  source: new URL("./embedding.wgsl", import.meta.url),
  bindings: [
    // The table as 32-bit words: packed bf16 pairs or f32 values.
    { name: "table", type: "array<u32>", access: "read" },
    { name: "ids", type: "array<u32>", access: "read" },
    { name: "out", type: "array<f32>", access: "read_write" },
  ],
  params: [
    { name: "count", type: "u32" },
    { name: "dim", type: "u32" },
    { name: "vocab", type: "u32" },
  ],
};

const READERS: Record<string, string> = { bf16: "bf16At", f32: "f32At" };

/** out[s, :] = table[ids[s], :] for a table [V, D] (bf16 or f32) and u32 ids [S]; out is [S, D] f32.
 * Ids are data, read on the GPU: an id ≥ V reads row V − 1 rather than memory past the table, so callers must
 * validate ids against the vocabulary before writing them. */
export function embedding(g: Graph, name: string, table: number, ids: number): number {
  const t = g.get(table);
  if (t.shape.length !== 2) throw new Error(`${name}: table ${t.name} must be [vocab, dim], got ${shapeString(t.shape)}`);
  const reader = READERS[t.dtype];
  if (!reader) throw new Error(`${name}: table ${t.name} must be bf16 or f32, got ${t.dtype}`);
  const idTensor = g.get(ids);
  if (idTensor.dtype !== "u32" || idTensor.shape.length !== 1) {
    throw new Error(`${name}: ids ${idTensor.name} must be a u32 vector [S], got ${idTensor.dtype} ${shapeString(idTensor.shape)}`);
  }
  const [vocab, dim] = t.shape;
  const seq = idTensor.shape[0];
  if (vocab * dim >= 2 ** 32) {
    throw new Error(`${name}: table ${t.name} ${shapeString(t.shape)} has more elements than 32-bit indexing reaches`);
  }
  const out = g.activation(name, [seq, dim]);
  const count = seq * dim;
  g.add({
    name,
    kernel: embeddingKernel,
    variant: { READ: reader },
    bindings: { table, ids, out },
    params: { count, dim, vocab },
    workgroups: grid1d(ceilDiv(count, 256)),
  });
  return out;
}
