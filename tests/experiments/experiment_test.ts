// Experiment files: validation with field paths, conditions turned into RunSpecs (baseline, text-only, knockout,
// lens, paired patch), the experiment hash, and the shard rule covering every task exactly once.

import assert from "node:assert/strict";
import { join } from "node:path";
import { conditionToSpec, experimentHash, parseExperiment, readExperiment, UnpairedTaskError } from "../../experiments/experiment.ts";
import { pairForPatching, writeColourTasks } from "../../experiments/generators.ts";
import { fnv1a32, parseShard, shardOfTask } from "../../experiments/runner.ts";
import type { Task } from "../../experiments/tasks.ts";

const MODEL = new URL("../fixtures/klein-tiny/model", import.meta.url).pathname;

const CONDITIONS = [
  { name: "baseline" },
  { name: "t2i_clean", textOnly: true, prompt: "a {metadata.object}" },
  { name: "ko_ref_text", interventions: [{ type: "knockout", setting: "ref->text", blocks: "all" }] },
  { name: "lens_single0", interventions: [{ type: "lens", block: "single.0", mode: "diagonal" }] },
  { name: "patch_padding", steps: 2, patch: { block: "double.1", mode: "padding_only", pairing: "shift" } },
];

Deno.test("experiment: parsed with paths resolved against its folder; bad fields named", () => {
  const exp = parseExperiment(
    { model: "m", tasks: "t.jsonl", output: "out", steps: 1, width: 64, height: 64, conditions: CONDITIONS },
    "/base",
  );
  assert.equal(exp.model, "/base/m");
  assert.equal(exp.tasks, "/base/t.jsonl");
  assert.equal(exp.output, "/base/out");
  assert.deepEqual(exp.conditions.map((c) => c.name), CONDITIONS.map((c) => c.name));
  assert.deepEqual(exp.conditions[4].patch, { block: "double.1", mode: "padding_only", pairing: "shift" });
  const base = { model: "m", tasks: "t", output: "o" };
  const bad: [unknown, RegExp][] = [
    [{ ...base }, /experiment\.conditions: expected a non-empty list/],
    [{ tasks: "t", output: "o", conditions: [{ name: "a" }] }, /experiment\.model: is required/],
    [{ ...base, conditions: [{ name: "a" }], colour: 1 }, /experiment\.colour: unknown field/],
    [{ ...base, width: 70, conditions: [{ name: "a" }] }, /experiment\.width: 70 is not a multiple of 16/],
    [{ ...base, conditions: [{ name: "a" }, { name: "a" }] }, /experiment\.conditions\[1\]\.name: "a" is used twice/],
    [{ ...base, conditions: [{ name: "../x" }] }, /experiment\.conditions\[0\]\.name: "\.\.\/x" cannot name a folder/],
    [
      { ...base, conditions: [{ name: "k", interventions: [{ type: "knockout", setting: "ref" }] }] },
      /experiment\.conditions\[0\]\.interventions\[0\]\.setting: "ref" must look like "A->B"/,
    ],
    [
      { ...base, conditions: [{ name: "p", patch: { mode: "all" } }] },
      /experiment\.conditions\[0\]\.patch\.block: give exactly one of "block"/,
    ],
    [
      { ...base, conditions: [{ name: "p", patch: { block: "double.1", pairing: "random" } }] },
      /experiment\.conditions\[0\]\.patch\.pairing: expected "shift"/,
    ],
    [
      { ...base, conditions: [{ name: "p", patch: { block: "double.1", source: {} } }] },
      /experiment\.conditions\[0\]\.patch\.source: unknown field/,
    ],
    [
      { ...base, conditions: [{ name: "a" }], judge: { questions: [{ template: "nope" }] } },
      /experiment\.judge\.questions\[0\]\.template: unknown question template "nope"/,
    ],
    [
      { ...base, conditions: [{ name: "a" }], judge: { questions: [{ template: "style.knockout_lost", conditions: ["b"] }] } },
      /no condition is named "b"/,
    ],
  ];
  for (const [raw, re] of bad) assert.throws(() => parseExperiment(raw, "/base"), re);
});

function colourTask(id: string, ref: string, seed: number, object = "couch"): Task {
  return {
    task_id: id,
    edit_type: "color",
    family: "color",
    instruction: `draw a ${object} in this color`,
    refs: [ref],
    width: 64,
    height: 64,
    noise_seed: seed,
    metadata: { object },
  };
}

