// The weight store: one GPU buffer per graph weight, filled by streaming row ranges of checkpoint tensors from disk
// in bounded chunks. A graph weight is the concatenation along dim 0 of its pieces, which is how fused q/k/v in one
// file format and separate q/k/v in another land in the same buffer, and how a (shift, scale) order is swapped.

import type { GpuContext } from "../runtime/device.ts";
import type { WeightSource } from "../runtime/executor.ts";
import { ChunkedUploader, createStorageBuffer } from "../runtime/buffers.ts";
import { shapeString, tensorBytes, type TensorSpec } from "../runtime/tensor.ts";
import { canUpload, convertForUpload, DTYPE_BYTES, type UploadDType } from "./dtypes.ts";
import type { TensorInfo, TensorSource } from "./safetensors.ts";
import { closestName } from "./checkpoint.ts";
import { printable } from "../runtime/printable.ts";

export interface WeightPiece {
  /** A Checkpoint (or a single SafetensorsFile). */
  checkpoint: TensorSource;
  tensor: string;
  /** First row (index along dim 0) of the tensor to take; default 0. */
  rowStart?: number;
  /** Rows to take; default all rows from rowStart. */
  rowCount?: number;
}

export interface WeightEntry {
  shape: number[];
  dtype: UploadDType;
  pieces: WeightPiece[];
}

export interface UploadProgress {
  /** Source bytes read so far, over all weights of this upload. */
  doneBytes: number;
  totalBytes: number;
  /** The graph weight being written. */
  weight: string;
}

export interface UploadOptions {
  onProgress?: (p: UploadProgress) => void;
  /** Source bytes read per chunk (default 16 MiB, at most 64 MiB). */
  chunkBytes?: number;
}

/** A piece after validation: where it comes from and where its bytes go. */
interface PlacedPiece {
  source: TensorSource;
  info: TensorInfo;
  /** Byte range in the source tensor. */
  srcStart: number;
  srcLength: number;
  /** Byte offset in the destination buffer. */
  dstOffset: number;
}

interface StoredWeight {
  name: string;
  shape: number[];
  dtype: UploadDType;
  bytes: number;
  pieces: PlacedPiece[];
  buffer: GPUBuffer | null;
}

const MAX_CHUNK = 64 << 20;

export class WeightStore implements WeightSource {
  private readonly weights = new Map<string, StoredWeight>();
  private released = false;

  constructor(private readonly gpu: GpuContext) {}

  /** Declare graph weight `name` as the row-wise concatenation of `entry.pieces`. Validates shapes now; reads nothing. */
  add(name: string, entry: WeightEntry): void {
    this.checkLive();
    const { shape, dtype, pieces } = entry;
    const what = `weight ${printable(name)} ${shapeString(shape)} ${dtype}`;
    if (this.weights.has(name)) throw new Error(`${what}: a weight of that name was already added to the store`);
    if (dtype !== "bf16" && dtype !== "f32") throw new Error(`${what}: dtype must be bf16 or f32`);
    if (!shape.every((d) => Number.isSafeInteger(d) && d > 0)) throw new Error(`${what}: invalid shape`);
    if (!pieces.length) throw new Error(`${what}: no pieces given`);
    const rowElems = shape.slice(1).reduce((a, b) => a * b, 1);
    const rows = shape[0] ?? 1;
    const elemBytes = dtype === "bf16" ? 2 : 4;
    const placed: PlacedPiece[] = [];
    const described: string[] = [];
    let rowsSoFar = 0;
    for (const p of pieces) {
      const info = p.checkpoint.info(p.tensor);
      const tRows = info.shape[0] ?? 1;
      const tRowElems = info.shape.slice(1).reduce((a, b) => a * b, 1);
      const start = p.rowStart ?? 0;
      const count = p.rowCount ?? tRows - start;
      const src = `${printable(p.tensor)} ${shapeString(info.shape)} ${info.dtype}`;
      const range = p.rowStart !== undefined || p.rowCount !== undefined ? ` rows ${start}..${start + count}` : "";
      described.push(`${src}${range}`);
      if (!canUpload(info.dtype)) throw new Error(`${what}: piece ${src} (in ${printable(info.file)}) cannot be converted to ${dtype}`);
      if (!Number.isSafeInteger(start) || !Number.isSafeInteger(count) || start < 0 || count <= 0 || start + count > tRows) {
        throw new Error(`${what}: piece ${src} asks for rows ${start}..${start + count}, outside its ${tRows} rows`);
      }
      if (tRowElems !== rowElems) {
        throw new Error(
          `${what}: piece ${src} has rows of ${tRowElems} elements (${shapeString(info.shape.slice(1))}), ` +
            `the weight needs ${rowElems} (${shapeString(shape.slice(1))})`,
        );
      }
      const dstOffset = rowsSoFar * rowElems * elemBytes;
      if (dstOffset % 4 !== 0) {
        throw new Error(
          `${what}: piece ${src}${range} would start at byte ${dstOffset}, not a 4-byte boundary ` +
            `(the rows before it hold ${rowsSoFar * rowElems} bf16 elements, an odd number)`,
        );
      }
      const srcElemBytes = DTYPE_BYTES[info.dtype];
      placed.push({
        source: p.checkpoint,
        info,
        srcStart: start * tRowElems * srcElemBytes,
        srcLength: count * tRowElems * srcElemBytes,
        dstOffset,
      });
      rowsSoFar += count;
    }
    if (rowsSoFar !== rows) {
      throw new Error(`${what}: the pieces give ${rowsSoFar} rows, the weight needs ${rows} (pieces: ${described.join("; ")})`);
    }
    this.weights.set(name, { name, shape: [...shape], dtype, bytes: tensorBytes({ shape, dtype }), pieces: placed, buffer: null });
  }

