// Runner processes really killed (SIGKILL) at several points, and run twice at once, with the synthetic executor
// (no GPU): after resuming, the output equals an uninterrupted run's byte for byte — every task × condition once,
// nothing half-written, no partial folder, temporary file or lock left behind; of two concurrent runs of the same
// experiment one refuses with a message naming the lock file and its holder, and a killed run's lock is taken over.

import assert from "node:assert/strict";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { writeColourTasks } from "../../experiments/generators.ts";
import { listNames, pathExists } from "../../experiments/files.ts";
import { OUTPUT_MARKER } from "../../studies/output_folder.ts";
import { shardOfTask } from "../../experiments/runner.ts";

const CHILD = fileURLToPath(new URL("./runner_child.ts", import.meta.url));
const MODEL = fileURLToPath(new URL("../fixtures/klein-tiny/model", import.meta.url));
const CONDITIONS = [
  { name: "baseline" },
  { name: "ko", interventions: [{ type: "knockout", setting: "ref->text", blocks: "all" }] },
  { name: "patch", patch: { block: "double.1", mode: "padding_only" } },
];

interface Child {
  process: Deno.ChildProcess;
  /** Every stderr line so far. */
  lines: string[];
  /** Resolves with the exit code and stderr once the process ends. */
  done: Promise<{ code: number; stderr: string }>;
}

/** Start a runner; `killAt` SIGKILLs it as soon as a stderr line matches. */
function start(experiment: string, args: string[] = [], killAt?: RegExp): Child {
  const process = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", CHILD, experiment, ...args],
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const lines: string[] = [];
  const done = (async () => {
    let buffer = "";
    let killed = false;
    for await (const chunk of process.stderr.pipeThrough(new TextDecoderStream())) {
      buffer += chunk;
      const parts = buffer.split("\n");
      buffer = parts.pop()!;
      for (const line of parts) {
        lines.push(line);
        if (killAt && !killed && killAt.test(line)) {
          killed = true;
          process.kill("SIGKILL");
        }
      }
    }
    if (buffer) lines.push(buffer);
    const status = await process.status;
    if (killAt) assert.ok(killed, `the run ended before ${killAt} (code ${status.code}):\n${lines.join("\n")}`);
    return { code: status.code, stderr: lines.join("\n") };
  })();
  return { process, lines, done };
}

async function setup(root: string, output: string): Promise<{ experiment: string; taskIds: string[] }> {
  const set = await writeColourTasks({
    out: join(root, "colours"),
    colours: ["red", "blue"],
    objects: ["couch", "vase"],
    seeds: [0],
    width: 64,
    height: 64,
    swatchSize: 64,
  });
  const experiment = join(root, `${output}.json`);
  await Deno.writeTextFile(
    experiment,
    JSON.stringify({ model: MODEL, tasks: "colours/tasks.jsonl", output, steps: 1, maxSequenceLength: 64, conditions: CONDITIONS }),
  );
  return { experiment, taskIds: set.tasks.map((t) => t.task_id) };
}

/** Every entry under a run folder, relative, sorted (folders end with "/"). */
async function tree(dir: string, prefix = ""): Promise<string[]> {
  const out: string[] = [];
  for (const name of await listNames(dir)) {
    const st = await Deno.lstat(join(dir, name));
    if (st.isDirectory) out.push(`${prefix}${name}/`, ...await tree(join(dir, name), `${prefix}${name}/`));
    else out.push(prefix + name);
  }
  return out;
}

/** Invariants that hold at every moment, killed or not: a condition folder under its final name is whole. */
async function assertNoHalfFolders(run: string) {
  for (const task of await listNames(join(run, "tasks"))) {
    for (const name of await listNames(join(run, "tasks", task))) {
      if (name.startsWith(".") || name === "task.json") continue;
      const dir = join(run, "tasks", task, name);
      for (const f of ["image.png", "spec.json", "run.json", OUTPUT_MARKER]) {
        assert.ok(await pathExists(join(dir, f)), `${task}/${name} is under its final name without ${f}`);
      }
    }
  }
}

async function assertSameAsReference(run: string, reference: string, taskIds: string[]) {
  const expected = taskIds.flatMap((id) => ["tasks/" + id + "/", ...CONDITIONS.flatMap((c) => [`tasks/${id}/${c.name}/`])]);
  const got = await tree(run);
  // No leftovers: no partial folder, temporary file, lock or stale lock.
  assert.deepEqual(got.filter((p) => /\.partial-|\.tmp$|\.lock|stale|kleinscope-(tmp|old)/.test(p) || p.startsWith("locks")), []);
  for (const p of expected) assert.ok(got.includes(p), `${p} is missing`);
  const ref = await tree(reference);
  assert.deepEqual(got, ref, "the same files as an uninterrupted run");
  for (const p of got.filter((p) => /\/(image\.png|spec\.json|run\.json|patch_source\.json|task\.json)$/.test(p))) {
    assert.deepEqual(await Deno.readFile(join(run, p)), await Deno.readFile(join(reference, p)), `${p} differs`);
  }
  const manifest = JSON.parse(await Deno.readTextFile(join(run, "manifest.json")));
  assert.equal(manifest.finished, true);
  assert.deepEqual(manifest.failures, []);
  assert.equal(manifest.running, undefined);
  assert.equal(manifest.counts.complete, taskIds.length * CONDITIONS.length);
  assert.deepEqual(manifest.tasks, taskIds, "every task once");
}

