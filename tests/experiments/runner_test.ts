// The runner's bookkeeping, without the GPU: complete folders are skipped (no model is loaded when nothing is left),
// unpaired patch conditions are reported, --limit bounds the work, and a folder holding another experiment is refused;
// with specs run without a GPU (synthetic_executor.ts): a failing task fails alone, every condition is checked before
// any folder is created, task ids and condition names that would collide are refused.

import assert from "node:assert/strict";
import { join } from "node:path";
import { experimentHash, readExperiment } from "../../experiments/experiment.ts";
import { writeColourTasks } from "../../experiments/generators.ts";
import { readManifests } from "../../experiments/run_folder.ts";
import { runExperiment } from "../../experiments/runner.ts";
import type { Task } from "../../experiments/tasks.ts";
import { makeFakeRun } from "./fake_run.ts";
import { syntheticExecutor } from "./synthetic_executor.ts";

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

/** A run folder's entries (for "nothing was created" checks). */
async function exists(path: string): Promise<boolean> {
  try {
    await Deno.lstat(path);
    return true;
  } catch {
    return false;
  }
}

async function colourExperiment(root: string, conditions: unknown[], extraLines: string[] = []) {
  const set = await writeColourTasks({
    out: join(root, "c"),
    colours: ["red", "blue"],
    objects: ["couch"],
    seeds: [0],
    width: 64,
    height: 64,
    swatchSize: 64,
  });
  if (extraLines.length) await Deno.writeTextFile(set.taskFile, (await Deno.readTextFile(set.taskFile)) + extraLines.join("\n") + "\n");
  const file = join(root, "exp.json");
  await Deno.writeTextFile(file, JSON.stringify({ model: MODEL, tasks: "c/tasks.jsonl", output: "run", steps: 1, conditions }));
  return { set, loaded: await readExperiment(file), run: join(root, "run") };
}

