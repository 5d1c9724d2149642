// Element types of checkpoint tensors and exact conversions between them on the CPU.

/** The element types a safetensors header may name (those of the reference reader, each a whole number of bytes). */
export type StoredDType =
  | "BF16"
  | "F16"
  | "F32"
  | "F64"
  | "F8_E4M3"
  | "F8_E5M2"
  | "I64"
  | "I32"
  | "I16"
  | "I8"
  | "U64"
  | "U32"
  | "U16"
  | "U8"
  | "BOOL";

export const DTYPE_BYTES: Record<StoredDType, number> = {
  BF16: 2,
  F16: 2,
  F32: 4,
  F64: 8,
  F8_E4M3: 1,
  F8_E5M2: 1,
  I64: 8,
  I32: 4,
  I16: 2,
  I8: 1,
  U64: 8,
  U32: 4,
  U16: 2,
  U8: 1,
  BOOL: 1,
};

export function isStoredDType(s: string): s is StoredDType {
  return Object.hasOwn(DTYPE_BYTES, s);
}

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** bf16 bits → f32 (exact). */
export function bf16ToF32(bits: number): number {
  u32[0] = (bits & 0xffff) << 16;
  return f32[0];
}

/** f32 → bf16 bits, round to nearest even (NaN stays NaN). */
export function f32ToBf16(x: number): number {
  f32[0] = x;
  const u = u32[0];
  if ((u & 0x7f800000) === 0x7f800000 && (u & 0x7fffff) !== 0) return ((u >>> 16) | 0x40) & 0xffff;
  const rounding = 0x7fff + ((u >>> 16) & 1);
  return ((u + rounding) >>> 16) & 0xffff;
}

/** f16 bits → f32 (exact). */
export function f16ToF32(bits: number): number {
  const s = bits & 0x8000 ? -1 : 1;
  const e = (bits >> 10) & 0x1f;
  const m = bits & 0x3ff;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}

/** float8 e4m3fn bits → f32 (exact): bias 7, no infinities, S.1111.111 is NaN. */
export function f8e4m3ToF32(bits: number): number {
  const s = bits & 0x80 ? -1 : 1;
  const e = (bits >> 3) & 0xf;
  const m = bits & 0x7;
  if (e === 0) return s * m * 2 ** -9;
  if (e === 15 && m === 7) return NaN;
  return s * (1 + m / 8) * 2 ** (e - 7);
}

/** float8 e5m2 bits → f32 (exact): the top byte of an f16. */
export function f8e5m2ToF32(bits: number): number {
  return f16ToF32((bits & 0xff) << 8);
}

/** Round an f32 array to bf16 values (kept as f32). */
export function roundToBf16(values: Float32Array): Float32Array {
  const out = new Float32Array(values.length);
  for (let i = 0; i < values.length; i++) out[i] = bf16ToF32(f32ToBf16(values[i]));
  return out;
}

/** Pack f32 values (rounded to bf16) two per u32, element 2i in the low half. */
export function packBf16(values: ArrayLike<number>): Uint32Array {
  const out = new Uint32Array(Math.ceil(values.length / 2));
  for (let i = 0; i < values.length; i++) {
    const bits = f32ToBf16(values[i]);
    out[i >> 1] |= i & 1 ? bits << 16 : bits;
  }
  return out;
}

/** Decode raw little-endian bytes of a stored tensor to f32 (64-bit integers are rounded like any other large value). */
export function decodeToF32(bytes: Uint8Array, dtype: StoredDType): Float32Array {
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const n = bytes.byteLength / DTYPE_BYTES[dtype];
  const out = new Float32Array(n);
  switch (dtype) {
    case "BF16":
      for (let i = 0; i < n; i++) out[i] = bf16ToF32(dv.getUint16(2 * i, true));
      break;
    case "F16":
      for (let i = 0; i < n; i++) out[i] = f16ToF32(dv.getUint16(2 * i, true));
      break;
    case "F32":
      for (let i = 0; i < n; i++) out[i] = dv.getFloat32(4 * i, true);
      break;
    case "F64":
      for (let i = 0; i < n; i++) out[i] = dv.getFloat64(8 * i, true);
      break;
    case "F8_E4M3":
      for (let i = 0; i < n; i++) out[i] = f8e4m3ToF32(dv.getUint8(i));
      break;
    case "F8_E5M2":
      for (let i = 0; i < n; i++) out[i] = f8e5m2ToF32(dv.getUint8(i));
      break;
    case "I64":
      for (let i = 0; i < n; i++) out[i] = Number(dv.getBigInt64(8 * i, true));
      break;
    case "U64":
      for (let i = 0; i < n; i++) out[i] = Number(dv.getBigUint64(8 * i, true));
      break;
    case "U32":
      for (let i = 0; i < n; i++) out[i] = dv.getUint32(4 * i, true);
      break;
    case "U16":
      for (let i = 0; i < n; i++) out[i] = dv.getUint16(2 * i, true);
      break;
    case "I32":
      for (let i = 0; i < n; i++) out[i] = dv.getInt32(4 * i, true);
      break;
    case "I16":
      for (let i = 0; i < n; i++) out[i] = dv.getInt16(2 * i, true);
      break;
    case "I8":
      for (let i = 0; i < n; i++) out[i] = dv.getInt8(i);
      break;
    case "U8":
    case "BOOL":
      for (let i = 0; i < n; i++) out[i] = dv.getUint8(i);
      break;
  }
  return out;
}

/** GPU element types a stored tensor can be uploaded as (bf16: packed pairs, element 2i in the low half). */
export type UploadDType = "bf16" | "f32";

/** Stored types that convert to an upload type (exactly, or bf16 by round-to-nearest-even). */
export function canUpload(from: StoredDType): boolean {
  return from === "BF16" || from === "F16" || from === "F32";
}

/** Little-endian bytes of `src` (elements of `from`) as little-endian bytes of `to`. Same type: `src` itself. */
export function convertForUpload(src: Uint8Array, from: StoredDType, to: UploadDType): Uint8Array {
  if ((from === "BF16" && to === "bf16") || (from === "F32" && to === "f32")) return src;
  if (!canUpload(from)) throw new Error(`cannot convert ${from} to ${to}`);
  const dv = new DataView(src.buffer, src.byteOffset, src.byteLength);
  const n = src.byteLength / DTYPE_BYTES[from];
  if (to === "f32") {
    const out = new Float32Array(n);
    const out32 = new Uint32Array(out.buffer);
    if (from === "BF16") { for (let i = 0; i < n; i++) out32[i] = dv.getUint16(2 * i, true) << 16; }
    else for (let i = 0; i < n; i++) out[i] = f16ToF32(dv.getUint16(2 * i, true));
    return new Uint8Array(out.buffer);
  }
  const out = new Uint16Array(n);
  if (from === "F32") { for (let i = 0; i < n; i++) out[i] = f32ToBf16(dv.getFloat32(4 * i, true)); }
  else for (let i = 0; i < n; i++) out[i] = f32ToBf16(f16ToF32(dv.getUint16(2 * i, true)));
  return new Uint8Array(out.buffer);
}