Deno.test("runner killed with SIGKILL at several points, then resumed, equals an uninterrupted run", async () => {
  const root = await Deno.makeTempDir({ prefix: "ks-kill-" });
  try {
    const { experiment: refExp, taskIds } = await setup(root, "reference");
    const r = await start(refExp).done;
    assert.equal(r.code, 0, r.stderr);
    const { experiment } = await setup(root, "run");
    const run = join(root, "run");
    // Each point: a stderr line of the runner (log lines come right after the step they name).
    const points: [string, RegExp][] = [
      ["after taking the lock and writing the manifest", /task\(s\) × 3 condition\(s\)/],
      ["in the middle of a condition folder", /: wrote image\.png$/],
      ["after the stale lock was taken over", /took over the stale lock/],
      ["between a folder's rename and the manifest update", /^\[2\/\d+\]/],
      ["in the middle of another folder", /: wrote spec\.json$/],
      ["in the middle of another folder", /: wrote spec\.json$/],
    ];
    let sawTakeover = false, sawPartial = false;
    for (const [what, at] of points) {
      const killed = await start(experiment, ["--pause-ms", "20"], at).done;
      assert.notEqual(killed.code, 0, what);
      sawTakeover ||= /took over the stale lock .*all\.lock of pid \d+ on host .*, started .*: that process is gone/.test(killed.stderr);
      await assertNoHalfFolders(run);
      sawPartial ||= (await tree(run)).some((p) => p.includes(".partial-"));
      assert.ok(await pathExists(join(run, "locks", "all.lock")), `the killed run (${what}) left its lock`);
    }
    assert.ok(sawTakeover, "a stale lock was taken over with a warning");
    assert.ok(sawPartial, "some kill left a partial folder (which the resumed run removes)");
    const resumed = await start(experiment).done;
    assert.equal(resumed.code, 0, resumed.stderr);
    assert.match(resumed.stderr, /took over the stale lock/);
    assert.match(resumed.stderr, /done: \d+ run now, \d+ already complete, 0 failed/);
    await assertSameAsReference(run, join(root, "reference"), taskIds);
    // A further run has nothing to do.
    const idle = await start(experiment).done;
    assert.match(idle.stderr, /done: 0 run now, 12 already complete/);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("two runs of one experiment at once: one refuses, naming the lock and its holder; nothing is lost or duplicated", async () => {
  const root = await Deno.makeTempDir({ prefix: "ks-kill-" });
  try {
    const { experiment: refExp, taskIds } = await setup(root, "reference");
    assert.equal((await start(refExp).done).code, 0);
    const { experiment } = await setup(root, "run");
    const [a, b] = [start(experiment, ["--pause-ms", "30"]), start(experiment, ["--pause-ms", "30"])];
    const results = await Promise.all([a.done, b.done]);
    const refused = results.filter((r) => r.code !== 0);
    assert.equal(refused.length, 1, results.map((r) => r.stderr).join("\n----\n"));
    assert.match(
      refused[0].stderr,
      /error: run folder .*run is in use: lock .*locks\/all\.lock is held by pid \d+ on host \S+, started \d{4}-\d\d-\d\dT[^ ]+ \(experiment run\); wait for it to finish/,
    );
    assert.equal(refused[0].stderr.split("\n").filter((l) => l.startsWith("error:")).length, 1);
    await assertSameAsReference(join(root, "run"), join(root, "reference"), taskIds);

    // Shards of one split share a folder side by side; a whole run beside a shard is refused.
    const { experiment: shared } = await setup(root, "shared");
    const [s1, s2] = [start(shared, ["--shard", "1/2", "--pause-ms", "30"]), start(shared, ["--shard", "2/2", "--pause-ms", "30"])];
    const sharded = await Promise.all([s1.done, s2.done]);
    assert.deepEqual(sharded.map((r) => r.code), [0, 0], sharded.map((r) => r.stderr).join("\n----\n"));
    const { experiment: other, taskIds: ids } = await setup(root, "other");
    const k = [1, 2, 3].find((k) => ids.some((id) => shardOfTask(id, 3) === k))!;
    const shard = start(other, ["--shard", `${k}/3`, "--pause-ms", "300"]);
    while (!shard.lines.some((l) => /condition\(s\):/.test(l))) await new Promise((r) => setTimeout(r, 20));
    const whole = await start(other).done;
    assert.equal(whole.code, 1);
    assert.match(whole.stderr, new RegExp(`is in use: lock .*shard-${k}-of-3\\.lock is held by pid`));
    assert.equal((await shard.done).code, 0);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});
