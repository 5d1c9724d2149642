// Several GPUs of one host, and clusters. `deno task experiment FILE --gpus all|N` starts one shard process per GPU —
// shard k of n (the runner's FNV rule) pinned to GPU k − 1 (runtime/adapter_select.ts) — all writing into the
// experiment's one output folder, as shards may. It shows one combined progress line, read from the shards'
// manifests; restarts nothing; and when every shard has ended, merges them in place (merge.ts: the coverage and
// manifest.json of the whole run). A shard that fails leaves the others' folders as they are; it is reported with its
// exit code and log file (<output>/shards/shard-k-of-n.log), and the launcher's exit code is 1. Everything that can
// be refused — the experiment file, the output folder, a GPU count the host does not have, a GPU that cannot be
// chosen — is refused before the first shard starts.
//
// `--shard auto` takes k/n from a Slurm job array (shardFromSlurm).

import { resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { printable } from "../runtime/printable.ts";
import {
  type AdapterListing,
  applyPin,
  describeAdapter,
  describeListing,
  listAdapters,
  pinnedEnvironment,
} from "../runtime/adapter_select.ts";
import { type LoadedExperiment, readExperiment } from "./experiment.ts";
import { mergeRuns, type MergeSummary } from "./merge.ts";
import { checkRunFolderPath, type RunManifest, shardManifestPath } from "./run_folder.ts";
import { readJsonFile } from "./files.ts";
import { shardOfTask } from "./runner.ts";
import { readTaskFile } from "./tasks.ts";

export interface Shard {
  index: number;
  count: number;
}

/** One shard process of a launch. */
export interface ShardRun extends Shard {
  gpu: number;
  adapter: string;
  log: string;
  /** Counts from the shard's manifest, once it has written one in this launch. */
  counts?: RunManifest["counts"];
  /** When the shard's manifest was first seen in this launch (its run had begun), ms since the launch started. */
  startedMs?: number;
  exit?: { code: number; signal?: string };
  ms?: number;
  /** The last lines the process printed. */
  tail: string[];
}

export interface LaunchOptions {
  /** "all" or a number of GPUs. */
  gpus: "all" | number;
  /** Output folder instead of the experiment's. */
  output?: string;
  limit?: number;
  strict?: boolean;
  lowMemory?: boolean;
  /** The host's adapters (default: listAdapters()). */
  adapters?: () => AdapterListing;
  /** The command of one shard (default: this kleinscope's `experiment FILE --shard k/n` with the options passed on).
   * Its environment is the launcher's with the shard's GPU pinned. */
  shardCommand?: (shard: Shard, passOn: string[]) => { command: string; args: string[] };
  /** Receives the combined progress line whenever it changes; `final` on the last call. */
  progress?: (line: string, final: boolean) => void;
  log?: (line: string) => void;
  /** How often the shards' manifests are read (ms). */
  pollMs?: number;
}

export interface LaunchSummary {
  output: string;
  shards: ShardRun[];
  failed: ShardRun[];
  merge?: MergeSummary;
  mergeError?: string;
  ms: number;
  exitCode: number;
}

/** `--gpus` as given: "all" or a whole number ≥ 1. */
export function parseGpuCount(text: string): "all" | number {
  const t = text.trim();
  if (t === "all") return "all";
  if (!/^\d+$/.test(t) || Number(t) < 1 || !Number.isSafeInteger(Number(t))) {
    throw new Error(`--gpus "${printable(text)}" must be "all" or a number of GPUs (1, 2, …)`);
  }
  return Number(t);
}

const CLI = fileURLToPath(new URL("../cli.ts", import.meta.url));

/** `deno run -A cli.ts experiment FILE --shard k/n …`: what `--shard` runs, in a process of its own. */
export function cliShardCommand(file: string): (shard: Shard, passOn: string[]) => { command: string; args: string[] } {
  return (shard, passOn) => ({
    command: Deno.execPath(),
    args: ["run", "-A", CLI, "experiment", file, "--shard", `${shard.index}/${shard.count}`, ...passOn],
  });
}

function formatDuration(ms: number): string {
  const s = Math.round(ms / 1000);
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${String(s % 60).padStart(2, "0")} s`;
  return `${Math.floor(m / 60)} h ${String(m % 60).padStart(2, "0")} min`;
}

/** The combined progress line of the shards at `nowMs` (ms since the launch started). */
export function progressLine(shards: ShardRun[], nowMs: number): string {
  let complete = 0, planned = 0, failed = 0;
  let eta = 0, etaKnown = true;
  const parts: string[] = [];
  for (const s of shards) {
    const c = s.counts;
    const label = `GPU${s.gpu}`;
    if (c) {
      const todo = c.planned - c.unpaired;
      complete += c.complete;
      planned += todo;
      failed += c.failed;
      const left = todo - c.complete - c.failed;
      if (s.exit) parts.push(`${label} ${s.exit.code === 0 ? "done" : `exit ${s.exit.code}`} ${c.complete}/${todo}`);
      else parts.push(`${label} ${c.complete}/${todo}`);
      if (!s.exit && left > 0) {
        if (c.ranNow > 0 && s.startedMs !== undefined) eta = Math.max(eta, ((nowMs - s.startedMs) / c.ranNow) * left);
        else etaKnown = false;
      }
    } else {
      parts.push(`${label} ${s.exit ? `exit ${s.exit.code}` : "starting"}`);
      if (!s.exit) etaKnown = false;
    }
  }
  const running = shards.filter((s) => !s.exit).length;
  const head = `${shards.length} GPU(s): ${complete}/${planned} complete${failed ? `, ${failed} failed` : ""}`;
  const tail = running === 0 ? `finished in ${formatDuration(nowMs)}` : etaKnown ? `ETA ${formatDuration(eta)}` : "ETA —";
  return `${head} · ${parts.join(" · ")} · ${tail}`;
}

/** A progress printer for the command line: one line rewritten in place on a terminal; elsewhere (a log file, a
 * batch job) a line when it changes, at most every `everyMs`, and the last one. */
export function terminalProgress(everyMs = 30_000): (line: string, final: boolean) => void {
  const tty = Deno.stderr.isTerminal();
  const enc = new TextEncoder();
  let last = "", lastAt = 0;
  return (line, final) => {
    if (tty) {
      Deno.stderr.writeSync(enc.encode(`\r\x1b[K${line}${final ? "\n" : ""}`));
      return;
    }
    const now = Date.now();
    if (final || (line !== last && now - lastAt >= everyMs)) {
      console.error(line);
      last = line;
      lastAt = now;
    }
  };
}

/** Run an experiment as one shard per GPU of this host and merge the shards. */
export async function launchOnGpus(file: string, options: LaunchOptions): Promise<LaunchSummary> {
  const log = options.log ?? ((l: string) => console.error(l));
  const progress = options.progress ?? (() => {});
  const loaded: LoadedExperiment = await readExperiment(file);
  if (options.output) loaded.experiment.output = resolve(options.output);
  const out = loaded.experiment.output;

  // Refusals before anything starts: GPU count, GPUs that cannot be chosen, the output folder.
  const listing = (options.adapters ?? listAdapters)();
  const pool = listing.adapters;
  if (!pool.length) throw new Error(`--gpus ${options.gpus}: ${describeListing(listing)}`);
  const n = options.gpus === "all" ? pool.length : options.gpus;
  if (n > pool.length) {
    throw new Error(`--gpus ${n}: this host has ${pool.length} usable; ${describeListing(listing)}`);
  }
  const pins = pool.slice(0, n).map((a) => pinnedEnvironment(listing, a.index));
  await checkRunFolderPath(out, "experiment output folder", loaded.experiment.model);

  const exp = loaded.experiment;
  const taskFile = await readTaskFile(exp.tasks, { strict: false, refsRoot: exp.refsRoot, checkFiles: false, warn: () => {} });
  const sizes = Array.from({ length: n }, () => 0);
  for (const t of taskFile.tasks) sizes[shardOfTask(t.task_id, n) - 1]++;
  log(`${taskFile.tasks.length} task(s) in ${n} shard(s) of ${sizes.join(", ")} task(s), one per GPU; output ${printable(out)}`);

  const passOn = ["--output", out];
  if (options.limit !== undefined) passOn.push("--limit", String(options.limit));
  if (options.strict) passOn.push("--strict");
  if (options.lowMemory) passOn.push("--low-memory");
  const commandOf = options.shardCommand ?? cliShardCommand(resolve(file));

  await Deno.mkdir(`${out}/shards`, { recursive: true });
  const t0 = performance.now();
  const shards: ShardRun[] = pool.slice(0, n).map((a, i) => ({
    index: i + 1,
    count: n,
    gpu: a.index,
    adapter: describeAdapter(a),
    log: `${out}/shards/shard-${i + 1}-of-${n}.log`,
    tail: [],
  }));
  const baseEnv = Deno.env.toObject();
  const children: Deno.ChildProcess[] = [];
  const finished: Promise<void>[] = [];
  for (const [i, shard] of shards.entries()) {
    const { command, args } = commandOf(shard, passOn);
    const logFile = await Deno.open(shard.log, { create: true, append: true });
    const header = `=== ${new Date().toISOString()} shard ${shard.index}/${n} on GPU ${shard.adapter}\n`;
    await writeAll(logFile, new TextEncoder().encode(header));
    let child: Deno.ChildProcess;
    try {
      child = new Deno.Command(command, {
        args,
        env: applyPin(baseEnv, pins[i]),
        clearEnv: true,
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
      }).spawn();
    } catch (e) {
      logFile.close();
      for (const c of children) c.kill("SIGTERM");
      throw new Error(`starting shard ${shard.index}/${n} (${printable(command)}): ${(e as Error).message}`);
    }
    children.push(child);
    log(`shard ${shard.index}/${n}: GPU ${shard.adapter}, pid ${child.pid}, log ${printable(shard.log)}`);
    const pumps = [pump(child.stdout, logFile, shard), pump(child.stderr, logFile, shard)];
    finished.push(
      child.status.then(async (status) => {
        await Promise.all(pumps);
        logFile.close();
        shard.exit = { code: status.code, signal: status.signal ?? undefined };
        shard.ms = performance.now() - t0;
      }),
    );
  }

  // Ctrl-C reaches the shards through the terminal's process group (each stops after its current run); a SIGTERM is
  // passed on to them.
  let interrupted = false;
  const onInterrupt = () => {
    if (!interrupted) log("stopping: each shard ends after its current run (Ctrl-C again: at once)");
    interrupted = true;
  };
  const onTerminate = () => children.forEach((c) => c.kill("SIGTERM"));
  Deno.addSignalListener("SIGINT", onInterrupt);
  Deno.addSignalListener("SIGTERM", onTerminate);
  const startedAt = new Date(Date.now() - 1000).toISOString(); // manifests written from here on are this launch's
  const poll = async () => {
    for (const s of shards) {
      try {
        const m = await readJsonFile<RunManifest>(shardManifestPath(out, s));
        if (m.updated >= startedAt) {
          s.counts = m.counts;
          s.startedMs ??= performance.now() - t0;
        }
      } catch { /* not written yet, or being replaced */ }
    }
  };
  let lastLine = "";
  const all = Promise.all(finished);
  try {
    let done = false;
    all.then(() => done = true);
    while (!done) {
      await poll();
      const line = progressLine(shards, performance.now() - t0);
      if (line !== lastLine) progress(line, false);
      lastLine = line;
      await Promise.race([all, new Promise((r) => setTimeout(r, options.pollMs ?? 1000))]);
    }
    await all;
  } finally {
    Deno.removeSignalListener("SIGINT", onInterrupt);
    Deno.removeSignalListener("SIGTERM", onTerminate);
  }
  await poll();
  const ms = performance.now() - t0;
  progress(progressLine(shards, ms), true);

  const failed = shards.filter((s) => s.exit!.code !== 0);
  for (const s of failed) {
    const why = s.exit!.signal ? `was killed by ${s.exit!.signal}` : `exited with code ${s.exit!.code}`;
    log(`shard ${s.index}/${n} (GPU ${s.adapter}) ${why}; log: ${printable(s.log)}`);
    for (const line of s.tail.slice(-3)) log(`  | ${printable(line)}`);
  }
  log(`shard times: ${shards.map((s) => `${s.index}/${n} ${formatDuration(s.ms!)}`).join(", ")}; all: ${formatDuration(ms)}`);

  const summary: LaunchSummary = { output: out, shards, failed, ms, exitCode: failed.length ? 1 : 0 };
  try {
    summary.merge = await mergeRuns([out], out, { log });
    if (!failed.length && summary.merge.missing.length && options.limit === undefined) summary.exitCode = 3;
  } catch (e) {
    summary.mergeError = (e as Error).message;
    log(`the shards were not merged: ${summary.mergeError}`);
    summary.exitCode = 1;
  }
  return summary;
}

/** Copy a child's output into its log file, keeping its last lines. */
async function pump(stream: ReadableStream<Uint8Array>, file: Deno.FsFile, shard: ShardRun): Promise<void> {
  const dec = new TextDecoder();
  let partial = "";
  let writable = true;
  for await (const chunk of stream) {
    // A log that cannot be written (disk full) must not stop the shard: its output is then kept only in `tail`.
    if (writable) await writeAll(file, chunk).catch(() => writable = false);
    const lines = (partial + dec.decode(chunk, { stream: true })).split("\n");
    partial = lines.pop()!;
    for (const l of lines) if (l.trim()) shard.tail.push(l);
    if (shard.tail.length > 20) shard.tail.splice(0, shard.tail.length - 20);
  }
  if (partial.trim()) shard.tail.push(partial);
}

async function writeAll(file: Deno.FsFile, bytes: Uint8Array): Promise<void> {
  for (let at = 0; at < bytes.length;) at += await file.write(bytes.subarray(at));
}

/** `--shard auto`: k/n of a Slurm job array from SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT, counting from
 * SLURM_ARRAY_TASK_MIN (default 1) in steps of SLURM_ARRAY_TASK_STEP (default 1), so `--array=0-7`, `1-8` and
 * `10-24:2` all give shards 1..n. */
export function shardFromSlurm(env: Record<string, string | undefined>): Shard {
  const need = ["SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT"];
  const missing = need.filter((k) => !env[k]);
  if (missing.length) {
    throw new Error(
      `--shard auto reads SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT, and ${missing.join(" and ")} ${
        missing.length > 1 ? "are" : "is"
      } ` +
        `not set: run it in a Slurm job array (sbatch --array=1-8 …) or give --shard k/n`,
    );
  }
  const int = (k: string, fallback?: number): number => {
    const v = env[k];
    if (v === undefined || v === "") {
      if (fallback === undefined) throw new Error(`${k} is not set`);
      return fallback;
    }
    if (!/^\d+$/.test(v.trim())) throw new Error(`--shard auto: ${k}="${printable(v)}" is not a whole number`);
    return Number(v);
  };
  const id = int("SLURM_ARRAY_TASK_ID"), count = int("SLURM_ARRAY_TASK_COUNT");
  const min = int("SLURM_ARRAY_TASK_MIN", 1), step = int("SLURM_ARRAY_TASK_STEP", 1);
  const max = env.SLURM_ARRAY_TASK_MAX ? int("SLURM_ARRAY_TASK_MAX") : undefined;
  const where = `SLURM_ARRAY_TASK_ID=${id}, _MIN=${min}, _STEP=${step}, _COUNT=${count}${max !== undefined ? `, _MAX=${max}` : ""}`;
  if (count < 1 || step < 1) throw new Error(`--shard auto: ${where}: the count and step must be at least 1`);
  if (max !== undefined && (max - min) / step + 1 !== count) {
    throw new Error(
      `--shard auto: ${where}: the array is not one range with one step (e.g. --array=1-8), so its tasks cannot be shards 1..${count}`,
    );
  }
  const offset = id - min;
  if (offset < 0 || offset % step !== 0 || offset / step + 1 > count) {
    throw new Error(`--shard auto: ${where}: this task is not one of ${count} evenly spaced array indices starting at ${min}`);
  }
  return { index: offset / step + 1, count };
}
