// A checkpoint: the tensors of one model component, from a single safetensors file, a folder holding one, or a
// folder of shards with a `*.safetensors.index.json` weight map. Reads are routed to the shard that holds a tensor.

import { fileKind, SafetensorsFile, type TensorInfo, type TensorSource } from "./safetensors.ts";
import { describeStrict, type JsonValue, parseStrictJson, quoteName, StrictJsonError, toPlain } from "./strict_json.ts";
import { printable } from "../runtime/printable.ts";

/** Largest JSON file (config, model index, shard index) read, in bytes: real ones are kilobytes, a large index a few MB. */
export const MAX_JSON_FILE_BYTES = 64 * 1024 * 1024;

export type CheckpointLayout = "file" | "folder" | "sharded";

export class Checkpoint implements TensorSource {
  private constructor(
    /** The path given to open(). */
    readonly path: string,
    readonly layout: CheckpointLayout,
    /** The shard files, in the order they were opened. */
    readonly files: SafetensorsFile[],
    private readonly byName: Map<string, SafetensorsFile>,
    /** The index file of a sharded checkpoint. */
    readonly indexPath: string | null,
    /** `__metadata__` of a single file, or the index's `metadata` of a sharded one. */
    readonly metadata: Record<string, unknown>,
  ) {}

  static async open(path: string): Promise<Checkpoint> {
    let stat: Deno.FileInfo;
    try {
      stat = await Deno.stat(path);
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) throw new Error(`checkpoint ${printable(path)}: no such file or folder`);
      throw new Error(`checkpoint ${printable(path)}: ${(e as Error).message}`);
    }
    if (stat.isFile) {
      if (path.endsWith(".index.json")) return await Checkpoint.openSharded(path, path);
      return Checkpoint.single(path, "file", await SafetensorsFile.open(path));
    }
    if (!stat.isDirectory) throw new Error(`checkpoint ${printable(path)}: is ${fileKind(stat)}, neither a regular file nor a folder`);
    const entries: string[] = [];
    for await (const e of Deno.readDir(path)) if (e.isFile || e.isSymlink) entries.push(e.name);
    entries.sort();
    const indexes = entries.filter((n) => n.endsWith(".safetensors.index.json"));
    const files = entries.filter((n) => n.endsWith(".safetensors"));
    if (indexes.length > 1) {
      throw new Error(
        `checkpoint ${printable(path)}: ${indexes.length} shard indexes (${printable(indexes.join(", "))}); open the one you want directly`,
      );
    }
    if (indexes.length === 1) return await Checkpoint.openSharded(path, joinPath(path, indexes[0]));
    if (files.length === 1) return Checkpoint.single(path, "folder", await SafetensorsFile.open(joinPath(path, files[0])));
    if (files.length > 1) {
      throw new Error(
        `checkpoint ${printable(path)}: ${files.length} .safetensors files (${
          printable(listSome(files))
        }) and no *.safetensors.index.json ` +
          `to say which to use; open one file directly`,
      );
    }
    if (entries.includes("model_index.json")) {
      const components: string[] = [];
      for await (const e of Deno.readDir(path)) if (e.isDirectory) components.push(e.name);
      throw new Error(
        `checkpoint ${printable(path)} is a pipeline folder (model_index.json); open one of its components: ` +
          printable(components.sort().join(", ")),
      );
    }
    throw new Error(`checkpoint ${printable(path)}: the folder holds no .safetensors file and no *.safetensors.index.json`);
  }

  /** Tensor names in natural order (layer 2 before layer 10). */
  names(): string[] {
    return [...this.byName.keys()].sort(naturalCompare);
  }

  has(name: string): boolean {
    return this.byName.has(name);
  }

  info(name: string): TensorInfo {
    const f = this.byName.get(name);
    if (!f) {
      const close = closestName(name, this.byName.keys());
      throw new Error(
        `checkpoint ${printable(this.path)} has no tensor ${quoteName(name)}${close ? ` (did you mean ${quoteName(close)}?)` : ""}`,
      );
    }
    return f.info(name);
  }

  async readBytes(name: string, start?: number, length?: number): Promise<Uint8Array> {
    return await this.file(name).readBytes(name, start, length);
  }

  async *readChunks(name: string, chunkBytes: number, start?: number, length?: number): AsyncIterable<Uint8Array> {
    yield* this.file(name).readChunks(name, chunkBytes, start, length);
  }

  async readF32(name: string): Promise<Float32Array> {
    return await this.file(name).readF32(name);
  }

  /** Bytes of all tensors of the checkpoint (tensors a shard holds but the index does not list are not counted). */
  totalBytes(): number {
    let n = 0;
    for (const name of this.byName.keys()) n += this.info(name).byteLength;
    return n;
  }

  close(): void {
    for (const f of this.files) f.close();
  }

  private static single(path: string, layout: CheckpointLayout, file: SafetensorsFile): Checkpoint {
    const byName = new Map([...file.tensors.keys()].map((n) => [n, file]));
    return new Checkpoint(path, layout, [file], byName, null, { ...file.metadata });
  }

  private static async openSharded(path: string, indexPath: string): Promise<Checkpoint> {
    const where = `checkpoint index ${printable(indexPath)}`;
    const fail = (what: string): never => {
      throw new Error(`${where}: ${what}`);
    };
    // Strict JSON: a tensor listed twice in the weight map is an error, not the last entry silently winning.
    let index: JsonValue;
    try {
      index = parseStrictJson(await readJsonText(indexPath));
    } catch (e) {
      if (!(e instanceof StrictJsonError)) throw e;
      return fail(`not valid JSON (${e.message})`);
    }
    if (!(index instanceof Map)) return fail(`is ${describeStrict(index)}, expected an object with "weight_map"`);
    const map = index.get("weight_map"), metadata = index.get("metadata");
    if (!(map instanceof Map)) return fail(`"weight_map" is ${describeStrict(map)}, expected an object of tensor name → shard file`);
    if (metadata !== undefined && metadata !== null && !(metadata instanceof Map)) {
      fail(`"metadata" is ${describeStrict(metadata)}, expected an object`);
    }
    const dir = dirName(indexPath);
    const needs = new Map<string, string[]>(); // shard file → tensors the index places there
    for (const [name, shard] of map) {
      if (typeof shard !== "string") return fail(`tensor ${quoteName(name)} maps to ${describeStrict(shard)}, expected a shard file name`);
      const problem = shardNameProblem(shard);
      if (problem) fail(`tensor ${quoteName(name)} maps to ${quoteName(shard)}, ${problem}`);
      const list = needs.get(shard) ?? [];
      list.push(name);
      needs.set(shard, list);
    }
    if (needs.size === 0) fail(`"weight_map" lists no tensors`);
    for (const [shard, names] of needs) {
      const holds = `it holds tensor ${quoteName(names[0])}${names.length > 1 ? ` and ${names.length - 1} more` : ""}`;
      let stat: Deno.FileInfo;
      try {
        stat = await Deno.stat(joinPath(dir, shard));
      } catch {
        return fail(`shard ${quoteName(shard)} is missing from ${printable(dir)} (${holds})`);
      }
      if (!stat.isFile) fail(`shard ${quoteName(shard)} in ${printable(dir)} is not a regular file (${holds})`);
    }
    const files: SafetensorsFile[] = [];
    try {
      const byName = new Map<string, SafetensorsFile>();
      for (const [shard, names] of needs) {
        const file = await SafetensorsFile.open(joinPath(dir, shard));
        files.push(file);
        for (const name of names) {
          if (!file.has(name)) {
            const close = closestName(name, file.tensors.keys());
            fail(
              `tensor ${quoteName(name)} is listed in shard ${quoteName(shard)}, but that file has no such tensor` +
                `${close ? ` (closest: ${quoteName(close)})` : ""}`,
            );
          }
          byName.set(name, file);
        }
      }
      const meta = metadata instanceof Map ? toPlain(metadata) as Record<string, unknown> : {};
      return new Checkpoint(path, "sharded", files, byName, indexPath, meta);
    } catch (e) {
      for (const f of files) f.close();
      throw e;
    }
  }

  private file(name: string): SafetensorsFile {
    this.info(name);
    return this.byName.get(name)!;
  }
}

