// The solid-colour family (swatches exact to the byte, colours × objects × seeds) and the pairing rule of patching.

import assert from "node:assert/strict";
import { join } from "node:path";
import { loadImage } from "../../model/images.ts";
import { findColour, NAMED_COLOURS, pairForPatching, writeColourTasks } from "../../experiments/generators.ts";
import { readTaskFile, type Task } from "../../experiments/tasks.ts";

Deno.test("colour tasks: swatches are solid squares of the named sRGB value; colours × objects × seeds tasks", async () => {
  const dir = await Deno.makeTempDir({ prefix: "ks-colours-" });
  try {
    const set = await writeColourTasks({
      out: dir,
      colours: ["red", "purple", "teal=#123456"],
      objects: ["couch", "swivel chair"],
      seeds: [0, 5],
      width: 64,
      height: 96,
      swatchSize: 64,
    });
    assert.equal(set.tasks.length, 3 * 2 * 2);
    for (const [name, rgb] of [["red", [220, 40, 40]], ["purple", [140, 60, 180]], ["teal", [0x12, 0x34, 0x56]]] as const) {
      const img = await loadImage(join(dir, "swatches", `${name}.png`));
      assert.equal(img.width, 64);
      assert.equal(img.height, 64);
      for (let p = 0; p < 64 * 64; p++) for (let c = 0; c < 3; c++) assert.equal(img.data[3 * p + c], rgb[c]);
    }
    const back = await readTaskFile(set.taskFile);
    assert.deepEqual(back.tasks, set.tasks);
    const t = back.tasks.find((x) => x.task_id === "color_purple_swivel-chair_s5")!;
    assert.ok(t, back.tasks.map((x) => x.task_id).join(","));
    assert.equal(t.instruction, "draw a swivel chair in this color");
    assert.equal(t.noise_seed, 5);
    assert.equal(t.width, 64);
    assert.equal(t.height, 96);
    assert.deepEqual(t.refs, [join(dir, "swatches", "purple.png")]);
    assert.deepEqual(t.metadata, { colour: "purple", rgb: [140, 60, 180], hex: "#8c3cb4", object: "swivel chair" });
    assert.equal(t.family, "color");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("colour tasks: bad colours, sizes and templates are refused", async () => {
  assert.throws(() => findColour("navy"), /unknown colour "navy" \(known: blue, brown, green, orange, pink, purple, red, yellow;/);
  // The study's swatch values, not CSS's.
  assert.deepEqual(findColour("Red").rgb, [220, 40, 40]);
  assert.deepEqual(findColour("orange").rgb, [230, 120, 40]);
  assert.equal(new Set(NAMED_COLOURS.map((c) => c.name)).size, NAMED_COLOURS.length);
  await assert.rejects(
    () => writeColourTasks({ out: "/nonexistent-never", colours: ["red"], objects: ["x"], seeds: [0], swatchSize: 32 }),
    /at least 64 px/,
  );
  await assert.rejects(
    () => writeColourTasks({ out: "/nonexistent-never", colours: ["red"], objects: ["x"], seeds: [0], instruction: "no slot" }),
    /no \{object\}/,
  );
  await assert.rejects(
    () => writeColourTasks({ out: "/nonexistent-never", colours: ["red"], objects: ["x"], seeds: [0], noiseSeed: "random" as "seed" }),
    /noise seed rule "random": expected seed or crc32/,
  );
});

function task(id: string, instruction: string, ref: string, seed: number, edit_type = "color"): Task {
  return { task_id: id, edit_type, family: edit_type, instruction, refs: [ref], width: 64, height: 64, noise_seed: seed, metadata: {} };
}

Deno.test("pairing (shift): same instruction, the next reference in order, the same seed when possible, seed shifted", () => {
  const tasks = [
    task("couch_red_0", "draw a couch", "/r/red.png", 0),
    task("couch_red_1", "draw a couch", "/r/red.png", 1),
    task("couch_blue_0", "draw a couch", "/r/blue.png", 0),
    task("couch_blue_1", "draw a couch", "/r/blue.png", 1),
    task("couch_green_7", "draw a couch", "/r/green.png", 7),
    task("vase_red_0", "draw a vase", "/r/red.png", 0),
    task("style_0", "draw a couch", "/r/blue.png", 0, "style"),
  ];
  const pairs = pairForPatching(tasks);
  // Reference order: blue < green < red; each takes its source from the next one, cyclically.
  const src = (id: string) => pairs.get(id)?.source.task_id;
  assert.equal(src("couch_blue_0"), "couch_green_7");
  assert.equal(src("couch_green_7"), "couch_red_0"); // no seed 7 among red: the first by id
  assert.equal(src("couch_red_0"), "couch_blue_0");
  assert.equal(src("couch_red_1"), "couch_blue_1");
  for (const p of pairs.values()) {
    assert.equal(p.source.instruction, p.target.instruction);
    assert.notDeepEqual(p.source.refs, p.target.refs);
    assert.equal(p.sourceSeed, p.target.noise_seed + 1);
  }
  // Alone with its instruction (or its edit type): no source.
  assert.equal(pairs.has("vase_red_0"), false);
  assert.equal(pairs.has("style_0"), false);
  // The rule depends on the set, not on the order of the lines.
  const shuffled = pairForPatching([...tasks].reverse(), { seedOffset: 10 });
  for (const [id, p] of pairs) {
    assert.equal(shuffled.get(id)!.source.task_id, p.source.task_id);
    assert.equal(shuffled.get(id)!.sourceSeed, p.target.noise_seed + 10);
  }
});
