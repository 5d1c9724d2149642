// Merging shard outputs: folders copied (or moved) whole, identical duplicates accepted, a conflicting duplicate
// refuses the merge before anything is copied, runs of different experiments are never mixed, coverage is reported.

import assert from "node:assert/strict";
import { join } from "node:path";
import { mergeRuns } from "../../experiments/merge.ts";
import { writeColourTasks } from "../../experiments/generators.ts";
import { conditionDir, isCompleteFolder, readManifests, readRunFolder } from "../../experiments/run_folder.ts";
import { shardOfTask } from "../../experiments/runner.ts";
import { listNames, pathExists } from "../../experiments/files.ts";
import type { Task } from "../../experiments/tasks.ts";
import { makeFakeRun, writeBandedImage } from "./fake_run.ts";

const CONDITIONS = [{ name: "baseline" }, { name: "ko" }];

async function setup(root: string): Promise<Task[]> {
  const set = await writeColourTasks({
    out: join(root, "colours"),
    colours: ["red", "blue", "green"],
    objects: ["couch", "vase"],
    seeds: [0],
    width: 64,
    height: 64,
    swatchSize: 64,
  });
  return set.tasks;
}

async function shard(root: string, tasks: Task[], k: number, n: number, name = `s${k}`, include?: (t: Task, c: string) => boolean) {
  const dir = join(root, name);
  await makeFakeRun({
    dir,
    tasks: tasks.filter((t) => shardOfTask(t.task_id, n) === k),
    conditions: CONDITIONS,
    shard: { index: k, count: n, rule: "x" },
    include,
  });
  return dir;
}

Deno.test("merge: shards combine into one complete run folder with a merged manifest", async () => {
  const root = await Deno.makeTempDir({ prefix: "ks-merge-" });
  try {
    const tasks = await setup(root);
    const s1 = await shard(root, tasks, 1, 2), s2 = await shard(root, tasks, 2, 2);
    const logs: string[] = [];
    const into = join(root, "merged");
    const s = await mergeRuns([s1, s2], into, { log: (l) => logs.push(l) });
    assert.deepEqual([s.copied, s.duplicates, s.missing.length, s.expected, s.complete], [12, 0, 0, 12, 12]);
    const run = await readRunFolder(into);
    assert.equal(run.tasks.length, 6);
    for (const t of tasks) assert.deepEqual([...run.complete.get(t.task_id)!].sort(), ["baseline", "ko"]);
    const manifest = (await readManifests(into)).find((m) => m.path.endsWith("manifest.json"))!.manifest;
    assert.equal(manifest.shard, null);
    assert.equal(manifest.finished, true);
    assert.equal(manifest.mergedFrom!.length, 2);
    // No partial folders left in the destination.
    for (const t of tasks) assert.deepEqual((await listNames(join(into, "tasks", t.task_id))).filter((n) => n.startsWith(".")), []);
    // Merging the same shards again: everything is an identical duplicate.
    const again = await mergeRuns([s1, s2], into, { log: () => {} });
    assert.deepEqual([again.copied, again.duplicates], [0, 12]);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("merge: missing folders and shards are reported; --move moves", async () => {
  const root = await Deno.makeTempDir({ prefix: "ks-merge-" });
  try {
    const tasks = await setup(root);
    const gap = tasks.find((t) => shardOfTask(t.task_id, 3) === 1)!;
    const s1 = await shard(root, tasks, 1, 3, "s1", (t, c) => !(t === gap && c === "ko"));
    const s2 = await shard(root, tasks, 2, 3);
    const logs: string[] = [];
    const s = await mergeRuns([s1, s2], join(root, "m"), { move: true, log: (l) => logs.push(l) });
    assert.deepEqual(s.missingShards, ["3/3"]);
    assert.ok(s.missing.some((m) => m.task === gap.task_id && m.condition === "ko"));
    assert.ok(logs.some((l) => l.includes("no manifest of shard(s) 3/3")));
    assert.ok(logs.some((l) => /folder\(s\) missing/.test(l)));
    // Moved: the sources no longer hold the folders.
    assert.equal(await isCompleteFolder(conditionDir(s2, tasks.find((t) => shardOfTask(t.task_id, 3) === 2)!.task_id, "baseline")), false);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("merge: a conflicting duplicate refuses the merge and copies nothing; different experiments are refused", async () => {
  const root = await Deno.makeTempDir({ prefix: "ks-merge-" });
  try {
    const tasks = await setup(root);
    const a = join(root, "a"), b = join(root, "b");
    await makeFakeRun({ dir: a, tasks, conditions: CONDITIONS, shard: { index: 1, count: 1, rule: "x" } });
    await makeFakeRun({ dir: b, tasks: tasks.slice(0, 2), conditions: CONDITIONS, shard: { index: 1, count: 1, rule: "x" } });
    await writeBandedImage(join(conditionDir(b, tasks[1].task_id, "ko"), "image.png"), [1, 2, 3], 64);
    const into = join(root, "into");
    await assert.rejects(() => mergeRuns([a, b], into, { log: () => {} }), (e: Error) => {
      assert.match(e.message, /refusing to merge: 1 conflicting duplicate\(s\), nothing was copied/);
      assert.ok(e.message.includes(`${tasks[1].task_id}/ko`));
      return true;
    });
    assert.equal(await pathExists(join(into, "tasks")), false);
    const other = join(root, "other");
    await makeFakeRun({ dir: other, tasks, conditions: CONDITIONS, hash: "sha256:another" });
    await assert.rejects(() => mergeRuns([a, other], join(root, "x"), { log: () => {} }), /runs of different experiments/);
    await assert.rejects(() => mergeRuns([join(root, "colours")], join(root, "y"), { log: () => {} }), /holds no experiment manifest/);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});
