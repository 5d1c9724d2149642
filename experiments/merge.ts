// Combining the output folders of shards (or of separate machines) into one run folder. Every input must come from
// the same experiment (same hash). A condition folder present in two places must be identical (same image.png and
// spec.json bytes) — a conflicting duplicate refuses the whole merge before anything is copied. Folders arrive in the
// destination under a partial name and are renamed when whole, like the runner's. Afterwards the coverage is checked
// against the task file: every task × condition (except unpaired patch conditions) must be complete, and the missing
// ones are listed in the merged manifest. The merge holds the destination's lock (no runner works there meanwhile),
// first removes what a killed merge or run left there, and with --move removes a source folder only file by file,
// only the files kleinscope wrote. The destination may be one of the inputs (shards that shared it as their output):
// then only the merged manifest.json is written there.

import { join, relative, resolve } from "node:path";
import { printable } from "../runtime/printable.ts";
import { ownedFiles, removeOwnedFolder, syncFolder, syncTree, tempFileWriter, writeOutputMarker } from "../studies/output_folder.ts";
import { copyFileAtomic, copyTree, fileSha256, listNames, pathExists, writeJsonAtomic } from "./files.ts";
import { acquireRunLock } from "./run_lock.ts";
import {
  checkRunFolderPath,
  CONDITION_EXTRA_FILES,
  conditionDir,
  isCompleteFolder,
  manifestPath,
  partialPrefix,
  readManifests,
  type RunIssue,
  type RunManifest,
  type ShardInfo,
  syntheticRefsDir,
  taskDir,
  tasksDir,
} from "./run_folder.ts";
import { readTaskFile } from "./tasks.ts";

export interface MergeOptions {
  /** Move folders instead of copying them (falls back to copying across file systems). */
  move?: boolean;
  log?: (line: string) => void;
}

export interface MergeSummary {
  into: string;
  copied: number;
  duplicates: number;
  tasks: number;
  expected: number;
  complete: number;
  missing: { task: string; condition: string }[];
  missingShards: string[];
  manifest: string;
}

async function sameBytes(a: string, b: string): Promise<boolean> {
  const [x, y] = await Promise.all([Deno.readFile(a), Deno.readFile(b)]);
  if (x.length !== y.length) return false;
  for (let i = 0; i < x.length; i++) if (x[i] !== y[i]) return false;
  return true;
}

/** Two complete condition folders hold the same result. */
async function sameResult(a: string, b: string): Promise<boolean> {
  return (await sameBytes(join(a, "image.png"), join(b, "image.png"))) && (await sameBytes(join(a, "spec.json"), join(b, "spec.json")));
}

/** Bring a complete condition folder to `to` (a partial name): renamed when moving on one file system, else copied
 * and, when moving, the source removed file by file afterwards (only what kleinscope wrote; else it stays). */
async function moveOrCopy(from: string, to: string, move: boolean, log: (line: string) => void): Promise<void> {
  if (move) {
    try {
      await Deno.rename(from, to);
      return;
    } catch { /* another file system: copy */ }
  }
  await copyTree(from, to);
  if (!(await ownedFiles(to, CONDITION_EXTRA_FILES))?.foreign.length) await writeOutputMarker(to, "condition");
  await syncTree(to);
  if (move) {
    await removeOwnedFolder(from, CONDITION_EXTRA_FILES).catch((e) =>
      log(`warning: ${printable(from)} copied but not removed: ${(e as Error).message}`)
    );
  }
}

/** Partial folders and temporary files a killed merge or run left in the destination's task folders. */
async function removeLeftovers(into: string): Promise<void> {
  for (const id of await listNames(tasksDir(into))) {
    for (const name of await listNames(taskDir(into, id))) {
      const path = join(taskDir(into, id), name);
      if (/^\..+\.partial-[0-9a-f]{8}$/.test(name)) await Deno.remove(path, { recursive: true }).catch(() => {});
      else if (tempFileWriter(name) !== undefined) await Deno.remove(path).catch(() => {});
    }
  }
}

interface PlannedCopy {
  from: string;
  task: string;
  condition: string;
}

