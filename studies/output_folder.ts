// Output folders and files that kleinscope writes, written so that a kill, a crash or a second run at the same time
// never loses or half-writes anything:
//
// - A file is written beside its destination under a temporary name, flushed to disk and renamed into place
//   (writeFileAtomic): a reader sees the old file or the new one, never a part.
// - A run's folder is written as a sibling temporary folder and swapped in when whole (writeOutputFolder, or
//   prepareOutputFolder + replaceOutputFolder): the old folder is renamed aside, the new one renamed in, and only
//   then is the old one removed — file by file, only the files kleinscope wrote, never recursively.
// - Every folder kleinscope writes this way carries a marker (OUTPUT_MARKER) listing its files. A folder without it
//   is recognised only as an older single-run output (spec.json and run.json of its own) holding nothing but the
//   files a run writes. Anything else — a folder of the user's, `.`, `..`, an ancestor of the current folder, the
//   home folder, a filesystem root, the model folder — is refused with one line, before anything is touched.

import { basename, dirname, isAbsolute, join, parse, relative, resolve, sep } from "node:path";
import { printable } from "../runtime/printable.ts";

/** The marker file of a folder kleinscope wrote: `{format, kind, created, files}`. */
export const OUTPUT_MARKER = ".kleinscope-output.json";
const MARKER_FORMAT = "kleinscope-output";

/** The files a single run writes (writeSpecOutputs): what an output folder written before the marker may hold. */
export const SPEC_OUTPUT_FILES = ["image.png", "source.png", "spec.json", "run.json", "captures.safetensors", "captures.json"];

/** A refused output folder or a failed swap; the message is one line and names the folder. */
export class OutputFolderError extends Error {}

interface Marker {
  format: typeof MARKER_FORMAT;
  kind: string;
  created: string;
  /** Paths relative to the folder, "/"-separated, of every file kleinscope wrote there. */
  files: string[];
}

const rand = () => crypto.randomUUID().slice(0, 8);

// ---- atomic files ------------------------------------------------------------------------------------------------

/** A temporary name beside `path`: `.<name>.<pid>-<random>.tmp`. */
export function tempPathFor(path: string): string {
  return join(dirname(path), `.${basename(path)}.${Deno.pid}-${rand()}.tmp`);
}

/** A name made by tempPathFor (any process): `.<name>.<pid>-<random>.tmp`; returns the writer's pid. */
export function tempFileWriter(name: string): number | undefined {
  const m = /^\..+\.(\d+)-[0-9a-f]{8}\.tmp$/.exec(name);
  return m ? Number(m[1]) : undefined;
}

/** fsync a folder's entry list (so a rename in it survives a power cut); not every platform allows it. */
export async function syncFolder(dir: string): Promise<void> {
  let f: Deno.FsFile | undefined;
  try {
    f = await Deno.open(dir, { read: true });
    await f.sync();
  } catch {
    /* folders cannot be opened or synced here (Windows); the rename itself is still atomic */
  } finally {
    f?.close();
  }
}

/** Write a file atomically: a temporary file in the same folder, written whole, fsynced, renamed into place. */
export async function writeFileAtomic(path: string, data: Uint8Array | string): Promise<void> {
  const bytes = typeof data === "string" ? new TextEncoder().encode(data) : data;
  const tmp = tempPathFor(path);
  try {
    await Deno.mkdir(dirname(path), { recursive: true });
    const f = await Deno.open(tmp, { write: true, createNew: true, mode: 0o644 });
    try {
      for (let off = 0; off < bytes.length;) off += await f.write(bytes.subarray(off));
      await f.sync();
    } finally {
      f.close();
    }
    await Deno.rename(tmp, path);
  } catch (e) {
    await Deno.remove(tmp).catch(() => {});
    throw new Error(`cannot write ${printable(path)}: ${(e as Error).message}`);
  }
  await syncFolder(dirname(path));
}

