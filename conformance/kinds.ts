// The case kinds this build implements.

import type { KindHandler } from "./runner.ts";
import { scheduleKind } from "./schedule.ts";
import { ditForwardKind } from "./dit_forward.ts";
import { textEncoderKind } from "./text_encoder.ts";
import { vaeDecodeKind, vaeEncodeKind } from "./vae.ts";
import { knockoutKind, lensKind, patchKind, pipelineKind } from "./pipeline.ts";

export function conformanceKinds(): Promise<KindHandler[]> {
  return Promise.resolve([
    scheduleKind,
    textEncoderKind,
    vaeEncodeKind,
    vaeDecodeKind,
    ditForwardKind,
    pipelineKind,
    knockoutKind,
    lensKind,
    patchKind,
  ]);
}
