// FLUX.2 klein text-to-image and in-context editing: prompt → embeddings; references → tokens; per step one
// transformer forward over [text ; noise ; references] with the Euler update on the GPU; decode.
// A run is a value: prepare() does every check and all CPU work once (references decoded, prompt tokenised, step
// graph built, interventions bound and rewritten); execute() does the GPU work of that prepared run, once.

import { join } from "node:path";
import { getGpu, type GpuContext } from "../runtime/device.ts";
import { Graph } from "../runtime/graph.ts";
import { Plan } from "../runtime/executor.ts";
import { readJson } from "../weights/checkpoint.ts";
import { axpyInPlace, elementwiseNode } from "../kernels/elementwise.ts";
import { applyDeviceTuning } from "../kernels/tuning.ts";
import { Flux2Transformer } from "./flux2/transformer.ts";
import { concatIds, type Grid, imageIds, textIds } from "./flux2/positions.ts";
import { flowSchedule, seededNoise } from "./sampler.ts";
import { torchCpuNoise } from "./torch_random.ts";
import { Qwen3TextEncoder } from "./qwen3/text_encoder.ts";
import { type EncodedPrompt, encodePrompt, QWEN3_PROMPT_LENGTH } from "./qwen3/prompt.ts";
import { loadQwen3Tokenizer } from "./qwen3/tokenizer.ts";
import { loadChatTemplate } from "./qwen3/template.ts";
import { Vae } from "./vae/vae.ts";
import { loadImage, preprocessReference, toUnitRange } from "./images.ts";
import {
  type AttentionCut,
  type ForwardSite,
  type Intervention,
  type InterventionOutputs,
  type RunBinding,
  type RunContext,
  type RunLayout,
  sequenceLength,
  type TapInfo,
} from "./run.ts";
import { fullyMaskedQueries, groupMaskBits, setAttentionGroupMask } from "../kernels/attention.ts";

export interface ReferenceImage {
  /** Where it came from (for messages and specs). */
  source: string;
  /** 3×h×w in [−1, 1], already cropped to multiples of 16. */
  pixels: Float32Array;
  width: number;
  height: number;
}

export type NoiseSource = "kleinscope" | "torch-cpu" | "torch-cpu-bf16";
export const NOISE_SOURCES: readonly NoiseSource[] = ["kleinscope", "torch-cpu", "torch-cpu-bf16"];

export interface GenerateRequest {
  prompt: string;
  /** Reference images (paths or preprocessed pixels), in order. Empty for text-to-image. */
  refs?: (string | ReferenceImage)[];
  /** Output size; defaults to the first reference's processed size, else 1024×1024. Multiples of 16. */
  width?: number;
  height?: number;
  steps?: number;
  /** Classifier-free guidance scale; only for base (non-distilled) checkpoints. */
  guidance?: number;
  /** Treat the checkpoint as guidance-distilled (true) or as a base model (false); default model_index.json's
   * `is_distilled`. A base model runs a conditional and an unconditional forward per step when guidance ≠ 1. */
  distilled?: boolean;
  seed?: number;
  /** How the seed becomes initial noise: "kleinscope" (default, this project's generator), "torch-cpu" (exactly what
   * `torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed))` draws in float32) or "torch-cpu-bf16"
   * (the same draw in bfloat16, as the reference pipeline makes it for a bf16 model). */
  noise?: NoiseSource;
  /** Initial noise, packed tokens [(h/16)·(w/16), channels]; overrides the seed. */
  initialLatents?: Float32Array;
  interventions?: Intervention[];
  /** Keep the latents after every step (costs one readback per step). */
  keepStepLatents?: boolean;
  /** Text rows: the prompt is templated, tokenised and padded (or truncated) to this many tokens, as the reference
   * pipeline's `max_sequence_length` does; default 512 (QWEN3_PROMPT_LENGTH), the length FLUX.2 klein was trained
   * with. The text encoder is causal, so the first n rows at any length are the same; a shorter length drops padding
   * rows (and so the padding group shrinks), a longer one adds them. */
  maxSequenceLength?: number;
  /** Multiply in f16 in the transformer blocks' projections (needs shader-f16): about 1e-3 relative error per
   * product; on an H100 no faster than f32 (README, performance). */
  f16?: boolean;
  onStep?: (info: StepInfo) => void;
}

