// The batch runner: every task of the experiment (or of one shard) under every condition, with one pipeline loaded
// once. Nothing it writes can be seen half-written, and a kill at any moment loses and duplicates nothing:
//
// - every condition folder is written under a temporary `.<condition>.partial-<id>` name, flushed and renamed into
//   place when whole, so a folder under its final name is always complete; a resumed run skips complete folders,
//   removes stale partial ones and runs the rest;
// - the manifest, task.json and every other file are written atomically (files.ts);
// - one process at a time works on a part of the output folder: the run takes its lock (run_lock.ts) first, and a
//   second run of the same part is refused with the lock's holder; a lock left by a killed run is taken over;
// - the whole experiment is checked before any folder is created (preflight.ts), and after the model is loaded,
//   before the first task;
// - a task that fails (a bad image, a bad size, anything thrown while it runs) is recorded in the manifest's
//   failures with its condition and reason, and the batch goes on; the command's exit code says so.
//
// Sharding: task t belongs to shard (FNV-1a-32(UTF-8 task_id) mod n) + 1. The rule depends on the id alone — not on
// the line order or on the other tasks — so n processes given k = 1..n cover the task set exactly once, and adding
// tasks to the file never moves the others between shards. Shards are balanced only on average.

import { basename, dirname, join } from "node:path";
import { Flux2KleinPipeline } from "../model/pipeline.ts";
import { savePng } from "../model/images.ts";
import { printable } from "../runtime/printable.ts";
import { checkSpec, executeSpec, KLEINSCOPE_VERSION } from "../studies/execute.ts";
import { SourceRunCache } from "../studies/source_rows.ts";
import { writeSpecOutputs } from "../studies/outputs.ts";
import { type PatchSpecJson, type RunSpec, SPEC_VERSION } from "../studies/spec.ts";
import { ownedFiles, removeOwnedFolder, syncFolder, syncTree, tempFileWriter, writeOutputMarker } from "../studies/output_folder.ts";
import { type Condition, experimentHash, type LoadedExperiment } from "./experiment.ts";
import { pairForPatching, type TaskPair } from "./generators.ts";
import { listNames, pathExists, writeJsonAtomic } from "./files.ts";
import {
  checkRunFolderPath,
  CONDITION_EXTRA_FILES,
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
  TASK_FILE,
  taskDir,
  taskReferences,
} from "./run_folder.ts";
import { acquireRunLock, type LockScope } from "./run_lock.ts";
import { checkNames, checkSpecs, checkWithModel, oneLine } from "./preflight.ts";
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

/** What runs the specs. The default (pipelineExecutor) loads the checkpoint once and runs on the GPU; the runner's
 * bookkeeping — locks, resume, manifests, failures — is the same whatever runs them. */
export interface SpecExecutor {
  /** Load what running needs (once, before the first task, only when there is work); returns the device's name. */
  open(log: (line: string) => void): Promise<string | undefined>;
  /** The checks of a spec that need the model, without running it. */
  check(spec: RunSpec): Promise<void>;
  /** Run a spec and write its outputs into the new folder `dir`. */
  run(spec: RunSpec, dir: string, log: (line: string) => void): Promise<void>;
  /** Text-to-image of a synthetic reference, written as a PNG at `path`. */
  reference(request: { prompt: string; width: number; height: number; steps?: number; seed: number }, path: string): Promise<void>;
  close(): void;
}

