// `deno task inspect <path>`: a table of every tensor (name, dtype, shape) of a safetensors file, a checkpoint
// folder (sharded or not), or each component of a pipeline folder (one with model_index.json).

import { Checkpoint, joinPath, naturalCompare } from "./checkpoint.ts";
import { printable } from "../runtime/printable.ts";

// Names come from files: each is shown through printable(), so a name holding terminal escapes cannot move the
// cursor or clear the screen.

/** The tensor table and summary of a checkpoint, or of every component of a pipeline folder. */
export async function inspectCheckpoint(path: string): Promise<string> {
  let isPipeline = false;
  try {
    isPipeline = (await Deno.stat(path)).isDirectory && (await Deno.stat(joinPath(path, "model_index.json"))).isFile;
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  if (!isPipeline) return await inspectOne(path, path);
  const components: string[] = [];
  for await (const e of Deno.readDir(path)) {
    if (!e.isDirectory) continue;
    for await (const f of Deno.readDir(joinPath(path, e.name))) {
      if (f.name.endsWith(".safetensors") || f.name.endsWith(".safetensors.index.json")) {
        components.push(e.name);
        break;
      }
    }
  }
  if (!components.length) throw new Error(`pipeline folder ${printable(path)}: no component subfolder holds .safetensors files`);
  components.sort();
  const sections: string[] = [];
  let tensors = 0, bytes = 0, shards = 0;
  for (const c of components) {
    const ckpt = await Checkpoint.open(joinPath(path, c));
    try {
      sections.push(render(`${printable(c)}/`, ckpt));
      tensors += ckpt.names().length;
      bytes += ckpt.totalBytes();
      shards += ckpt.files.length;
    } finally {
      ckpt.close();
    }
  }
  sections.push(
    `pipeline ${printable(path)}: ${components.length} components (${printable(components.join(", "))}), ${tensors} tensors, ` +
      `${formatBytes(bytes)}, ${shards} ${shards === 1 ? "shard" : "shards"}`,
  );
  return sections.join("\n\n");
}

async function inspectOne(path: string, title: string): Promise<string> {
  const ckpt = await Checkpoint.open(path);
  try {
    return render(printable(title), ckpt);
  } finally {
    ckpt.close();
  }
}

function render(title: string, ckpt: Checkpoint): string {
  const names = ckpt.names();
  const rows = names.map((n) => {
    const t = ckpt.info(n);
    return [printable(n), t.dtype, `[${t.shape.join(", ")}]`];
  });
  const header = ["name", "dtype", "shape"];
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (r: string[]) => r.map((c, i) => (i < r.length - 1 ? c.padEnd(widths[i]) : c)).join("  ");
  const dtypes = new Map<string, number>();
  let params = 0;
  for (const n of names) {
    const t = ckpt.info(n);
    dtypes.set(t.dtype, (dtypes.get(t.dtype) ?? 0) + 1);
    params += t.shape.reduce((a, b) => a * b, 1);
  }
  const shardNames = ckpt.files.map((f) => printable(f.path.slice(f.path.lastIndexOf("/") + 1))).sort(naturalCompare);
  const byType = [...dtypes].sort((a, b) => b[1] - a[1]).map(([d, c]) => `${c} ${d}`).join(", ");
  const summary = `${names.length} tensors (${byType}), ${formatCount(params)} elements, ${formatBytes(ckpt.totalBytes())}, ` +
    `${shardNames.length} ${shardNames.length === 1 ? "shard" : "shards"} (${shardNames.join(", ")})`;
  return [`${title} — ${ckpt.layout}`, line(header), line(widths.map((w) => "-".repeat(w))), ...rows.map(line), summary].join("\n");
}

export function formatBytes(n: number): string {
  const units = ["bytes", "KiB", "MiB", "GiB", "TiB"];
  let v = n, u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return u === 0 ? `${n} bytes` : `${v.toFixed(v < 10 ? 2 : 1)} ${units[u]} (${n} bytes)`;
}

function formatCount(n: number): string {
  if (n >= 1e9) return `${(n / 1e9).toFixed(2)}B`;
  if (n >= 1e6) return `${(n / 1e6).toFixed(2)}M`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(1)}K`;
  return String(n);
}

const USAGE = "usage: deno task inspect <checkpoint file | checkpoint folder | pipeline folder>";

/** Command-line entry: prints the table; on error prints one line to stderr and sets exit code 1. Returns the code. */
export async function inspectMain(args: string[]): Promise<number> {
  if (args.includes("-h") || args.includes("--help")) {
    console.log(USAGE);
    return 0;
  }
  const fail = (msg: string) => {
    console.error(`error: ${msg.replace(/\s*\n\s*/g, "; ")}`);
    Deno.exitCode = 1;
    return 1;
  };
  const paths = args.filter((a) => !a.startsWith("-"));
  const unknown = args.filter((a) => a.startsWith("-"));
  if (unknown.length) return fail(`unknown option ${unknown[0]}. ${USAGE}`);
  if (paths.length !== 1) return fail(`expected one path, got ${paths.length}. ${USAGE}`);
  try {
    console.log(await inspectCheckpoint(paths[0]));
    return 0;
  } catch (e) {
    return fail(e instanceof Error ? e.message : String(e));
  }
}

if (import.meta.main) await inspectMain(Deno.args);
