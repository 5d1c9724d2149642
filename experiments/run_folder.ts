// The layout of an experiment's output folder, and reading it back (for merge, judge, metrics and report):
//
//   <output>/manifest.json                      an unsharded run, or the result of a merge
//   <output>/shards/shard-<k>-of-<n>.json        the manifest of one shard's run
//   <output>/tasks/<task_id>/task.json          the task as it ran (absolute image paths)
//   <output>/refs/<task_id>.png                 a synthetic reference (generated once; a patch may need another
//                                               shard's, so they live outside the task folders)
//   <output>/tasks/<task_id>/<condition>/       image.png, source.png, spec.json, run.json (writeSpecOutputs);
//                                               patch_source.json for a paired patch: the source task and seed
//   <output>/tasks/<task_id>/.<condition>.partial-<id>/   a run in progress (or killed): never read, removed on resume
//   <output>/judgments/<judge>.jsonl            verdicts of one judge;  <output>/judge-cache/  cached answers
//   <output>/metrics.jsonl                      local metrics;          <output>/report.html
//   <output>/locks/<all|shard-k-of-n>.lock      held by a runner (or a merge) while it works: pid, host, start
//
// A condition folder is complete when its spec.json and image.png exist: both are written into the partial folder,
// which is renamed into place only afterwards, so a folder under its final name is always whole. Task ids and
// condition names name folders: they may not start with a dot (temporary names) nor be one of the runner's own
// names (task.json, …), in any letter case, so a task or condition folder can never take the place of a file.

import { join } from "node:path";
import type { Experiment } from "./experiment.ts";
import { listNames, pathExists, readJsonFile } from "./files.ts";
import { checkOutputPath } from "../studies/output_folder.ts";
import { printable } from "../runtime/printable.ts";
import type { Task, TaskProblem } from "./tasks.ts";

export const MANIFEST_FORMAT = "kleinscope-experiment-run";

export interface ShardInfo {
  /** 1-based. */
  index: number;
  count: number;
  rule: string;
}

export interface RunIssue {
  task: string;
  condition: string;
  reason: string;
}

export interface RunManifest {
  format: typeof MANIFEST_FORMAT;
  versions: { kleinscope: string; spec: number; deno: string; v8: string; typescript: string };
  device?: string;
  experiment: { file: string; hash: string; definition: Experiment };
  tasksFile: { path: string; sha256: string; tasks: number; skippedLines: TaskProblem[] };
  model: { path: string; fingerprint: string };
  shard: ShardInfo | null;
  /** Task ids this manifest covers, in task-file order. */
  tasks: string[];
  conditions: string[];
  started: string;
  updated: string;
  finished: boolean;
  counts: { planned: number; complete: number; ranNow: number; alreadyComplete: number; failed: number; unpaired: number };
  failures: RunIssue[];
  unpaired: RunIssue[];
  /** The task being run when the manifest was written (left set when the run was killed or crashed). */
  running?: { task: string; condition: string; since: string };
  /** Set by a merge. */
  mergedFrom?: { dir: string; shard: ShardInfo | null; tasks: number }[];
  missing?: { task: string; condition: string }[];
}

export const tasksDir = (out: string) => join(out, "tasks");
export const taskDir = (out: string, taskId: string) => join(out, "tasks", taskId);
export const conditionDir = (out: string, taskId: string, condition: string) => join(out, "tasks", taskId, condition);
export const manifestPath = (out: string) => join(out, "manifest.json");
export const shardManifestPath = (out: string, shard: { index: number; count: number }) =>
  join(out, "shards", `shard-${shard.index}-of-${shard.count}.json`);
/** In a patch condition's folder: {source_task, source_seed, rule}. */
export const PATCH_SOURCE_FILE = "patch_source.json";
export const partialPrefix = (condition: string) => `.${condition}.partial-`;
export const TASK_FILE = "task.json";
export const locksDir = (out: string) => join(out, "locks");

/** Names the run folder uses itself (at any level), and names some file systems reserve. */
const RESERVED_NAMES = new Set([
  TASK_FILE,
  "manifest.json",
  "shards",
  "tasks",
  "refs",
  "locks",
  "judgments",
  "judge-cache",
  "metrics.jsonl",
  "report.html",
  PATCH_SOURCE_FILE,
]);

