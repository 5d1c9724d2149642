// Components loaded once per conformance run and shared by its cases.

import { join } from "node:path";
import { getGpu } from "../runtime/device.ts";
import { Flux2Transformer } from "../model/flux2/transformer.ts";

const transformers = new Map<string, Promise<Flux2Transformer>>();

export function sharedTransformer(path: string): Promise<Flux2Transformer> {
  let t = transformers.get(path);
  if (!t) {
    t = getGpu().then((gpu) => Flux2Transformer.load(gpu, path));
    t.catch(() => transformers.delete(path));
    transformers.set(path, t);
  }
  return t;
}

export function transformerDir(modelDir: string): string {
  return join(modelDir, "transformer");
}

/** Release every shared component (end of a run). */
export async function releaseShared(): Promise<void> {
  for (const t of transformers.values()) (await t.catch(() => null))?.release();
  transformers.clear();
}