/** Merge run folders `inputs` into `into` (which may already hold part of the same run). */
export async function mergeRuns(inputs: string[], into: string, options: MergeOptions = {}): Promise<MergeSummary> {
  const log = options.log ?? ((l: string) => console.error(l));
  if (!inputs.length) throw new Error("merge needs at least one run folder");
  into = resolve(into);
  const all: { dir: string; manifests: RunManifest[] }[] = [];
  for (const raw of inputs) {
    const dir = resolve(raw);
    // Shards that shared the destination as their output: nothing to copy, their manifests count as the destination's.
    if (dir === into) {
      if (!(await readManifests(dir)).length) throw new Error(`${raw} holds no experiment manifest (manifest.json or shards/*.json)`);
      continue;
    }
    const manifests = (await readManifests(dir)).map((m) => m.manifest);
    if (!manifests.length) throw new Error(`${raw} holds no experiment manifest (manifest.json or shards/*.json)`);
    all.push({ dir, manifests });
  }
  await checkRunFolderPath(into, "merge destination");
  const created = !(await pathExists(into));
  await Deno.mkdir(into, { recursive: true });
  const lock = await acquireRunLock(into, { kind: "all" }, "merge", log);
  try {
    await removeLeftovers(into);
    return await mergeLocked(all, into, options, log);
  } finally {
    await lock.release();
    if (created) await Deno.remove(into).catch(() => {}); // only while still empty (a refused merge)
  }
}

