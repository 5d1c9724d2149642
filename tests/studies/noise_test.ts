// `noise: "torch-cpu"` starts a run from what torch.randn draws on a CPU generator for the seed.

import assert from "node:assert/strict";
import { Flux2KleinPipeline } from "../../model/pipeline.ts";
import { torchCpuNoise } from "../../model/torch_random.ts";
import { executeSpec } from "../../studies/execute.ts";
import { parseSpec } from "../../studies/spec.ts";

const MODEL = new URL("../fixtures/klein-tiny/model", import.meta.url).pathname;

Deno.test({
  name: "a spec's torch-cpu noise is the run's initial latents; noise and latents together are refused",
  sanitizeResources: false,
  async fn() {
    const pipe = await Flux2KleinPipeline.load(MODEL, { keepTextEncoder: true, log: () => {} });
    try {
      const base = { model: MODEL, prompt: "a mug", width: 32, height: 16, steps: 1, seed: 7 };
      const viaSpec = await executeSpec(pipe, parseSpec({ ...base, noise: "torch-cpu-bf16" }));
      const channels = pipe.transformer.config.inChannels;
      const direct = await pipe.generate({
        prompt: "a mug",
        width: 32,
        height: 16,
        steps: 1,
        initialLatents: torchCpuNoise(7, 32, 16, { channels, dtype: "bfloat16" }),
      });
      assert.deepEqual(viaSpec.result.latents, direct.latents);
      const own = await executeSpec(pipe, parseSpec(base));
      assert.notDeepEqual(own.result.latents, direct.latents);
      assert.throws(() => parseSpec({ ...base, seed: undefined, latents: "x.safetensors", noise: "torch-cpu" }), /spec\.noise/);
      assert.throws(() => parseSpec({ ...base, noise: "cuda" }), /spec\.noise/);
    } finally {
      pipe.release();
    }
  },
});
