// Tensor descriptors of the graph IR. Storage is always a sequence of 32-bit words on the GPU:
// bf16 and f16 tensors hold two elements per u32 (little-endian: element 2i in the low half).

export type DType = "f32" | "bf16" | "f16" | "u32" | "i32";

/** weight: bound to a buffer of the weight store; input: written by the host before a run;
 * activation: pooled, may share memory with tensors whose lifetimes do not overlap;
 * state: owned by the plan for its whole life (outputs, captures, buffers read back). */
export type TensorRole = "weight" | "input" | "activation" | "state";

export interface TensorSpec {
  id: number;
  name: string;
  shape: number[];
  dtype: DType;
  role: TensorRole;
  /** A view: this tensor is a byte range of another tensor (offset must be 256-byte aligned). */
  viewOf?: { base: number; byteOffset: number };
}

export function elementCount(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

export function byteSize(dtype: DType, count: number): number {
  if (dtype === "bf16" || dtype === "f16") return Math.ceil(count / 2) * 4;
  return count * 4;
}

export function tensorBytes(t: Pick<TensorSpec, "shape" | "dtype">): number {
  return byteSize(t.dtype, elementCount(t.shape));
}

export function shapeString(shape: readonly number[]): string {
  return `[${shape.join("×")}]`;
}
