// Token groups by character span (text[chars:i..j]) on the real Qwen3 tokenizer and chat template (the tiny
// checkpoint's): the instruction and the filler of a padding dose-response prompt partition text[content].

import assert from "node:assert/strict";
import { join } from "node:path";
import { resolveGroup, resolveGroups } from "../../interventions/groups.ts";
import { encodePrompt, QWEN3_PROMPT_LENGTH } from "../../model/qwen3/prompt.ts";
import type { RunLayout } from "../../model/run.ts";
import { loadPromptTools, paddingDoseTasks } from "../../experiments/padding_dose.ts";
import { textSpanGroup } from "../../experiments/experiment.ts";
import type { Task } from "../../experiments/tasks.ts";

const MODEL = join(import.meta.dirname!, "../fixtures/klein-tiny/model");
const { tokenizer, template } = await loadPromptTools(MODEL);

function layoutOf(prompt: string): RunLayout {
  const encoded = encodePrompt(tokenizer, template, prompt);
  return { textRows: QWEN3_PROMPT_LENGTH, noiseRows: 4, refRows: [4], prompt: encoded.groups };
}

const base: Task = {
  task_id: "solid_red_couch_s0",
  edit_type: "customize",
  family: "solid_color",
  instruction: "draw a couch in this color",
  refs: ["/s/solid_red.png"],
  width: 1024,
  height: 1024,
  noise_seed: 7,
  metadata: {},
};

Deno.test("text[chars:i..j]: instruction_only and filler_only partition text[content] at every padding level", () => {
  const { tasks } = paddingDoseTasks(tokenizer, template, [base, { ...base, task_id: "vase", instruction: "make the vase blue." }], {
    levels: [494, 400, 322, 149, 0],
  });
  let filled = 0;
  for (const task of tasks) {
    const layout = layoutOf(task.instruction);
    const content = resolveGroup(layout, "text[content]");
    const instruction = resolveGroups(layout, textSpanGroup(task, task.instruction, "instruction_only"));
    const filler = resolveGroups(layout, textSpanGroup(task, task.instruction, "filler_only"));
    assert.ok(instruction.length > 0, task.task_id);
    assert.deepEqual([...instruction, ...filler].sort((a, b) => a - b), content, `${task.task_id}: the two cover text[content]`);
    assert.equal(instruction.filter((p) => filler.includes(p)).length, 0, `${task.task_id}: and do not overlap`);
    // The instruction's tokens are those of the instruction alone; the filler is what the lengthening added.
    const alone = resolveGroup(layoutOf(task.metadata.padding_base_instruction as string), "text[content]");
    assert.equal(instruction.length, alone.length, task.task_id);
    assert.equal(filler.length, content.length - alone.length, task.task_id);
    if (filler.length) filled++;
    // The groups carry the characters they claim.
    const ids = (ps: number[]) => tokenizer.decode(ps.map((p) => encodePrompt(tokenizer, template, task.instruction).inputIds[p]));
    assert.equal(ids(instruction), task.metadata.padding_base_instruction, task.task_id);
  }
  assert.ok(filled >= 6, "most levels add filler");
});

Deno.test("text[chars:i..j]: spans clipped to the prompt, empty ranges, edges inside a token and bad ranges refused", () => {
  const layout = layoutOf("draw a couch in this color");
  assert.deepEqual(layout.prompt.contentSpans, [[0, 4], [4, 6], [6, 12], [12, 15], [15, 20], [20, 26]]);
  assert.equal(layout.prompt.promptLength, 26);
  const content = layout.prompt.content;
  assert.deepEqual(resolveGroup(layout, "text[chars:0..26]"), content);
  assert.deepEqual(resolveGroup(layout, "text[chars:4..12]"), content.slice(1, 3));
  assert.deepEqual(resolveGroup(layout, "text[chars:6..6]"), []);
  assert.throws(
    () => resolveGroup(layout, "text[chars:0..5]"),
    /text position \d+ holds prompt characters 4\.\.6, across the edge of 0\.\.5/,
  );
  assert.throws(() => resolveGroup(layout, "text[chars:9..3]"), /character range 9\.\.3 ends before it starts/);
  assert.throws(() => resolveGroup(layout, "text[chars:0..27]"), /character 27 is beyond the prompt's 26 characters/);
  assert.throws(() => resolveGroup(layout, "text[chars:a..b]"), /expected text\[content\|scaffold\|pad\|padding\].*text\[chars:i\.\.j\]/);
  // An empty prompt has no content and selects nothing.
  assert.deepEqual(resolveGroup(layoutOf(""), "text[chars:0..0]"), []);
  // A layout without offsets (built by hand) is refused rather than guessed.
  const bare: RunLayout = { ...layout, prompt: { content: [3], scaffold: [], pad: [], padding: [] } };
  assert.throws(() => resolveGroup(bare, "text[chars:0..4]"), /carry no character offsets/);
});
