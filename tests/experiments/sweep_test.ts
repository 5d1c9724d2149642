// Condition families: block sweeps expanded with the checkpoint's block count (names, sweep metadata as stats.ts
// reads it, the blocks of each kind, refusals), the seed offset of the t2i-clean bookend, and the padding
// dose-response token modes resolved per task.

import assert from "node:assert/strict";
import { join } from "node:path";
import { conditionToSpec, type Experiment, parseExperiment, readExperiment, ruleMatches } from "../../experiments/experiment.ts";
import { sweepOf } from "../../experiments/stats.ts";
import type { Task } from "../../experiments/tasks.ts";
import type { KnockoutSpec, LensSpec, PatchSpecJson } from "../../studies/spec.ts";

const MODEL = join(import.meta.dirname!, "../fixtures/klein-tiny/model"); // 2 double + 2 single blocks
const BLOCKS = ["double.0", "double.1", "single.0", "single.1"];

async function load(conditions: unknown[], extra: Record<string, unknown> = {}): Promise<Experiment> {
  const dir = await Deno.makeTempDir({ prefix: "ks-sweep-" });
  try {
    const file = join(dir, "experiment.json");
    await Deno.writeTextFile(file, JSON.stringify({ model: MODEL, tasks: "t.jsonl", output: "run", conditions, ...extra }));
    return (await readExperiment(file)).experiment;
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

const task: Task = {
  task_id: "red_couch_pad300",
  edit_type: "customize",
  family: "padding_dose/solid_color",
  instruction: "draw a couch in this color This sentence is included",
  refs: ["/s/red.png"],
  width: 64,
  height: 64,
  noise_seed: 11,
  metadata: { padding_base_instruction: "draw a couch in this color", padding_level: 300 },
};
const ctx = { pairs: new Map(), refsOf: (t: Task) => t.refs };

Deno.test("sweeps: one condition per L, named <name>@<kind>-<L>, with the metadata stats.ts reads and each kind's blocks", async () => {
  const ko = { type: "knockout", setting: "ref->text" };
  const exp = await load([
    { name: "baseline" },
    { name: "ko", sweep: { kind: "suffix" }, interventions: [ko] },
    { name: "pre", sweep: { kind: "prefix", L: [2, 0] }, interventions: [ko] },
    {
      name: "one",
      sweep: { kind: "single", L: "all" },
      interventions: [{ type: "knockout", settings: [{ setting: "ref->text" }, { setting: "image->ref" }] }],
    },
    { name: "win", sweep: { kind: "window", window: 2 }, interventions: [ko] },
    { name: "lens", sweep: { kind: "single", L: [3] }, interventions: [{ type: "lens", mode: "diagonal" }] },
    { name: "patch", sweep: { kind: "single", L: [1] }, patch: { mode: "padding_only" } },
  ]);
  const names = exp.conditions.map((c) => c.name);
  assert.deepEqual(names, [
    "baseline",
    ...[0, 1, 2, 3].map((L) => `ko@suffix-${L}`),
    "pre@prefix-0",
    "pre@prefix-2",
    ...[0, 1, 2, 3].map((L) => `one@single-${L}`),
    // Windows of 2 that fit into 4 blocks: L = 0, 1, 2 (the end is skipped, not clipped).
    "win@window2-0",
    "win@window2-1",
    "win@window2-2",
    "lens@single-3",
    "patch@single-1",
  ]);
  const c = (name: string) => exp.conditions.find((x) => x.name === name)!;
  const blocksOf = (name: string) => (c(name).interventions![0] as KnockoutSpec).blocks;
  assert.deepEqual(c("ko@suffix-1").sweep, { family: "ko", kind: "suffix", L: 1, blocks: [1, 2, 3] });
  assert.equal(blocksOf("ko@suffix-1"), "1..4");
  assert.deepEqual(c("pre@prefix-0").sweep!.blocks, [0]);
  assert.deepEqual(c("pre@prefix-2").sweep!.blocks, [0, 1, 2]);
  assert.equal(blocksOf("pre@prefix-2"), "0..3");
  assert.deepEqual((c("one@single-2").interventions![0] as KnockoutSpec).settings!.map((s) => s.blocks), ["2", "2"]);
  assert.deepEqual(c("win@window2-2").sweep, { family: "win", kind: "window2", L: 2, blocks: [2, 3] });
  assert.equal((c("lens@single-3").interventions![0] as LensSpec).block, "single.1");
  assert.equal(c("patch@single-1").patch!.block, "double.1");
  // stats.ts reads the same points back, and a rule naming the sweep covers all of them.
  for (const cond of exp.conditions.slice(1)) {
    const p = sweepOf(cond)!;
    assert.equal(cond.name, `${p.family}@${p.kind}-${p.L}`);
    assert.ok(ruleMatches(p.family, cond.name) && ruleMatches(`${p.family}@*`, cond.name));
    assert.equal(BLOCKS[p.L] !== undefined, true);
  }
  assert.ok(!ruleMatches("k", "ko@suffix-0") && !ruleMatches("baseline", "ko@suffix-0"));
  // Every point builds into a spec (blocks and steps read against the model at run time).
  const spec = conditionToSpec(exp, c("ko@suffix-2"), task, ctx);
  assert.deepEqual(spec.interventions, [{ type: "knockout", setting: "ref->text", blocks: "2..4" }]);
});

Deno.test("sweeps: refusals name the field", async () => {
  const ko = { type: "knockout", setting: "ref->text" };
  const bad: [unknown[], RegExp][] = [
    [[{ name: "a", sweep: {}, interventions: [ko] }], /conditions\[0\]\.sweep\.kind: is required/],
    [[{ name: "a", sweep: { kind: "diagonal" }, interventions: [ko] }], /conditions\[0\]\.sweep\.kind: expected/],
    [[{ name: "a", sweep: { kind: "suffix", L: [4] }, interventions: [ko] }], /sweep\.L: 4 is beyond the model's blocks \(0\.\.3\)/],
    [[{ name: "a", sweep: { kind: "window", L: [2] }, interventions: [ko] }], /sweep\.L: 2: a window of 3 from block 2 runs past/],
    [[{ name: "a", sweep: { kind: "suffix", window: 2 }, interventions: [ko] }], /sweep\.window: only goes with kind "window"/],
    [
      [{ name: "a", sweep: { kind: "suffix" }, interventions: [{ ...ko, blocks: "all" }] }],
      /interventions\[0\]\.blocks: is set by the sweep/,
    ],
    [
      [{ name: "a", sweep: { kind: "suffix" }, interventions: [{ type: "lens", mode: "diagonal" }] }],
      /a lens takes one block, so it sweeps with kind "single" only/,
    ],
    [[{ name: "a", sweep: { kind: "single" } }], /conditions\[0\]\.sweep: the condition has no knockout, lens or patch/],
    [[{ name: "a@b", sweep: { kind: "single" }, interventions: [ko] }], /conditions\[0\]\.name: "a@b" cannot name a folder/],
    [[{ name: "a@b" }], /conditions\[0\]\.name: "a@b" cannot name a folder/],
    [[{ name: "a", sweep: { kind: "single", L: [0] }, interventions: [ko] }, {
      name: "a",
      sweep: { kind: "single", L: [0] },
      interventions: [ko],
    }], /conditions\[1\]\.name: "a@single-0" is used twice/],
  ];
  for (const [conditions, re] of bad) await assert.rejects(load(conditions), re);
  // Without the model's blocks (parsed directly, or a model folder without transformer/config.json), a sweep is refused.
  assert.throws(
    () =>
      parseExperiment(
        { model: "m", tasks: "t", output: "o", conditions: [{ name: "a", sweep: { kind: "single" }, interventions: [ko] }] },
        "/",
      ),
    /conditions\[0\]\.sweep: a sweep needs the checkpoint's block count/,
  );
  await assert.rejects(
    load([{ name: "a", sweep: { kind: "single" }, interventions: [ko] }], { model: "/nonexistent" }),
    /experiment\.model: a sweep needs the block count from \/nonexistent\/transformer\/config\.json/,
  );
});

Deno.test("seedOffset: the t2i-clean bookend runs the instruction without references at the lens target's seed", async () => {
  const exp = await load([
    { name: "t2i_clean", textOnly: true, seedOffset: 1 },
    { name: "lens", interventions: [{ type: "lens", block: "double.1", mode: "diagonal" }] },
  ]);
  const clean = conditionToSpec(exp, exp.conditions[0], task, ctx);
  const lens = conditionToSpec(exp, exp.conditions[1], task, ctx);
  assert.deepEqual([clean.prompt, clean.refs, clean.seed], [task.instruction, [], 12]);
  assert.equal(lens.seed! + ((lens.interventions![0] as LensSpec).targetSeedOffset ?? 1), clean.seed);
  await assert.rejects(load([{ name: "x", seedOffset: 1.5 }]), /conditions\[0\]\.seedOffset: expected an integer/);
});

Deno.test("token modes: instruction_only / filler_only become text[chars:…] per task for patch, lens and knockout", async () => {
  const exp = await load([
    { name: "patch_filler", patch: { block: "double.1", mode: "filler_only" } },
    { name: "lens_instruction", interventions: [{ type: "lens", block: "single.0", mode: "diagonal", group: "instruction_only" }] },
    { name: "ko_filler", interventions: [{ type: "knockout", setting: "ref+image->filler_only" }] },
    { name: "ko_prompted", prompt: "Please: {instruction}", interventions: [{ type: "knockout", setting: "ref->instruction_only" }] },
  ]);
  assert.equal(exp.conditions[0].patch!.mode, "filler_only");
  const source: Task = { ...task, task_id: "blue_couch_pad300", refs: ["/s/blue.png"] };
  const pairs = new Map([[task.task_id, { source, target: task, sourceSeed: 12 }]]);
  const spec = (i: number) => conditionToSpec(exp, exp.conditions[i], task, { pairs, refsOf: (t: Task) => t.refs });
  const patch = spec(0).interventions![0] as PatchSpecJson;
  assert.deepEqual([patch.mode, patch.group, patch.source.refs], ["group", "text[chars:26..52]", ["/s/blue.png"]]);
  assert.equal((spec(1).interventions![0] as LensSpec).group, "text[chars:0..26]");
  assert.equal((spec(2).interventions![0] as KnockoutSpec).setting, "ref+image->text[chars:26..52]");
  // Found in the rendered prompt, wherever the instruction sits in it.
  assert.equal((spec(3).interventions![0] as KnockoutSpec).setting, "ref->text[chars:8..34]");
  const plain: Task = { ...task, metadata: {} };
  assert.throws(
    () => conditionToSpec(exp, exp.conditions[2], plain, ctx),
    /task red_couch_pad300, condition ko_filler: "filler_only" needs the task's metadata\.padding_base_instruction/,
  );
  await assert.rejects(
    load([{ name: "p", patch: { block: "double.1", mode: "filler_only", group: "text" } }]),
    /conditions\[0\]\.patch\.group: does not go with mode "filler_only"/,
  );
});

Deno.test("experiments/paper: every committed file parses with klein 9B's 32 blocks; the padding files' token modes resolve", async () => {
  const dir = join(import.meta.dirname!, "../../experiments/paper");
  const klein9b = [...Array.from({ length: 8 }, (_, i) => `double.${i}`), ...Array.from({ length: 24 }, (_, i) => `single.${i}`)];
  const paired: Task = { ...task, patch_source: { task_id: "blue", instruction: task.instruction, refs: ["/s/blue.png"], noise_seed: 5 } };
  let files = 0;
  for await (const e of Deno.readDir(dir)) {
    if (!e.name.endsWith(".json") || e.name === "table.json") continue;
    const exp = parseExperiment(JSON.parse(await Deno.readTextFile(join(dir, e.name))), dir, { blocks: klein9b });
    files++;
    for (const c of exp.conditions) {
      const spec = conditionToSpec(exp, c, paired, {
        pairs: new Map([[task.task_id, { source: task, target: task, sourceSeed: 1 }]]),
        refsOf: (t) => t.refs,
      });
      assert.equal(spec.seed, task.noise_seed + (c.seedOffset ?? 0), `${e.name} ${c.name}`);
      if (c.patch?.mode === "filler_only") assert.equal((spec.interventions![0] as PatchSpecJson).group, "text[chars:26..52]");
    }
    if (e.name === "knockout_sweeps_colour.json") assert.equal(exp.conditions.length, 1 + 32 * 3 + 30);
  }
  assert.equal(files, 20);
});
