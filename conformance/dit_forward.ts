// Conformance of one transformer forward with every block output captured.

import { getGpu } from "../runtime/device.ts";
import { Graph } from "../runtime/graph.ts";
import { Plan } from "../runtime/executor.ts";
import { insertCapture } from "../interventions/capture.ts";
import { FLUX_INPUTS } from "../model/flux2/transformer.ts";
import { concatIds } from "../model/flux2/positions.ts";
import type { Computed, KindHandler } from "./runner.ts";
import { sharedTransformer, transformerDir } from "./models.ts";

export const ditForwardKind: KindHandler = {
  kind: "dit_forward",
  inputs: ["hidden_states", "encoder_hidden_states", "img_ids", "txt_ids"],
  async run(ctx) {
    const gpu = await getGpu();
    const transformer = await sharedTransformer(transformerDir(ctx.modelDir));
    const x = await ctx.tensor("hidden_states");
    const enc = await ctx.tensor("encoder_hidden_states");
    const ids = concatIds(Float64Array.from(await ctx.tensor("txt_ids")), Float64Array.from(await ctx.tensor("img_ids")));
    const cfg = transformer.config;
    const imageRows = x.length / cfg.inChannels, textRows = enc.length / cfg.jointAttentionDim;
    const g = new Graph();
    const output = g.state("dit.output", [imageRows, cfg.outChannels]);
    transformer.buildForward(g, textRows, imageRows, { output });
    const captures: Record<string, string> = {};
    for (const b of transformer.blockNames()) {
      const parts = b.startsWith("double") ? ["txt", "img"] : ["all"];
      for (const part of parts) {
        const tap = part === "all" ? b : `${b}.${part}`;
        captures[`capture.${b}.${part}`] = insertCapture(g, tap, { all: true }, `cap.${tap}`).tensor;
      }
    }
    const plan = await Plan.compile(gpu, g, transformer.store, { label: "dit_forward" });
    try {
      const rope = transformer.ropeTables(ids);
      plan.write("flux.x", x);
      plan.write("flux.ctx", enc);
      plan.write(FLUX_INPUTS.ropeCos, rope.cos);
      plan.write(FLUX_INPUTS.ropeSin, rope.sin);
      plan.write(FLUX_INPUTS.tembIn, transformer.timestepInput((ctx.case.timestep as number) * 1000));
      await plan.run();
      const out: Record<string, Computed> = { output: await plan.read("dit.output") };
      for (const [key, tensor] of Object.entries(captures)) out[key] = await plan.read(tensor);
      return out;
    } finally {
      plan.destroy();
    }
  },
};