/** A run checked and laid out on the CPU, with its step graph built and its interventions bound: ready for the
 * GPU. Execute it once with `Flux2KleinPipeline.execute`. */
export interface PreparedRun {
  request: GenerateRequest;
  steps: number;
  guidance: number;
  /** True when each step runs a conditional and an unconditional forward. */
  guided: boolean;
  refs: ReferenceImage[];
  width: number;
  height: number;
  grid: Grid;
  refGrids: Grid[];
  layout: RunLayout;
  prompt: EncodedPrompt;
  /** Tap points of one forward, by name. */
  taps: ReadonlyMap<string, TapInfo>;
  interventions: Intervention[];
  /** Everything the run's checks had to say that did not stop it (kept on the result). */
  warnings: string[];
}

export interface StepInfo {
  step: number;
  steps: number;
  sigma: number;
  ms: number;
}

export interface StageTimes {
  /** Loading the text encoder's weights for this run (0 when every prompt's embeddings were cached or the encoder was
   * kept loaded). */
  textLoadMs: number;
  /** Encoding the prompts (and releasing the text encoder), without its load. */
  textMs: number;
  refsMs: number;
  planMs: number;
  stepsMs: number[];
  decodeMs: number;
  /** execute() from start to end (after the transformer and VAE weights are on the GPU): every stage above, the text
   * encoder's load included. */
  totalMs: number;
}

export interface GenerateResult {
  /** 3×H×W in [0, 1]. */
  image: Float32Array;
  width: number;
  height: number;
  /** Final packed latents [N, channels]. */
  latents: Float32Array;
  stepLatents: Float32Array[];
  prompt: EncodedPrompt;
  layout: RunLayout;
  times: StageTimes;
  /** GPU bytes of the step plan's activations (weights not included). */
  planBytes: number;
  /** Largest GPU bytes of a VAE plan (encode or decode) during the run; freed before the steps and after decoding. */
  vaePlanBytes: number;
  /** Warnings of the run (an intervention whose group is empty here, …). */
  warnings: string[];
  /** What each intervention collected in this run (see e.g. CaptureIntervention.results). */
  outputs: InterventionOutputs;
}

export interface PipelineOptions {
  /** Keep the text encoder on the GPU between runs (default: released after each encode). */
  keepTextEncoder?: boolean;
  log?: (line: string) => void;
}

interface ModelIndex {
  is_distilled?: boolean;
}

/** The largest output side accepted: the VAE's activations at 4096² already take several GB. */
export const MAX_OUTPUT_SIDE = 4096;

/** Output sizes must be multiples of 16 (two 2× VAE stages and 2×2 patches) and at most MAX_OUTPUT_SIDE. */
export function checkSize(width: number, height: number, where: string): void {
  for (const [name, v] of [["width", width], ["height", height]] as const) {
    if (!Number.isInteger(v) || v < 16 || v % 16) {
      throw new Error(`${where}: ${name} ${v} must be a positive multiple of 16 (try ${Math.max(16, Math.round(v / 16) * 16)})`);
    }
    if (v > MAX_OUTPUT_SIDE) throw new Error(`${where}: ${name} ${v} is above the largest supported side, ${MAX_OUTPUT_SIDE}`);
  }
}

/** The longest text sequence a request may ask for (maxSequenceLength): eight times the trained length. */
export const MAX_SEQUENCE_LENGTH = 4096;

/** Refuse a text sequence length that is not a whole number in [1, MAX_SEQUENCE_LENGTH]. */
export function checkSequenceLength(length: number): void {
  if (!Number.isInteger(length) || length < 1 || length > MAX_SEQUENCE_LENGTH) {
    throw new Error(
      `maxSequenceLength ${length} must be a whole number of tokens in [1, ${MAX_SEQUENCE_LENGTH}] (default ${QWEN3_PROMPT_LENGTH})`,
    );
  }
}

/** A request's text sequence length: its maxSequenceLength, else 512. */
export function sequenceLengthOf(req: Pick<GenerateRequest, "maxSequenceLength">): number {
  return req.maxSequenceLength ?? QWEN3_PROMPT_LENGTH;
}

/** The step graph of a prepared run: forward(s), guidance and the Euler update, before interventions rewrite it. */
interface StepGraph {
  graph: Graph;
  forwards: ForwardSite[];
  taps: Map<string, TapInfo>;
}

/** Prepared runs are values that run once: this remembers which have (a second execute is a mistake). */
const executedRuns = new WeakSet<PreparedRun>();

