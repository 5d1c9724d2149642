// The case kinds this build implements.

import type { KindHandler } from "./runner.ts";
import { scheduleKind } from "./schedule.ts";
import { ditForwardKind } from "./dit_forward.ts";
import { vaeDecodeKind, vaeEncodeKind } from "./vae.ts";

export function conformanceKinds(): Promise<KindHandler[]> {
  return Promise.resolve([scheduleKind, ditForwardKind, vaeEncodeKind, vaeDecodeKind]);
}
