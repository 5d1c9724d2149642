// Small pieces the benchmark scripts share: statistics, number and table formatting, seeded random inputs, and
// running a subprocess with its output captured (the PyTorch baselines run as `python3` subprocesses).

import { parseArgs } from "node:util";

/** Median of a non-empty list. */
export function median(values: number[]): number {
  if (!values.length) throw new Error("median of an empty list");
  const s = [...values].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}

/** Columns padded to their widest cell, a dashed rule under the head. */
export function formatTable(head: string[], rows: string[][]): string {
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)));
  const line = (r: string[]) => r.map((c, i) => (c ?? "").padEnd(widths[i])).join("  ").trimEnd();
  return [line(head), line(widths.map((w) => "-".repeat(w))), ...rows.map(line)].join("\n");
}

/** Bytes in decimal gigabytes, e.g. "18.03 GB" (small sizes in MB so tiny models still read). */
export function formatGB(bytes: number): string {
  return bytes >= 1e9 ? `${(bytes / 1e9).toFixed(2)} GB` : `${(bytes / 1e6).toFixed(1)} MB`;
}

/** Milliseconds with three significant digits at least one decimal: "812.3", "53.04", "0.412". */
export function formatMs(ms: number): string {
  return ms >= 100 ? ms.toFixed(1) : ms.toPrecision(3);
}

/** Three significant digits, so that software adapters (thousandths of a TFLOP/s) still read. */
export function formatTflops(v: number): string {
  return v >= 100 ? v.toFixed(1) : v.toPrecision(3);
}

/** Fast seeded standard normals (mulberry32 uniforms, Box–Muller) for benchmark inputs of millions of values; not
 * the documented runtime/random.ts generator, which is exact but too slow at this scale. */
export function seededNormals(count: number, seed: number, scale = 1): Float32Array {
  let state = seed >>> 0;
  const uniform = () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (((t ^ (t >>> 14)) >>> 0) + 0.5) / 4294967296; // in (0, 1): safe for the logarithm
  };
  const out = new Float32Array(count);
  for (let i = 0; i < count; i += 2) {
    const r = Math.sqrt(-2 * Math.log(uniform()));
    const angle = 2 * Math.PI * uniform();
    out[i] = r * Math.cos(angle) * scale;
    if (i + 1 < count) out[i + 1] = r * Math.sin(angle) * scale;
  }
  return out;
}

export interface CommandResult {
  code: number;
  stdout: string;
  stderr: string;
  /** Wall-clock duration of the command. */
  ms: number;
}

/** Run a command to completion with its output captured. Throws only when it cannot be started (e.g. not installed). */
export async function runCommand(
  cmd: string,
  args: string[],
  options: { cwd?: string; env?: Record<string, string> } = {},
): Promise<CommandResult> {
  const t0 = performance.now();
  let output: Deno.CommandOutput;
  try {
    output = await new Deno.Command(cmd, { args, cwd: options.cwd, env: options.env, stdout: "piped", stderr: "piped" }).output();
  } catch (e) {
    throw new Error(`cannot run ${cmd}: ${(e as Error).message}`);
  }
  const decoder = new TextDecoder();
  return { code: output.code, stdout: decoder.decode(output.stdout), stderr: decoder.decode(output.stderr), ms: performance.now() - t0 };
}

/** The last `lines` lines of a command's output, for error messages that must stay short. */
export function tail(text: string, lines = 12): string {
  return text.trimEnd().split("\n").slice(-lines).join("\n");
}

/** Cheap deterministic data in [-1, 1) (xorshift32): the timed tensors hold tens of millions of values. */
export function fillUniform(n: number, seed: number): Float32Array {
  const out = new Float32Array(n);
  let x = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    out[i] = x / 2147483648 - 1;
  }
  return out;
}

/** The first of `python3`, `/usr/bin/python3` that runs `code` (e.g. "import torch"), or null. */
export async function pythonThat(code: string): Promise<string | null> {
  for (const python of ["python3", "/usr/bin/python3"]) {
    try {
      if ((await runCommand(python, ["-c", code])).code === 0) return python;
    } catch {
      // not installed
    }
  }
  return null;
}

/** Whether a file or folder exists at `path` (other errors, e.g. no permission, are thrown). */
export async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return false;
    throw e;
  }
}

/** A benchmark script's command line: with --help or -h, prints `usage` and returns "help" (the caller exits 0);
 * else returns `parse(args)`, and when that throws (an unknown or malformed option) prints `error: …` and the usage
 * and exits with code 2, before any GPU work. */
export function benchCommandLine<T>(args: string[], usage: string, parse: (args: string[]) => T): T | "help" {
  if (args.includes("--help") || args.includes("-h")) {
    console.log(usage);
    return "help";
  }
  try {
    return parse(args);
  } catch (e) {
    console.error(`error: ${(e as Error).message}\n\n${usage}`);
    Deno.exit(2);
  }
}

/** benchCommandLine with node:util parseArgs over `options`. */
export function parseBenchArgs<O extends Record<string, { type: "string" | "boolean"; default?: string | boolean; multiple?: boolean }>>(
  args: string[],
  options: O,
  usage: string,
): ReturnType<typeof parseArgs<{ args: string[]; options: O }>>["values"] | "help" {
  return benchCommandLine(args, usage, (a) => parseArgs({ args: a, options }).values);
}