Deno.test("runner: a task with a poisoned reference image fails alone; the batch goes on and the manifest says why", async () => {
  const root = await Deno.makeTempDir({ prefix: "ks-runner-" });
  try {
    const poisoned = { ...JSON.parse("{}"), task_id: "poisoned", edit_type: "color", instruction: "draw a couch in this color" };
    const { set, loaded, run } = await colourExperiment(
      root,
      [{ name: "baseline" }, { name: "ko", interventions: [{ type: "knockout", setting: "ref->text", blocks: "all" }] }],
      [JSON.stringify({ ...poisoned, refs: ["swatches/poison.png"], width: 64, height: 64 })],
    );
    // A PNG signature followed by garbage: the decoder refuses it.
    await Deno.writeFile(join(root, "c", "swatches", "poison.png"), new Uint8Array([137, 80, 78, 71, 13, 10, 26, 10, 1, 2, 3, 4, 5]));
    // The poisoned task first: the model-side check of each condition skips it (its plain run fails too) for the next.
    const lines = (await Deno.readTextFile(set.taskFile)).trim().split("\n");
    await Deno.writeTextFile(set.taskFile, [lines.at(-1), ...lines.slice(0, -1)].join("\n") + "\n");
    const logs: string[] = [];
    const s = await runExperiment(loaded, { executor: syntheticExecutor(), log: (l) => logs.push(l) });
    assert.deepEqual([s.ranNow, s.failed.length, s.remaining], [4, 2, 2]);
    assert.deepEqual(s.failed.map((f) => `${f.task}/${f.condition}`), ["poisoned/baseline", "poisoned/ko"]);
    for (const f of s.failed) {
      assert.match(f.reason, /poison\.png/);
      assert.equal(f.reason.includes("\n"), false);
    }
    const manifest = (await readManifests(run))[0].manifest;
    assert.deepEqual(manifest.failures, s.failed);
    assert.equal(manifest.finished, false);
    assert.equal(manifest.running, undefined);
    assert.equal(manifest.counts.failed, 2);
    for (const t of set.tasks) assert.ok(await exists(join(run, "tasks", t.task_id, "ko", "image.png")));
    assert.ok(logs.some((l) => /check of condition baseline on task poisoned skipped: the task itself fails/.test(l)), logs.join("\n"));
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("runner: a bad placeholder or block selection in any condition is refused before any folder is created", async () => {
  const root = await Deno.makeTempDir({ prefix: "ks-runner-" });
  try {
    const cases: [unknown, RegExp][] = [
      [
        { name: "p", prompt: "{instruction} in {metadata.nope}" },
        /conditions\[1\] "p", task \S+: .*has no metadata\.nope.*nothing was run/,
      ],
      [{ name: "p", prompt: "{colour}" }, /conditions\[1\] "p", task \S+: .*unknown placeholder \{colour\}/],
      [
        { name: "k", interventions: [{ type: "knockout", setting: "ref->text", blocks: "double.99" }] },
        /conditions\[1\] "k", task \S+: interventions\[0\]\.blocks: unknown block "double\.99"/,
      ],
      [
        { name: "k", interventions: [{ type: "knockout", setting: "ref->text", blocks: "dobule.1" }] },
        /conditions\[1\] "k", task \S+: interventions\[0\]\.blocks: unknown block "dobule\.1"/,
      ],
      [
        { name: "k", interventions: [{ type: "knockout", setting: "ref->text", blocks: "all", steps: "3" }] },
        /conditions\[1\] "k".*step 3 is beyond/,
      ],
      [
        { name: "task.json" },
        /conditions\[1\]\.name: "task\.json" cannot name a folder \("task\.json" is a name the run folder uses itself\)/,
      ],
      [{ name: "Baseline" }, /conditions\[1\]\.name: "Baseline" differs from conditions\[0\]\.name only in letter case/],
    ];
    for (const [condition, message] of cases) {
      const { loaded, run } = await colourExperiment(root, [{ name: "baseline" }, condition]);
      await assert.rejects(() => runExperiment(loaded, { executor: syntheticExecutor(), log: () => {} }), (e: Error) => {
        assert.match(e.message, message);
        assert.equal(e.message.includes("\n"), false, e.message);
        return true;
      });
      assert.equal(await exists(run), false, `${JSON.stringify(condition)}: the output folder was created`);
    }
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("runner: task ids that would collide with the runner's names or each other are refused with file:line", async () => {
  const root = await Deno.makeTempDir({ prefix: "ks-runner-" });
  try {
    const line = (id: string) =>
      JSON.stringify({ task_id: id, edit_type: "color", instruction: "x", refs: ["swatches/red.png"], width: 64, height: 64 });
    for (
      const [id, message] of [
        ["task.json", /c\/tasks\.jsonl:3: task_id "task\.json" cannot name a folder \("task\.json" is a name the run folder uses itself\)/],
        ["MANIFEST.json", /c\/tasks\.jsonl:3: task_id "MANIFEST\.json" cannot name a folder/],
        ["nul", /c\/tasks\.jsonl:3: task_id "nul" cannot name a folder \(some file systems reserve that name\)/],
      ] as const
    ) {
      const { loaded, run } = await colourExperiment(root, [{ name: "baseline" }], [line(id)]);
      await assert.rejects(() => runExperiment(loaded, { executor: syntheticExecutor(), log: () => {} }), message);
      assert.equal(await exists(run), false);
    }
    const { set, loaded } = await colourExperiment(root, [{ name: "baseline" }], [line("X")]);
    const upper = set.tasks[0].task_id.toUpperCase();
    await Deno.writeTextFile(set.taskFile, (await Deno.readTextFile(set.taskFile)).replace(/"task_id":"X"/, `"task_id":"${upper}"`));
    await assert.rejects(
      () => runExperiment(loaded, { executor: syntheticExecutor(), log: () => {} }),
      /tasks\.jsonl:3: task_id "\S+" differs from "\S+" \(.*tasks\.jsonl:1\) only in letter case/,
    );
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("runner: a condition the model refuses stops the run after loading, before the first task folder", async () => {
  const root = await Deno.makeTempDir({ prefix: "ks-runner-" });
  try {
    const { loaded, run } = await colourExperiment(root, [
      { name: "baseline" },
      { name: "ko", interventions: [{ type: "knockout", setting: "ref[3]->text", blocks: "all" }] },
    ]);
    const executor = syntheticExecutor();
    // The model-side check (checkSpec in the pipeline executor) refuses the group; the plain run passes it.
    executor.check = (spec) =>
      spec.interventions?.some((iv) => iv.type === "knockout" && iv.setting?.startsWith("ref[3]"))
        ? Promise.reject(new Error("group ref[3]: this run has 1 reference"))
        : Promise.resolve();
    await assert.rejects(
      () => runExperiment(loaded, { executor, log: () => {} }),
      /conditions\[1\] "ko" \(checked on task \S+\): group ref\[3\]: this run has 1 reference; no task was run/,
    );
    assert.equal(await exists(join(run, "tasks")), false);
    assert.equal(await exists(join(run, "locks")), false, "the lock is released");
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("runner: an incomplete folder holding a file of the user's is left alone and that task fails", async () => {
  const root = await Deno.makeTempDir({ prefix: "ks-runner-" });
  try {
    const { set, loaded, run } = await colourExperiment(root, [{ name: "baseline" }]);
    const dir = join(run, "tasks", set.tasks[0].task_id, "baseline");
    await Deno.mkdir(dir, { recursive: true });
    await Deno.writeTextFile(join(dir, "notes.txt"), "mine");
    const s = await runExperiment(loaded, { executor: syntheticExecutor(), log: () => {} });
    assert.deepEqual([s.ranNow, s.failed.length], [1, 1]);
    assert.match(s.failed[0].reason, /exists but is incomplete and holds files kleinscope did not write/);
    assert.equal(await Deno.readTextFile(join(dir, "notes.txt")), "mine");
    // Without the user's file the incomplete folder is replaced.
    await Deno.remove(join(dir, "notes.txt"));
    const again = await runExperiment(loaded, { executor: syntheticExecutor(), log: () => {} });
    assert.deepEqual([again.ranNow, again.failed.length, again.remaining], [1, 0, 0]);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});
