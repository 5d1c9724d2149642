// Pieces shared by the generation commands: usage errors (exit code 2), option parsing, output paths checked
// before any expensive work, and human-readable sizes and times.

import { dirname, isAbsolute, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { printable } from "../runtime/printable.ts";

/** The tiny random-weight checkpoint shipped with the tests, so every command runs out of the box. */
export const BUNDLED_MODEL_DIR = fileURLToPath(new URL("../tests/fixtures/klein-tiny/model", import.meta.url));

/** A mistake in the command line itself: reported in one line, exit code 2. */
export class UsageError extends Error {}

/** A mistake in how the command was called: a UsageError, or one of node:util parseArgs' own (unknown option,
 * missing value, unexpected argument), whichever command's parser raised it. */
export function isUsageMistake(e: unknown): boolean {
  if (e instanceof UsageError) return true;
  const code = (e as { code?: unknown } | null)?.code;
  return typeof code === "string" && code.startsWith("ERR_PARSE_ARGS_");
}

/** The one-line message of a usage mistake. parseArgs messages run over several lines and sentences with hints that
 * do not apply here; the first sentence is kept. */
function usageMessage(e: Error): string {
  if (e instanceof UsageError) return e.message;
  const first = e.message.split("\n")[0].split(". ")[0].replace(/\.$/, "");
  const dashHint = /argument is ambiguous/.test(first) ? " (write --option=VALUE for a value that starts with -)" : "";
  return first + dashHint;
}

/** Print an error that ended a command and return its exit code: usage mistakes one line and 2, other errors one
 * line (the stack with KLEINSCOPE_DEBUG=1) and 1. The one place where the command line turns errors into codes. */
export function reportError(e: unknown, command?: string): number {
  const err = e instanceof Error ? e : new Error(String(e));
  if (isUsageMistake(err)) {
    console.error(`error: ${printable(usageMessage(err))}${command ? ` (see deno task ${printable(command)} --help)` : ""}`);
    return 2;
  }
  console.error(`error: ${err.message}`);
  if (Deno.env.get("KLEINSCOPE_DEBUG")) console.error(err.stack);
  return 1;
}

/** Run a command body, turning a usage mistake into one line on stderr and exit code 2. Other errors propagate
 * (cli.ts prints them in one line with exit code 1). */
export async function withUsageErrors(command: string, body: () => Promise<number>): Promise<number> {
  try {
    return await body();
  } catch (e) {
    if (!isUsageMistake(e)) throw e;
    return reportError(e, command);
  }
}

/** Call node:util parseArgs (strict), turning its errors (unknown option, missing value) into UsageErrors. */
export function parseOrUsageError<R>(parse: () => R): R {
  try {
    return parse();
  } catch (e) {
    if (!isUsageMistake(e)) throw e;
    throw new UsageError(usageMessage(e as Error));
  }
}

/** A whole number ≥ min given as an option value. */
export function integerOption(name: string, value: string | undefined, min: number): number | undefined {
  if (value === undefined) return undefined;
  if (!/^[+]?\d+$/.test(value.trim())) throw new UsageError(`--${name} ${JSON.stringify(value)} is not a whole number`);
  const n = Number(value);
  if (!Number.isSafeInteger(n) || n < min) throw new UsageError(`--${name} ${value} must be at least ${min}`);
  return n;
}

/** A finite number given as an option value. */
export function numberOption(name: string, value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (value.trim() === "" || !Number.isFinite(n)) throw new UsageError(`--${name} ${JSON.stringify(value)} is not a number`);
  return n;
}

/** An image side given on the command line: a positive multiple of 16 (two 2× VAE stages and 2×2 latent patches).
 * Others are refused, not rounded, so the size written is the size asked for; the message names the nearest multiple. */
export function sideOption(name: string, value: string | undefined): number | undefined {
  const n = integerOption(name, value, 1);
  if (n === undefined || n % 16 === 0) return n;
  const below = Math.floor(n / 16) * 16, above = below + 16;
  const suggestion = below === 0
    ? `${above}`
    : n - below < above - n
    ? `${below}`
    : n - below > above - n
    ? `${above}`
    : `${below} or ${above}`;
  throw new UsageError(`--${name} ${n} is not a multiple of 16 (nearest: ${suggestion})`);
}

/** A path as the user would like to read it: relative to the working folder when inside it. */
export function displayPath(path: string): string {
  const rel = relative(Deno.cwd(), path);
  return rel && !rel.startsWith("..") && !isAbsolute(rel) ? rel : path;
}

/** `out/<command>-YYYYMMDD-HHMMSS.png`, with a counter if that name is taken. */
export function defaultOutputPath(command: string, now = new Date()): string {
  const p = (n: number) => String(n).padStart(2, "0");
  const stamp = `${now.getFullYear()}${p(now.getMonth() + 1)}${p(now.getDate())}-${p(now.getHours())}${p(now.getMinutes())}${
    p(now.getSeconds())
  }`;
  for (let i = 1;; i++) {
    const path = join("out", `${command}-${stamp}${i > 1 ? `-${i}` : ""}.png`);
    if (!exists(path)) return path;
  }
}

function exists(path: string): boolean {
  try {
    Deno.lstatSync(path);
    return true;
  } catch {
    return false;
  }
}

/** Make sure `path` can be written before any expensive work: its folder is created if needed, must accept a new
 * file (a probe file is written and removed), and the path must be new or a regular file. Returns the absolute path. */
export async function prepareOutputFile(path: string, what: string): Promise<string> {
  const abs = resolve(path);
  try {
    const st = await Deno.lstat(abs);
    if (st.isDirectory) throw new Error(`${what} ${path} is a folder, expected a file name`);
    if (!st.isFile) throw new Error(`${what} ${path} exists and is not a regular file; refusing to replace it`);
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) {
      if (e instanceof Deno.errors.NotADirectory) throw new Error(`${what} ${path}: a parent of it is a file, not a folder`);
      throw e;
    }
  }
  const folder = dirname(abs);
  try {
    await Deno.mkdir(folder, { recursive: true });
  } catch (e) {
    throw new Error(`${what} ${path}: cannot create its folder ${displayPath(folder)}: ${fsReason(e)}`);
  }
  const probe = join(folder, `.kleinscope-write-probe-${crypto.randomUUID()}`);
  try {
    await Deno.writeFile(probe, new Uint8Array(1));
  } catch (e) {
    throw new Error(`${what} ${path}: its folder ${displayPath(folder)} is not writable: ${fsReason(e)}`);
  } finally {
    await Deno.remove(probe).catch(() => {});
  }
  return abs;
}

/** The short reason of a file-system error. */
export function fsReason(e: unknown): string {
  if (e instanceof Deno.errors.NotFound) return "no such file or folder";
  if (e instanceof Deno.errors.PermissionDenied) return "permission denied";
  if (e instanceof Deno.errors.NotADirectory) return "a parent of it is a file, not a folder";
  if (e instanceof Deno.errors.AlreadyExists) return "a file of that name is in the way";
  return (e as Error).message ?? String(e);
}

/** 1536 → "1.5 KB" (decimal units, as download sizes are usually given). */
export function formatBytes(n: number): string {
  const units = ["B", "KB", "MB", "GB", "TB"];
  let v = n, u = 0;
  while (v >= 1000 && u < units.length - 1) {
    v /= 1000;
    u++;
  }
  return u === 0 ? `${n} B` : `${v.toFixed(v < 10 ? 2 : v < 100 ? 1 : 0)} ${units[u]}`;
}

/** 850 → "850 ms", 12345 → "12.3 s". */
export function formatMs(ms: number): string {
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(ms < 10000 ? 2 : 1)} s`;
}
