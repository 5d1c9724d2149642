// The padding dose-response builder on the real Qwen3 tokenizer (the tiny checkpoint's): exact pad counts, refusals.

import assert from "node:assert/strict";
import { join } from "node:path";
import { lengthen, loadPromptTools, paddingDoseTasks, padPositions, STUDY_PADDING_LEVELS } from "../../experiments/padding_dose.ts";
import type { Task } from "../../experiments/tasks.ts";
import { taskSeed } from "../../experiments/task_seed.ts";

const MODEL = join(import.meta.dirname!, "../fixtures/klein-tiny/model");
const { tokenizer, template } = await loadPromptTools(MODEL);

const base: Task = {
  task_id: "solid_red_couch_s0",
  edit_type: "customize",
  family: "solid_color",
  instruction: "draw a couch in this color",
  refs: ["/s/solid_red.png"],
  width: 1024,
  height: 1024,
  noise_seed: 1635624438,
  metadata: {},
};

Deno.test("padding dose: the study's levels met exactly; the short colour instruction is the 494 level", () => {
  assert.equal(padPositions(tokenizer, template, base.instruction), 494);
  const pair: Task = {
    ...base,
    task_id: "a__b",
    patch_source: { task_id: "a", instruction: base.instruction, refs: ["/s/solid_blue.png"], noise_seed: 9 },
  };
  const { tasks, refused } = paddingDoseTasks(tokenizer, template, [base, pair]);
  assert.deepEqual(refused, []);
  assert.deepEqual(tasks.map((t) => t.task_id), [
    ...STUDY_PADDING_LEVELS.map((l) => `solid_red_couch_s0_pad${l}`),
    ...STUDY_PADDING_LEVELS.map((l) => `a__b_pad${l}`),
  ]);
  for (const t of tasks) {
    const level = t.metadata.padding_level as number;
    assert.equal(padPositions(tokenizer, template, t.instruction), level, t.task_id);
    assert.ok(t.instruction.startsWith(base.instruction));
    assert.equal(t.family, "padding_dose/solid_color");
    assert.equal(t.noise_seed, base.noise_seed, "the noise stays: only the prompt length changes");
    assert.equal(t.metadata.real_tokens, 512 - level);
    if (t.patch_source) assert.equal(t.patch_source.instruction, t.instruction);
  }
  assert.equal(tasks[0].instruction, base.instruction);
  const crc = paddingDoseTasks(tokenizer, template, [base], { levels: [300], seed: "crc32" }).tasks[0];
  assert.equal(crc.noise_seed, taskSeed("solid_red_couch_s0_pad300"));
});

Deno.test("padding dose: levels a task cannot reach are refused with the reason; bad levels are errors", () => {
  const long = { ...base, task_id: "long", instruction: "draw a couch in this color ".repeat(20).trim() };
  const { tasks, refused } = paddingDoseTasks(tokenizer, template, [long], { levels: [494, 100] });
  assert.deepEqual(tasks.map((t) => t.task_id), ["long_pad100"]);
  assert.match(refused[0], /^long at 494: the instruction alone leaves \d+ pad positions, fewer than 494$/);
  const mismatched = { ...base, patch_source: { task_id: "x", instruction: "draw a vase", refs: ["/v.png"], noise_seed: 1 } };
  assert.match(paddingDoseTasks(tokenizer, template, [mismatched]).refused[0], /patch source has another instruction/);
  assert.throws(
    () => paddingDoseTasks(tokenizer, template, [base], { levels: [512] }),
    /padding level 512: expected a whole number in \[0, 512\)/,
  );
  assert.throws(() => paddingDoseTasks(tokenizer, template, [base], { levels: [10, 10] }), /padding levels repeat/);
  assert.ok(lengthen(tokenizer, template, long.instruction, 494) instanceof Error);
});
