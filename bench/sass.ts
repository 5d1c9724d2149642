// What NVIDIA's driver made of our shaders: runs a benchmark with the driver's shader disk cache pointed at a fresh
// folder, takes the machine code of every compute pipeline out of that cache, disassembles it with CUDA's nvdisasm and
// prints, per pipeline, its registers and the instruction mix of its loops (how many of a loop's instructions are the
// multiply-adds the kernel exists for). This is the profile the WebGPU path does not give: the registers a thread holds,
// which decide how many workgroups share a multiprocessor, and what else each loop spends its instructions on.
//
//   deno task bench sass [--out DIR] [--arch SM90] [--nvdisasm PATH] -- <benchmark> [its options]
//   e.g. deno task bench sass --out sass -- matmul --shapes 2560,4096,4096 --config 128x128x8/8x8 --iters 1
//
// The cache layout is the driver's own and undocumented; what is read here was worked out on NVIDIA's Linux driver
// (H200, 2026-12-04): files *.bin holding zstd frames, the pipelines' frames beginning "NVDANVVM" with a table of
// sections whose type 1 is the raw instruction stream (16-byte instructions). Anything else is reported, not guessed.

import { parseArgs } from "node:util";
import { join, resolve } from "node:path";
import { zstdDecompressSync } from "node:zlib";
import { benchCommandLine, formatTable } from "./common.ts";

/** The benchmarks of bench/run.ts this can run (not itself). */
const BENCHES = ["matmul", "attention", "vae", "dit", "text_encoder", "pipeline", "summary", "ceilings"];

export const USAGE = `usage: deno task bench sass [--out DIR] [--arch SMxy] [--nvdisasm PATH] -- <benchmark> [options]
Runs the benchmark (a name from bench/run.ts) with NVIDIA's shader disk cache in a fresh folder, disassembles every
compute pipeline the driver compiled (CUDA's nvdisasm, -b SMxy; default: the first GPU's compute capability from
nvidia-smi) and prints registers and the instruction mix of each loop; --out keeps the .sass listings.`;

const ZSTD_MAGIC = [0x28, 0xb5, 0x2f, 0xfd];
const PIPELINE_MAGIC = "NVDANVVM";
/** Section type of the instruction stream in a pipeline entry's table. */
const CODE_SECTION = 1;

/** The machine code of one cached pipeline. */
export interface CachedCode {
  /** Where it came from: cache file and frame number. */
  source: string;
  code: Uint8Array;
}

/** Positions of zstd frame starts in a cache file. */
function frameStarts(bytes: Uint8Array): number[] {
  const starts: number[] = [];
  for (let i = 0; i + 4 <= bytes.length; i++) {
    if (bytes[i] === ZSTD_MAGIC[0] && bytes[i + 1] === ZSTD_MAGIC[1] && bytes[i + 2] === ZSTD_MAGIC[2] && bytes[i + 3] === ZSTD_MAGIC[3]) {
      starts.push(i);
    }
  }
  return starts;
}

/** Decompress the frame at `start`, whose compressed bytes end before `end` (the next frame or the file's end; the
 * bytes between are the cache's own framing, which zstd refuses, so shorter ends are tried). */
function decompressFrame(bytes: Uint8Array, start: number, end: number): Uint8Array | null {
  for (let stop = end; stop > start + 8 && stop >= end - 64; stop--) {
    try {
      return new Uint8Array(zstdDecompressSync(bytes.subarray(start, stop)));
    } catch {
      // a frame followed by framing bytes: try one byte shorter
    }
  }
  return null;
}

/** The instruction stream of a pipeline entry ("NVDANVVM", then a table of 32-byte sections at offset 0x28, each
 * type, size, offset (from byte 8) as u32), or null when the entry is not a pipeline. Throws on a pipeline entry whose
 * table does not hold a well-formed code section, naming the entry. */
export function pipelineCode(entry: Uint8Array, source: string): Uint8Array | null {
  if (entry.length < 0x48 || new TextDecoder().decode(entry.subarray(0, 8)) !== PIPELINE_MAGIC) return null;
  const view = new DataView(entry.buffer, entry.byteOffset, entry.byteLength);
  for (let at = 0x28; at + 32 <= entry.length && at < 0x28 + 32 * 16; at += 32) {
    const type = view.getUint32(at, true), size = view.getUint32(at + 4, true), offset = view.getUint32(at + 8, true) + 8;
    if (type === CODE_SECTION) {
      if (size === 0 || size % 16 !== 0 || offset + size > entry.length) {
        throw new Error(`${source}: code section of ${size} bytes at ${offset} does not fit the ${entry.length}-byte entry`);
      }
      return entry.subarray(offset, offset + size);
    }
  }
  throw new Error(`${source}: a pipeline entry without a code section (type ${CODE_SECTION}) in its table`);
}

