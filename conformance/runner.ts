// The conformance runner: replays the reference cases of a golden folder (cases.json + cases/*.safetensors)
// with the project's implementation and compares every expected tensor under the reference's tolerances.

import { join } from "node:path";
import { SafetensorsFile } from "../weights/safetensors.ts";
import { decodeToF32 } from "../weights/dtypes.ts";

export interface GoldenCase {
  name: string;
  kind: string;
  file: string;
  tensors: Record<string, number[]>;
  [field: string]: unknown;
}

export interface GoldenSuite {
  dir: string;
  variant?: string;
  model_dir: string;
  bfl_transformer?: string;
  block_names: string[];
  text_len: number;
  cases: GoldenCase[];
}

export type Computed = Float32Array | Float64Array | Int32Array | BigInt64Array | number[];

export interface CaseContext {
  suite: GoldenSuite;
  case: GoldenCase;
  /** Absolute path of a file named relative to the golden folder. */
  path(relative: string): string;
  /** The pipeline checkpoint folder of the suite. */
  modelDir: string;
  /** A tensor of the case file, decoded to f32 (integers too, exactly while |v| < 2^24). */
  tensor(name: string): Promise<Float32Array>;
  /** An integer tensor of the case file as exact 64-bit integers. */
  intTensor(name: string): Promise<BigInt64Array>;
  /** A tensor of another case of the suite (interventions that take a source run). */
  caseTensor(other: GoldenCase, name: string): Promise<Float32Array>;
}

export interface KindHandler {
  kind: string;
  /** Tensors of the case file that are inputs (everything else is an expected output). */
  inputs: readonly string[];
  run(ctx: CaseContext): Promise<Record<string, Computed>>;
}

export type Verdict = "pass" | "fail" | "skip";

export interface CaseResult {
  name: string;
  kind: string;
  verdict: Verdict;
  worstRelL2: number;
  worstAbs: number;
  ms: number;
  /** For failures: which tensors failed and why; for skips: why. */
  notes: string[];
}

const STRICT_KINDS = new Set(["schedule", "text_encoder", "vae_encode", "vae_decode", "dit_forward"]);
const IMAGE_MAX_ABS = 1e-4;

/** Relative L2 tolerance for a kind, as the golden README defines it. */
export function kindTolerance(kind: string): number {
  return STRICT_KINDS.has(kind) ? 1e-5 : 2e-5;
}

export async function loadSuite(dir: string): Promise<GoldenSuite> {
  const file = join(dir, "cases.json");
  let text: string;
  try {
    text = await Deno.readTextFile(file);
  } catch (e) {
    throw new Error(`cannot read ${file}: ${(e as Error).message}`);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new Error(`${file} is not valid JSON: ${(e as Error).message}`);
  }
  const suite = json as GoldenSuite;
  if (!suite || !Array.isArray(suite.cases)) throw new Error(`${file}: expected an object with a "cases" array`);
  for (const [i, c] of suite.cases.entries()) {
    if (typeof c?.name !== "string" || typeof c.kind !== "string" || typeof c.file !== "string" || typeof c.tensors !== "object") {
      throw new Error(`${file}: case #${i} needs string "name", "kind", "file" and an object "tensors"`);
    }
  }
  return { ...suite, dir };
}

function compare(kind: string, name: string, got: Computed, want: Float32Array | BigInt64Array, shape: number[]) {
  const n = shape.reduce((a, b) => a * b, 1);
  if (got.length !== n) {
    return { rel: Infinity, abs: Infinity, ok: false, why: `${name}: got ${got.length} values, expected ${n} (${shape.join("×")})` };
  }
  if (want instanceof BigInt64Array) {
    for (let i = 0; i < n; i++) {
      const g = typeof got[i] === "bigint" ? (got[i] as bigint) : BigInt(Math.round(Number(got[i])));
      if (g !== want[i] || (typeof got[i] === "number" && !Number.isInteger(got[i]))) {
        return { rel: Infinity, abs: Infinity, ok: false, why: `${name}: integer mismatch at ${i}: got ${got[i]}, expected ${want[i]}` };
      }
    }
    return { rel: 0, abs: 0, ok: true, why: "" };
  }
  let num = 0, den = 0, abs = 0, nan = false;
  for (let i = 0; i < n; i++) {
    const g = Number(got[i]);
    if (Number.isNaN(g)) nan = true;
    const d = g - want[i];
    num += d * d;
    den += want[i] * want[i];
    if (Math.abs(d) > abs) abs = Math.abs(d);
  }
  const rel = nan ? Infinity : den > 0 ? Math.sqrt(num / den) : Math.sqrt(num);
  if (nan) return { rel, abs: Infinity, ok: false, why: `${name}: contains NaN` };
  const tol = kindTolerance(kind);
  const isImage = name === "image" && kind !== "vae_decode";
  const ok = isImage ? abs <= IMAGE_MAX_ABS && rel <= tol : rel <= tol;
  const why = ok
    ? ""
    : isImage
    ? `${name}: rel L2 ${rel.toExponential(2)}, max |Δ| ${abs.toExponential(2)} (limits ${tol}, ${IMAGE_MAX_ABS})`
    : `${name}: rel L2 ${rel.toExponential(2)} > ${tol}`;
  return { rel, abs, ok, why };
}

