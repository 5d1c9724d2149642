// A loaded FLUX.2 VAE: configuration, weights on the GPU, and one compiled plan per (direction, resolution).
//   encodeImage: pixels 3×H×W in [−1, 1] → packed, batch-norm-normalised tokens [(H/16)·(W/16), 4·latent_channels]
//                (posterior mean, 2×2 patchify, (x − running_mean) / sqrt(running_var + eps)), as the pipeline's
//                _encode_vae_image followed by _pack_latents.
//   decodeTokens: the inverse packing (denormalise, unpatchify) and the decoder → 3×H×W, not clamped.
// Graph layout: images are channel-major f32 [C, H·W] (batch 1); tokens are row-major [tokens, features].

import { join } from "node:path";
import type { GpuContext } from "../../runtime/device.ts";
import { Graph } from "../../runtime/graph.ts";
import { Plan } from "../../runtime/executor.ts";
import { Checkpoint, readJson } from "../../weights/checkpoint.ts";
import { PendingUpload, type UploadProgress, WeightStore } from "../../weights/store.ts";
import { patchifyLatents, unpatchifyTokens } from "../../kernels/latent.ts";
import { checkImageSize, parseVaeConfig, type VaeConfig } from "./config.ts";
import { addVaeWeights, vaeCheckpointProblems, type VaePart, vaeTensorShapes, vaeWeightDType } from "./weights.ts";
import { vaeWeight, type VaeWeightTable } from "./blocks.ts";
import { buildEncoder } from "./encoder.ts";
import { buildDecoder } from "./decoder.ts";

export interface VaeLoadOptions {
  /** Which halves to put on the GPU (default both). */
  parts?: VaePart[];
  onProgress?: (p: UploadProgress) => void;
  /** Open and validate only; the weights go to the GPU at the first `upload()`. */
  deferUpload?: boolean;
}

/** Names of the host-visible tensors of the plans Vae compiles. */
export const VAE_TENSORS = {
  pixels: "vae.pixels",
  tokens: "vae.tokens",
  tokensIn: "vae.tokens_in",
  image: "vae.image",
} as const;

export class Vae {
  private readonly plans = new Map<string, Promise<Plan>>();
  /** Runs are serialised: a plan's input and output buffers are shared by every call at its resolution. */
  private queue: Promise<unknown> = Promise.resolve();
  private released = false;

  private constructor(
    readonly gpu: GpuContext,
    readonly config: VaeConfig,
    readonly parts: readonly VaePart[],
    private readonly store: WeightStore,
    private readonly weights: VaeWeightTable,
    readonly source: string,
    private readonly weightsOnDisk: PendingUpload,
  ) {}

  /** Open `vaeDir` (config.json + diffusion_pytorch_model.safetensors), validate it against its config, upload. */
  static async load(gpu: GpuContext, vaeDir: string, options: VaeLoadOptions = {}): Promise<Vae> {
    const configPath = join(vaeDir, "config.json");
    const config = parseVaeConfig(await readJson(configPath), configPath);
    const parts = options.parts ?? ["encoder", "decoder"];
    if (!parts.length) throw new Error(`VAE ${vaeDir}: no part to load (parts is empty)`);
    const ckpt = await Checkpoint.open(vaeDir);
    let pending: PendingUpload | null = null;
    try {
      const problems = vaeCheckpointProblems(ckpt, config);
      if (problems.length) {
        throw new Error(`VAE ${vaeDir} does not match its configuration (${configPath}): ${problems.join("; ")}`);
      }
      const weights: VaeWeightTable = new Map();
      for (const part of parts) {
        for (const [name, shape] of vaeTensorShapes(config, part)) weights.set(name, { shape, dtype: vaeWeightDType(ckpt, name) });
      }
      const store = new WeightStore(gpu);
      addVaeWeights(store, ckpt, config, parts);
      pending = new PendingUpload(store, ckpt, { onProgress: options.onProgress });
      const vae = new Vae(gpu, config, [...parts], store, weights, vaeDir, pending);
      if (!options.deferUpload) await vae.upload();
      return vae;
    } catch (e) {
      if (pending) pending.discard();
      else ckpt.close();
      throw e;
    }
  }

  /** Put the weights on the GPU if they are not there yet (load with deferUpload leaves them on disk). */
  async upload(): Promise<void> {
    await this.weightsOnDisk.upload();
  }

  /** Latent grid (before patchify) of a width × height image. */
  latentSize(width: number, height: number): { height: number; width: number } {
    return { height: height / this.config.scaleFactor, width: width / this.config.scaleFactor };
  }

  /** Add the encode graph: pixels [in_channels, H·W] → normalised packed tokens (written into `tokensOut` if given). */
  buildEncode(g: Graph, pixels: number, width: number, height: number, tokensOut?: number): number {
    this.need("encoder", "encode");
    checkImageSize(this.config, width, height, "VAE encode");
    const ctx = { g, cfg: this.config, weights: this.weights };
    const moments = buildEncoder(ctx, { id: pixels, height, width });
    const tokens = patchifyLatents(g, "vae.pack", moments.id, {
      channels: this.config.latentChannels,
      height: moments.height,
      width: moments.width,
      stats: { mean: vaeWeight(ctx, "bn.running_mean"), variance: vaeWeight(ctx, "bn.running_var"), eps: this.config.batchNormEps },
    }, tokensOut);
    g.tap("vae.tokens", tokens);
    return tokens;
  }

