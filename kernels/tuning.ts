// Select the tuned tile configurations (kernels/*_tuned.json) recorded for the device in use.

import type { GpuContext } from "../runtime/device.ts";
import { setMatmulDevice } from "./matmul.ts";
import { setAttentionDevice } from "./attention.ts";

export function applyDeviceTuning(gpu: GpuContext): void {
  setMatmulDevice(gpu);
  setAttentionDevice(gpu);
}
