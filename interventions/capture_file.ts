// The captures file of a run: one safetensors file holding every captured tensor, named `tap[group](uncond)@stepN`,
// in capture order and, within a capture, in step order. Every shape and step of a capture is known when it is bound,
// so the whole layout — header, offsets — is fixed before the run: a streamed capture writes the header first and
// each step's rows into their slots as they arrive, and the file is byte for byte the one written from memory.

import { basename, dirname, join } from "node:path";

/** `__metadata__.format` of a captures file. */
export const CAPTURES_FORMAT = "kleinscope-captures";

/** One tensor of a captures file, as listed in captures.json. */
export interface CaptureFileEntry {
  name: string;
  tap: string;
  group: string;
  forward: "cond" | "uncond";
  step: number;
  positions: number[] | null;
  shape: [number, number];
}

/** What one capture will hold: its rows × cols at each of its steps. */
export interface CaptureShape {
  tap: string;
  group: string;
  forward: "cond" | "uncond";
  positions: number[] | null;
  rows: number;
  cols: number;
  steps: readonly number[];
}

/** A tensor's place in the file: absolute byte range of its data. */
export interface PlacedEntry extends CaptureFileEntry {
  /** Index of its capture in the list the layout was made from. */
  capture: number;
  /** Absolute offset of its first byte in the file. */
  fileOffset: number;
  bytes: number;
}

export interface CaptureLayout {
  /** The 8-byte length and the JSON header, padded with spaces to a multiple of 8 bytes. */
  header: Uint8Array;
  entries: PlacedEntry[];
  fileBytes: number;
}

/** The tensor name of a capture at one step. */
export function captureTensorName(tap: string, group: string, forward: "cond" | "uncond", step: number): string {
  return `${tap}[${group}]${forward === "uncond" ? "(uncond)" : ""}@step${step}`;
}

/** The layout of the captures file of `captures` (captures holding no rows or no steps are left out). */
export function captureLayout(captures: readonly CaptureShape[]): CaptureLayout {
  const entries: Omit<PlacedEntry, "fileOffset">[] = [];
  const header: Record<string, unknown> = { __metadata__: { format: CAPTURES_FORMAT } };
  let offset = 0;
  captures.forEach((c, capture) => {
    if (!c.rows) return;
    for (const step of [...c.steps].sort((a, b) => a - b)) {
      const name = captureTensorName(c.tap, c.group, c.forward, step);
      const shape: [number, number] = [c.rows, c.cols];
      const bytes = c.rows * c.cols * 4;
      header[name] = { dtype: "F32", shape, data_offsets: [offset, offset + bytes] };
      entries.push({ name, tap: c.tap, group: c.group, forward: c.forward, step, positions: c.positions, shape, capture, bytes });
      offset += bytes;
    }
  });
  // The same header bytes as weights/safetensors_writer.ts writes: JSON in insertion order, padded with spaces.
  const json = new TextEncoder().encode(JSON.stringify(header));
  const padded = Math.ceil(json.byteLength / 8) * 8;
  const head = new Uint8Array(8 + padded).fill(0x20);
  new DataView(head.buffer).setBigUint64(0, BigInt(padded), true);
  head.set(json, 8);
  let at = head.byteLength;
  const placed = entries.map((e) => {
    const p = { ...e, fileOffset: at };
    at += e.bytes;
    return p;
  });
  return { header: head, entries: placed, fileBytes: head.byteLength + offset };
}

/** The index written as captures.json. */
export function captureIndex(entries: readonly CaptureFileEntry[]): { tensors: CaptureFileEntry[] } {
  return {
    tensors: entries.map((e) => ({
      name: e.name,
      tap: e.tap,
      group: e.group,
      forward: e.forward,
      step: e.step,
      positions: e.positions,
      shape: e.shape,
    })),
  };
}