  /** Add the decode graph: normalised packed tokens → image [out_channels, H·W] (written into `imageOut` if given). */
  buildDecode(g: Graph, tokens: number, width: number, height: number, imageOut?: number): number {
    this.need("decoder", "decode");
    checkImageSize(this.config, width, height, "VAE decode");
    const ctx = { g, cfg: this.config, weights: this.weights };
    const lat = this.latentSize(width, height);
    const latent = unpatchifyTokens(g, "vae.unpack", tokens, {
      channels: this.config.latentChannels,
      height: lat.height,
      width: lat.width,
      stats: { mean: vaeWeight(ctx, "bn.running_mean"), variance: vaeWeight(ctx, "bn.running_var"), eps: this.config.batchNormEps },
    });
    g.tap("vae.latent", latent);
    return buildDecoder(ctx, { id: latent, ...lat }, imageOut).id;
  }

  /** Encode one image: `pixels` is in_channels×height×width (channel planes), values in [−1, 1]. */
  encodeImage(pixels: Float32Array, width: number, height: number): Promise<Float32Array> {
    this.need("encoder", "encode");
    checkImageSize(this.config, width, height, "VAE encode");
    const want = this.config.inChannels * width * height;
    if (pixels.length !== want) {
      throw new Error(`VAE encode: ${width}×${height} needs ${want} pixel values (${this.config.inChannels} planes), got ${pixels.length}`);
    }
    return this.run(
      `encode:${width}x${height}`,
      () => {
        const g = new Graph();
        const input = g.input(VAE_TENSORS.pixels, [this.config.inChannels, width * height]);
        const lat = this.latentSize(width, height);
        const out = g.state(VAE_TENSORS.tokens, [(lat.height / 2) * (lat.width / 2), 4 * this.config.latentChannels]);
        this.buildEncode(g, input, width, height, out);
        return g;
      },
      VAE_TENSORS.pixels,
      pixels,
      VAE_TENSORS.tokens,
    );
  }

  /** Decode packed normalised tokens of a width × height image to out_channels×height×width (not clamped). */
  decodeTokens(tokens: Float32Array, width: number, height: number): Promise<Float32Array> {
    this.need("decoder", "decode");
    checkImageSize(this.config, width, height, "VAE decode");
    const lat = this.latentSize(width, height);
    const rows = (lat.height / 2) * (lat.width / 2), features = 4 * this.config.latentChannels;
    if (tokens.length !== rows * features) {
      throw new Error(`VAE decode: a ${width}×${height} image needs ${rows}×${features} token values, got ${tokens.length}`);
    }
    return this.run(
      `decode:${width}x${height}`,
      () => {
        const g = new Graph();
        const input = g.input(VAE_TENSORS.tokensIn, [rows, features]);
        const out = g.state(VAE_TENSORS.image, [this.config.outChannels, width * height]);
        this.buildDecode(g, input, width, height, out);
        return g;
      },
      VAE_TENSORS.tokensIn,
      tokens,
      VAE_TENSORS.image,
    );
  }

  /** Free the plans and the weights; the VAE refuses any further use (call it once no encode/decode is pending). */
  release(): void {
    if (this.released) return;
    this.released = true;
    this.weightsOnDisk.discard();
    for (const p of this.plans.values()) p.then((plan) => plan.destroy(), () => {});
    this.plans.clear();
    this.store.release();
  }

  /** Free the cached plans (their activation memory) but keep the weights: the pipeline calls this before the
   * denoising steps, so that the VAE's large activations never coexist with the transformer's. */
  async releasePlans(): Promise<void> {
    await this.queue.catch(() => {});
    for (const p of this.plans.values()) (await p.catch(() => null))?.destroy();
    this.plans.clear();
  }

  /** GPU bytes of the weights and of the plans currently cached (one per resolution and direction). */
  async gpuBytes(): Promise<{ weights: number; plans: number }> {
    let plans = 0;
    for (const p of this.plans.values()) plans += (await p.catch(() => null))?.allocatedBytes ?? 0;
    return { weights: this.store.bytes(), plans };
  }

  private run(key: string, build: () => Graph, inputName: string, input: Float32Array, outputName: string): Promise<Float32Array> {
    const result = this.queue.catch(() => {}).then(async () => {
      this.checkLive();
      let plan = this.plans.get(key);
      if (!plan) {
        plan = Plan.compile(this.gpu, build(), this.store, { label: `vae:${key}` });
        plan.catch(() => this.plans.delete(key));
        this.plans.set(key, plan);
      }
      const p = await plan;
      p.write(inputName, input);
      await p.run();
      return await p.read(outputName);
    });
    this.queue = result;
    return result;
  }

  private need(part: VaePart, what: string): void {
    this.checkLive();
    if (!this.parts.includes(part)) {
      throw new Error(`VAE ${this.source}: cannot ${what}, its ${part} was not loaded (parts: ${this.parts.join(", ")})`);
    }
  }

  private checkLive(): void {
    if (this.released) throw new Error(`VAE ${this.source} was released; load it again`);
  }
}
