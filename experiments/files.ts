// File helpers shared by the experiment harness: atomic writes (temporary name, fsync, rename, so a reader or a
// resumed run never sees half a file), content hashes and a canonical JSON form for hashing.

import { join } from "node:path";
import { writeFileAtomic } from "../studies/output_folder.ts";
import { printable } from "../runtime/printable.ts";

/** Write text atomically: a temporary file beside the destination, flushed to disk, renamed into place. */
export function writeTextAtomic(path: string, content: string): Promise<void> {
  return writeFileAtomic(path, content);
}

/** Copy a file atomically (the destination is whole or absent). */
export async function copyFileAtomic(from: string, to: string): Promise<void> {
  await writeFileAtomic(to, await Deno.readFile(from));
}

export function writeJsonAtomic(path: string, value: unknown): Promise<void> {
  return writeTextAtomic(path, JSON.stringify(value, null, 2) + "\n");
}

export async function readJsonFile<T>(path: string): Promise<T> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    const why = e instanceof Deno.errors.NotFound ? "no such file" : (e as Error).message;
    throw new Error(`cannot read ${path}: ${why}`);
  }
  try {
    return JSON.parse(text) as T;
  } catch (e) {
    throw new Error(`${path} is not valid JSON: ${(e as Error).message}`);
  }
}

export async function pathExists(path: string): Promise<boolean> {
  try {
    await Deno.lstat(path);
    return true;
  } catch {
    return false;
  }
}

export async function sha256Hex(bytes: Uint8Array | string): Promise<string> {
  const data = typeof bytes === "string" ? new TextEncoder().encode(bytes) : bytes;
  const digest = await crypto.subtle.digest("SHA-256", data as Uint8Array<ArrayBuffer>);
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

export async function fileSha256(path: string): Promise<string> {
  return sha256Hex(await Deno.readFile(path));
}

/** JSON with object keys sorted at every level, so equal values hash equally. */
export function canonicalJson(value: unknown): string {
  return JSON.stringify(value, (_k, v) => {
    if (v && typeof v === "object" && !Array.isArray(v)) {
      return Object.fromEntries(Object.keys(v).sort().map((k) => [k, (v as Record<string, unknown>)[k]]));
    }
    return v;
  });
}

/** Names of the entries of a folder (empty when it does not exist). */
export async function listNames(dir: string): Promise<string[]> {
  const names: string[] = [];
  try {
    for await (const e of Deno.readDir(dir)) names.push(e.name);
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  return names.sort();
}

/** Copy a folder tree (files and sub-folders). */
export async function copyTree(from: string, to: string): Promise<void> {
  await Deno.mkdir(to, { recursive: true });
  for await (const e of Deno.readDir(from)) {
    const src = join(from, e.name), dst = join(to, e.name);
    if (e.isDirectory) await copyTree(src, dst);
    else if (e.isFile) await Deno.copyFile(src, dst);
  }
}

/** Thrower of one-line errors naming a file and a field: `fail("tables[2].mass", "expected a list")`. */
export type FieldFailure = (field: string, message: string) => never;

/** Parse the text of a JSON file kleinscope wrote (attention_flow.json, effects.json): an object of the given `format`
 * and `version`, else a one-line error naming the file and the field. Returns the object and the file's `fail`. */
export function parseOutputJson(
  text: string,
  where: string,
  format: string,
  version: number,
): { raw: Record<string, unknown>; fail: FieldFailure } {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new Error(`${where}: not valid JSON (${(e as Error).message})`);
  }
  const fail: FieldFailure = (field, message) => {
    throw new Error(`${where}: ${field}: ${message}`);
  };
  if (!raw || typeof raw !== "object" || Array.isArray(raw)) return fail("(root)", "expected an object");
  const o = raw as Record<string, unknown>;
  if (o.format !== format) fail("format", `expected "${format}", got ${printable(JSON.stringify(o.format))}`);
  if (o.version !== version) fail("version", `expected ${version}, got ${printable(JSON.stringify(o.version))}`);
  return { raw: o, fail };
}