/** Specs run by a Flux2KleinPipeline (loaded from `model`, or the one given, which is then not released). */
export function pipelineExecutor(model: string, options: { lowMemory?: boolean; pipeline?: Flux2KleinPipeline } = {}): SpecExecutor {
  let pipe = options.pipeline ?? null;
  // Conditions of one task run one after another: those that patch from the same source run share it.
  const sourceCache = new SourceRunCache(1);
  const loaded = () => {
    if (!pipe) throw new Error("the pipeline is not loaded");
    return pipe;
  };
  return {
    async open(log) {
      if (!pipe) {
        log(`loading ${printable(model)}…`);
        // Checkpoints validated now; the weights go to the GPU when the first task runs, after every condition is checked.
        pipe = await Flux2KleinPipeline.load(model, {
          keepTextEncoder: !options.lowMemory,
          log: (l) => log(`  ${l}`),
          deferUpload: true,
        });
      }
      return pipe.gpu.adapterDescription;
    },
    check: (spec) => checkSpec(loaded(), spec),
    async run(spec, dir, log) {
      await writeSpecOutputs(dir, await executeSpec(loaded(), spec, log, { sourceCache }));
    },
    async reference(r, path) {
      const out = await loaded().generate({ prompt: r.prompt, refs: [], width: r.width, height: r.height, steps: r.steps, seed: r.seed });
      await savePng(path, out.image, out.width, out.height);
    },
    close() {
      sourceCache.clear();
      if (!options.pipeline) pipe?.release();
      pipe = null;
    },
  };
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
  /** What runs the specs (default: the pipeline). */
  executor?: SpecExecutor;
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
  spec: RunSpec;
}

/** Leftovers of a killed run in the part of the folder this run's lock covers: partial condition folders and
 * temporary files of its tasks, temporary files of its manifest. */
async function removeLeftovers(out: string, manifestFile: string, tasks: Task[], log: (line: string) => void): Promise<void> {
  let removed = 0;
  const manifestTemp = new RegExp(`^\\.${basename(manifestFile).replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}\\.\\d+-[0-9a-f]{8}\\.tmp$`);
  for (const name of await listNames(dirname(manifestFile))) {
    if (manifestTemp.test(name)) await Deno.remove(join(dirname(manifestFile), name)).then(() => removed++, () => {});
  }
  for (const task of tasks) {
    const dir = taskDir(out, task.task_id);
    for (const name of await listNames(dir)) {
      const path = join(dir, name);
      if (/^\..+\.partial-[0-9a-f]{8}$/.test(name)) await Deno.remove(path, { recursive: true }).then(() => removed++, () => {});
      else if (tempFileWriter(name) !== undefined) await Deno.remove(path).then(() => removed++, () => {});
    }
  }
  if (removed) log(`removed ${removed} leftover(s) of an interrupted run`);
}

