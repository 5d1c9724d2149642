// Safetensors files read without loading them: open() reads and validates the 8-byte header length and the JSON
// header only; tensor data is read on demand, as a byte range or as a stream of bounded chunks.
//
// Layout: u64 little-endian N, then N bytes of UTF-8 JSON {name: {dtype, shape, data_offsets: [begin, end]},
// "__metadata__"?: {string: string}}, then the data section; offsets are relative to the data section.

import { decodeToF32, DTYPE_BYTES, isStoredDType, type StoredDType } from "./dtypes.ts";

/** Largest JSON header accepted (the format's own readers use the same bound). */
export const MAX_HEADER_BYTES = 100 * 1024 * 1024;

export interface TensorInfo {
  name: string;
  dtype: StoredDType;
  shape: number[];
  byteLength: number;
  /** Absolute byte offset of the tensor's first byte in `file`. */
  fileOffset: number;
  /** Path of the safetensors file that holds the tensor. */
  file: string;
}

/** Anything tensors can be read from by name: a safetensors file or a checkpoint of several. */
export interface TensorSource {
  readonly path: string;
  info(name: string): TensorInfo;
  readBytes(name: string, start?: number, length?: number): Promise<Uint8Array>;
  readChunks(name: string, chunkBytes: number, start?: number, length?: number): AsyncIterable<Uint8Array>;
  readF32(name: string): Promise<Float32Array>;
}

export class SafetensorsFile implements TensorSource {
  /** Serialises seek+read pairs on the one handle, so concurrent reads never interleave. */
  private lock: Promise<unknown> = Promise.resolve();

  private constructor(
    readonly path: string,
    private handle: Deno.FsFile | null,
    /** File size when opened. */
    readonly fileSize: number,
    readonly headerLength: number,
    readonly tensors: Map<string, TensorInfo>,
    readonly metadata: Record<string, string>,
  ) {}

  /** Absolute offset of the data section. */
  get dataOffset(): number {
    return 8 + this.headerLength;
  }

  static async open(path: string): Promise<SafetensorsFile> {
    let handle: Deno.FsFile;
    try {
      handle = await Deno.open(path, { read: true });
    } catch (e) {
      throw new Error(`safetensors file ${path}: cannot open: ${describeFsError(e)}`);
    }
    try {
      const stat = await handle.stat();
      if (!stat.isFile) throw new Error(`safetensors file ${path}: not a regular file`);
      const size = stat.size;
      const fail = (what: string): never => {
        throw new Error(`safetensors file ${path}: ${what}`);
      };
      if (size < 8) fail(`file is ${size} bytes, shorter than the 8-byte header length`);
      const lenBytes = new Uint8Array(8);
      await readFully(handle, lenBytes, 0, () => `safetensors file ${path}: header length`);
      const headerLen64 = new DataView(lenBytes.buffer).getBigUint64(0, true);
      if (headerLen64 === 0n) fail("header length is 0 (expected a JSON header of at least 2 bytes)");
      if (headerLen64 > BigInt(MAX_HEADER_BYTES)) {
        fail(`header length ${headerLen64} is larger than the ${MAX_HEADER_BYTES}-byte limit (is this a safetensors file?)`);
      }
      const headerLength = Number(headerLen64);
      if (headerLength > size - 8) {
        fail(`header length ${headerLength} is larger than the ${size - 8} bytes that follow it (truncated file?)`);
      }
      const headerBytes = new Uint8Array(headerLength);
      await readFully(handle, headerBytes, 8, () => `safetensors file ${path}: header`);
      const { tensors, metadata } = parseHeader(path, headerBytes, size - 8 - headerLength, 8 + headerLength);
      return new SafetensorsFile(path, handle, size, headerLength, tensors, metadata);
    } catch (e) {
      handle.close();
      throw e;
    }
  }

  names(): string[] {
    return [...this.tensors.keys()];
  }

  has(name: string): boolean {
    return this.tensors.has(name);
  }

  info(name: string): TensorInfo {
    const t = this.tensors.get(name);
    if (!t) throw new Error(`safetensors file ${this.path} has no tensor "${name}"`);
    return t;
  }