/** Writes a captures file whose layout is known in advance: the header when it starts, then each tensor into its
 * slot with positional writes, in any order. It is written under a temporary name beside `path` and renamed into
 * place once every tensor is there, so `path` holds a whole file or none.
 *
 * The writes are synchronous on purpose. A run calls them right after it submits the next step, while the GPU works;
 * Deno's WebGPU waits (onSubmittedWorkDone, mapAsync) block the event loop until the queue is idle, so each await of
 * an asynchronous write would only resume after the next step — the rows would pile up in memory instead of going
 * to disk while the GPU computes. */
export class CaptureFileWriter {
  private readonly tmp: string;
  private readonly written = new Set<number>();
  private started = false;
  private finished = false;

  constructor(readonly path: string, readonly layout: CaptureLayout) {
    this.tmp = join(dirname(path), `.${basename(path)}.${Deno.pid}-${crypto.randomUUID().slice(0, 8)}.tmp`);
  }

  private fail(e: unknown): never {
    throw new Error(`cannot write captures file ${this.path}: ${(e as Error).message}`);
  }

  private start(): void {
    if (this.started) return;
    let f: Deno.FsFile;
    try {
      f = Deno.openSync(this.tmp, { write: true, createNew: true, mode: 0o644 });
    } catch (e) {
      this.fail(e);
    }
    this.started = true;
    try {
      writeAllSync(f, this.layout.header);
      // Unwritten slots read as zeros until their rows arrive; the file has its final size from the start.
      f.truncateSync(this.layout.fileBytes);
    } catch (e) {
      this.fail(e);
    } finally {
      f.close();
    }
  }

  /** Write tensors (entry index → f32 data) into their slots. */
  write(parts: readonly { entry: number; data: Float32Array }[]): void {
    this.start();
    let f: Deno.FsFile;
    try {
      f = Deno.openSync(this.tmp, { write: true });
    } catch (e) {
      this.fail(e);
    }
    try {
      for (const { entry, data } of parts) {
        const e = this.layout.entries[entry];
        if (data.byteLength !== e.bytes) throw new Error(`${e.name} needs ${e.bytes} bytes, got ${data.byteLength}`);
        f.seekSync(e.fileOffset, Deno.SeekMode.Start);
        writeAllSync(f, new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
        this.written.add(entry);
      }
    } catch (e) {
      this.fail(e);
    } finally {
      f.close();
    }
  }

  /** Put the file in place; every tensor must have been written. */
  finish(): void {
    if (this.finished) return;
    this.start();
    const missing = this.layout.entries.filter((_, i) => !this.written.has(i));
    if (missing.length) {
      throw new Error(`captures file ${this.path}: ${missing.length} tensor(s) never arrived (first: ${missing[0].name})`);
    }
    // No fsync here: it would hold up the run's last step, and an output folder syncs every file before it is swapped in.
    try {
      Deno.renameSync(this.tmp, this.path);
    } catch (e) {
      this.fail(e);
    }
    this.finished = true;
  }

  /** Remove the partial file (a failed run). */
  abort(): void {
    if (this.finished || !this.started) return;
    try {
      Deno.removeSync(this.tmp);
    } catch {
      // already gone
    }
  }
}

function writeAllSync(f: Deno.FsFile, bytes: Uint8Array): void {
  for (let off = 0; off < bytes.byteLength;) off += f.writeSync(bytes.subarray(off));
}

/** Read one tensor of a captures file (synchronously: the typed capture API hands out rows on demand). */
export function readCaptureEntry(path: string, entry: PlacedEntry): Float32Array {
  const out = new Float32Array(entry.bytes / 4);
  const bytes = new Uint8Array(out.buffer);
  let f: Deno.FsFile;
  try {
    f = Deno.openSync(path, { read: true });
  } catch (e) {
    throw new Error(`cannot read ${entry.name} from captures file ${path}: ${(e as Error).message}`);
  }
  try {
    f.seekSync(entry.fileOffset, Deno.SeekMode.Start);
    for (let off = 0; off < bytes.byteLength;) {
      const n = f.readSync(bytes.subarray(off));
      if (n === null || n === 0) throw new Error(`captures file ${path} ends inside ${entry.name}`);
      off += n;
    }
  } finally {
    f.close();
  }
  return out;
}
