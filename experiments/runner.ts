// The batch runner: every task of the experiment (or of one shard) under every condition, with one pipeline loaded
// once. Each condition folder is written under a temporary `.<condition>.partial-<id>` name and renamed into place
// when whole, so a crash or a kill never leaves a folder that looks finished; a second invocation skips complete
// folders, removes stale partial ones and runs the rest.
//
// Sharding: task t belongs to shard (FNV-1a-32(UTF-8 task_id) mod n) + 1. The rule depends on the id alone — not on
// the line order or on the other tasks — so n processes given k = 1..n cover the task set exactly once, and adding
// tasks to the file never moves the others between shards. Shards are balanced only on average.

import { dirname, join } from "node:path";
import { Flux2KleinPipeline } from "../model/pipeline.ts";
import { savePng } from "../model/images.ts";
import { executeSpec, KLEINSCOPE_VERSION, writeSpecOutputs } from "../studies/execute.ts";
import { type PatchSpecJson, SPEC_VERSION } from "../studies/spec.ts";
import { type Condition, conditionToSpec, experimentHash, type LoadedExperiment, UnpairedTaskError } from "./experiment.ts";
import { pairForPatching, type TaskPair } from "./generators.ts";
import { listNames, pathExists, writeJsonAtomic } from "./files.ts";
import {
  conditionDir,
  isCompleteFolder,
  MANIFEST_FORMAT,
  manifestPath,
  partialPrefix,
  PATCH_SOURCE_FILE,
  readManifests,
  type RunIssue,
  type RunManifest,
  shardManifestPath,
  taskDir,
  taskReferences,
} from "./run_folder.ts";
import { readTaskFile, type Task } from "./tasks.ts";

export const SHARD_RULE = "fnv1a32(task_id) mod count";

