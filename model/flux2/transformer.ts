// A loaded FLUX.2 transformer: its configuration, its weights on the GPU (from a diffusers folder or a Black Forest
// Labs single file, detected automatically) and the float64 tables its forward needs (RoPE, timestep features).

import { join } from "node:path";
import type { GpuContext } from "../../runtime/device.ts";
import type { Graph } from "../../runtime/graph.ts";
import type { Plan } from "../../runtime/executor.ts";
import { Checkpoint, readJson } from "../../weights/checkpoint.ts";
import { checkpointProblems } from "../../weights/expected.ts";
import { PendingUpload, type UploadProgress, WeightStore } from "../../weights/store.ts";
import { fluxRopeTables } from "../../kernels/rope_tables.ts";
import { blockNames, checkFlux2BlockCounts, type Flux2Config, parseFlux2Config } from "./config.ts";
import { detectLayout, flux2GraphWeights, type Flux2Layout, inferBflConfig } from "./weights.ts";
import { buildFlux2Forward, type Flux2GraphOptions, type Flux2Inputs, type Flux2Outputs } from "./graph.ts";
import { timestepEmbedding } from "../../kernels/timestep_table.ts";

export interface Flux2LoadOptions {
  /** A config.json to use instead of the one beside the weights (or instead of inferring a single file's). */
  configPath?: string;
  onProgress?: (p: UploadProgress) => void;
  /** Open and validate only; the weights go to the GPU at the first `upload()` (so that a run can be checked first). */
  deferUpload?: boolean;
}

/** Names of the per-run input tensors of a transformer graph. */
export const FLUX_INPUTS = {
  tembIn: "flux.temb_in",
  ropeCos: "flux.rope_cos",
  ropeSin: "flux.rope_sin",
} as const;

export class Flux2Transformer {
  private constructor(
    readonly config: Flux2Config,
    readonly layout: Flux2Layout,
    readonly store: WeightStore,
    readonly source: string,
    private readonly weightsOnDisk: PendingUpload,
  ) {}

  /** Open, validate and upload. `path` is a transformer folder (config.json + weights) or a safetensors file. */
  static async load(gpu: GpuContext, path: string, options: Flux2LoadOptions = {}): Promise<Flux2Transformer> {
    const ckpt = await Checkpoint.open(path);
    let pending: PendingUpload | null = null;
    try {
      const layout = detectLayout(ckpt.names(), path);
      let rawConfig: unknown;
      let configWhere: string;
      if (options.configPath) {
        rawConfig = await readJson(options.configPath);
        configWhere = options.configPath;
      } else if (ckpt.layout !== "file") {
        configWhere = join(path, "config.json");
        rawConfig = await readJson(configWhere);
      } else if (layout === "bfl") {
        rawConfig = inferBflConfig(ckpt, path);
        configWhere = `${path} (configuration inferred from tensor shapes)`;
      } else {
        throw new Error(`${path}: a single diffusers-layout file carries no configuration; pass its config.json`);
      }
      const config = parseFlux2Config(rawConfig, configWhere);
      checkFlux2BlockCounts(config, ckpt.names(), configWhere, path);
      const { weights, expected } = flux2GraphWeights(config, layout);
      const problems = checkpointProblems(ckpt, expected, { reportUnexpected: true });
      if (problems.length) {
        throw new Error(`${path} does not match its configuration (${configWhere}): ${problems.join("; ")}`);
      }
      const store = new WeightStore(gpu);
      for (const w of weights) {
        store.add(w.name, { shape: w.shape, dtype: "bf16", pieces: w.pieces.map((p) => ({ checkpoint: ckpt, ...p })) });
      }
      pending = new PendingUpload(store, ckpt, { onProgress: options.onProgress });
      const transformer = new Flux2Transformer(config, layout, store, path, pending);
      if (!options.deferUpload) await transformer.upload();
      return transformer;
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

  blockNames(): string[] {
    return blockNames(this.config);
  }

  /** Build the forward graph for a sequence of `textRows` text and `imageRows` image rows. Inputs are created as
   * `input` tensors unless given; `f16` multiplies the blocks' projections in f16. */
  buildForward(
    g: Graph,
    textRows: number,
    imageRows: number,
    given: Partial<Flux2Inputs> & { output?: number } & Flux2GraphOptions = {},
  ): Flux2Outputs & {
    inputs: Flux2Inputs;
  } {
    const c = this.config;
    const inputs: Flux2Inputs = {
      x: given.x ?? g.input("flux.x", [imageRows, c.inChannels]),
      ctx: given.ctx ?? g.input("flux.ctx", [textRows, c.jointAttentionDim]),
      tembIn: given.tembIn ?? g.input(FLUX_INPUTS.tembIn, [1, c.timestepChannels]),
      ropeCos: given.ropeCos ?? g.input(FLUX_INPUTS.ropeCos, [textRows + imageRows, c.headDim / 2]),
      ropeSin: given.ropeSin ?? g.input(FLUX_INPUTS.ropeSin, [textRows + imageRows, c.headDim / 2]),
    };
    return { ...buildFlux2Forward(g, c, inputs, given.output, { f16: given.f16 }), inputs };
  }

  /** RoPE tables for position ids [S, 4] of the [text ; image] sequence. */
  ropeTables(ids: Float64Array): { cos: Float32Array; sin: Float32Array } {
    return fluxRopeTables(ids, ids.length / 4, this.config.axesDimsRope, this.config.ropeTheta);
  }

  /** Write the per-run inputs of a graph built by buildForward with its default input names: image rows, prompt
   * embeddings, the RoPE tables of position ids [S, 4] and the timestep features (only those given). */
  writeForwardInputs(plan: Plan, inputs: { x?: Float32Array; ctx?: Float32Array; ids?: Float64Array; timestep?: number }): void {
    if (inputs.x) plan.write("flux.x", inputs.x);
    if (inputs.ctx) plan.write("flux.ctx", inputs.ctx);
    if (inputs.ids) {
      const rope = this.ropeTables(inputs.ids);
      plan.write(FLUX_INPUTS.ropeCos, rope.cos);
      plan.write(FLUX_INPUTS.ropeSin, rope.sin);
    }
    if (inputs.timestep !== undefined) plan.write(FLUX_INPUTS.tembIn, this.timestepInput(inputs.timestep));
  }

  /** Timestep features for the model's timestep t = 1000·σ (the schedule's `timesteps`); the model rounds t to
   * float32 before the sinusoids, as the reference does. */
  timestepInput(timestep: number): Float32Array {
    return timestepEmbedding(timestep, this.config.timestepChannels);
  }

  release(): void {
    this.weightsOnDisk.discard();
    this.store.release();
  }
}
