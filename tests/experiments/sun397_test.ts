// The SUN397 add/remove builder, offline: a small SUN397-shaped folder, the stub judge answering proposals, the
// study's image picks (Python's random.sample, values from CPython 3.11), cached outcomes and bad inputs.

import assert from "node:assert/strict";
import { join } from "node:path";
import {
  buildSun397Tasks,
  categorySeed,
  imageSize,
  parseClassNames,
  parseProposal,
  PROPOSAL_SYSTEM_PROMPT,
  PyRandom,
  studyOutputSize,
} from "../../experiments/sun397.ts";
import { JudgeClient, resolveEndpoint } from "../../experiments/judge.ts";
import { readTaskFile } from "../../experiments/tasks.ts";
import { taskSeed } from "../../experiments/task_seed.ts";
import { startStub, STUB_KEY } from "./stub_judge.ts";

/** A JPEG header with a frame of width × height and a comment that makes the bytes unique. */
function jpeg(width: number, height: number, note: string): Uint8Array {
  const comment = new TextEncoder().encode(note);
  const com = [0xff, 0xfe, (comment.length + 2) >> 8, (comment.length + 2) & 0xff, ...comment];
  const sof = [0xff, 0xc0, 0, 17, 8, height >> 8, height & 0xff, width >> 8, width & 0xff, 3, 1, 0x22, 0, 2, 0x11, 1, 3, 0x11, 1];
  return new Uint8Array([0xff, 0xd8, ...com, ...sof, 0xff, 0xd9]);
}

Deno.test("Python's random.sample and the study's per-category seed, reproduced", async () => {
  assert.equal(await categorySeed(42, "/a/abbey"), 13567327711056011657n);
  const names = Array.from({ length: 30 }, (_, i) => `sun_${String(i).padStart(3, "0")}.jpg`);
  assert.deepEqual(new PyRandom(await categorySeed(42, "/a/abbey")).sample(names, 2), ["sun_026.jpg", "sun_022.jpg"]);
  // A population of 21 or fewer: the pool algorithm.
  assert.deepEqual(new PyRandom(await categorySeed(42, "/b/bakery/shop")).sample(names.slice(0, 10), 2), ["sun_007.jpg", "sun_002.jpg"]);
  const range = (n: number) => Array.from({ length: n }, (_, i) => i);
  assert.deepEqual(new PyRandom(7n).sample(range(50), 7), [20, 9, 25, 41, 3, 4, 34]);
  assert.deepEqual(new PyRandom(2n ** 40n + 3n).sample(range(1000), 3), [225, 62, 562]);
  assert.throws(() => new PyRandom(1n).sample(range(3), 4), /larger than population/);
});

Deno.test("proposals: the study's validator; sizes: JPEG headers and the study's output size", () => {
  assert.deepEqual(parseProposal('{"add_object": "floor lamp", "remove_object": null}'), { add_object: "floor lamp", remove_object: null });
  assert.deepEqual(parseProposal(' {"remove_object": "stop-sign", "add_object": "kite"} '), {
    add_object: "kite",
    remove_object: "stop-sign",
  });
  assert.match(parseProposal("I would add a lamp.") as string, /^not JSON/);
  assert.match(parseProposal('{"add_object": "Lamp!", "remove_object": "rug"}') as string, /add_object invalid/);
  assert.match(parseProposal('{"add_object": "a b c d e", "remove_object": null}') as string, /add_object invalid/);
  assert.match(parseProposal('{"add_object": "rug", "remove_object": "rug"}') as string, /the same/);
  assert.equal(parseProposal('{"add_object": null, "remove_object": null}'), "both objects are null");
  assert.match(parseProposal('{"add_object": "rug"}') as string, /unexpected keys/);
  assert.ok(PROPOSAL_SYSTEM_PROMPT.includes("bird, backpack, person, bicycle, bench, bottle, plant, dog"));

  assert.deepEqual(imageSize(jpeg(752, 576, "x"), "x.jpg"), { width: 752, height: 576 });
  assert.throws(() => imageSize(new Uint8Array([1, 2, 3, 4]), "bad.jpg"), /bad\.jpg: not a JPEG or PNG image/);
  assert.deepEqual(studyOutputSize(752, 576), { width: 752, height: 576 });
  assert.deepEqual(studyOutputSize(755, 580), { width: 752, height: 576 });
  assert.deepEqual(studyOutputSize(2000, 1500), { width: 1184, height: 880 });
  assert.throws(() => studyOutputSize(10, 400), /smaller than 16 px/);
});

Deno.test("class list: bad and repeated lines refused with file:line", () => {
  assert.deepEqual(parseClassNames("/b/bakery/shop\n/a/abbey\n\n", "C.txt"), ["/a/abbey", "/b/bakery/shop"]);
  assert.throws(
    () => parseClassNames("/a/abbey\nabbey\n/a/../etc\n/a/abbey\n", "ClassName.txt"),
    (e: Error) =>
      /3 bad line\(s\)/.test(e.message) && /ClassName\.txt:2: "abbey" is not a SUN397 category/.test(e.message) &&
      /ClassName\.txt:3:/.test(e.message) && /ClassName\.txt:4: category \/a\/abbey repeats line 1/.test(e.message),
  );
});