/** Per prepared run, what only the pipeline needs: the step graph and the bound interventions. */
interface RunInternals {
  step: StepGraph;
  bindings: RunBinding[];
  cuts: AttentionCut[];
}
const internals = new WeakMap<PreparedRun, RunInternals>();

export class Flux2KleinPipeline {
  private textEncoder: Qwen3TextEncoder | null = null;
  /** Keyed by sequence length and prompt. */
  private readonly embedCache = new Map<string, { embeds: Float32Array; prompt: EncodedPrompt }>();

  private constructor(
    readonly gpu: GpuContext,
    readonly dir: string,
    readonly transformer: Flux2Transformer,
    readonly vae: Vae,
    readonly distilled: boolean,
    private readonly options: PipelineOptions,
  ) {}

  /** Load a pipeline folder laid out like the published repositories (model_index.json, transformer/, vae/, …).
   * With `deferUpload`, the checkpoints are opened and validated but the weights go to the GPU only when the first
   * run executes, so that runs can be prepared (and refused) first. */
  static async load(
    dir: string,
    options: PipelineOptions & { transformerPath?: string; deferUpload?: boolean } = {},
  ): Promise<Flux2KleinPipeline> {
    let stat: Deno.FileInfo;
    try {
      stat = await Deno.stat(dir);
    } catch {
      throw new Error(
        `model folder ${dir} does not exist (download one with \`deno task download\`, or use tests/fixtures/klein-tiny/model)`,
      );
    }
    if (!stat.isDirectory) throw new Error(`model folder ${dir} is not a folder`);
    const index = await readJson<ModelIndex>(join(dir, "model_index.json"));
    const gpu = await getGpu();
    await applyDeviceTuning(gpu, { log: options.log });
    const deferUpload = options.deferUpload ?? false;
    const transformer = await Flux2Transformer.load(gpu, options.transformerPath ?? join(dir, "transformer"), { deferUpload });
    const vae = await Vae.load(gpu, join(dir, "vae"), { deferUpload });
    return new Flux2KleinPipeline(gpu, dir, transformer, vae, index.is_distilled !== false, options);
  }

  blockNames(): string[] {
    return this.transformer.blockNames();
  }

  /** Prompt embeddings [length, joint_dim] of each prompt (cached per prompt and length; length defaults to 512); the
   * text encoder is loaded once for all. */
  async encodePrompts(prompts: string[], length = QWEN3_PROMPT_LENGTH): Promise<{ embeds: Float32Array; prompt: EncodedPrompt }[]> {
    return (await this.encodePromptsTimed(prompts, length)).embeddings;
  }

  /** encodePrompts, also saying how long loading the text encoder took (0 when it was not loaded). */
  private async encodePromptsTimed(
    prompts: string[],
    length: number,
  ): Promise<{ embeddings: { embeds: Float32Array; prompt: EncodedPrompt }[]; loadMs: number }> {
    checkSequenceLength(length);
    const key = (prompt: string) => `${length}\n${prompt}`;
    const missing = [...new Set(prompts.filter((p) => !this.embedCache.has(key(p))))];
    let loadMs = 0;
    if (missing.length) {
      // The encoder's plan has one sequence length: a kept encoder of another length is loaded again.
      if (this.textEncoder && this.textEncoder.seqLen !== length) {
        this.textEncoder.release();
        this.textEncoder = null;
      }
      if (!this.textEncoder) {
        const tl = performance.now();
        this.textEncoder = await Qwen3TextEncoder.load(this.gpu, this.dir, { seqLen: length });
        loadMs = performance.now() - tl;
      }
      try {
        for (const prompt of missing) {
          const r = await this.textEncoder.encode(prompt);
          if (r.prompt.warning) this.options.log?.(`warning: ${r.prompt.warning}`);
          if (this.embedCache.size >= 8) this.embedCache.delete(this.embedCache.keys().next().value!);
          this.embedCache.set(key(prompt), r);
        }
      } finally {
        if (!this.options.keepTextEncoder) {
          this.textEncoder.release();
          this.textEncoder = null;
        }
      }
    }
    return { embeddings: prompts.map((p) => this.embedCache.get(key(p))!), loadMs };
  }

