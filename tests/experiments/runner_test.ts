// The runner's bookkeeping, without the GPU: complete folders are skipped (no model is loaded when nothing is left),
// unpaired patch conditions are reported, --limit bounds the work, and a folder holding another experiment is refused.

import assert from "node:assert/strict";
import { join } from "node:path";
import { experimentHash, readExperiment } from "../../experiments/experiment.ts";
import { writeColourTasks } from "../../experiments/generators.ts";
import { readManifests } from "../../experiments/run_folder.ts";
import { runExperiment } from "../../experiments/runner.ts";
import type { Task } from "../../experiments/tasks.ts";
import { makeFakeRun } from "./fake_run.ts";

const MODEL = new URL("../fixtures/klein-tiny/model", import.meta.url).pathname;

async function setup(root: string) {
  const set = await writeColourTasks({
    out: join(root, "c"),
    colours: ["red", "blue"],
    objects: ["couch"],
    seeds: [0],
    width: 64,
    height: 64,
    swatchSize: 64,
  });
  // A task alone with its instruction: the patch condition has no source for it.
  const lonely: Task = { ...set.tasks[0], task_id: "lonely", instruction: "draw a lamp in this color" };
  await Deno.writeTextFile(
    set.taskFile,
    (await Deno.readTextFile(set.taskFile)) + JSON.stringify({ ...lonely, refs: ["swatches/red.png"] }) + "\n",
  );
  const conditions = [{ name: "baseline" }, { name: "patch", patch: { block: "double.1", mode: "padding_only" as const } }];
  const file = join(root, "exp.json");
  await Deno.writeTextFile(file, JSON.stringify({ model: MODEL, tasks: "c/tasks.jsonl", output: "run", steps: 1, conditions }));
  const loaded = await readExperiment(file);
  return { tasks: [...set.tasks, lonely], conditions, loaded };
}

Deno.test("runner: a finished run is skipped without loading a model; unpaired patch conditions are reported", async () => {
  const root = await Deno.makeTempDir({ prefix: "ks-runner-" });
  try {
    const { tasks, conditions, loaded } = await setup(root);
    const { hash } = await experimentHash(loaded);
    await makeFakeRun({ dir: join(root, "run"), tasks, conditions, hash, include: (t, c) => !(t.task_id === "lonely" && c === "patch") });
    // The fake run's manifest is replaced by the runner's own.
    const logs: string[] = [];
    const s = await runExperiment(loaded, { log: (l) => logs.push(l) });
    assert.deepEqual([s.tasks, s.planned, s.alreadyComplete, s.ranNow, s.remaining, s.failed.length], [3, 6, 5, 0, 0, 0]);
    assert.deepEqual(s.unpaired.map((u) => `${u.task}/${u.condition}`), ["lonely/patch"]);
    assert.ok(logs.some((l) => /unpaired: lonely \/ patch: no task shares its instruction/.test(l)));
    assert.equal(logs.some((l) => /loading/.test(l)), false);
    const manifest = (await readManifests(join(root, "run")))[0].manifest;
    assert.equal(manifest.experiment.hash, hash);
    assert.equal(manifest.finished, true);
    assert.deepEqual(manifest.tasks, tasks.map((t) => t.task_id));
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("runner: --limit 0 runs nothing; an output folder of another experiment is refused", async () => {
  const root = await Deno.makeTempDir({ prefix: "ks-runner-" });
  try {
    const { tasks, conditions, loaded } = await setup(root);
    const s = await runExperiment(loaded, { limit: 0, log: () => {} });
    assert.deepEqual([s.ranNow, s.remaining, s.unpaired.length], [0, 5, 1]);
    const shard = await runExperiment(loaded, { limit: 0, shard: { index: 2, count: 2 }, log: () => {} });
    assert.ok(shard.manifestPath.endsWith("shards/shard-2-of-2.json"));
    await makeFakeRun({ dir: join(root, "other"), tasks, conditions, hash: "sha256:another" });
    loaded.experiment.output = join(root, "other");
    await assert.rejects(
      () => runExperiment(loaded, { log: () => {} }),
      /holds a run of a different experiment .*Choose another output folder/,
    );
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});