async function mergeLocked(
  all: { dir: string; manifests: RunManifest[] }[],
  into: string,
  options: MergeOptions,
  log: (line: string) => void,
): Promise<MergeSummary> {
  const existing = (await readManifests(into)).map((m) => m.manifest);
  const hashes = new Map<string, string>();
  for (const { dir, manifests } of [...all, { dir: into, manifests: existing }]) {
    for (const m of manifests) if (!hashes.has(m.experiment.hash)) hashes.set(m.experiment.hash, dir);
  }
  if (hashes.size > 1) {
    throw new Error(`these folders hold runs of different experiments: ${[...hashes].map(([h, d]) => `${d} (${h})`).join(", ")}`);
  }
  const reference = all[0]?.manifests[0] ?? existing[0];

  // Plan every copy, and find conflicts, before touching the destination.
  const planned = new Map<string, PlannedCopy>();
  const conflicts: string[] = [];
  let duplicates = 0;
  // Loose files by destination path: task.json of each task, and synthetic references (which must agree byte for byte).
  const files = new Map<string, string>();
  const planFile = async (from: string, dest: string, mustAgree: boolean) => {
    const other = files.get(dest) ?? ((await pathExists(dest)) ? dest : undefined);
    if (other && mustAgree && !(await sameBytes(from, other))) conflicts.push(`${relative(into, dest)}: ${from} differs from ${other}`);
    if (!files.has(dest) && !other) files.set(dest, from);
  };
  for (const { dir } of all) {
    for (const name of await listNames(syntheticRefsDir(dir))) {
      if (name.endsWith(".png")) await planFile(join(syntheticRefsDir(dir), name), join(syntheticRefsDir(into), name), true);
    }
    for (const id of await listNames(tasksDir(dir))) {
      const src = taskDir(dir, id);
      if (await pathExists(join(src, "task.json"))) await planFile(join(src, "task.json"), join(taskDir(into, id), "task.json"), false);
      for (const condition of await listNames(src)) {
        if (condition.startsWith(".")) continue;
        const from = join(src, condition);
        if (!(await Deno.stat(from)).isDirectory || !(await isCompleteFolder(from))) continue;
        const key = `${id}/${condition}`;
        const dest = conditionDir(into, id, condition);
        const earlier = planned.get(key)?.from ?? ((await isCompleteFolder(dest)) ? dest : undefined);
        if (earlier) {
          if (await sameResult(from, earlier)) duplicates++;
          else conflicts.push(`${key}: ${from} and ${earlier} hold different results`);
          continue;
        }
        planned.set(key, { from, task: id, condition });
      }
    }
  }
  if (conflicts.length) {
    throw new Error(
      `refusing to merge: ${conflicts.length} conflicting duplicate(s), nothing was copied:\n  ${conflicts.slice(0, 20).join("\n  ")}` +
        (conflicts.length > 20 ? `\n  … and ${conflicts.length - 20} more` : ""),
    );
  }

  await Deno.mkdir(tasksDir(into), { recursive: true });
  for (const [dest, from] of files) await copyFileAtomic(from, dest);
  let copied = 0;
  for (const { from, task, condition } of planned.values()) {
    const tmp = join(taskDir(into, task), `${partialPrefix(condition)}${crypto.randomUUID().slice(0, 8)}`);
    try {
      await moveOrCopy(from, tmp, options.move ?? false, log);
      await Deno.rename(tmp, conditionDir(into, task, condition));
      await syncFolder(taskDir(into, task));
    } catch (e) {
      await Deno.remove(tmp, { recursive: true }).catch(() => {});
      throw new Error(`copying ${printable(from)}: ${(e as Error).message}`);
    }
    copied++;
  }
  log(
    `merged ${all.length} folder(s) into ${into}: ${copied} condition folder(s) ${
      options.move ? "moved" : "copied"
    }, ${duplicates} identical duplicate(s)`,
  );

  // Coverage: the task file when it is readable and unchanged, else the union of the manifests' tasks.
  const manifests = [...all.flatMap((a) => a.manifests), ...existing];
  let taskIds: string[] | undefined;
  const def = reference.experiment.definition;
  try {
    if (`sha256:${await fileSha256(def.tasks)}` === reference.tasksFile.sha256) {
      const file = await readTaskFile(def.tasks, { refsRoot: def.refsRoot, checkFiles: false });
      taskIds = file.tasks.map((t) => t.task_id);
    }
  } catch { /* not readable here */ }
  if (!taskIds) {
    log(`warning: task file ${def.tasks} is not readable here (or changed); coverage is checked against the manifests' task lists`);
    const seen = new Set<string>();
    taskIds = [];
    for (const m of manifests) for (const id of m.tasks) if (!seen.has(id)) seen.add(id), taskIds.push(id);
  }
  const shardInfos = manifests.map((m) => m.shard).filter((s): s is ShardInfo => s !== null);
  const missingShards: string[] = [];
  const counts = new Set(shardInfos.map((s) => s.count));
  if (!manifests.some((m) => !m.shard)) {
    for (const n of counts) {
      for (let k = 1; k <= n; k++) if (!shardInfos.some((s) => s.count === n && s.index === k)) missingShards.push(`${k}/${n}`);
    }
  }
  const unpaired = new Map<string, RunIssue>();
  for (const m of manifests) for (const u of m.unpaired) unpaired.set(`${u.task}/${u.condition}`, u);
  const conditions = reference.conditions;
  const missing: { task: string; condition: string }[] = [];
  let complete = 0, expected = 0;
  for (const task of taskIds) {
    for (const condition of conditions) {
      if (unpaired.has(`${task}/${condition}`)) continue;
      expected++;
      if (await isCompleteFolder(conditionDir(into, task, condition))) complete++;
      else missing.push({ task, condition });
    }
  }
  const failures = new Map<string, RunIssue>();
  for (const m of manifests) for (const f of m.failures) failures.set(`${f.task}/${f.condition}`, f);
  const now = new Date().toISOString();
  const merged: RunManifest = {
    ...reference,
    shard: null,
    tasks: taskIds,
    started: manifests.map((m) => m.started).sort()[0] ?? now,
    updated: now,
    finished: missing.length === 0,
    counts: {
      planned: taskIds.length * conditions.length,
      complete,
      ranNow: 0,
      alreadyComplete: complete,
      failed: 0,
      unpaired: unpaired.size,
    },
    failures: [...failures.values()].filter((f) => missing.some((m) => m.task === f.task && m.condition === f.condition)),
    unpaired: [...unpaired.values()],
    mergedFrom: [
      ...existing.map((m) => ({ dir: into, shard: m.shard, tasks: m.tasks.length })),
      ...all.flatMap(({ dir, manifests }) => manifests.map((m) => ({ dir, shard: m.shard, tasks: m.tasks.length }))),
    ],
    missing,
  };
  merged.counts.failed = merged.failures.length;
  await writeJsonAtomic(manifestPath(into), merged);
  if (missingShards.length) log(`warning: no manifest of shard(s) ${missingShards.join(", ")}`);
  if (missing.length) {
    log(`${missing.length} of ${expected} task × condition folder(s) missing:`);
    for (const m of missing.slice(0, 20)) log(`  ${m.task} / ${m.condition}`);
    if (missing.length > 20) log(`  … and ${missing.length - 20} more (listed in ${manifestPath(into)})`);
  } else log(`coverage complete: ${complete} folder(s) for ${taskIds.length} task(s) × ${conditions.length} condition(s)`);
  return { into, copied, duplicates, tasks: taskIds.length, expected, complete, missing, missingShards, manifest: manifestPath(into) };
}