  /** Prompt embeddings [length, joint_dim] (cached per prompt and length; length defaults to 512). */
  async encodePrompt(prompt: string, length = QWEN3_PROMPT_LENGTH): Promise<{ embeds: Float32Array; prompt: EncodedPrompt }> {
    return (await this.encodePrompts([prompt], length))[0];
  }

  /** Load and preprocess a reference image as the reference pipeline does. */
  async loadReference(path: string): Promise<ReferenceImage> {
    const img = await loadImage(path);
    const pre = preprocessReference(img, path);
    return { source: path, pixels: pre.pixels, width: pre.width, height: pre.height };
  }

  /** Tokenise a prompt on the CPU (no GPU work): ids, mask and token groups, padded to `length` tokens (default 512). */
  async tokenize(prompt: string, length = QWEN3_PROMPT_LENGTH): Promise<EncodedPrompt> {
    checkSequenceLength(length);
    const dir = join(this.dir, "tokenizer");
    const [tokenizer, template] = await Promise.all([loadQwen3Tokenizer(dir), loadChatTemplate(dir)]);
    return encodePrompt(tokenizer, template, prompt, { maxLength: length });
  }

  /** The number of denoising steps a request runs (its own, else 4 for distilled checkpoints and 50 for base ones). */
  stepsOf(req: Pick<GenerateRequest, "steps" | "distilled">): number {
    const steps = req.steps ?? ((req.distilled ?? this.distilled) ? 4 : 50);
    if (!Number.isInteger(steps) || steps < 1) throw new Error(`steps must be a positive integer, got ${steps}`);
    return steps;
  }

  /** Everything about a run that can be done without the GPU: references decoded, the prompt tokenised, sizes,
   * steps, the sequence layout, the step graph — and every intervention bound to it (and so validated). Bad input
   * fails here, before any GPU work. */
  async prepare(req: GenerateRequest): Promise<PreparedRun> {
    const distilled = req.distilled ?? this.distilled;
    const steps = this.stepsOf(req);
    const guidance = req.guidance ?? (distilled ? 1 : 4);
    if (!Number.isFinite(guidance)) throw new Error(`guidance must be a number, got ${guidance}`);
    if (distilled && guidance !== 1) {
      throw new Error(
        `guidance ${guidance}: this checkpoint is guidance-distilled (model_index.json is_distilled); leave guidance at 1, ` +
          `or run it as a base model (distilled: false)`,
      );
    }
    if (req.f16 && !this.gpu.hasF16) {
      throw new Error(`f16: adapter ${this.gpu.adapterDescription} offers no shader-f16; run without f16`);
    }
    if (req.width !== undefined || req.height !== undefined) checkSize(req.width ?? 1024, req.height ?? 1024, "output size");
    const refs: ReferenceImage[] = [];
    for (const r of req.refs ?? []) refs.push(typeof r === "string" ? await this.loadReference(r) : r);
    const width = req.width ?? refs[0]?.width ?? 1024;
    const height = req.height ?? refs[0]?.height ?? 1024;
    checkSize(width, height, "output size");
    const prompt = await this.tokenize(req.prompt, sequenceLengthOf(req));
    const grid: Grid = { h: height / 16, w: width / 16 };
    const refGrids = refs.map((r) => ({ h: r.height / 16, w: r.width / 16 }));
    const layout: RunLayout = {
      textRows: prompt.inputIds.length,
      noiseRows: grid.h * grid.w,
      refRows: refGrids.map((g) => g.h * g.w),
      prompt: prompt.groups,
    };
    const channels = this.transformer.config.inChannels;
    if (!NOISE_SOURCES.includes(req.noise ?? "kleinscope")) {
      throw new Error(`noise "${req.noise}" is not one of ${NOISE_SOURCES.join(", ")}`);
    }
    if (req.initialLatents && req.initialLatents.length !== layout.noiseRows * channels) {
      throw new Error(`initial latents hold ${req.initialLatents.length} values; ${width}×${height} needs ${layout.noiseRows}×${channels}`);
    }
    const guided = !distilled && guidance !== 1;
    const step = this.buildStepGraph(layout, guided, guidance, req.f16);
    this.checkFits(step.graph, width, height);

    const warnings: string[] = [];
    const cuts: AttentionCut[] = [];
    const interventions = req.interventions ?? [];
    const context: RunContext = {
      layout,
      blocks: this.blockNames(),
      steps,
      taps: step.taps,
      guided,
      warn: (m) => {
        if (warnings.includes(m)) return;
        warnings.push(m);
        (this.options.log ?? console.warn)(`warning: ${m}`);
      },
      cutAttention: (cut) => cuts.push(cut),
    };
    const bindings = interventions.map((iv) => iv.bind(context));
    checkCuts(cuts, layout, context.blocks, steps);
    applyCuts(step, cuts, sequenceLength(layout));
    for (const b of bindings) b.rewrite?.(step.graph, step.forwards);
    const run: PreparedRun = {
      request: req,
      steps,
      guidance,
      guided,
      refs,
      width,
      height,
      grid,
      refGrids,
      layout,
      prompt,
      taps: step.taps,
      interventions,
      warnings,
    };
    internals.set(run, { step, bindings, cuts });
    return run;
  }

