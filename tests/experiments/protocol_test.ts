// The published study's protocol: its noise seeds, its 320 solid-colour rows, its three pairings (compared with the
// fields of its published files: tests/fixtures/protocol/published_sample.json, written by published_sample.py), pair
// files refused line by line, and pair task files run through the experiment's patch conditions.

import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { join } from "node:path";
import { loadImage } from "../../model/images.ts";
import { taskSeed } from "../../experiments/task_seed.ts";
import { crc32 } from "../../runtime/crc32.ts";
import { writeStudyColourTasks } from "../../experiments/task_sets.ts";
import { buildPairs, type PairIds, pairLines, pairTaskId, parsePairLines, writePairTaskFile } from "../../experiments/pairings.ts";
import { pairForPatching } from "../../experiments/generators.ts";
import { FAMILIES, parseTaskLines, readTaskFile, type Task } from "../../experiments/tasks.ts";
import { conditionToSpec, parseExperiment, UnpairedTaskError } from "../../experiments/experiment.ts";
import type { PatchSpecJson } from "../../studies/spec.ts";

const FIXTURE = join(import.meta.dirname!, "../fixtures/protocol/published_sample.json");
const published = JSON.parse(await Deno.readTextFile(FIXTURE));

const publishedText = (pairs: PairIds[]) => pairs.map((p) => `${p.source}\t${p.target}\n`).join("");
const sha = (text: string) => createHash("sha256").update(text).digest("hex");

Deno.test("task seeds: zlib's CRC-32 of the UTF-8 id", () => {
  assert.equal(crc32(new TextEncoder().encode("")), 0);
  assert.equal(crc32(new TextEncoder().encode("123456789")), 0xcbf43926); // the CRC-32 check value
  assert.equal(taskSeed("solid_red_couch_s0"), 1635624438); // the study's row
  assert.equal(taskSeed("é_x"), 4041752718); // multi-byte UTF-8 (python: zlib.crc32("é_x".encode()))
  assert.throws(() => taskSeed(""), /non-empty task id/);
});