/** Run an experiment (or one shard of it) into its output folder, resuming whatever is already there. */
export async function runExperiment(loaded: LoadedExperiment, options: RunnerOptions = {}): Promise<RunSummary> {
  const exp = loaded.experiment;
  const log = options.log ?? ((l: string) => console.error(l));
  const taskFile = await readTaskFile(exp.tasks, { strict: options.strictTasks ?? exp.strictTasks, refsRoot: exp.refsRoot, warn: log });
  if (!taskFile.tasks.length) throw new Error(`task file ${printable(exp.tasks)} holds no valid task`);
  const shard = options.shard;
  if (options.limit !== undefined && (!Number.isSafeInteger(options.limit) || options.limit < 0)) {
    throw new Error(`limit ${options.limit} must be a whole number`);
  }
  const out = exp.output;
  // Everything that can be checked without the model, before any folder is created.
  await checkNames(loaded, taskFile.tasks);
  // Pairs come from the whole task set, so a shard picks the same patch sources as an unsharded run.
  const pairs = pairForPatching(taskFile.tasks);
  const tasks = shard ? taskFile.tasks.filter((t) => shardOfTask(t.task_id, shard.count) === shard.index) : taskFile.tasks;
  const specs = await checkSpecs(loaded, tasks, { pairs, refsOf: (t) => taskReferences(out, t) });
  const { hash, tasksSha256, fingerprint } = await experimentHash(loaded);
  await checkRunFolderPath(out, "experiment output folder", exp.model);
  const existing = await readManifests(out);
  for (const { path, manifest } of existing) {
    if (manifest.experiment.hash !== hash) {
      throw new Error(
        `output folder ${printable(out)} holds a run of a different experiment (${printable(path)}: ${manifest.experiment.hash}, ` +
          `this one ${hash}; the definition, the task file or the checkpoint changed). Choose another output folder.`,
      );
    }
  }
  const manifestFile = shard ? shardManifestPath(out, shard) : manifestPath(out);

  await Deno.mkdir(out, { recursive: true });
  const scope: LockScope = shard ? { kind: "shard", ...shard } : { kind: "all" };
  const lock = await acquireRunLock(out, scope, "experiment run", log);
  try {
    return await runLocked();
  } finally {
    await lock.release();
  }

  async function runLocked(): Promise<RunSummary> {
    await removeLeftovers(out, manifestFile, tasks, log);
    const previous = (await readManifests(out)).find((m) => m.path === manifestFile)?.manifest;
    if (previous?.running) {
      log(
        `note: the previous run stopped while running ${printable(previous.running.task)} / ${printable(previous.running.condition)} ` +
          `(killed or crashed); it is run again`,
      );
    }
    const work: WorkItem[] = [];
    const unpaired: RunIssue[] = [];
    let alreadyComplete = 0;
    for (const task of tasks) {
      for (const condition of exp.conditions) {
        const spec = specs.get(task.task_id)!.get(condition.name);
        if (await isCompleteFolder(conditionDir(out, task.task_id, condition.name))) alreadyComplete++;
        else if (!spec) {
          unpaired.push({
            task: task.task_id,
            condition: condition.name,
            reason: `no task shares its instruction with a different reference`,
          });
        } else work.push({ task, condition, spec });
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
    if (previous) {
      manifest.started = previous.started;
      if (previous.device) manifest.device = previous.device;
    }
    await writeJsonAtomic(manifestFile, manifest);
    const limit = options.limit ?? Infinity;
    const toRun = Math.min(work.length, limit);
    log(
      `${shard ? `shard ${shard.index}/${shard.count}: ` : ""}${tasks.length} task(s) × ${exp.conditions.length} condition(s): ` +
        `${alreadyComplete} complete, ${work.length} to run${toRun < work.length ? ` (${toRun} in this invocation)` : ""}` +
        `${unpaired.length ? `, ${unpaired.length} without a patch source` : ""}`,
    );
    for (const u of unpaired) log(`  unpaired: ${printable(u.task)} / ${printable(u.condition)}: ${u.reason}`);

    const executor = options.executor ?? pipelineExecutor(exp.model, { lowMemory: options.lowMemory, pipeline: options.pipeline });
    let opened = false;
    let ranNow = 0, attempted = 0, spentMs = 0;
    const failures: RunIssue[] = [];
    const update = async (running?: { task: string; condition: string; since: string }) => {
      manifest.updated = now();
      manifest.counts = {
        ...manifest.counts,
        ranNow,
        complete: alreadyComplete + ranNow,
        failed: failures.length,
        unpaired: unpaired.length,
      };
      manifest.failures = failures;
      if (running) manifest.running = running;
      else delete manifest.running;
      await writeJsonAtomic(manifestFile, manifest);
    };
    try {
      for (const item of work) {
        if (attempted >= limit || options.signal?.aborted) break;
        attempted++;
        if (!opened) {
          opened = true;
          const device = await executor.open(log);
          if (device) manifest.device = device;
          await checkWithModel(loaded, tasks, specs, (spec) => executor.check(spec), log);
        }
        const t0 = performance.now();
        const where = `${printable(item.task.task_id)} / ${printable(item.condition.name)}`;
        await update({ task: item.task.task_id, condition: item.condition.name, since: now() });
        try {
          await runOne(executor, loaded, item, pairs, (l) => log(`  ${where}: ${l}`));
          ranNow++;
        } catch (e) {
          const reason = oneLine(e instanceof Error ? e.message : String(e));
          failures.push({ task: item.task.task_id, condition: item.condition.name, reason });
          log(`  ${where} failed: ${reason}`);
        }
        const ms = performance.now() - t0;
        spentMs += ms;
        const left = toRun - attempted;
        const eta = left > 0 ? ` — ETA ${formatDuration((spentMs / attempted) * left)}` : "";
        log(`[${attempted}/${toRun}] ${where}: ${formatDuration(ms)}${eta}`);
        await update();
      }
    } finally {
      executor.close();
    }
    const remaining = work.length - ranNow;
    manifest.finished = remaining === 0;
    await update();
    return { manifestPath: manifestFile, tasks: tasks.length, planned, alreadyComplete, ranNow, failed: failures, unpaired, remaining };
  }
}

/** The synthetic reference of a task, generated once (deterministically: any shard that needs it makes the same). */
async function ensureSyntheticReference(
  executor: SpecExecutor,
  loaded: LoadedExperiment,
  task: Task,
  log: (l: string) => void,
): Promise<void> {
  if (!task.synthetic_ref) return;
  const ref = taskReferences(loaded.experiment.output, task)[0];
  if (await pathExists(ref)) return;
  log(
    `generating the synthetic reference of ${printable(task.task_id)}: "${
      printable(task.synthetic_ref.caption)
    }" (seed ${task.synthetic_ref.seed})`,
  );
  await Deno.mkdir(dirname(ref), { recursive: true });
  await executor.reference({
    prompt: task.synthetic_ref.caption,
    width: loaded.experiment.width ?? task.width,
    height: loaded.experiment.height ?? task.height,
    steps: loaded.experiment.steps,
    seed: task.synthetic_ref.seed,
  }, ref);
}

async function runOne(
  executor: SpecExecutor,
  loaded: LoadedExperiment,
  item: WorkItem,
  pairs: Map<string, TaskPair>,
  log: (l: string) => void,
): Promise<void> {
  const out = loaded.experiment.output;
  const { task, condition, spec } = item;
  const dir = taskDir(out, task.task_id);
  await Deno.mkdir(dir, { recursive: true });
  if (!(await pathExists(join(dir, TASK_FILE)))) await writeJsonAtomic(join(dir, TASK_FILE), task);
  await ensureSyntheticReference(executor, loaded, task, log);
  const pair = condition.patch ? pairs.get(task.task_id) : undefined;
  if (pair) await ensureSyntheticReference(executor, loaded, pair.source, log);
  const final = conditionDir(out, task.task_id, condition.name);
  // A folder under the final name that is not complete (files removed by hand): only what kleinscope wrote goes.
  if (await pathExists(final) && !(await Deno.remove(final).then(() => true, () => false))) { // (removed when empty)
    const owned = await ownedFiles(final, CONDITION_EXTRA_FILES).catch(() => null);
    if (!owned || owned.foreign.length) {
      throw new Error(
        `${printable(final)} exists but is incomplete and holds files kleinscope did not write; move it away to run this task again`,
      );
    }
    await removeOwnedFolder(final, CONDITION_EXTRA_FILES);
  }
  const tmp = join(dir, `${partialPrefix(condition.name)}${crypto.randomUUID().slice(0, 8)}`);
  await Deno.mkdir(tmp);
  try {
    await executor.run(spec, tmp, log);
    if (pair) {
      // Which task the patch rows came from: read by metrics, judge and report.
      const patch = spec.interventions!.find((iv): iv is PatchSpecJson => iv.type === "patch")!;
      await writeJsonAtomic(join(tmp, PATCH_SOURCE_FILE), {
        source_task: pair.source.task_id,
        source_seed: patch.source.seed,
        rule: "shift",
      });
    }
    if (!(await isCompleteFolder(tmp))) throw new Error("the run wrote no spec.json and image.png");
    await writeOutputMarker(tmp, "condition");
    await syncTree(tmp);
    await Deno.rename(tmp, final);
    await syncFolder(dir);
  } catch (e) {
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
    throw e;
  }
}
