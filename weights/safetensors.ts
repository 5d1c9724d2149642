// Safetensors files read without loading them: open() reads and validates the 8-byte header length and the JSON
// header only; tensor data is read on demand, as a byte range or as a stream of bounded chunks.
//
// Layout: u64 little-endian N, then N bytes of UTF-8 JSON {name: {dtype, shape, data_offsets: [begin, end]},
// "__metadata__"?: {string: string}}, then the data section; offsets are relative to the data section.
//
// A file is accepted only under the rules of the reference reader (huggingface safetensors): N ≤ MAX_HEADER_BYTES
// and 8 + N ≤ the file size; the header is strict UTF-8 JSON (no byte-order mark, no duplicate keys, no lone
// surrogates), an object whose "__metadata__" is null or an object of strings and whose other entries are tensors
// with a known dtype, a shape of non-negative integers and two non-negative integer offsets begin ≤ end; a tensor
// holds exactly product(shape) · dtype size bytes (computed without overflow in 64 bits); and the tensors, sorted
// by offsets, tile the data section exactly: the first begins at 0, each begins where the one before it ends, the
// last ends at the end of the file. So no byte is read twice, skipped or left over, and a file whose length or
// offsets lie is refused when it is opened, not read as shifted numbers.

import { decodeToF32, DTYPE_BYTES, isStoredDType, type StoredDType } from "./dtypes.ts";
import { printable } from "../runtime/printable.ts";
import { describeStrict, type JsonValue, parseStrictJson, quoteName, StrictJsonError } from "./strict_json.ts";

/** Largest JSON header accepted, in bytes: the reference reader's limit (100,000,000; a decimal 100 MB). */
export const MAX_HEADER_BYTES = 100_000_000;

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
    const where = `safetensors file ${printable(path)}`;
    const fail = (what: string): never => {
      throw new Error(`${where}: ${what}`);
    };
    // Stat before opening: opening a named pipe would wait for a writer forever.
    await requireRegularFile(path, where);
    let handle: Deno.FsFile;
    try {
      handle = await Deno.open(path, { read: true });
    } catch (e) {
      return fail(`cannot open: ${describeFsError(e)}`);
    }
    try {
      const stat = await handle.stat();
      if (!stat.isFile) fail(`is ${fileKind(stat)}, not a regular file`);
      const size = stat.size;
      if (size < 8) fail(`file is ${size} bytes, shorter than the 8-byte header length`);
      const lenBytes = new Uint8Array(8);
      await readFully(handle, lenBytes, 0, () => `${where}: header length`);
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
      await readFully(handle, headerBytes, 8, () => `${where}: header`);
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
    if (!t) throw new Error(`safetensors file ${printable(this.path)} has no tensor ${quoteName(name)}`);
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
      throw new Error(
        `safetensors file ${printable(this.path)}, tensor ${quoteName(name)}: chunk size ${chunkBytes} must be a positive integer`,
      );
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
      if (!handle) throw new Error(`safetensors file ${printable(this.path)} is closed (reading tensor ${quoteName(t.name)})`);
      await readFully(handle, into, offset, () => `safetensors file ${printable(this.path)}, tensor ${quoteName(t.name)}`);
    });
    this.lock = run.catch(() => {});
    return run;
  }
}

/** Largest value of a Rust usize on the 64-bit machines the reference runs on: sizes past it overflow there. */
const USIZE_MAX = (1n << 64n) - 1n;

/** A header entry after its fields were checked, before the coverage check. */
interface Entry {
  name: string;
  dtype: StoredDType;
  shape: number[];
  begin: number;
  end: number;
}

/** Validate a header and build the tensor table. `dataBytes`: size of the data section; `dataOffset`: its absolute offset. */
export function parseHeader(
  path: string,
  bytes: Uint8Array,
  dataBytes: number,
  dataOffset: number,
): { tensors: Map<string, TensorInfo>; metadata: Record<string, string> } {
  const fail = (what: string): never => {
    throw new Error(`safetensors file ${printable(path)}: ${what}`);
  };
  let text: string;
  try {
    // fatal: invalid UTF-8 is an error, not U+FFFD; ignoreBOM: a byte-order mark is kept, so it is refused below.
    text = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(bytes);
  } catch {
    return fail("header is not valid UTF-8");
  }
  if (text.charCodeAt(0) === 0xfeff) fail("header starts with a UTF-8 byte-order mark (EF BB BF); the format allows none");
  let json: JsonValue;
  try {
    json = parseStrictJson(text);
  } catch (e) {
    if (!(e instanceof StrictJsonError)) throw e;
    return fail(`header is not valid JSON (${e.message})`);
  }
  if (!(json instanceof Map)) return fail(`header is ${describeStrict(json)}, expected a JSON object of tensors`);
  const metadata: Record<string, string> = {};
  const entries: Entry[] = [];
  for (const [name, entry] of json) {
    if (name === "__metadata__") {
      if (entry === null) continue;
      if (!(entry instanceof Map)) return fail(`__metadata__ is ${describeStrict(entry)}, expected an object of string values`);
      for (const [k, v] of entry) {
        if (typeof v !== "string") fail(`__metadata__ entry ${quoteName(k)} is ${describeStrict(v)}, expected a string`);
        Object.defineProperty(metadata, k, { value: v, enumerable: true, writable: true, configurable: true });
      }
      continue;
    }
    entries.push(checkEntry(name, entry, dataBytes, (what) => fail(`tensor ${quoteName(name)}: ${what}`)));
  }
  // The tensors must tile the data section: sorted by (begin, end), each starts where the previous one ended.
  entries.sort((a, b) => a.begin - b.begin || a.end - b.end);
  let covered = 0;
  let previous: Entry | null = null;
  const range = (e: Entry) => `[${e.begin}, ${e.end}]`;
  for (const e of entries) {
    if (e.begin > covered) {
      const gap = `(a gap of ${e.begin - covered} bytes no tensor owns)`;
      if (!previous) fail(`the first tensor ${quoteName(e.name)} begins at byte ${e.begin}, not 0 ${gap}`);
      fail(
        `tensor ${quoteName(e.name)} begins at byte ${e.begin} of the data section, but tensor ${quoteName(previous!.name)} ` +
          `${range(previous!)} before it ends at ${covered} ${gap}`,
      );
    }
    if (e.begin < covered) {
      fail(`tensor ${quoteName(e.name)} ${range(e)} overlaps tensor ${quoteName(previous!.name)} ${range(previous!)}`);
    }
    covered = e.end;
    previous = e;
  }
  if (covered !== dataBytes) {
    fail(
      `the tensors cover ${covered} bytes of data, but the file holds ${dataBytes} bytes after the header ` +
        `(${dataBytes - covered} trailing bytes no tensor owns)`,
    );
  }
  const tensors = new Map<string, TensorInfo>();
  for (const e of entries) {
    tensors.set(e.name, {
      name: e.name,
      dtype: e.dtype,
      shape: e.shape,
      byteLength: e.end - e.begin,
      fileOffset: dataOffset + e.begin,
      file: path,
    });
  }
  return { tensors, metadata };
}