/** The text of a small JSON file: refused unless it is a regular file (a named pipe would block the read) of at most
 * MAX_JSON_FILE_BYTES holding UTF-8. Errors name the file. */
export async function readJsonText(path: string): Promise<string> {
  let stat: Deno.FileInfo;
  try {
    stat = await Deno.stat(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw new Error(`${printable(path)}: no such file`);
    throw new Error(`${printable(path)}: cannot read: ${(e as Error).message}`);
  }
  if (!stat.isFile) throw new Error(`${printable(path)}: is ${fileKind(stat)}, not a regular file; refusing to read it`);
  if (stat.size > MAX_JSON_FILE_BYTES) {
    throw new Error(`${printable(path)}: ${stat.size} bytes is more than the ${MAX_JSON_FILE_BYTES}-byte limit for a JSON file`);
  }
  let bytes: Uint8Array;
  try {
    bytes = await Deno.readFile(path);
  } catch (e) {
    throw new Error(`${printable(path)}: cannot read: ${(e as Error).message}`);
  }
  if (bytes.byteLength > MAX_JSON_FILE_BYTES) {
    throw new Error(`${printable(path)}: more than the ${MAX_JSON_FILE_BYTES}-byte limit for a JSON file (it grew while read)`);
  }
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    throw new Error(`${printable(path)}: not valid UTF-8`);
  }
}