/** Why `name` cannot name a task or condition folder, or undefined when it can. */
export function folderNameProblem(name: string): string | undefined {
  // "@" for the points of a block sweep (<condition>@<kind>-<L>): safe on every common file system, unlike ":".
  if (!/^[A-Za-z0-9_][A-Za-z0-9._+@-]*$/.test(name)) return "use letters, digits and . _ + - @, not starting with a dot";
  const lower = name.toLowerCase();
  if (RESERVED_NAMES.has(lower)) return `"${lower}" is a name the run folder uses itself`;
  if (/^(con|prn|aux|nul|com\d|lpt\d)(\..*)?$/.test(lower)) return "some file systems reserve that name";
  if (name.length > 200) return "longer than 200 characters";
  return undefined;
}

/** A run folder to write into (a run's output, a merge's destination): new, empty, or holding a run — never a
 * folder of other files, `.`, an ancestor of the current folder, home, a root, or the model folder. */
export async function checkRunFolderPath(out: string, what: string, model?: string): Promise<void> {
  await checkOutputPath(out, { what, protect: model ? [{ path: model, what: "model folder" }] : [] });
  const names = await listNames(out).catch(() => [] as string[]);
  const ours = ["manifest.json", "shards", "tasks", "locks", "refs", "judgments", "judge-cache", "metrics.jsonl", "report.html"];
  if (names.length && !names.some((n) => ours.includes(n))) {
    throw new Error(
      `${what} ${printable(out)} holds files of its own (${names.slice(0, 3).map(printable).join(", ")}) and no experiment run; ` +
        `choose a new or empty folder`,
    );
  }
}

/** What kleinscope writes into a condition folder besides a run's outputs. */
export const CONDITION_EXTRA_FILES = [PATCH_SOURCE_FILE];

export async function isCompleteFolder(dir: string): Promise<boolean> {
  return (await pathExists(join(dir, "spec.json"))) && (await pathExists(join(dir, "image.png")));
}

/** manifest.json and every shard manifest of a run folder. */
export async function readManifests(out: string): Promise<{ path: string; manifest: RunManifest }[]> {
  const paths: string[] = [];
  if (await pathExists(manifestPath(out))) paths.push(manifestPath(out));
  for (const name of await listNames(join(out, "shards"))) if (name.endsWith(".json")) paths.push(join(out, "shards", name));
  const found: { path: string; manifest: RunManifest }[] = [];
  for (const path of paths) {
    const manifest = await readJsonFile<RunManifest>(path);
    if (manifest.format !== MANIFEST_FORMAT) throw new Error(`${path} is not a kleinscope experiment manifest`);
    found.push({ path, manifest });
  }
  return found;
}

export interface RunFolder {
  dir: string;
  manifests: { path: string; manifest: RunManifest }[];
  hash: string;
  experiment: Experiment;
  /** Tasks whose task.json exists, in the manifests' task order. */
  tasks: Task[];
  conditions: string[];
  /** Complete condition folders: task_id → condition names. */
  complete: Map<string, Set<string>>;
}

/** Read an experiment's output folder: its manifests (which must agree), tasks and complete folders. */
export async function readRunFolder(dir: string): Promise<RunFolder> {
  const manifests = await readManifests(dir);
  if (!manifests.length) {
    throw new Error(`${dir} holds no experiment manifest (manifest.json or shards/*.json): is it an experiment's output folder?`);
  }
  const hashes = new Set(manifests.map((m) => m.manifest.experiment.hash));
  if (hashes.size > 1) throw new Error(`${dir} mixes runs of different experiments (${[...hashes].join(", ")})`);
  const main = manifests.find((m) => !m.manifest.shard) ?? manifests[0];
  const order: string[] = [];
  const seen = new Set<string>();
  for (const { manifest } of [main, ...manifests]) {
    for (const id of manifest.tasks) if (!seen.has(id)) seen.add(id), order.push(id);
  }
  for (const name of await listNames(tasksDir(dir))) if (!seen.has(name)) seen.add(name), order.push(name);
  const tasks: Task[] = [];
  const complete = new Map<string, Set<string>>();
  const conditions = main.manifest.conditions;
  for (const id of order) {
    const tj = join(taskDir(dir, id), "task.json");
    if (!(await pathExists(tj))) continue;
    tasks.push(await readJsonFile<Task>(tj));
    const done = new Set<string>();
    for (const c of conditions) if (await isCompleteFolder(conditionDir(dir, id, c))) done.add(c);
    complete.set(id, done);
  }
  return { dir, manifests, hash: [...hashes][0], experiment: main.manifest.experiment.definition, tasks, conditions, complete };
}

export const syntheticRefsDir = (out: string) => join(out, "refs");

/** A task's reference images inside a run: its own files, or its generated synthetic reference. */
export function taskReferences(out: string, task: Task): string[] {
  return task.synthetic_ref ? [join(syntheticRefsDir(out), `${task.task_id}.png`)] : task.refs;
}