/** Check one tensor entry's fields: known dtype, integer shape and offsets, and a byte size that matches both. */
function checkEntry(name: string, entry: JsonValue, dataBytes: number, bad: (what: string) => never): Entry {
  if (!(entry instanceof Map)) return bad(`entry is ${describeStrict(entry)}, expected {dtype, shape, data_offsets}`);
  const dtype = entry.get("dtype"), shape = entry.get("shape"), offsets = entry.get("data_offsets");
  if (typeof dtype !== "string" || !isStoredDType(dtype)) {
    return bad(`dtype ${describeStrict(dtype)} is not one of ${Object.keys(DTYPE_BYTES).join(", ")}`);
  }
  const isCount = (v: JsonValue) => typeof v === "bigint" && v >= 0n && v <= USIZE_MAX;
  if (!Array.isArray(shape) || !shape.every(isCount)) {
    return bad(`shape ${describeStrict(shape)} is not an array of non-negative integers`);
  }
  if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(isCount)) {
    return bad(`data_offsets ${describeStrict(offsets)} is not [begin, end] with non-negative integers`);
  }
  const [begin, end] = offsets as bigint[];
  if (begin > end) bad(`data_offsets [${begin}, ${end}] end before they begin`);
  if (end > BigInt(dataBytes)) {
    bad(`data_offsets [${begin}, ${end}] go past the end of the data section (${dataBytes} bytes; truncated file?)`);
  }
  // The element count and byte size in the reference's order, each step refused past 64 bits as it does there.
  let count = 1n;
  for (const d of shape as bigint[]) {
    count *= d;
    if (count > USIZE_MAX) bad(`shape ${describeStrict(shape)} has more elements than 64 bits can count`);
  }
  const need = count * BigInt(DTYPE_BYTES[dtype]);
  if (need > USIZE_MAX) bad(`shape ${describeStrict(shape)} of ${dtype} needs more bytes than 64 bits can count`);
  if (need !== end - begin) {
    bad(`shape ${describeStrict(shape)} of ${dtype} needs ${need} bytes, but data_offsets [${begin}, ${end}] hold ${end - begin}`);
  }
  // Legal, but a dimension past 2^53 (with another dimension 0) cannot be held as a number here.
  const big = (shape as bigint[]).find((d) => d > BigInt(Number.MAX_SAFE_INTEGER));
  if (big !== undefined) {
    bad(`shape ${describeStrict(shape)} has a dimension ${big} larger than 2^53 - 1, which this reader cannot represent`);
  }
  return { name, dtype, shape: (shape as bigint[]).map(Number), begin: Number(begin), end: Number(end) };
}

/** Throws a one-line error unless `path` is a regular file (after following links); never opens it. */
export async function requireRegularFile(path: string, where: string): Promise<Deno.FileInfo> {
  let stat: Deno.FileInfo;
  try {
    stat = await Deno.stat(path);
  } catch (e) {
    throw new Error(`${where}: cannot open: ${describeFsError(e)}`);
  }
  if (!stat.isFile) throw new Error(`${where}: is ${fileKind(stat)}, not a regular file; refusing to open it`);
  return stat;
}

/** What kind of file system entry `stat` describes, for messages. */
export function fileKind(stat: Deno.FileInfo): string {
  if (stat.isFile) return "a regular file";
  if (stat.isDirectory) return "a folder";
  if (stat.isFifo) return "a named pipe (FIFO)";
  if (stat.isSocket) return "a socket";
  if (stat.isCharDevice) return "a character device";
  if (stat.isBlockDevice) return "a block device";
  return "something other than a file";
}

/** Bytes to read for a (start, length) request inside tensor t; throws on anything out of bounds. */
function checkRange(path: string, t: TensorInfo, start: number, length: number | undefined): number {
  const len = length ?? t.byteLength - start;
  if (
    !Number.isSafeInteger(start) || !Number.isSafeInteger(len) || start < 0 || len < 0 || start + len > t.byteLength
  ) {
    throw new Error(
      `safetensors file ${printable(path)}, tensor ${quoteName(t.name)}: byte range start ${start}, length ${length ?? "(rest)"} ` +
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