/** Read and parse a JSON file (config.json, model_index.json, …); errors name the file and what went wrong. */
export async function readJson<T = unknown>(path: string): Promise<T> {
  const text = await readJsonText(path);
  try {
    return JSON.parse(text) as T;
  } catch (e) {
    throw new Error(`${printable(path)}: not valid JSON (${printable((e as Error).message)})`);
  }
}

/** Why `name` cannot be a shard of an index (a plain file name in the index's folder), or null if it can. */
function shardNameProblem(name: string): string | null {
  if (name === "" || name === "." || name === "..") return "expected a file name in the same folder";
  if (name.includes("/") || name.includes("\\")) return "expected a file name in the same folder, not a path";
  // deno-lint-ignore no-control-regex
  if (/[\u0000-\u001f\u007f]/.test(name)) return "a file name with control characters";
  if (!name.isWellFormed()) return "a file name with a lone surrogate";
  return null;
}

export function joinPath(dir: string, name: string): string {
  return dir.endsWith("/") ? dir + name : `${dir}/${name}`;
}

export function dirName(path: string): string {
  const i = path.lastIndexOf("/");
  return i < 0 ? "." : i === 0 ? "/" : path.slice(0, i);
}

/** Compare strings with digit runs taken as numbers: "blocks.2" < "blocks.10". */
export function naturalCompare(a: string, b: string): number {
  const re = /(\d+)|(\D+)/g;
  const pa = a.match(re) ?? [], pb = b.match(re) ?? [];
  for (let i = 0; i < Math.min(pa.length, pb.length); i++) {
    const x = pa[i], y = pb[i];
    if (x === y) continue;
    const nx = /^\d/.test(x), ny = /^\d/.test(y);
    if (nx && ny && Number(x) !== Number(y)) return Number(x) - Number(y);
    return x < y ? -1 : 1;
  }
  return pa.length - pb.length || (a < b ? -1 : a > b ? 1 : 0);
}

/** The candidate closest to `name` by edit distance, if close enough to be a plausible typo or renaming. */
export function closestName(name: string, candidates: Iterable<string>): string | null {
  let best: string | null = null;
  let bestD = Math.max(2, Math.floor(name.length / 4)) + 1;
  for (const c of candidates) {
    if (Math.abs(c.length - name.length) >= bestD) continue;
    const d = editDistance(name, c, bestD);
    if (d < bestD) {
      bestD = d;
      best = c;
    }
  }
  return best;
}

/** Levenshtein distance, giving up (returning `limit`) once it must be at least `limit`. */
function editDistance(a: string, b: string, limit: number): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    let rowMin = i;
    for (let j = 1; j <= b.length; j++) {
      cur[j] = Math.min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
      rowMin = Math.min(rowMin, cur[j]);
    }
    if (rowMin >= limit) return limit;
    prev = cur;
  }
  return Math.min(prev[b.length], limit);
}

function listSome(names: string[], n = 4): string {
  return names.length <= n ? names.join(", ") : `${names.slice(0, n).join(", ")}, …`;
}
