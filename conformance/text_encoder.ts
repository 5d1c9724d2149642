// Conformance of the text encoder: template + tokenizer + padding (input_ids and attention_mask, compared exactly),
// the prompt embeddings [512, 3·hidden] (relative L2), and the prompt's content token positions.

import { getGpu } from "../runtime/device.ts";
import { TextEncoder } from "../model/qwen3/text_encoder.ts";
import type { KindHandler } from "./runner.ts";

const encoders = new Map<string, Promise<TextEncoder>>();

/** One encoder per pipeline folder for the whole conformance run. */
function sharedTextEncoder(modelDir: string): Promise<TextEncoder> {
  let e = encoders.get(modelDir);
  if (!e) {
    e = getGpu().then((gpu) => TextEncoder.load(gpu, modelDir));
    e.catch(() => encoders.delete(modelDir));
    encoders.set(modelDir, e);
  }
  return e;
}

/** Release the encoders loaded by text_encoder cases (end of a run). */
export async function releaseTextEncoders(): Promise<void> {
  for (const e of encoders.values()) (await e.catch(() => null))?.release();
  encoders.clear();
}

function samePositions(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((v, i) => v === b[i]);
}

export const textEncoderKind: KindHandler = {
  kind: "text_encoder",
  inputs: [],
  async run(ctx) {
    const prompt = ctx.case.prompt;
    if (typeof prompt !== "string") throw new Error(`case ${ctx.case.name}: "prompt" must be a string, got ${JSON.stringify(prompt)}`);
    const encoder = await sharedTextEncoder(ctx.modelDir);
    const { embeds, prompt: encoded } = await encoder.encode(prompt);
    const expected = ctx.case.content_positions;
    if (expected !== null && expected !== undefined) {
      if (!Array.isArray(expected) || !expected.every((p) => Number.isInteger(p))) {
        throw new Error(`case ${ctx.case.name}: "content_positions" must be an array of integers or null, got ${JSON.stringify(expected)}`);
      }
      const got = encoded.groups.content;
      if (!samePositions(got, expected as number[])) {
        throw new Error(
          `case ${ctx.case.name}: the prompt's content token positions are [${got.join(", ")}], the reference has ` +
            `[${(expected as number[]).join(", ")}] (templated: ${JSON.stringify(encoded.templated)})`,
        );
      }
    }
    return { input_ids: encoded.inputIds, attention_mask: encoded.attentionMask, prompt_embeds: embeds };
  },
};