Deno.test("conditions become RunSpecs: baseline, text-only with its own prompt, knockout, lens, paired patch", () => {
  const exp = parseExperiment({ model: MODEL, tasks: "t", output: "o", steps: 1, conditions: CONDITIONS }, "/");
  const tasks = [colourTask("red", "/s/red.png", 3), colourTask("blue", "/s/blue.png", 3), colourTask("lonely", "/s/red.png", 0, "vase")];
  const ctx = { pairs: pairForPatching(tasks), refsOf: (t: Task) => t.refs };
  const spec = (cond: number, task: Task) => conditionToSpec(exp, exp.conditions[cond], task, ctx);
  assert.deepEqual(spec(0, tasks[0]), {
    model: MODEL,
    prompt: "draw a couch in this color",
    refs: ["/s/red.png"],
    width: 64,
    height: 64,
    steps: 1,
    seed: 3,
    interventions: [],
  } as unknown);
  const t2i = spec(1, tasks[0]);
  assert.deepEqual([t2i.prompt, t2i.refs], ["a couch", []]);
  assert.deepEqual(spec(2, tasks[0]).interventions, [{ type: "knockout", setting: "ref->text", blocks: "all" }]);
  assert.equal(spec(3, tasks[0]).interventions![0].type, "lens");
  const patch = spec(4, tasks[0]);
  assert.equal(patch.steps, 2);
  assert.deepEqual(patch.interventions, [{
    type: "patch",
    block: "double.1",
    mode: "padding_only",
    source: { prompt: "draw a couch in this color", refs: ["/s/blue.png"], seed: 4 },
  }]);
  assert.throws(
    () => spec(4, tasks[2]),
    (e: Error) => e instanceof UnpairedTaskError && /no other task has the instruction "draw a vase/.test(e.message),
  );
  // A per-condition seed offset overrides the rule's default.
  const shifted = parseExperiment(
    { model: MODEL, tasks: "t", output: "o", conditions: [{ name: "p", patch: { block: "double.1", seedOffset: 100 } }] },
    "/",
  );
  assert.equal(
    (conditionToSpec(shifted, shifted.conditions[0], tasks[1], ctx).interventions![0] as { source: { seed: number } }).source.seed,
    103,
  );
  // A prompt placeholder without a value names the task.
  const missing = parseExperiment(
    { model: MODEL, tasks: "t", output: "o", conditions: [{ name: "x", prompt: "{metadata.nothing}" }] },
    "/",
  );
  assert.throws(() => conditionToSpec(missing, missing.conditions[0], tasks[0], ctx), /task red has no metadata\.nothing/);
});

Deno.test("experiment hash: follows the definition, the task file's bytes and the checkpoint, not paths or the judge", async () => {
  const dir = await Deno.makeTempDir({ prefix: "ks-exp-hash-" });
  try {
    const set = await writeColourTasks({
      out: join(dir, "c"),
      colours: ["red"],
      objects: ["couch"],
      seeds: [0],
      width: 64,
      height: 64,
      swatchSize: 64,
    });
    const write = async (name: string, extra: Record<string, unknown>) => {
      const path = join(dir, name);
      await Deno.writeTextFile(
        path,
        JSON.stringify({ model: MODEL, tasks: "c/tasks.jsonl", output: "run", conditions: [{ name: "baseline" }], ...extra }),
      );
      return (await experimentHash(await readExperiment(path))).hash;
    };
    const h0 = await write("a.json", {});
    assert.match(h0, /^sha256:[0-9a-f]{64}$/);
    assert.equal(await write("b.json", { output: "elsewhere", judge: { model: "x" } }), h0);
    // The same model and task file reached by other paths.
    await Deno.mkdir(join(dir, "sub"));
    assert.equal(await write("sub/e.json", { model: `${MODEL}/../model`, tasks: "../c/tasks.jsonl" }), h0);
    assert.notEqual(await write("c.json", { steps: 2 }), h0);
    await Deno.writeTextFile(set.taskFile, (await Deno.readTextFile(set.taskFile)).replace('"noise_seed":0', '"noise_seed":1'));
    assert.notEqual(await write("d.json", {}), h0);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("shards: FNV-1a of the task id; k = 1..n cover every task exactly once; k/n checked", () => {
  assert.equal(fnv1a32(""), 0x811c9dc5);
  assert.equal(fnv1a32("a"), 0xe40c292c);
  assert.equal(fnv1a32("foobar"), 0xbf9cf968);
  const ids = Array.from({ length: 500 }, (_, i) => `task_${i}`);
  for (const n of [1, 2, 3, 7]) {
    const counts = new Array(n).fill(0);
    for (const id of ids) {
      const k = shardOfTask(id, n);
      assert.ok(k >= 1 && k <= n);
      counts[k - 1]++;
    }
    assert.equal(counts.reduce((a, b) => a + b, 0), ids.length);
    for (const c of counts) assert.ok(c > (ids.length / n) * 0.7, `shards of ${n}: ${counts}`);
  }
  assert.deepEqual(parseShard("2/4"), { index: 2, count: 4 });
  assert.deepEqual(parseShard(" 1 / 1 "), { index: 1, count: 1 });
  for (const bad of ["0/2", "3/2", "1", "a/b", "1/0"]) assert.throws(() => parseShard(bad), /must look like k\/n/);
});