/** fsync every file under `dir` (before the folder is renamed into place). */
export async function syncTree(dir: string): Promise<void> {
  for await (const e of Deno.readDir(dir)) {
    const p = join(dir, e.name);
    if (e.isDirectory) await syncTree(p);
    else if (e.isFile) {
      const f = await Deno.open(p, { read: true, write: true });
      try {
        await f.sync();
      } finally {
        f.close();
      }
    }
  }
  await syncFolder(dir);
}

// ---- recognising kleinscope's folders ----------------------------------------------------------------------------

async function lstatOrNull(path: string): Promise<Deno.FileInfo | null> {
  try {
    return await Deno.lstat(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null;
    throw e;
  }
}

/** Relative "/"-separated paths of every entry under `dir` (folders end with "/"). */
async function walk(dir: string, prefix = ""): Promise<string[]> {
  const out: string[] = [];
  for await (const e of Deno.readDir(dir)) {
    const rel = prefix + e.name;
    if (e.isDirectory && !e.isSymlink) {
      out.push(rel + "/");
      out.push(...await walk(join(dir, e.name), rel + "/"));
    } else out.push(rel);
  }
  return out.sort();
}

async function readMarker(dir: string): Promise<Marker | null> {
  let text: string;
  try {
    text = await Deno.readTextFile(join(dir, OUTPUT_MARKER));
  } catch {
    return null;
  }
  try {
    const m = JSON.parse(text) as Marker;
    if (m.format !== MARKER_FORMAT || !Array.isArray(m.files)) return null;
    // Only plain relative paths inside the folder count.
    m.files = m.files.filter((f) =>
      typeof f === "string" && f !== "" && !isAbsolute(f) && !f.split("/").some((p) => p === ".." || p === "")
    );
    return m;
  } catch {
    return null;
  }
}

export interface OwnedFolder {
  /** Files kleinscope wrote there (relative, "/"-separated), the marker included when present. */
  files: string[];
  /** Entries it did not write. */
  foreign: string[];
  /** How it was recognised. */
  by: "marker" | "spec.json and run.json";
}

/** Whether `dir` is an output folder kleinscope wrote, and which of its entries are kleinscope's. Null when it is not
 * recognised at all. `extra`: more names a folder without the marker may hold (e.g. an experiment's
 * patch_source.json). */
export async function ownedFiles(dir: string, extra: readonly string[] = []): Promise<OwnedFolder | null> {
  const marker = await readMarker(dir);
  let known: Set<string>;
  let by: OwnedFolder["by"];
  if (marker) {
    known = new Set([...marker.files, OUTPUT_MARKER]);
    by = "marker";
  } else {
    const isFile = async (n: string) => (await lstatOrNull(join(dir, n)))?.isFile ?? false;
    if (!(await isFile("spec.json")) || !(await isFile("run.json"))) return null;
    known = new Set([...SPEC_OUTPUT_FILES, ...extra]);
    by = "spec.json and run.json";
  }
  const files: string[] = [], foreign: string[] = [];
  for (const rel of await walk(dir)) {
    if (rel.endsWith("/")) {
      // A folder is kleinscope's when some listed file lives in it.
      if (![...known].some((k) => k.startsWith(rel))) foreign.push(rel);
    } else if (known.has(rel)) files.push(rel);
    else foreign.push(rel);
  }
  return { files, foreign, by };
}

/** Remove a folder kleinscope wrote: its listed files one by one, then its (then empty) folders, never recursively.
 * Throws, having removed nothing, when the folder holds anything else. */
export async function removeOwnedFolder(dir: string, extra: readonly string[] = []): Promise<void> {
  const owned = await ownedFiles(dir, extra);
  if (!owned) throw new OutputFolderError(`${printable(dir)} is not a folder kleinscope wrote; not removing it`);
  if (owned.foreign.length) {
    throw new OutputFolderError(
      `${printable(dir)} holds ${describeForeign(owned.foreign)}, which kleinscope did not write; not removing it`,
    );
  }
  // The marker last, so an interrupted removal leaves a folder that is still recognised.
  const order = [...owned.files.filter((f) => f !== OUTPUT_MARKER), ...owned.files.filter((f) => f === OUTPUT_MARKER)];
  for (const f of order) await Deno.remove(join(dir, ...f.split("/"))).catch(ignoreNotFound);
  const folders = (await walk(dir)).filter((r) => r.endsWith("/")).sort((a, b) => b.length - a.length);
  for (const f of folders) await Deno.remove(join(dir, ...f.split("/").filter(Boolean)));
  await Deno.remove(dir);
}

function ignoreNotFound(e: unknown) {
  if (!(e instanceof Deno.errors.NotFound)) throw e;
}

function describeForeign(foreign: string[]): string {
  const shown = foreign.slice(0, 3).map((f) => printable(f)).join(", ");
  return foreign.length > 3 ? `${shown} and ${foreign.length - 3} more` : shown;
}

/** Write the marker of a folder about to be renamed into place, listing everything in it. */
export async function writeOutputMarker(dir: string, kind: string): Promise<void> {
  const files = (await walk(dir)).filter((r) => !r.endsWith("/") && r !== OUTPUT_MARKER);
  const marker: Marker = { format: MARKER_FORMAT, kind, created: new Date().toISOString(), files };
  await writeFileAtomic(join(dir, OUTPUT_MARKER), JSON.stringify(marker, null, 1) + "\n");
}

// ---- folders that must never be replaced -------------------------------------------------------------------------

/** The real path of `abs`, resolving links in the part of it that exists. */
async function realish(abs: string): Promise<string> {
  const rest: string[] = [];
  let p = abs;
  for (;;) {
    try {
      return join(await Deno.realPath(p), ...rest.reverse());
    } catch {
      const parent = dirname(p);
      if (parent === p) return abs;
      rest.push(basename(p));
      p = parent;
    }
  }
}

const inside = (child: string, parent: string) => child === parent || child.startsWith(parent.endsWith(sep) ? parent : parent + sep);

export interface OutputFolderOptions {
  /** Replace an existing, non-empty output folder (only ever one kleinscope wrote). */
  overwrite?: boolean;
  /** Folders the output may neither be, hold nor lie inside (the model folder). */
  protect?: { path: string; what: string }[];
  /** How the folder is named in messages (default "output folder"). */
  what?: string;
  /** The marker's kind (default "run"). */
  kind?: string;
}

/** Refuse a path that must never be an output folder: `.`, `..`, an ancestor of the current folder, the home folder,
 * a filesystem root, a protected folder. Throws a one-line OutputFolderError. */
export async function checkOutputPath(path: string, options: OutputFolderOptions = {}): Promise<string> {
  const what = options.what ?? "output folder";
  const shown = printable(path);
  if (path.trim() === "") throw new OutputFolderError(`${what}: an empty path names no folder`);
  const abs = resolve(path);
  const real = await realish(abs);
  const refuse = (why: string) => {
    throw new OutputFolderError(`${what} ${shown} ${why}; refusing to write there (choose a new folder)`);
  };
  if (basename(path) === "." || basename(path) === "..") refuse(`is ${basename(path)}`);
  if (real === parse(real).root) refuse("is a filesystem root");
  const home = Deno.env.get("HOME") ?? Deno.env.get("USERPROFILE");
  if (home && real === (await realish(resolve(home)))) refuse("is the home folder");
  const cwd = await realish(Deno.cwd());
  if (inside(cwd, real)) refuse(real === cwd ? "is the current folder" : "holds the current folder");
  for (const p of options.protect ?? []) {
    const other = await realish(resolve(p.path));
    if (real === other) refuse(`is the ${p.what}`);
    if (inside(other, real)) refuse(`holds the ${p.what} ${printable(p.path)}`);
    if (inside(real, other)) refuse(`is inside the ${p.what} ${printable(p.path)}`);
  }
  return abs;
}

// ---- replacing a folder ------------------------------------------------------------------------------------------

export interface PreparedOutputFolder {
  /** The output folder (absolute). */
  path: string;
  /** The sibling temporary folder to write into. */
  tmp: string;
  overwrite: boolean;
  kind: string;
  what: string;
}

/** A sibling temporary folder: `.<name>.kleinscope-<tag>-<pid>-<random>`. */
function siblingName(path: string, tag: "tmp" | "old"): string {
  return join(dirname(path), `.${basename(path)}.kleinscope-${tag}-${Deno.pid}-${rand()}`);
}

function pidIsAlive(pid: number): boolean {
  if (pid === Deno.pid) return true;
  try {
    Deno.statSync(`/proc/${pid}`);
    return true;
  } catch {
    try {
      Deno.statSync("/proc/self");
      return false; // /proc exists and has no such process
    } catch {
      return true; // cannot tell here: assume it runs
    }
  }
}

/** Temporary folders of this output left by a killed run (their process is gone): ours by name and marker. */
async function removeStaleSiblings(path: string): Promise<void> {
  const parent = dirname(path), base = basename(path);
  const pattern = new RegExp(`^\\.${base.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}\\.kleinscope-tmp-(\\d+)-[0-9a-f]{8}$`);
  let entries: Deno.DirEntry[];
  try {
    entries = await Array.fromAsync(Deno.readDir(parent));
  } catch {
    return;
  }
  for (const e of entries) {
    const m = pattern.exec(e.name);
    if (!m || !e.isDirectory || pidIsAlive(Number(m[1]))) continue;
    const dir = join(parent, e.name);
    if ((await readMarker(dir))?.kind === "partial") await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

/** Check an output folder before any expensive work and make the sibling temporary folder to write into.
 * An existing folder is accepted when it is empty, or with `overwrite` when kleinscope wrote it and it holds nothing
 * else. Nothing is touched when it is refused. */
export async function prepareOutputFolder(path: string, options: OutputFolderOptions = {}): Promise<PreparedOutputFolder> {
  const what = options.what ?? "output folder";
  const abs = await checkOutputPath(path, options);
  await checkReplaceable(abs, path, options.overwrite ?? false, what);
  const parent = dirname(abs);
  try {
    await Deno.mkdir(parent, { recursive: true });
  } catch (e) {
    throw new OutputFolderError(`${what} ${printable(path)}: cannot create ${printable(parent)}: ${(e as Error).message}`);
  }
  await removeStaleSiblings(abs);
  const tmp = siblingName(abs, "tmp");
  try {
    await Deno.mkdir(tmp);
  } catch (e) {
    throw new OutputFolderError(`${what} ${printable(path)}: cannot write into ${printable(parent)}: ${(e as Error).message}`);
  }
  const marker: Marker = { format: MARKER_FORMAT, kind: "partial", created: new Date().toISOString(), files: [] };
  await writeFileAtomic(join(tmp, OUTPUT_MARKER), JSON.stringify(marker) + "\n");
  return { path: abs, tmp, overwrite: options.overwrite ?? false, kind: options.kind ?? "run", what };
}

/** Whether the existing folder at `abs` may be replaced; throws a one-line OutputFolderError when not. Returns
 * "new", "empty" or "replace". */
async function checkReplaceable(abs: string, shown: string, overwrite: boolean, what: string): Promise<"new" | "empty" | "replace"> {
  const name = printable(shown);
  const st = await lstatOrNull(abs);
  if (!st) return "new";
  if (st.isSymlink) throw new OutputFolderError(`${what} ${name} is a symbolic link; give the folder itself`);
  if (!st.isDirectory) throw new OutputFolderError(`${what} ${name} exists and is not a folder`);
  const entries = await walk(abs);
  if (!entries.length) return "empty";
  if (!overwrite) {
    throw new OutputFolderError(`${what} ${name} is not empty (choose another, or pass --overwrite to replace a kleinscope output)`);
  }
  const owned = await ownedFiles(abs);
  if (!owned) {
    throw new OutputFolderError(
      `${what} ${name} does not look like a kleinscope output (no ${OUTPUT_MARKER}, spec.json or run.json of its own); ` +
        `--overwrite replaces only folders kleinscope wrote`,
    );
  }
  if (owned.foreign.length) {
    throw new OutputFolderError(
      `${what} ${name} holds ${describeForeign(owned.foreign)}, which kleinscope did not write; move it out or choose another folder`,
    );
  }
  return "replace";
}

/** A swap that could not complete; the finished result is kept in `kept`. */
export class OutputKeptError extends OutputFolderError {
  constructor(message: string, readonly kept: string) {
    super(message);
  }
}

/** Swap the written temporary folder in: the old folder (checked again) is renamed aside, the new one renamed into
 * place, the old one removed file by file. Returns warnings (an old folder that could not be removed is left aside). */
export async function replaceOutputFolder(prepared: PreparedOutputFolder): Promise<string[]> {
  const { path, tmp, what } = prepared;
  const warnings: string[] = [];
  await writeOutputMarker(tmp, prepared.kind);
  await syncTree(tmp);
  const kept = (why: string) => new OutputKeptError(`${what} ${printable(path)} ${why}; the result is kept in ${printable(tmp)}`, tmp);
  let state: "new" | "empty" | "replace";
  try {
    state = await checkReplaceable(path, path, prepared.overwrite, what);
  } catch (e) {
    throw kept(`changed while this run was going (${(e as Error).message})`);
  }
  if (state === "empty") await Deno.remove(path).catch(() => {}); // non-recursive: only while still empty
  if (state !== "replace") {
    try {
      await Deno.rename(tmp, path);
    } catch (e) {
      throw kept(`could not be put in place (${(e as Error).message})`);
    }
  } else {
    const aside = siblingName(path, "old");
    await Deno.rename(path, aside);
    try {
      await Deno.rename(tmp, path);
    } catch (e) {
      await Deno.rename(aside, path).catch(() => {});
      throw kept(`could not be replaced (${(e as Error).message})`);
    }
    try {
      await removeOwnedFolder(aside);
    } catch (e) {
      warnings.push(`the previous ${what} was moved to ${printable(aside)} and left there: ${(e as Error).message}`);
    }
  }
  await syncFolder(dirname(path));
  return warnings;
}

/** Remove a temporary folder made by prepareOutputFolder (a failed run). */
export async function discardOutputFolder(prepared: PreparedOutputFolder): Promise<void> {
  if (!basename(prepared.tmp).startsWith(`.${basename(prepared.path)}.kleinscope-tmp-`)) return;
  await Deno.remove(prepared.tmp, { recursive: true }).catch(() => {});
}

/** Check `path`, let `write` fill a temporary folder, then swap it into place; on failure nothing is left behind and
 * the previous folder is untouched. `write` runs after the checks, so expensive work happens only when the folder
 * can be written. */
export async function writeOutputFolder<T>(
  path: string,
  options: OutputFolderOptions & { warn?: (line: string) => void },
  write: (tmp: string) => Promise<T>,
): Promise<T> {
  const prepared = await prepareOutputFolder(path, options);
  let result: T;
  try {
    result = await write(prepared.tmp);
  } catch (e) {
    await discardOutputFolder(prepared);
    throw e;
  }
  try {
    for (const w of await replaceOutputFolder(prepared)) (options.warn ?? console.error)(`warning: ${w}`);
  } catch (e) {
    if (!(e instanceof OutputKeptError)) await discardOutputFolder(prepared);
    throw e;
  }
  return result;
}

/** `path` relative to the current folder when inside it (for messages). */
export function shownPath(path: string): string {
  const rel = relative(Deno.cwd(), path);
  return printable(rel && !rel.startsWith("..") && !isAbsolute(rel) ? rel : path);
}
