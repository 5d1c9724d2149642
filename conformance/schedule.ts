// Conformance of the sampler's schedule: μ, shifted sigmas and timesteps.

import { flowSchedule } from "../model/sampler.ts";
import type { KindHandler } from "./runner.ts";

export const scheduleKind: KindHandler = {
  kind: "schedule",
  inputs: [],
  run(ctx) {
    const steps = ctx.case.steps as number;
    const seq = ctx.case.image_seq_len as number;
    const s = flowSchedule(steps, seq);
    const expectedMu = ctx.case.mu as number;
    if (Math.abs(s.mu - expectedMu) > 1e-6 * Math.max(1, Math.abs(expectedMu))) {
      throw new Error(`μ ${s.mu} differs from the reference's ${expectedMu}`);
    }
    return Promise.resolve({ sigmas: Float64Array.from(s.sigmas), timesteps: Float64Array.from(s.timesteps) });
  },
};
