// `deno task tasks`: the study's colour set and its 448 colour pairs as a pair task file, pair files and usage errors.

import assert from "node:assert/strict";
import { join } from "node:path";
import { main } from "../../cli/tasks.ts";
import { readTaskFile } from "../../experiments/tasks.ts";
import { UsageError } from "../../cli/common.ts";

async function quietly(f: () => Promise<number>): Promise<{ code: number; out: string }> {
  const log = console.log, err = console.error;
  let out = "";
  console.log = (...a: unknown[]) => void (out += a.join(" ") + "\n");
  console.error = (...a: unknown[]) => void (out += a.join(" ") + "\n");
  try {
    return { code: await f(), out };
  } finally {
    console.log = log;
    console.error = err;
  }
}

Deno.test("tasks study-colors, then pairs --design colour-directed: 320 tasks, 448 pair tasks", async () => {
  const dir = await Deno.makeTempDir({ prefix: "ks-cli-tasks-" });
  try {
    const a = await quietly(() => main(["study-colors", "--out", join(dir, "colours")]));
    assert.equal(a.code, 0);
    assert.match(a.out, /\(320 tasks\) and 8 swatches/);
    const b = await quietly(() =>
      main([
        "pairs",
        join(dir, "colours", "tasks.jsonl"),
        "--design",
        "colour-directed",
        "--out",
        join(dir, "pairs", "tasks.jsonl"),
        "--pair-list",
        join(dir, "pairs", "pairs.jsonl"),
      ])
    );
    assert.equal(b.code, 0, b.out);
    const units = (await readTaskFile(join(dir, "pairs", "tasks.jsonl"), { strict: true })).tasks;
    assert.equal(units.length, 448);
    assert.equal(units[0].task_id, "solid_blue_ball_s0__solid_brown_ball_s1");
    assert.equal(units[0].patch_source!.task_id, "solid_blue_ball_s0");
    assert.equal((await Deno.readTextFile(join(dir, "pairs", "pairs.jsonl"))).trim().split("\n").length, 448);
    // The pair list read back as a pair file gives the same pair tasks.
    const c = await quietly(() =>
      main(["pairs", join(dir, "colours", "tasks.jsonl"), "--pairs", join(dir, "pairs", "pairs.jsonl"), "--out", join(dir, "again.jsonl")])
    );
    assert.equal(c.code, 0, c.out);
    assert.deepEqual((await readTaskFile(join(dir, "again.jsonl"), { strict: true })).tasks, units);
    // A bad pair file: file:line.
    await Deno.writeTextFile(join(dir, "bad.jsonl"), '{"target": "solid_red_ball_s0", "source": "solid_red_ball_s1"}\n');
    await assert.rejects(
      () => main(["pairs", join(dir, "colours", "tasks.jsonl"), "--pairs", join(dir, "bad.jsonl"), "--out", join(dir, "x.jsonl")]),
      /bad\.jsonl:1: source and target have the same reference/,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("tasks: usage mistakes are UsageErrors", async () => {
  await assert.rejects(() => main(["pairs", "t.jsonl", "--out", "o"]), UsageError);
  await assert.rejects(
    () => main(["pairs", "t.jsonl", "--design", "diagonal", "--out", "o"]),
    /--design "diagonal": expected colour-directed/,
  );
  await assert.rejects(() => main(["padding", "t.jsonl", "--model", "m", "--out", "o", "--seed", "x"]), UsageError);
  await assert.rejects(() => main(["sun397", "--out", "o"]), /--root SUN397_DIR and --out DIR are required/);
  await assert.rejects(() => main(["nonsense"]), /unknown tasks command "nonsense"/);
});