  /** The step plan's graph: forward(s) + guidance + Euler update, before interventions. */
  private buildStepGraph(layout: RunLayout, guided: boolean, guidance: number, f16 = false): StepGraph {
    const cfg = this.transformer.config;
    const imageRows = layout.noiseRows + layout.refRows.reduce((a, b) => a + b, 0);
    const channels = cfg.inChannels;
    const g = new Graph();
    const x = g.state("pipe.x", [imageRows, channels]);
    const ctx = g.state("pipe.ctx", [layout.textRows, cfg.jointAttentionDim]);
    const velocity = g.state("pipe.velocity", [imageRows, cfg.outChannels]);
    const fwd = this.transformer.buildForward(g, layout.textRows, imageRows, { x, ctx, output: velocity, f16 });
    const forwards: ForwardSite[] = [{ forward: "cond", scope: "", attention: fwd.attention }];
    const taps = new Map<string, TapInfo>();
    for (const [name, id] of g.taps) {
      const [rows, cols] = g.shape(id);
      taps.set(name, { name, rows, cols, sequenceStart: g.tapSequenceStart.get(name) ?? null });
    }
    let guidedVelocity = velocity;
    if (guided) {
      // Unconditional forward on the same inputs (names under "uncond/"), then v = v_c + (g − 1)·(v_c − v_u).
      const ctxU = g.state("pipe.ctx_uncond", [layout.textRows, cfg.jointAttentionDim]);
      const vU = g.state("pipe.velocity_uncond", [imageRows, cfg.outChannels]);
      const uncond = g.scoped(
        "uncond/",
        () => this.transformer.buildForward(g, layout.textRows, imageRows, { ...fwd.inputs, ctx: ctxU, output: vU, f16 }),
      );
      forwards.push({ forward: "uncond", scope: "uncond/", attention: uncond.attention });
      const diff = g.activation("pipe.cfg_diff", [imageRows, cfg.outChannels]);
      const minusOne = g.constant("pipe.minus_one", [1], "f32", Float32Array.of(-1));
      elementwiseNode(g, "pipe.cfg_diff", { op: "gated_sum", a: vU, b: minusOne, c: velocity, out: diff, cols: 1 });
      guidedVelocity = g.activation("pipe.velocity_guided", [imageRows, cfg.outChannels]);
      const scale = g.constant("pipe.guidance", [1], "f32", Float32Array.of(guidance - 1));
      elementwiseNode(g, "pipe.cfg", { op: "gated_sum", a: diff, b: scale, c: velocity, out: guidedVelocity, cols: 1 });
    }
    const noiseView = g.view("pipe.latents", x, 0, [layout.noiseRows, channels]);
    const dt = g.input("pipe.dt", [1]);
    axpyInPlace(g, "pipe.euler", noiseView, g.view("pipe.velocity_noise", guidedVelocity, 0, [layout.noiseRows, cfg.outChannels]), dt);
    return { graph: g, forwards, taps };
  }

  /** Refuse, before any GPU work, a size whose largest step tensor exceeds what one binding of this device holds. */
  private checkFits(g: Graph, width: number, height: number): void {
    const limit = this.gpu.device.limits.maxStorageBufferBindingSize;
    let largest = g.tensors[0];
    for (const t of g.tensors) if (g.elementCount(t.id) > g.elementCount(largest.id)) largest = t;
    const bytes = g.elementCount(largest.id) * 4;
    if (bytes > limit) {
      throw new Error(
        `output size ${width}×${height}: the step's largest tensor (${largest.name}, ${(bytes / 2 ** 20).toFixed(0)} MiB) exceeds this ` +
          `device's largest binding (${(limit / 2 ** 20).toFixed(0)} MiB); choose a smaller size`,
      );
    }
  }