Deno.test("study colour set: the published 320 rows (ids, instructions, swatches, seeds) and 1024² swatches of its RGB", async () => {
  const dir = await Deno.makeTempDir({ prefix: "ks-study-colours-" });
  try {
    const set = await writeStudyColourTasks(dir);
    assert.equal(set.tasks.length, 320);
    const mine = new Map(set.tasks.map((t) => [t.task_id, t]));
    const rows: [string, string, string, number, number, number][] = published.solid_color.rows;
    assert.equal(rows.length, 320);
    for (const [id, instruction, refName, seed, width, height] of rows) {
      const t = mine.get(id);
      assert.ok(t, `no task ${id}`);
      assert.equal(t.instruction, instruction);
      assert.equal(t.noise_seed, seed, id);
      assert.equal(t.refs[0], join(dir, "swatches", `${refName}.png`));
      assert.equal(t.width, width);
      assert.equal(t.height, height);
      assert.equal(t.family, FAMILIES.solidColour);
    }
    for (const [name, rgb] of Object.entries(published.solid_color.swatch_rgb as Record<string, number[]>)) {
      const img = await loadImage(join(dir, "swatches", `${name}.png`));
      assert.equal(img.width, 1024);
      assert.equal(img.height, 1024);
      for (const p of [0, 1024 * 512 + 511, 1024 * 1024 - 1]) assert.deepEqual([...img.data.slice(3 * p, 3 * p + 3)], rgb, name);
    }
    // The file reads back as written.
    assert.deepEqual((await readTaskFile(set.taskFile)).tasks, set.tasks);

    // Every directed colour pair per object with cycling replicates: the published list, line for line.
    const pairs = buildPairs(set.tasks, "colour-directed");
    assert.equal(pairs.length, 448);
    assert.equal(sha(publishedText(pairs)), published.colour_pairs.sha256);
    assert.deepEqual(pairs.slice(0, 12).map((p) => [p.source, p.target]), published.colour_pairs.first);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

function publishedTasks(rows: Record<string, unknown>[]): Task[] {
  const tf = parseTaskLines(rows.map((r) => JSON.stringify(r)).join("\n"), "/published/tasks.jsonl", { checkFiles: false, strict: true });
  return tf.tasks;
}

Deno.test("style→real and people pairings: the published lists", () => {
  const style = publishedTasks(published.style.rows);
  assert.deepEqual(new Set(style.map((t) => t.family)), new Set([FAMILIES.style, FAMILIES.styleReal]));
  const stylePairs = buildPairs(style, "style-to-real");
  assert.deepEqual(stylePairs.map((p) => [p.source, p.target]), published.style.pairs);
  assert.equal(stylePairs.length, 25); // one subject: 5 prompts × 5 replicates

  const people = publishedTasks(published.human_shared.rows);
  assert.ok(people.every((t) => t.family === FAMILIES.humanShared));
  const humanPairs = buildPairs(people, "human-shared");
  assert.equal(humanPairs.length, 450);
  assert.equal(sha(publishedText(humanPairs)), published.human_shared.sha256);
  assert.deepEqual(humanPairs.slice(0, 90).map((p) => [p.source, p.target]), published.human_shared.first);

  // A missing replicate or person is named.
  assert.throws(() => buildPairs(style.filter((t) => !t.task_id.endsWith("tea_party_s3")), "style-to-real"), /replicate _s3 is missing/);
  assert.throws(
    () => buildPairs(people.filter((t) => t.task_id !== people[0].task_id), "human-shared"),
    /has people .* another prompt/,
  );
  assert.throws(() => buildPairs(people, "nonsense" as "human-shared"), /unknown pair design "nonsense"/);
});

function task(id: string, ref: string, seed: number, instruction = "draw a couch in this color", width = 64): Task {
  return { task_id: id, edit_type: "color", family: "color", instruction, refs: [ref], width, height: 64, noise_seed: seed, metadata: {} };
}

Deno.test("pair files: JSON Lines or the published 'source target' lines; every bad line refused with file:line", () => {
  const tasks = [
    task("red_s0", "/r/red.png", 11),
    task("blue_s0", "/r/blue.png", 22),
    task("blue_s1", "/r/blue.png", 33),
    task("vase_s0", "/r/red.png", 44, "draw a vase"),
    task("big_s0", "/r/green.png", 55, "draw a couch in this color", 128),
  ];
  const ok = parsePairLines(`{"target": "blue_s0", "source": "red_s0"}\n# a comment\n\nred_s0 blue_s1\n`, "p.jsonl", tasks);
  assert.deepEqual(ok, [{ source: "red_s0", target: "blue_s0" }, { source: "red_s0", target: "blue_s1" }]);
  assert.deepEqual(parsePairLines(pairLines(ok), "again.jsonl", tasks), ok);
  const bad = [
    `{"target": "blue_s0", "source": "red_s0"}`,
    `{"target": "blue_s0", "source": "red_s0"}`,
    `{"target": "blue_s0"`,
    `{"target": "blue_s0", "source": 3}`,
    `{"target": "blue_s0", "source": "red_s0", "extra": 1}`,
    `red_s0 blue_s0 blue_s1`,
    `red_s0 nowhere`,
    `blue_s0 blue_s1`,
    `red_s0 vase_s0`,
    `red_s0 big_s0`,
    `red_s0 red_s0`,
  ].join("\n");
  let message = "";
  try {
    parsePairLines(bad, "pairs.jsonl", tasks);
  } catch (e) {
    message = (e as Error).message;
  }
  for (
    const expected of [
      /pairs\.jsonl: 10 bad line\(s\)/,
      /pairs\.jsonl:2: the pair red_s0 → blue_s0 repeats line 1/,
      /pairs\.jsonl:3: not valid JSON/,
      /pairs\.jsonl:4: expected \{"target": task id, "source": task id\}/,
      /pairs\.jsonl:5: unknown field "extra"/,
      /pairs\.jsonl:6: expected a JSON object or two task ids/,
      /pairs\.jsonl:7: no task "nowhere" in the task file/,
      /pairs\.jsonl:8: source and target have the same reference/,
      /pairs\.jsonl:9: different instructions/,
      /pairs\.jsonl:10: different sizes \(64×64 vs 128×64\)/,
      /pairs\.jsonl:11: source and target are the same task/,
    ]
  ) assert.match(message, expected);
  assert.throws(() => parsePairLines("# nothing\n", "empty.jsonl", tasks), /empty\.jsonl holds no pair/);
  assert.deepEqual(
    parsePairLines("blue_s0 vase_s0\n", "x", tasks, { allowMismatchedInstruction: true }),
    [{ source: "blue_s0", target: "vase_s0" }],
  );
});

Deno.test("pair task files: one task per pair named <source>__<target>; patch conditions take the named source at its own seed", async () => {
  const dir = await Deno.makeTempDir({ prefix: "ks-pairs-" });
  try {
    await Deno.mkdir(join(dir, "pairs", "swatches"), { recursive: true });
    for (const c of ["red", "blue"]) await Deno.writeTextFile(join(dir, "pairs", "swatches", `${c}.png`), "");
    const png = (c: string) => join(dir, "pairs", "swatches", `${c}.png`);
    const tasks = [task("red_s0", png("red"), 11), task("blue_s1", png("blue"), 22)];
    const pairs = [{ source: "red_s0", target: "blue_s1" }, { source: "blue_s1", target: "red_s0" }];
    await writePairTaskFile(join(dir, "pairs", "tasks.jsonl"), tasks, pairs);
    const back = (await readTaskFile(join(dir, "pairs", "tasks.jsonl"), { strict: true })).tasks;
    assert.deepEqual(back.map((t) => t.task_id), ["red_s0__blue_s1", "blue_s1__red_s0"]);
    const unit = back[0];
    assert.equal(unit.task_id, pairTaskId(pairs[0]));
    assert.deepEqual(unit.refs, [png("blue")]);
    assert.equal(unit.noise_seed, 22);
    assert.deepEqual(unit.patch_source, {
      task_id: "red_s0",
      instruction: "draw a couch in this color",
      refs: [png("red")],
      noise_seed: 11,
    });
    assert.deepEqual(unit.metadata, { pair_source: "red_s0", pair_target: "blue_s1" });
    // The task file holds the source's path relative to its folder.
    assert.match(
      await Deno.readTextFile(join(dir, "pairs", "tasks.jsonl")),
      /"patch_source":\{"task_id":"red_s0",[^}]*"refs":\["swatches\/red\.png"\]/,
    );

    const map = pairForPatching(back);
    assert.equal(map.get(unit.task_id)!.source.task_id, "red_s0");
    assert.equal(map.get(unit.task_id)!.sourceSeed, 11);
    assert.equal(pairForPatching(back, { rule: "task" }).size, 2);

    const exp = parseExperiment({
      model: "m",
      tasks: "t.jsonl",
      output: "o",
      conditions: [{ name: "baseline" }, { name: "p", patch: { block: "double.1", mode: "padding_only", pairing: "task" } }],
    }, dir);
    const ctx = { pairs: map, refsOf: (t: Task) => t.refs };
    const spec = conditionToSpec(exp, exp.conditions[1], unit, ctx);
    const patch = spec.interventions!.find((iv) => iv.type === "patch") as PatchSpecJson;
    assert.deepEqual(patch.source, { prompt: "draw a couch in this color", refs: [png("red")], seed: 11 });
    assert.equal(spec.seed, 22);
    // Pairing "task" refuses a task that names no source, even where the shift rule would find one.
    const plain = [task("a_s0", png("red"), 1), task("b_s0", png("blue"), 2)];
    assert.throws(() => conditionToSpec(exp, exp.conditions[1], plain[0], { ...ctx, pairs: pairForPatching(plain) }), UnpairedTaskError);
    assert.throws(
      () =>
        parseExperiment({
          ...exp,
          model: "m",
          tasks: "t",
          output: "o",
          conditions: [{ name: "p", patch: { block: "double.1", pairing: "x" } }],
        }, dir),
      /pairing: expected "shift" or "task", got "x"/,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("task lines: patch_source checked field by field; published sources map to families", () => {
  const base = { task_id: "t", edit_type: "color", instruction: "i", refs: ["a.png"] };
  const lines = [
    { ...base, task_id: "ok", patch_source: { task_id: "s", instruction: "i", refs: ["b.png"], noise_seed: 3 } },
    { ...base, task_id: "self", patch_source: { task_id: "self", instruction: "i", refs: ["b.png"], noise_seed: 3 } },
    { ...base, task_id: "noseed", patch_source: { task_id: "s", instruction: "i", refs: ["b.png"] } },
    { ...base, task_id: "noref", patch_source: { task_id: "s", instruction: "i", noise_seed: 1 } },
    { ...base, task_id: "extra", patch_source: { task_id: "s", instruction: "i", refs: ["b.png"], noise_seed: 1, seed: 2 } },
    { ...base, task_id: "style", source: "property_manual", metadata: { axis: "style" } },
    { ...base, task_id: "real", source: "manual", metadata: { axis: "style" } },
    { ...base, task_id: "people", source: "dreambench_plus", metadata: { category: "live_subject" } },
    { ...base, task_id: "remove", edit_type: "remove", source: "sun397" },
  ];
  const warnings: string[] = [];
  const tf = parseTaskLines(lines.map((l) => JSON.stringify(l)).join("\n"), "/x/tasks.jsonl", {
    checkFiles: false,
    warn: (w) => warnings.push(w),
  });
  assert.deepEqual(tf.problems.map((p) => [p.line, p.message]), [
    [2, `"patch_source" names the task itself`],
    [3, `"patch_source.noise_seed" is required`],
    [4, `"patch_source" needs "refs" or "synthetic_ref" (a patch source has a reference)`],
    [5, `"patch_source" has unknown field "seed"`],
  ]);
  assert.ok(warnings.some((w) => w.startsWith("warning: /x/tasks.jsonl:2:")));
  const family = (id: string) => tf.tasks.find((t) => t.task_id === id)!.family;
  assert.equal(family("style"), FAMILIES.style);
  assert.equal(family("real"), FAMILIES.styleReal);
  assert.equal(family("people"), FAMILIES.human);
  assert.equal(family("remove"), FAMILIES.sun397Remove);
  assert.deepEqual(tf.tasks[0].patch_source!.refs, ["/x/b.png"]);
});