Deno.test("SUN397 builder: the study's picks, one request per image, refusals kept as null, cached on re-runs", async () => {
  const dir = await Deno.makeTempDir({ prefix: "ks-sun397-" });
  const stub = startStub();
  try {
    const root = join(dir, "SUN397");
    await Deno.mkdir(join(root, "a", "abbey"), { recursive: true });
    await Deno.mkdir(join(root, "b", "bakery", "shop"), { recursive: true });
    await Deno.writeTextFile(join(root, "ClassName.txt"), "/a/abbey\n/b/bakery/shop\n/c/canyon\n");
    for (let i = 0; i < 30; i++) {
      const name = `sun_${String(i).padStart(3, "0")}.jpg`;
      await Deno.writeFile(join(root, "a", "abbey", name), jpeg(2000 + i, 1500, `abbey ${i}`));
      if (i < 10) await Deno.writeFile(join(root, "b", "bakery", "shop", name), jpeg(752, 576, `bakery ${i}`));
    }
    await Deno.writeTextFile(join(root, "a", "abbey", "notes.txt"), "not an image");
    const endpoint = { ...resolveEndpoint({ provider: "openai", url: stub.url, model: "stub-a", key: STUB_KEY }), backoffMs: 1 };
    const client = new JudgeClient(endpoint, join(dir, "cache"));
    const out = join(dir, "tasks");
    const logs: string[] = [];
    const result = await buildSun397Tasks({ root, out, client, imagesPerCategory: 5, log: (l) => logs.push(l) });

    assert.deepEqual(result.missing, ["/c/canyon"]);
    assert.equal(result.outcomes.length, 10);
    assert.equal(result.requests, 10, "one request per image");
    const picked = result.outcomes.filter((x) => x.category === "/a/abbey").map((x) => x.file);
    const names = Array.from({ length: 30 }, (_, i) => `sun_${String(i).padStart(3, "0")}.jpg`);
    assert.deepEqual(picked, new PyRandom(await categorySeed(42, "/a/abbey")).sample(names, 5));
    // The request carries the proposal prompt as its system prompt and the image.
    const body = stub.bodies[0] as { messages: { role: string; content: unknown }[] };
    assert.equal(body.messages[0].content, PROPOSAL_SYSTEM_PROMPT);

    // Each outcome became the rows it allows; invalid replies and refusals are null with a reason.
    const errors = result.outcomes.filter((x) => x.error);
    assert.ok(errors.length >= 1 && errors.length < 10, `a mix of replies (${errors.length} without a proposal)`);
    for (const x of errors) assert.deepEqual([x.add_object, x.remove_object], [null, null]);
    assert.equal(result.add.length, result.outcomes.filter((x) => x.add_object).length);
    assert.equal(result.remove.length, result.outcomes.filter((x) => x.remove_object).length);
    assert.ok(result.add.length >= 1);
    const add = result.add[0];
    const src = add.metadata.sun397_src_filename as string;
    assert.match(add.task_id, new RegExp(`^add_sun397_[ab]_[a-z_]+__${src.replace(".jpg", "")}_[a-z_]+$`));
    assert.match(add.instruction, /^add an? [a-z ]+$/);
    assert.equal(add.noise_seed, taskSeed(add.task_id));
    assert.equal(add.family, "sun397_add");
    const expected = add.metadata.sun397_category === "/a/abbey"
      ? studyOutputSize(2000 + Number(src.slice(4, 7)), 1500)
      : { width: 752, height: 576 };
    assert.deepEqual({ width: add.width, height: add.height }, expected);
    const files = await readTaskFile(join(out, "add", "tasks.jsonl"), { strict: true });
    assert.deepEqual(files.tasks, result.add);
    assert.equal((await readTaskFile(join(out, "remove", "tasks.jsonl"), { strict: true })).tasks.length, result.remove.length);
    assert.ok(logs.some((l) => l.includes("no proposal")));

    // Again: every outcome is known, nothing is asked.
    const again = await buildSun397Tasks({ root, out, client, imagesPerCategory: 5, log: () => {} });
    assert.equal(again.requests, 0);
    assert.deepEqual(again.add, result.add);
    // Without the outcomes file the judge's cache answers.
    await Deno.remove(join(out, "proposals.jsonl"));
    const cached = await buildSun397Tasks({ root, out, client, imagesPerCategory: 5, log: () => {} });
    assert.equal(cached.requests, 0);
    assert.deepEqual(cached.remove, result.remove);
    // A limit leaves the rest for later.
    const limited = await buildSun397Tasks({ root, out: join(dir, "limited"), client, imagesPerCategory: 5, limit: 3, log: () => {} });
    assert.equal(limited.outcomes.length, 3);
    assert.equal(limited.pending, 7);

    await assert.rejects(
      () => buildSun397Tasks({ root: join(dir, "nowhere"), out, client }),
      /SUN397 not found at .*nowhere: no ClassName\.txt/,
    );
    await assert.rejects(() => buildSun397Tasks({ root, out, client, categories: ["/z/zoo"] }), /category \/z\/zoo is not in/);
  } finally {
    await stub.close();
    await Deno.remove(dir, { recursive: true });
  }
});
