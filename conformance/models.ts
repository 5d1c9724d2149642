// Components loaded once per conformance run and shared by its cases.

import { join } from "node:path";
import { getGpu } from "../runtime/device.ts";
import { Flux2Transformer } from "../model/flux2/transformer.ts";
import { Flux2KleinPipeline } from "../model/pipeline.ts";
import { releaseSharedVaes } from "./vae.ts";
import { releaseTextEncoders } from "./text_encoder.ts";

const transformers = new Map<string, Promise<Flux2Transformer>>();
const pipelines = new Map<string, Promise<Flux2KleinPipeline>>();

/** A pipeline that keeps its text encoder loaded between cases (cases share prompts). */
export function sharedPipeline(dir: string): Promise<Flux2KleinPipeline> {
  let p = pipelines.get(dir);
  if (!p) {
    p = Flux2KleinPipeline.load(dir, { keepTextEncoder: true });
    p.catch(() => pipelines.delete(dir));
    pipelines.set(dir, p);
  }
  return p;
}

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
  for (const p of pipelines.values()) (await p.catch(() => null))?.release();
  pipelines.clear();
  await releaseSharedVaes();
  await releaseTextEncoders();
}