  /** Sum of the byte lengths of all tensors. */
  totalBytes(): number {
    let n = 0;
    for (const t of this.tensors.values()) n += t.byteLength;
    return n;
  }

  /** `length` bytes starting `start` bytes into tensor `name` (default: the whole tensor). */
  async readBytes(name: string, start = 0, length?: number): Promise<Uint8Array> {
    const t = this.info(name);
    const len = checkRange(this.path, t, start, length);
    const out = new Uint8Array(len);
    await this.readAt(t, t.fileOffset + start, out);
    return out;
  }

  /** Stream a byte range of tensor `name` in chunks of `chunkBytes` (the last may be shorter). Each chunk is a fresh array. */
  async *readChunks(name: string, chunkBytes: number, start = 0, length?: number): AsyncIterable<Uint8Array> {
    const t = this.info(name);
    if (!Number.isSafeInteger(chunkBytes) || chunkBytes <= 0) {
      throw new Error(`safetensors file ${this.path}, tensor "${name}": chunk size ${chunkBytes} must be a positive integer`);
    }
    const len = checkRange(this.path, t, start, length);
    for (let done = 0; done < len;) {
      const chunk = new Uint8Array(Math.min(chunkBytes, len - done));
      await this.readAt(t, t.fileOffset + start + done, chunk);
      done += chunk.byteLength;
      yield chunk;
    }
  }

  /** The whole tensor decoded to f32. */
  async readF32(name: string): Promise<Float32Array> {
    const t = this.info(name);
    return decodeToF32(await this.readBytes(name), t.dtype);
  }

  close(): void {
    this.handle?.close();
    this.handle = null;
  }

  private readAt(t: TensorInfo, offset: number, into: Uint8Array): Promise<void> {
    const run = this.lock.then(async () => {
      const handle = this.handle;
      if (!handle) throw new Error(`safetensors file ${this.path} is closed (reading tensor "${t.name}")`);
      await readFully(handle, into, offset, () => `safetensors file ${this.path}, tensor "${t.name}"`);
    });
    this.lock = run.catch(() => {});
    return run;
  }
}

