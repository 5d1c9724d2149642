// Conformance of the VAE: `vae_encode` (reference PNG → crop → pixels in [−1, 1] → packed normalised tokens) and
// `vae_decode` (packed normalised tokens → decoder output, not clamped).

import { join } from "node:path";
import { getGpu } from "../runtime/device.ts";
import { Vae } from "../model/vae/vae.ts";
import { centreCrop, loadImage, toModelPixels } from "../model/images.ts";
import type { CaseContext, KindHandler } from "./runner.ts";

const vaes = new Map<string, Promise<Vae>>();

/** One VAE per checkpoint folder for the whole run. */
export function sharedVae(vaeDir: string): Promise<Vae> {
  let v = vaes.get(vaeDir);
  if (!v) {
    v = getGpu().then((gpu) => Vae.load(gpu, vaeDir));
    v.catch(() => vaes.delete(vaeDir));
    vaes.set(vaeDir, v);
  }
  return v;
}

/** Release the VAEs loaded by these kinds (end of a run). */
export async function releaseSharedVaes(): Promise<void> {
  for (const v of vaes.values()) (await v.catch(() => null))?.release();
  vaes.clear();
}

function positiveInt(ctx: CaseContext, value: unknown, what: string): number {
  if (typeof value !== "number" || !Number.isInteger(value) || value <= 0) {
    throw new Error(`case ${ctx.case.name}: ${what} must be a positive integer, got ${JSON.stringify(value)}`);
  }
  return value;
}

export const vaeEncodeKind: KindHandler = {
  kind: "vae_encode",
  inputs: [],
  async run(ctx) {
    const image = ctx.case.image;
    if (typeof image !== "string") throw new Error(`case ${ctx.case.name}: "image" must be a path, got ${JSON.stringify(image)}`);
    const crop = ctx.case.crop;
    if (!Array.isArray(crop) || crop.length !== 2) throw new Error(`case ${ctx.case.name}: "crop" must be [width, height]`);
    const width = positiveInt(ctx, crop[0], "crop width"), height = positiveInt(ctx, crop[1], "crop height");
    const pixels = toModelPixels(centreCrop(await loadImage(ctx.path(image)), width, height));
    const vae = await sharedVae(join(ctx.modelDir, "vae"));
    return { pixels, tokens: await vae.encodeImage(pixels, width, height) };
  },
};

export const vaeDecodeKind: KindHandler = {
  kind: "vae_decode",
  inputs: ["tokens"],
  async run(ctx) {
    const width = positiveInt(ctx, ctx.case.width, "width"), height = positiveInt(ctx, ctx.case.height, "height");
    const vae = await sharedVae(join(ctx.modelDir, "vae"));
    return { image: await vae.decodeTokens(await ctx.tensor("tokens"), width, height) };
  },
};