/** Every pipeline's machine code in a cache folder (searched recursively for *.bin). */
export function readShaderCache(dir: string): CachedCode[] {
  const found: CachedCode[] = [];
  const walk = (path: string) => {
    for (const e of Deno.readDirSync(path)) {
      const full = join(path, e.name);
      if (e.isDirectory) walk(full);
      else if (e.isFile && e.name.endsWith(".bin")) {
        const bytes = Deno.readFileSync(full);
        const starts = frameStarts(bytes);
        starts.forEach((start, n) => {
          const entry = decompressFrame(bytes, start, starts[n + 1] ?? bytes.length);
          const code = entry && pipelineCode(entry, `${full} frame ${n}`);
          if (code) found.push({ source: `${full} frame ${n}`, code });
        });
      }
    }
  };
  walk(dir);
  return found;
}

/** One disassembled instruction. */
export interface Instruction {
  address: number;
  /** Opcode with its modifiers, e.g. "FFMA.FTZ", "LDS.128". */
  opcode: string;
  /** Branch target of a BRA, if any. */
  target?: number;
  registers: number[];
}

/** Instructions of an nvdisasm listing ("/*0x1c90*\/  @P0 LDS.128 R40, [R101+0x2200] ;"). */
export function parseSass(listing: string): Instruction[] {
  const out: Instruction[] = [];
  for (const line of listing.split("\n")) {
    const m = /^\s*\/\*([0-9a-f]{4,})\*\/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)\s*([^;]*);/.exec(line);
    if (!m) continue;
    const ins: Instruction = { address: parseInt(m[1], 16), opcode: m[2], registers: [] };
    for (const r of m[3].matchAll(/\bR(\d+)\b/g)) ins.registers.push(Number(r[1]));
    const target = /^BRA\b/.test(m[2]) ? /0x([0-9a-f]+)/.exec(m[3]) : null;
    if (target) ins.target = parseInt(target[1], 16);
    out.push(ins);
  }
  return out;
}

/** Opcode groups counted in a loop's mix. */
const GROUPS: [string, RegExp][] = [
  ["FFMA", /^FFMA\b/],
  ["HFMA2", /^HFMA2\b(?!\.MMA)/],
  ["LDS", /^LDS\b/],
  ["STS", /^STS\b/],
  ["LDG", /^LDG\b/],
  ["STG", /^STG\b/],
  ["BAR", /^BAR\b/],
  ["MUFU", /^MUFU\b/],
];

export interface LoopMix {
  /** First and last address of the loop body (the last is its backward branch). */
  from: number;
  to: number;
  instructions: number;
  /** Instructions per group of GROUPS, and "other". */
  counts: Record<string, number>;
}

export interface SassSummary {
  instructions: number;
  /** Highest general register named, plus one: the registers a thread holds (the driver may round up). */
  registers: number;
  /** Loops (backward branches), longest first. */
  loops: LoopMix[];
}

export function summarizeSass(instructions: Instruction[]): SassSummary {
  const registers = instructions.reduce((m, i) => Math.max(m, ...i.registers.map((r) => r + 1)), 0);
  const loops: LoopMix[] = [];
  for (const branch of instructions) {
    if (branch.target === undefined || branch.target >= branch.address) continue;
    const body = instructions.filter((i) => i.address >= branch.target! && i.address <= branch.address);
    const counts: Record<string, number> = { other: 0 };
    for (const [name] of GROUPS) counts[name] = 0;
    for (const i of body) {
      const group = GROUPS.find(([, re]) => re.test(i.opcode));
      counts[group ? group[0] : "other"]++;
    }
    loops.push({ from: branch.target, to: branch.address, instructions: body.length, counts });
  }
  loops.sort((a, b) => b.instructions - a.instructions);
  return { instructions: instructions.length, registers, loops };
}

function run(cmd: string, args: string[]): string {
  let r: Deno.CommandOutput;
  try {
    r = new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).outputSync();
  } catch (e) {
    throw new Error(`cannot run ${cmd}: ${(e as Error).message}`);
  }
  const text = new TextDecoder().decode(r.stdout) + new TextDecoder().decode(r.stderr);
  if (!r.success) throw new Error(`${cmd} ${args.join(" ")} failed (exit ${r.code}): ${text.slice(0, 400)}`);
  return text;
}

/** /usr/local/cuda-* folders (none where /usr/local cannot be read). */
function cudaFolders(): string[] {
  try {
    return [...Deno.readDirSync("/usr/local")].filter((e) => e.name.startsWith("cuda-")).map((e) => e.name).sort().reverse();
  } catch {
    return [];
  }
}

