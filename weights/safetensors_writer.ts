// Writes small safetensors files (test fixtures, captured activations). The file appears complete or not at all:
// it is written to a temporary file beside the target and renamed into place.

import { DTYPE_BYTES, isStoredDType, type StoredDType } from "./dtypes.ts";

export interface TensorToWrite {
  dtype: StoredDType;
  shape: number[];
  /** Little-endian element bytes; any typed array is taken as its bytes. */
  data: Uint8Array | ArrayBufferView;
}

/** Serialise tensors (in the order given) to safetensors bytes; the header is padded with spaces to 8 bytes. */
export function encodeSafetensors(tensors: Record<string, TensorToWrite>, metadata?: Record<string, string>): Uint8Array {
  const header: Record<string, unknown> = {};
  if (metadata && Object.keys(metadata).length) header.__metadata__ = metadata;
  const datas: Uint8Array[] = [];
  let offset = 0;
  for (const [name, t] of Object.entries(tensors)) {
    if (name === "__metadata__") throw new Error(`writeSafetensors: "__metadata__" cannot be a tensor name`);
    if (!isStoredDType(t.dtype)) throw new Error(`writeSafetensors: tensor "${name}" has unknown dtype ${t.dtype}`);
    if (!t.shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
      throw new Error(`writeSafetensors: tensor "${name}" has invalid shape [${t.shape.join(", ")}]`);
    }
    const bytes = new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength);
    const want = t.shape.reduce((p, d) => p * d, DTYPE_BYTES[t.dtype]);
    if (bytes.byteLength !== want) {
      throw new Error(
        `writeSafetensors: tensor "${name}" [${t.shape.join(", ")}] ${t.dtype} needs ${want} bytes, got ${bytes.byteLength}`,
      );
    }
    header[name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + bytes.byteLength] };
    datas.push(bytes);
    offset += bytes.byteLength;
  }
  let json = new TextEncoder().encode(JSON.stringify(header));
  const padded = Math.ceil(json.byteLength / 8) * 8;
  if (padded !== json.byteLength) {
    const p = new Uint8Array(padded).fill(0x20);
    p.set(json);
    json = p;
  }
  const out = new Uint8Array(8 + json.byteLength + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(json.byteLength), true);
  out.set(json, 8);
  let at = 8 + json.byteLength;
  for (const d of datas) {
    out.set(d, at);
    at += d.byteLength;
  }
  return out;
}

/** Write a safetensors file atomically (temporary file, then rename). */
export async function writeSafetensors(
  path: string,
  tensors: Record<string, TensorToWrite>,
  metadata?: Record<string, string>,
): Promise<void> {
  const bytes = encodeSafetensors(tensors, metadata);
  const tmp = `${path}.tmp-${Deno.pid}-${crypto.randomUUID().slice(0, 8)}`;
  try {
    await Deno.writeFile(tmp, bytes);
    await Deno.rename(tmp, path);
  } catch (e) {
    await Deno.remove(tmp).catch(() => {});
    throw new Error(`writeSafetensors: cannot write ${path}: ${(e as Error).message}`);
  }
}