/** FNV-1a, 32 bits, over the UTF-8 bytes of a string. */
export function fnv1a32(s: string): number {
  let h = 0x811c9dc5;
  for (const b of new TextEncoder().encode(s)) {
    h ^= b;
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h >>> 0;
}

/** The 1-based shard of a task among `count`. */
export function shardOfTask(taskId: string, count: number): number {
  return (fnv1a32(taskId) % count) + 1;
}

/** "k/n" with 1 ≤ k ≤ n. */
export function parseShard(text: string): { index: number; count: number } {
  const m = /^\s*(\d+)\s*\/\s*(\d+)\s*$/.exec(text);
  const index = m ? Number(m[1]) : NaN, count = m ? Number(m[2]) : NaN;
  if (!m || count < 1 || index < 1 || index > count) throw new Error(`shard "${text}" must look like k/n with 1 ≤ k ≤ n, e.g. 1/4`);
  return { index, count };
}

export interface RunnerOptions {
  /** Run only this shard's tasks (1-based index). */
  shard?: { index: number; count: number };
  /** Run at most this many condition folders in this invocation (complete ones are not counted). */
  limit?: number;
  /** Refuse a task file with a malformed line (default: the experiment's strictTasks, else skip with a warning). */
  strictTasks?: boolean;
  log?: (line: string) => void;
  /** Checked between runs: stop cleanly after the current one. */
  signal?: AbortSignal;
  /** A loaded pipeline to use (otherwise one is loaded, once, when there is work). */
  pipeline?: Flux2KleinPipeline;
  /** Release the text encoder after each prompt instead of keeping it on the GPU (less memory, slower). */
  lowMemory?: boolean;
}

export interface RunSummary {
  manifestPath: string;
  tasks: number;
  planned: number;
  alreadyComplete: number;
  ranNow: number;
  failed: RunIssue[];
  unpaired: RunIssue[];
  /** Folders still to run (stopped by --limit or a signal, or failed). */
  remaining: number;
}

function formatDuration(ms: number): string {
  const s = Math.round(ms / 1000);
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${String(s % 60).padStart(2, "0")} s`;
  return `${Math.floor(m / 60)} h ${String(m % 60).padStart(2, "0")} min`;
}

interface WorkItem {
  task: Task;
  condition: Condition;
}

/** Run an experiment (or one shard of it) into its output folder, resuming whatever is already there. */
export async function runExperiment(loaded: LoadedExperiment, options: RunnerOptions = {}): Promise<RunSummary> {
  const exp = loaded.experiment;
  const log = options.log ?? ((l: string) => console.error(l));
  const taskFile = await readTaskFile(exp.tasks, { strict: options.strictTasks ?? exp.strictTasks, refsRoot: exp.refsRoot, warn: log });
  if (!taskFile.tasks.length) throw new Error(`task file ${exp.tasks} holds no valid task`);
  const { hash, tasksSha256, fingerprint } = await experimentHash(loaded);
  const existing = await readManifests(exp.output);
  for (const { path, manifest } of existing) {
    if (manifest.experiment.hash !== hash) {
      throw new Error(
        `output folder ${exp.output} holds a run of a different experiment (${path}: ${manifest.experiment.hash}, this one ${hash}; ` +
          `the definition, the task file or the checkpoint changed). Choose another output folder.`,
      );
    }
  }
  const shard = options.shard;
  if (options.limit !== undefined && (!Number.isSafeInteger(options.limit) || options.limit < 0)) {
    throw new Error(`limit ${options.limit} must be a whole number`);
  }
  const tasks = shard ? taskFile.tasks.filter((t) => shardOfTask(t.task_id, shard.count) === shard.index) : taskFile.tasks;
  // Pairs come from the whole task set, so a shard picks the same patch sources as an unsharded run.
  const pairs = pairForPatching(taskFile.tasks);
  const out = exp.output;
  const manifestFile = shard ? shardManifestPath(out, shard) : manifestPath(out);

  const work: WorkItem[] = [];
  const unpaired: RunIssue[] = [];
  let alreadyComplete = 0;
  for (const task of tasks) {
    for (const condition of exp.conditions) {
      if (await isCompleteFolder(conditionDir(out, task.task_id, condition.name))) alreadyComplete++;
      else if (condition.patch && !pairs.has(task.task_id)) {
        unpaired.push({
          task: task.task_id,
          condition: condition.name,
          reason: `no task shares its instruction with a different reference`,
        });
      } else work.push({ task, condition });
    }
  }
  const planned = tasks.length * exp.conditions.length;
  const now = () => new Date().toISOString();
  const manifest: RunManifest = {
    format: MANIFEST_FORMAT,
    versions: {
      kleinscope: KLEINSCOPE_VERSION,
      spec: SPEC_VERSION,
      deno: Deno.version.deno,
      v8: Deno.version.v8,
      typescript: Deno.version.typescript,
    },
    experiment: { file: loaded.file, hash, definition: exp },
    tasksFile: { path: exp.tasks, sha256: tasksSha256, tasks: taskFile.tasks.length, skippedLines: taskFile.problems },
    model: { path: exp.model, fingerprint },
    shard: shard ? { ...shard, rule: SHARD_RULE } : null,
    tasks: tasks.map((t) => t.task_id),
    conditions: exp.conditions.map((c) => c.name),
    started: now(),
    updated: now(),
    finished: false,
    counts: { planned, complete: alreadyComplete, ranNow: 0, alreadyComplete, failed: 0, unpaired: unpaired.length },
    failures: [],
    unpaired,
  };
  // An earlier invocation's start time and device are kept.
  const previous = existing.find((m) => m.path === manifestFile)?.manifest;
  if (previous) {
    manifest.started = previous.started;
    if (previous.device) manifest.device = previous.device;
  }
  await Deno.mkdir(out, { recursive: true });
  await writeJsonAtomic(manifestFile, manifest);
  const limit = options.limit ?? Infinity;
  const toRun = Math.min(work.length, limit);
  log(
    `${shard ? `shard ${shard.index}/${shard.count}: ` : ""}${tasks.length} task(s) × ${exp.conditions.length} condition(s): ` +
      `${alreadyComplete} complete, ${work.length} to run${toRun < work.length ? ` (${toRun} in this invocation)` : ""}` +
      `${unpaired.length ? `, ${unpaired.length} without a patch source` : ""}`,
  );
  for (const u of unpaired) log(`  unpaired: ${u.task} / ${u.condition}: ${u.reason}`);

  const unpairedAtStart = unpaired.length;
  let pipe = options.pipeline ?? null;
  const ownPipeline = !pipe;
  let ranNow = 0, attempted = 0, spentMs = 0;
  const failures: RunIssue[] = [];
  try {
    for (const item of work) {
      if (attempted >= limit || options.signal?.aborted) break;
      attempted++;
      if (!pipe) {
        log(`loading ${exp.model}…`);
        pipe = await Flux2KleinPipeline.load(exp.model, { keepTextEncoder: !options.lowMemory, log: (l) => log(`  ${l}`) });
        manifest.device = pipe.gpu.adapterDescription;
      }
      const t0 = performance.now();
      const where = `${item.task.task_id} / ${item.condition.name}`;
      try {
        await runOne(pipe, loaded, item, pairs, (l) => log(`  ${where}: ${l}`));
        ranNow++;
      } catch (e) {
        const reason = (e as Error).message;
        if (e instanceof UnpairedTaskError) unpaired.push({ task: item.task.task_id, condition: item.condition.name, reason });
        else failures.push({ task: item.task.task_id, condition: item.condition.name, reason });
        log(`  ${where} failed: ${reason}`);
      }
      const ms = performance.now() - t0;
      spentMs += ms;
      const left = toRun - attempted;
      const eta = left > 0 ? ` — ETA ${formatDuration((spentMs / attempted) * left)}` : "";
      log(`[${attempted}/${toRun}] ${where}: ${formatDuration(ms)}${eta}`);
      manifest.updated = now();
      manifest.counts = {
        ...manifest.counts,
        ranNow,
        complete: alreadyComplete + ranNow,
        failed: failures.length,
        unpaired: unpaired.length,
      };
      manifest.failures = failures;
      await writeJsonAtomic(manifestFile, manifest);
    }
  } finally {
    if (ownPipeline) pipe?.release();
  }
  const remaining = work.length - ranNow - (unpaired.length - unpairedAtStart);
  manifest.finished = remaining === 0;
  manifest.updated = now();
  manifest.counts = { ...manifest.counts, ranNow, complete: alreadyComplete + ranNow, failed: failures.length, unpaired: unpaired.length };
  manifest.failures = failures;
  await writeJsonAtomic(manifestFile, manifest);
  return { manifestPath: manifestFile, tasks: tasks.length, planned, alreadyComplete, ranNow, failed: failures, unpaired, remaining };
}

/** The synthetic reference of a task, generated once (deterministically: any shard that needs it makes the same). */
async function ensureSyntheticReference(
  pipe: Flux2KleinPipeline,
  loaded: LoadedExperiment,
  task: Task,
  log: (l: string) => void,
): Promise<void> {
  if (!task.synthetic_ref) return;
  const ref = taskReferences(loaded.experiment.output, task)[0];
  if (await pathExists(ref)) return;
  log(`generating the synthetic reference of ${task.task_id}: "${task.synthetic_ref.caption}" (seed ${task.synthetic_ref.seed})`);
  const r = await pipe.generate({
    prompt: task.synthetic_ref.caption,
    refs: [],
    width: loaded.experiment.width ?? task.width,
    height: loaded.experiment.height ?? task.height,
    steps: loaded.experiment.steps,
    seed: task.synthetic_ref.seed,
  });
  await Deno.mkdir(dirname(ref), { recursive: true });
  await savePng(ref, r.image, r.width, r.height);
}

async function runOne(
  pipe: Flux2KleinPipeline,
  loaded: LoadedExperiment,
  item: WorkItem,
  pairs: Map<string, TaskPair>,
  log: (l: string) => void,
): Promise<void> {
  const out = loaded.experiment.output;
  const { task, condition } = item;
  const dir = taskDir(out, task.task_id);
  await Deno.mkdir(dir, { recursive: true });
  if (!(await pathExists(join(dir, "task.json")))) await writeJsonAtomic(join(dir, "task.json"), task);
  await ensureSyntheticReference(pipe, loaded, task, log);
  const pair = condition.patch ? pairs.get(task.task_id) : undefined;
  if (pair) await ensureSyntheticReference(pipe, loaded, pair.source, log);
  const spec = conditionToSpec(loaded.experiment, condition, task, { pairs, refsOf: (t) => taskReferences(out, t) });
  // A partial folder of this condition is left over from a killed run: it is never complete, remove it.
  for (const name of await listNames(dir)) {
    if (name.startsWith(partialPrefix(condition.name))) await Deno.remove(join(dir, name), { recursive: true });
  }
  const final = conditionDir(out, task.task_id, condition.name);
  const tmp = join(dir, `${partialPrefix(condition.name)}${crypto.randomUUID().slice(0, 8)}`);
  await Deno.mkdir(tmp);
  try {
    const run = await executeSpec(pipe, spec, log);
    await writeSpecOutputs(tmp, run);
    if (pair) {
      // Which task the patch rows came from: read by metrics, judge and report.
      const patch = spec.interventions!.find((iv): iv is PatchSpecJson => iv.type === "patch")!;
      await writeJsonAtomic(join(tmp, PATCH_SOURCE_FILE), {
        source_task: pair.source.task_id,
        source_seed: patch.source.seed,
        rule: "shift",
      });
    }
    // An incomplete folder under the final name (files removed by hand) is replaced.
    if (await pathExists(final)) await Deno.remove(final, { recursive: true });
    await Deno.rename(tmp, final);
  } catch (e) {
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
    throw e;
  }
}
