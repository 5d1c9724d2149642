// Task files: kleinscope's layout and the published study's, malformed lines skipped or refused with file and line.

import assert from "node:assert/strict";
import { join } from "node:path";
import { parseTaskLines, readTaskFile, type Task, writeTaskFile } from "../../experiments/tasks.ts";
import { writeSwatch } from "../../experiments/generators.ts";

async function fixtureDir(): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "ks-tasks-" });
  await Deno.mkdir(join(dir, "refs", "solid"), { recursive: true });
  await writeSwatch(join(dir, "refs", "a.png"), [10, 20, 30], 64);
  await writeSwatch(join(dir, "refs", "solid", "solid_blue.png"), [0, 0, 255], 64);
  return dir;
}

Deno.test("tasks: kleinscope's layout, paths relative to the file, defaults", async () => {
  const dir = await fixtureDir();
  try {
    const file = join(dir, "tasks.jsonl");
    await Deno.writeTextFile(
      file,
      [
        JSON.stringify({
          task_id: "t1",
          edit_type: "color",
          instruction: "draw a couch in this color",
          refs: ["refs/a.png"],
          width: 64,
          height: 80,
          noise_seed: 3,
          metadata: { k: 1 },
        }),
        "",
        JSON.stringify({
          task_id: "t2",
          edit_type: "style",
          family: "styles",
          instruction: "paint it",
          refs: [join(dir, "refs", "a.png")],
        }),
      ].join("\n"),
    );
    const warnings: string[] = [];
    const tf = await readTaskFile(file, { warn: (l) => warnings.push(l) });
    assert.deepEqual(warnings, []);
    assert.equal(tf.tasks.length, 2);
    const [t1, t2] = tf.tasks;
    assert.deepEqual(t1, {
      task_id: "t1",
      edit_type: "color",
      family: "color",
      instruction: "draw a couch in this color",
      refs: [join(dir, "refs", "a.png")],
      width: 64,
      height: 80,
      noise_seed: 3,
      metadata: { k: 1 },
    });
    assert.equal(t2.family, "styles");
    assert.equal(t2.width, 1024);
    assert.equal(t2.height, 1024);
    assert.equal(t2.noise_seed, 0);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("tasks: the published layout (source_image_path, real_ref_dir/real_ref_name, ref_seed + source_caption)", async () => {
  const dir = await fixtureDir();
  try {
    const lines = [
      {
        task_id: "sun_add_1",
        edit_type: "add",
        source: "sun397",
        instruction: "add it",
        source_image_path: "refs/a.png",
        noise_seed: 7,
        width: 512,
        height: 512,
        metadata: { scene: "x" },
      },
      // The extension may be left out; .png, .jpg and .jpeg are tried.
      {
        task_id: "solid_blue_couch",
        edit_type: "customize",
        source: "solid_color",
        instruction: "draw a couch",
        real_ref_dir: "refs/solid",
        real_ref_name: "solid_blue",
        noise_seed: 1,
      },
      {
        task_id: "synth_1",
        edit_type: "customize",
        source: "manual",
        instruction: "x",
        ref_seed: 11,
        source_caption: "a red ball",
        noise_seed: 2,
        extra_field: 1,
      },
    ].map((o) => JSON.stringify(o)).join("\n");
    const warnings: string[] = [];
    const tf = parseTaskLines(lines, join(dir, "published.jsonl"), { warn: (l) => warnings.push(l) });
    assert.equal(tf.tasks.length, 3);
    assert.deepEqual(tf.tasks[0].refs, [join(dir, "refs", "a.png")]);
    assert.equal(tf.tasks[0].family, "sun397_add");
    assert.equal(tf.tasks[0].width, 512);
    assert.deepEqual(tf.tasks[1].refs, [join(dir, "refs", "solid", "solid_blue.png")]);
    assert.equal(tf.tasks[1].family, "solid_color");
    assert.deepEqual(tf.tasks[2].refs, []);
    assert.deepEqual(tf.tasks[2].synthetic_ref, { caption: "a red ball", seed: 11 });
    assert.equal(warnings.length, 1);
    assert.match(warnings[0], /field "extra_field" \(first on line 3\) is not a task field; ignored/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("tasks: malformed lines are reported with file and line, skipped — or refused in strict mode", async () => {
  const dir = await fixtureDir();
  try {
    const good = (id: string) =>
      JSON.stringify({ task_id: id, edit_type: "color", instruction: "i", refs: ["refs/a.png"], width: 64, height: 64 });
    const lines = [
      good("ok1"),
      "{not json",
      JSON.stringify({ edit_type: "color", instruction: "i" }),
      JSON.stringify({ task_id: "bad/id", edit_type: "color", instruction: "i" }),
      JSON.stringify({ task_id: "w", edit_type: "color", instruction: "i", width: 70 }),
      JSON.stringify({ task_id: "m", edit_type: "color", instruction: "i", refs: ["refs/missing.png"] }),
      JSON.stringify({ task_id: "both", edit_type: "color", instruction: "i", refs: ["refs/a.png"], source_image_path: "refs/a.png" }),
      JSON.stringify({ task_id: "half", edit_type: "color", instruction: "i", real_ref_name: "solid_blue" }),
      JSON.stringify({ task_id: "same", edit_type: "color", instruction: "i", ref_seed: 4, source_caption: "c", noise_seed: 4 }),
      good("ok1"),
      "[1, 2]",
      good("ok2"),
    ].join("\n");
    const file = join(dir, "bad.jsonl");
    await Deno.writeTextFile(file, lines);
    const warnings: string[] = [];
    const tf = await readTaskFile(file, { warn: (l) => warnings.push(l) });
    assert.deepEqual(tf.tasks.map((t) => t.task_id), ["ok1", "ok2"]);
    assert.deepEqual(tf.problems.map((p) => p.line), [2, 3, 4, 5, 6, 7, 8, 9, 10, 11]);
    const expect: [number, RegExp][] = [
      [2, /not valid JSON/],
      [3, /"task_id" is required/],
      [4, /cannot name a folder/],
      [5, /"width" 70 is not a multiple of 16/],
      [6, /refs\[0\]": image .*missing\.png does not exist/],
      [7, /give either "refs" or the published reference fields/],
      [8, /"real_ref_dir" and "real_ref_name" go together/],
      [9, /synthetic reference's seed equals "noise_seed"/],
      [10, /task_id "ok1" repeats line 1/],
      [11, /expected a JSON object/],
    ];
    for (const [line, re] of expect) {
      const w = warnings.find((x) => x.includes(`${file}:${line}:`));
      assert.ok(w, `a warning for line ${line}`);
      assert.match(w!, re);
      assert.match(w!, /line skipped$/);
    }
    await assert.rejects(() => readTaskFile(file, { strict: true }), (e: Error) => {
      assert.match(
        e.message,
        new RegExp(`^${file.replace(/[.*+?^${}()|[\]\\/]/g, "\\$&")}:2: not valid JSON.*strict mode refuses the file`),
      );
      return true;
    });
    await assert.rejects(() => readTaskFile(join(dir, "nope.jsonl")), /task file .*nope\.jsonl: cannot read it: no such file/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("tasks: written files read back to the same tasks; paths inside the file's folder are written relative", async () => {
  const dir = await fixtureDir();
  try {
    await writeSwatch(join(dir, "out", "swatches", "b.png"), [1, 2, 3], 64);
    const inside = join(dir, "out", "swatches", "b.png"), outside = join(dir, "refs", "a.png");
    const tasks: Task[] = [
      {
        task_id: "a",
        edit_type: "color",
        family: "color",
        instruction: "x",
        refs: [inside, outside],
        width: 64,
        height: 64,
        noise_seed: 1,
        metadata: { rgb: [1, 2, 3] },
      },
      {
        task_id: "b",
        edit_type: "customize",
        family: "manual",
        instruction: "y",
        refs: [],
        synthetic_ref: { caption: "c", seed: 9 },
        width: 128,
        height: 64,
        noise_seed: 2,
        metadata: {},
      },
    ];
    const file = join(dir, "out", "t.jsonl");
    await writeTaskFile(file, tasks);
    const text = await Deno.readTextFile(file);
    assert.ok(text.includes(`"refs":["swatches/b.png","${outside}"]`), text);
    const back = await readTaskFile(file);
    assert.deepEqual(back.tasks, tasks);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