function findNvdisasm(given?: string): string {
  const candidates = given ? [given] : [
    ...(Deno.env.get("CUDA_HOME") ? [join(Deno.env.get("CUDA_HOME")!, "bin/nvdisasm")] : []),
    "/usr/local/cuda/bin/nvdisasm",
    ...cudaFolders().map((name) => `/usr/local/${name}/bin/nvdisasm`),
  ];
  for (const c of candidates) {
    try {
      if (Deno.statSync(c).isFile) return c;
    } catch {
      // not there
    }
  }
  throw new Error(`nvdisasm not found (tried ${candidates.join(", ")}): install CUDA's toolkit or pass --nvdisasm PATH`);
}

function gpuArch(): string {
  const cap = run("nvidia-smi", ["--query-gpu=compute_cap", "--format=csv,noheader"]).trim().split("\n")[0];
  if (!/^\d+\.\d+$/.test(cap)) throw new Error(`nvidia-smi gave compute capability "${cap}": pass --arch SMxy`);
  return `SM${cap.replace(".", "")}`;
}

async function main() {
  const split = Deno.args.indexOf("--");
  const own = split < 0 ? Deno.args : Deno.args.slice(0, split);
  const benchmark = split < 0 ? [] : Deno.args.slice(split + 1);
  const parsed = benchCommandLine(own, USAGE, (args) => {
    const { values } = parseArgs({
      args,
      options: { out: { type: "string" }, arch: { type: "string" }, nvdisasm: { type: "string" } },
      strict: true,
      allowPositionals: false,
    });
    if (!benchmark.length) throw new Error(`name the benchmark to run after "--"`);
    if (!BENCHES.includes(benchmark[0])) throw new Error(`"${benchmark[0]}" is not a benchmark (${BENCHES.join(", ")})`);
    if (values.arch !== undefined && !/^SM\d+a?$/.test(values.arch)) throw new Error(`--arch: "${values.arch}" is not SMxy, e.g. SM90`);
    return values;
  });
  if (parsed === "help") return;
  const nvdisasm = findNvdisasm(parsed.nvdisasm);
  const arch = parsed.arch ?? gpuArch();

  const cache = Deno.makeTempDirSync({ prefix: "kleinscope-shader-cache-" });
  try {
    const script = new URL(`./${benchmark[0]}.ts`, import.meta.url).pathname;
    const child = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", script, ...benchmark.slice(1)],
      env: { __GL_SHADER_DISK_CACHE: "1", __GL_SHADER_DISK_CACHE_PATH: cache, __GL_SHADER_DISK_CACHE_SKIP_CLEANUP: "1" },
      stdout: "inherit",
      stderr: "inherit",
    }).spawn();
    const status = await child.status;
    if (!status.success) throw new Error(`bench ${benchmark.join(" ")} failed (exit ${status.code})`);

    const pipelines = readShaderCache(cache);
    if (!pipelines.length) throw new Error(`the driver cached no pipelines in ${cache} (not NVIDIA's driver, or its cache is off)`);
    const out = parsed.out ? resolve(parsed.out) : null;
    if (out) Deno.mkdirSync(out, { recursive: true });
    const rows: string[][] = [];
    pipelines.forEach((p, n) => {
      const raw = join(cache, `pipeline${n}.raw`);
      Deno.writeFileSync(raw, p.code);
      const listing = run(nvdisasm, ["-b", arch, raw]);
      if (out) Deno.writeTextFileSync(join(out, `pipeline${n}.sass`), listing);
      const s = summarizeSass(parseSass(listing));
      const loop = s.loops[0];
      const mix = loop ? Object.entries(loop.counts).filter(([, v]) => v > 0).map(([k, v]) => `${k} ${v}`).join(", ") : "no loop";
      const fma = loop ? (loop.counts.FFMA + loop.counts.HFMA2) / loop.instructions : 0;
      rows.push([
        `pipeline${n}`,
        String(s.instructions),
        String(s.registers),
        loop ? String(loop.instructions) : "",
        loop ? `${(100 * fma).toFixed(0)}%` : "",
        mix,
      ]);
    });
    console.log(`\n${arch}, ${pipelines.length} pipelines (${nvdisasm}); largest loop of each:`);
    console.log(formatTable(["pipeline", "instructions", "registers", "loop length", "FMA share", "loop mix"], rows));
    if (out) console.log(`listings in ${out}`);
  } finally {
    Deno.removeSync(cache, { recursive: true });
  }
}

if (import.meta.main) await main();