  /** Run one generation (prepare, then execute). */
  async generate(req: GenerateRequest): Promise<GenerateResult> {
    return await this.execute(await this.prepare(req));
  }

  /** The GPU work of a prepared run: encode references and the prompt, the denoising steps, decode. Once per run. */
  async execute(run: PreparedRun): Promise<GenerateResult> {
    const inner = internals.get(run);
    if (!inner) throw new Error("execute() takes a run returned by this pipeline's prepare()");
    if (executedRuns.has(run)) throw new Error("this prepared run was already executed; prepare the request again for another run");
    executedRuns.add(run);
    await this.transformer.upload();
    await this.vae.upload();
    const t0 = performance.now();
    const req = run.request;
    const { steps, refs, width, height, grid, refGrids, layout, guided } = run;
    const { step, bindings, cuts } = inner;
    const cfg = this.transformer.config;

    const tr = performance.now();
    const refTokens: Float32Array[] = [];
    for (const r of refs) refTokens.push(await this.vae.encodeImage(r.pixels, r.width, r.height));
    let vaePlanBytes = (await this.vae.gpuBytes()).plans;
    // The VAE's activations are large at high resolution: free them before the transformer's steps.
    await this.vae.releasePlans();
    const refsMs = performance.now() - tr;

    const tt = performance.now();
    const encoded = await this.encodePromptsTimed(guided ? [req.prompt, ""] : [req.prompt], sequenceLengthOf(req));
    const [cond, uncond] = encoded.embeddings;
    const textLoadMs = encoded.loadMs;
    const textMs = performance.now() - tt - textLoadMs;

    const noiseRows = layout.noiseRows;
    const channels = cfg.inChannels;
    const latents0 = req.initialLatents ?? initialNoise(req.noise ?? "kleinscope", req.seed ?? 0, width, height, channels);
    const imageRows = noiseRows + layout.refRows.reduce((a, b) => a + b, 0);

    const tp = performance.now();
    const plan = await Plan.compile(this.gpu, step.graph, this.transformer.store, { label: "step" });
    const planMs = performance.now() - tp;

    try {
      const schedule = flowSchedule(steps, noiseRows);
      const ids = concatIds(textIds(layout.textRows), imageIds(grid, refGrids));
      this.transformer.writeForwardInputs(plan, { ids });
      plan.write("pipe.ctx", cond.embeds);
      if (uncond) plan.write("pipe.ctx_uncond", uncond.embeds);
      const xInit = new Float32Array(imageRows * channels);
      xInit.set(latents0);
      let o = noiseRows * channels;
      for (const t of refTokens) {
        xInit.set(t, o);
        o += t.length;
      }
      plan.write("pipe.x", xInit);
      const cutWriter = new CutMaskWriter(cuts, sequenceLength(layout));
      const stepsMs: number[] = [];
      const stepLatents: Float32Array[] = [];
      for (let i = 0; i < steps; i++) {
        const ts = performance.now();
        this.transformer.writeForwardInputs(plan, { timestep: schedule.timesteps[i] });
        plan.write("pipe.dt", Float32Array.of(Math.fround(schedule.sigmas[i + 1] - schedule.sigmas[i])));
        cutWriter.beforeStep(plan, i);
        for (const b of bindings) b.beforeStep?.(plan, i);
        plan.submit();
        for (const b of bindings) await b.afterStep?.(plan, i);
        if (req.keepStepLatents) stepLatents.push(await plan.readRows("pipe.x", 0, noiseRows));
        else await this.gpu.device.queue.onSubmittedWorkDone();
        const ms = performance.now() - ts;
        stepsMs.push(ms);
        req.onStep?.({ step: i, steps, sigma: schedule.sigmas[i], ms });
      }
      const latents = await plan.readRows("pipe.x", 0, noiseRows);
      const planBytes = plan.allocatedBytes;
      // The step plan's activations are not needed for decoding: free them first.
      plan.destroy();
      const td = performance.now();
      const decoded = await this.vae.decodeTokens(latents, width, height);
      vaePlanBytes = Math.max(vaePlanBytes, (await this.vae.gpuBytes()).plans);
      await this.vae.releasePlans();
      const image = toUnitRange(decoded);
      const decodeMs = performance.now() - td;
      const outputs = new Map<Intervention, unknown>();
      bindings.forEach((b, i) => b.output && outputs.set(run.interventions[i], b.output()));
      return {
        image,
        width,
        height,
        latents,
        stepLatents,
        prompt: cond.prompt,
        layout,
        times: { textLoadMs, textMs, refsMs, planMs, stepsMs, decodeMs, totalMs: performance.now() - t0 },
        planBytes,
        vaePlanBytes,
        warnings: [...run.warnings],
        outputs,
      };
    } finally {
      plan.destroy();
    }
  }