  has(name: string): boolean {
    return this.weights.has(name);
  }

  names(): string[] {
    return [...this.weights.keys()];
  }

  /** Stream every weight not yet uploaded from disk to its GPU buffer. */
  async upload(options: UploadOptions = {}): Promise<void> {
    this.checkLive();
    const chunkBytes = Math.min(MAX_CHUNK, options.chunkBytes ?? 16 << 20);
    if (!Number.isSafeInteger(chunkBytes) || chunkBytes < 8) throw new Error(`weight upload: chunk size ${chunkBytes} is too small`);
    const todo = [...this.weights.values()].filter((w) => !w.buffer);
    const totalBytes = todo.reduce((s, w) => s + w.pieces.reduce((t, p) => t + p.srcLength, 0), 0);
    let doneBytes = 0;
    const uploader = new ChunkedUploader(this.gpu);
    for (const w of todo) {
      this.gpu.device.pushErrorScope("out-of-memory");
      const buffer = createStorageBuffer(this.gpu, `weight:${w.name}`, w.bytes);
      const oom = await this.gpu.device.popErrorScope();
      if (oom) {
        buffer.destroy();
        throw new Error(
          `weight ${printable(w.name)} ${shapeString(w.shape)}: the GPU is out of memory for its ${w.bytes} bytes (${oom.message})`,
        );
      }
      try {
        for (const p of w.pieces) {
          const srcElem = DTYPE_BYTES[p.info.dtype];
          const dstElem = w.dtype === "bf16" ? 2 : 4;
          // Even element counts per chunk keep every bf16 destination chunk a whole number of u32 words.
          const elems = Math.max(2, Math.floor(chunkBytes / Math.max(srcElem, dstElem) / 2) * 2);
          let dst = p.dstOffset;
          for await (const chunk of p.source.readChunks(p.info.name, elems * srcElem, p.srcStart, p.srcLength)) {
            const bytes = convertForUpload(chunk, p.info.dtype, w.dtype);
            await uploader.write(buffer, dst, bytes);
            dst += bytes.byteLength;
            doneBytes += chunk.byteLength;
            options.onProgress?.({ doneBytes, totalBytes, weight: w.name });
          }
        }
      } catch (e) {
        buffer.destroy();
        throw new Error(`weight ${printable(w.name)}: upload failed: ${(e as Error).message}`);
      }
      w.buffer = buffer;
    }
    await uploader.flush();
    await this.gpu.device.queue.onSubmittedWorkDone();
  }

  bufferFor(name: string, spec: TensorSpec): { buffer: GPUBuffer; offset: number } {
    this.checkLive();
    const w = this.weights.get(name);
    if (!w) {
      const close = closestName(name, this.weights.keys());
      throw new Error(`the weight store has no weight ${printable(name)}${close ? ` (did you mean ${printable(close)}?)` : ""}`);
    }
    if (spec.dtype !== w.dtype || spec.shape.length !== w.shape.length || spec.shape.some((d, i) => d !== w.shape[i])) {
      throw new Error(
        `weight ${printable(name)}: the graph wants ${shapeString(spec.shape)} ${spec.dtype}, the store holds ${
          shapeString(w.shape)
        } ${w.dtype}`,
      );
    }
    if (!w.buffer) throw new Error(`weight ${printable(name)} has not been uploaded yet (call upload() first)`);
    return { buffer: w.buffer, offset: 0 };
  }

  /** GPU bytes of every weight added (uploaded or not). */
  bytes(): number {
    let n = 0;
    for (const w of this.weights.values()) n += w.bytes;
    return n;
  }

  /** Destroy every buffer; the store refuses any further use. */
  release(): void {
    for (const w of this.weights.values()) w.buffer?.destroy();
    this.weights.clear();
    this.released = true;
  }

  private checkLive(): void {
    if (this.released) throw new Error("this weight store was released; its buffers are gone (create a new store)");
  }
}

/** Weights checked and laid out but still on disk: the first `upload()` puts them on the GPU from the open checkpoint
 * and closes it (releasing the store if the upload fails); `discard()` closes it without uploading. Both are
 * idempotent, so a model can be opened, its runs checked, and its weights uploaded only when a run executes. */
export class PendingUpload {
  private settled = false;

  constructor(
    private readonly store: WeightStore,
    private readonly checkpoint: { close(): void },
    private readonly options: UploadOptions = {},
  ) {}

  async upload(): Promise<void> {
    if (this.settled) return;
    this.settled = true;
    try {
      await this.store.upload(this.options);
    } catch (e) {
      this.store.release();
      throw e;
    } finally {
      this.checkpoint.close();
    }
  }

  discard(): void {
    if (this.settled) return;
    this.settled = true;
    this.checkpoint.close();
  }
}