/** Validate a header and build the tensor table. `dataBytes`: size of the data section; `dataOffset`: its absolute offset. */
function parseHeader(path: string, bytes: Uint8Array, dataBytes: number, dataOffset: number) {
  const fail = (what: string): never => {
    throw new Error(`safetensors file ${path}: ${what}`);
  };
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    return fail("header is not valid UTF-8");
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    return fail(`header is not valid JSON (${(e as Error).message})`);
  }
  if (json === null || typeof json !== "object" || Array.isArray(json)) {
    fail(`header is ${describeJson(json)}, expected a JSON object of tensors`);
  }
  const metadata: Record<string, string> = {};
  const tensors = new Map<string, TensorInfo>();
  for (const [name, entry] of Object.entries(json as Record<string, unknown>)) {
    if (name === "__metadata__") {
      if (entry === null || typeof entry !== "object" || Array.isArray(entry)) {
        fail(`__metadata__ is ${describeJson(entry)}, expected an object of string values`);
      }
      for (const [k, v] of Object.entries(entry as Record<string, unknown>)) {
        if (typeof v !== "string") fail(`__metadata__ entry "${k}" is ${describeJson(v)}, expected a string`);
        metadata[k] = v as string;
      }
      continue;
    }
    const bad = (what: string): never => fail(`tensor "${name}": ${what}`);
    if (entry === null || typeof entry !== "object" || Array.isArray(entry)) {
      bad(`entry is ${describeJson(entry)}, expected {dtype, shape, data_offsets}`);
    }
    const { dtype, shape, data_offsets: offsets } = entry as Record<string, unknown>;
    if (typeof dtype !== "string" || !isStoredDType(dtype)) {
      bad(`dtype ${describeJson(dtype)} is not one of ${Object.keys(DTYPE_BYTES).join(", ")}`);
    }
    if (!Array.isArray(shape) || shape.some((d) => !Number.isSafeInteger(d) || d < 0)) {
      bad(`shape ${describeJson(shape)} is not an array of non-negative integers`);
    }
    if (
      !Array.isArray(offsets) || offsets.length !== 2 || offsets.some((o) => !Number.isSafeInteger(o) || o < 0)
    ) {
      bad(`data_offsets ${describeJson(offsets)} is not [begin, end] with non-negative integers`);
    }
    const [begin, end] = offsets as number[];
    if (begin > end) bad(`data_offsets [${begin}, ${end}] end before they begin`);
    if (end > dataBytes) {
      bad(`data_offsets [${begin}, ${end}] go past the end of the data section (${dataBytes} bytes; truncated file?)`);
    }
    const elemBytes = DTYPE_BYTES[dtype as StoredDType];
    // BigInt: a product of safe integers can overflow doubles and wrap to a plausible-looking number.
    const need = (shape as number[]).reduce((p, d) => p * BigInt(d), BigInt(elemBytes));
    if (need !== BigInt(end - begin)) {
      bad(
        `shape [${(shape as number[]).join(", ")}] of ${dtype} needs ${need} bytes, but data_offsets [${begin}, ${end}] ` +
          `hold ${end - begin}`,
      );
    }
    tensors.set(name, {
      name,
      dtype: dtype as StoredDType,
      shape: [...(shape as number[])],
      byteLength: end - begin,
      fileOffset: dataOffset + begin,
      file: path,
    });
  }
  const sorted = [...tensors.values()].filter((t) => t.byteLength > 0).sort((a, b) => a.fileOffset - b.fileOffset);
  for (let i = 1; i < sorted.length; i++) {
    const a = sorted[i - 1], b = sorted[i];
    if (b.fileOffset < a.fileOffset + a.byteLength) {
      const range = (t: TensorInfo) => `[${t.fileOffset - dataOffset}, ${t.fileOffset - dataOffset + t.byteLength}]`;
      fail(`tensors "${a.name}" ${range(a)} and "${b.name}" ${range(b)} overlap`);
    }
  }
  return { tensors, metadata };
}

/** Bytes to read for a (start, length) request inside tensor t; throws on anything out of bounds. */
function checkRange(path: string, t: TensorInfo, start: number, length: number | undefined): number {
  const len = length ?? t.byteLength - start;
  if (
    !Number.isSafeInteger(start) || !Number.isSafeInteger(len) || start < 0 || len < 0 || start + len > t.byteLength
  ) {
    throw new Error(
      `safetensors file ${path}, tensor "${t.name}": byte range start ${start}, length ${length ?? "(rest)"} ` +
        `is outside the tensor's ${t.byteLength} bytes`,
    );
  }
  return len;
}

/** Fill `into` from absolute `offset`, looping over short reads; end of file is an error, never a wait. */
async function readFully(handle: Deno.FsFile, into: Uint8Array, offset: number, where: () => string): Promise<void> {
  await handle.seek(offset, Deno.SeekMode.Start);
  let got = 0;
  while (got < into.byteLength) {
    const n = await handle.read(into.subarray(got));
    if (n === null || n === 0) {
      throw new Error(
        `${where()}: file ended at byte ${offset + got} while reading bytes ${offset}..${offset + into.byteLength} ` +
          `(was it truncated or replaced after it was opened?)`,
      );
    }
    got += n;
  }
}

function describeFsError(e: unknown): string {
  if (e instanceof Deno.errors.NotFound) return "no such file";
  if (e instanceof Deno.errors.PermissionDenied) return "permission denied";
  return (e as Error).message ?? String(e);
}

/** A short description of a JSON value for error messages. */
export function describeJson(v: unknown): string {
  if (v === undefined) return "missing";
  if (v === null) return "null";
  if (Array.isArray(v)) {
    const s = JSON.stringify(v);
    return s.length <= 60 ? s : `an array of ${v.length}`;
  }
  if (typeof v === "object") return "an object";
  const s = JSON.stringify(v);
  return s.length <= 60 ? s : `${s.slice(0, 57)}...`;
}