  release(): void {
    this.textEncoder?.release();
    this.textEncoder = null;
    this.transformer.release();
    this.vae.release();
  }
}

/** Packed initial noise [(h/16)·(w/16), channels] of a seed. */
function initialNoise(source: NoiseSource, seed: number, width: number, height: number, channels: number): Float32Array {
  if (source === "kleinscope") return seededNoise(seed, (width / 16) * (height / 16), channels);
  return torchCpuNoise(seed, width, height, { channels, dtype: source === "torch-cpu-bf16" ? "bfloat16" : "float32" });
}

/** Most knockout rules one attention node takes at one step (one bit per rule per token). */
const MAX_CUTS_PER_BLOCK = 32;

/** The cuts active in `block` at `step`. */
function activeCuts(cuts: readonly AttentionCut[], block: number, step: number): AttentionCut[] {
  return cuts.filter((c) => c.block === block && c.steps.has(step));
}

/** Refuse, before any GPU work, a union of cuts that leaves some query of some block and step with no key. */
function checkCuts(cuts: readonly AttentionCut[], layout: RunLayout, blocks: readonly string[], steps: number): void {
  const S = sequenceLength(layout);
  const checked = new Set<string>();
  for (const block of new Set(cuts.map((c) => c.block))) {
    for (let step = 0; step < steps; step++) {
      const active = activeCuts(cuts, block, step);
      const key = `${block}|${active.map((c) => cuts.indexOf(c)).join(",")}`;
      if (!active.length || checked.has(key)) continue;
      checked.add(key);
      const names = [...new Set(active.map((c) => c.label))].join("; ");
      if (active.length > MAX_CUTS_PER_BLOCK) {
        throw new Error(`${names}: ${active.length} cuts at ${blocks[block]}, step ${step}; at most ${MAX_CUTS_PER_BLOCK} per block`);
      }
      const bits = groupMaskBits(S, S, active.map((c) => ({ queries: c.queries, keys: c.keys })));
      const dead = fullyMaskedQueries(S, S, { bits });
      if (dead.length) {
        throw new Error(
          `${names}: at ${blocks[block]}, step ${step}, ${dead.length} quer${dead.length === 1 ? "y" : "ies"} (first: sequence ` +
            `position ${dead[0]}) would have no key left to attend to; such a mask is undefined (softmax over nothing)`,
        );
      }
    }
  }
}

/** Give the attention node of every cut block, in every forward, per-token mask bits (one pair of state tensors per
 * block, shared by the forwards: both see the same cuts, as in the reference). */
function applyCuts(step: StepGraph, cuts: readonly AttentionCut[], S: number): void {
  for (const block of new Set(cuts.map((c) => c.block))) {
    const queryBits = step.graph.state(`knockout.${block}.query_bits`, [S], "u32");
    const keyBits = step.graph.state(`knockout.${block}.key_bits`, [S], "u32");
    for (const f of step.forwards) setAttentionGroupMask(step.graph, f.attention[block].node, { queryBits, keyBits });
  }
}

/** Writes each cut block's mask bits before a step, when the set of cuts active there changes. */
class CutMaskWriter {
  private readonly written = new Map<number, string>();
  constructor(private readonly cuts: readonly AttentionCut[], private readonly S: number) {}

  beforeStep(plan: Plan, step: number): void {
    for (const block of new Set(this.cuts.map((c) => c.block))) {
      const active = activeCuts(this.cuts, block, step);
      const key = active.map((c) => this.cuts.indexOf(c)).join(",");
      if (this.written.get(block) === key) continue;
      this.written.set(block, key);
      const bits = groupMaskBits(this.S, this.S, active.map((c) => ({ queries: c.queries, keys: c.keys })));
      plan.write(`knockout.${block}.query_bits`, bits.queryBits);
      plan.write(`knockout.${block}.key_bits`, bits.keyBits);
    }
  }
}
