// Conformance of one transformer forward with every block output captured.

import { getGpu } from "../runtime/device.ts";
import { Graph } from "../runtime/graph.ts";
import { Plan } from "../runtime/executor.ts";
import { insertCapture } from "../interventions/capture.ts";
import type { Flux2Transformer } from "../model/flux2/transformer.ts";
import { concatIds } from "../model/flux2/positions.ts";
import type { KindHandler } from "./runner.ts";
import { sharedTransformer, transformerDir } from "./models.ts";

export interface ForwardInputs {
  x: Float32Array;
  ctx: Float32Array;
  /** Position ids [text ; image] × 4. */
  ids: Float64Array;
  /** The model's timestep t = 1000·σ. */
  timestep: number;
}

/** One forward with every block's output captured (double: txt and img; single: all). */
export async function forwardWithCaptures(transformer: Flux2Transformer, inp: ForwardInputs): Promise<Record<string, Float32Array>> {
  const gpu = await getGpu();
  const cfg = transformer.config;
  const imageRows = inp.x.length / cfg.inChannels, textRows = inp.ctx.length / cfg.jointAttentionDim;
  const g = new Graph();
  const output = g.state("dit.output", [imageRows, cfg.outChannels]);
  transformer.buildForward(g, textRows, imageRows, { output });
  const captures: Record<string, string> = {};
  for (const b of transformer.blockNames()) {
    for (const part of b.startsWith("double") ? ["txt", "img"] : ["all"]) {
      const tap = part === "all" ? b : `${b}.${part}`;
      captures[`capture.${b}.${part}`] = insertCapture(g, tap, { all: true }, `cap.${tap}`).tensor;
    }
  }
  const plan = await Plan.compile(gpu, g, transformer.store, { label: "dit_forward" });
  try {
    transformer.writeForwardInputs(plan, inp);
    await plan.run();
    const out: Record<string, Float32Array> = { output: await plan.read("dit.output") };
    for (const [key, tensor] of Object.entries(captures)) out[key] = await plan.read(tensor);
    return out;
  } finally {
    plan.destroy();
  }
}

export const ditForwardKind: KindHandler = {
  kind: "dit_forward",
  inputs: ["hidden_states", "encoder_hidden_states", "img_ids", "txt_ids"],
  async run(ctx) {
    const transformer = await sharedTransformer(transformerDir(ctx.modelDir));
    return await forwardWithCaptures(transformer, {
      x: await ctx.tensor("hidden_states"),
      ctx: await ctx.tensor("encoder_hidden_states"),
      ids: concatIds(Float64Array.from(await ctx.tensor("txt_ids")), Float64Array.from(await ctx.tensor("img_ids"))),
      timestep: (ctx.case.timestep as number) * 1000,
    });
  },
};