export async function runCase(suite: GoldenSuite, c: GoldenCase, handler: KindHandler): Promise<CaseResult> {
  const t0 = performance.now();
  const file = await SafetensorsFile.open(join(suite.dir, c.file));
  try {
    const ctx: CaseContext = {
      suite,
      case: c,
      modelDir: join(suite.dir, suite.model_dir),
      path: (rel) => join(suite.dir, rel),
      tensor: async (name) => {
        const info = file.tensors.get(name);
        if (!info) throw new Error(`case ${c.name}: its file has no tensor ${name}`);
        return decodeToF32(await file.readBytes(name), info.dtype);
      },
      caseTensor: async (other, name) => {
        const f = await SafetensorsFile.open(join(suite.dir, other.file));
        try {
          const info = f.tensors.get(name);
          if (!info) throw new Error(`case ${other.name}: its file has no tensor ${name}`);
          return decodeToF32(await f.readBytes(name), info.dtype);
        } finally {
          f.close();
        }
      },
      intTensor: async (name) => {
        const info = file.tensors.get(name);
        if (!info || info.dtype !== "I64") throw new Error(`case ${c.name}: no I64 tensor ${name}`);
        const bytes = await file.readBytes(name);
        return new BigInt64Array(bytes.slice().buffer);
      },
    };
    const computed = await handler.run(ctx);
    const ms = performance.now() - t0;
    let worstRel = 0, worstAbs = 0;
    const notes: string[] = [];
    for (const [name, shape] of Object.entries(c.tensors)) {
      if (handler.inputs.includes(name)) continue;
      const got = computed[name];
      if (got === undefined) {
        notes.push(`${name}: not produced`);
        worstRel = Infinity;
        continue;
      }
      const info = file.tensors.get(name);
      if (!info) throw new Error(`case ${c.name}: cases.json lists ${name} but its file does not hold it`);
      const want = info.dtype === "I64" ? await ctx.intTensor(name) : await ctx.tensor(name);
      const r = compare(c.kind, name, got, want, shape);
      worstRel = Math.max(worstRel, r.rel);
      worstAbs = Math.max(worstAbs, r.abs);
      if (!r.ok) notes.push(r.why);
    }
    return { name: c.name, kind: c.kind, verdict: notes.length ? "fail" : "pass", worstRelL2: worstRel, worstAbs, ms, notes };
  } finally {
    file.close();
  }
}

export interface ConformanceSummary {
  results: CaseResult[];
  passed: number;
  failed: number;
  skipped: number;
  skippedKinds: string[];
}

export async function runConformance(
  dir: string,
  handlers: KindHandler[],
  options: { only?: string[]; cases?: string[]; log?: (line: string) => void } = {},
): Promise<ConformanceSummary> {
  const suite = await loadSuite(dir);
  const byKind = new Map(handlers.map((h) => [h.kind, h]));
  const log = options.log ?? (() => {});
  const results: CaseResult[] = [];
  const skippedKinds = new Set<string>();
  const widths = [28, 13, 10, 10, 9];
  log(
    [
      "case".padEnd(widths[0]),
      "kind".padEnd(widths[1]),
      "rel L2".padEnd(widths[2]),
      "max |Δ|".padEnd(widths[3]),
      "time".padEnd(widths[4]),
      "verdict",
    ].join(" "),
  );
  for (const c of suite.cases) {
    if (options.only && !options.only.includes(c.kind)) continue;
    if (options.cases && !options.cases.includes(c.name)) continue;
    const handler = byKind.get(c.kind);
    let r: CaseResult;
    if (!handler) {
      skippedKinds.add(c.kind);
      r = {
        name: c.name,
        kind: c.kind,
        verdict: "skip",
        worstRelL2: NaN,
        worstAbs: NaN,
        ms: 0,
        notes: [`kind ${c.kind} is not implemented`],
      };
    } else {
      try {
        r = await runCase(suite, c, handler);
      } catch (e) {
        r = {
          name: c.name,
          kind: c.kind,
          verdict: "fail",
          worstRelL2: Infinity,
          worstAbs: Infinity,
          ms: 0,
          notes: [`error: ${(e as Error).message}`],
        };
      }
    }
    results.push(r);
    const fmt = (x: number) => (Number.isNaN(x) ? "-" : x.toExponential(2));
    log(
      [
        r.name.padEnd(widths[0]),
        r.kind.padEnd(widths[1]),
        fmt(r.worstRelL2).padEnd(widths[2]),
        fmt(r.worstAbs).padEnd(widths[3]),
        (r.verdict === "skip" ? "-" : `${(r.ms / 1000).toFixed(2)}s`).padEnd(widths[4]),
        r.verdict,
      ].join(" "),
    );
    for (const note of r.verdict === "fail" ? r.notes : []) log(`    ${note}`);
  }
  const passed = results.filter((r) => r.verdict === "pass").length;
  const failed = results.filter((r) => r.verdict === "fail").length;
  const skipped = results.filter((r) => r.verdict === "skip").length;
  if (skippedKinds.size) log(`skipped kinds (not implemented): ${[...skippedKinds].join(", ")}`);
  log(`${passed} passed, ${failed} failed, ${skipped} skipped`);
  return { results, passed, failed, skipped, skippedKinds: [...skippedKinds] };
}
