// FLUX.2 klein text-to-image and in-context editing: prompt → embeddings; references → tokens; per step one
// transformer forward over [text ; noise ; references] with the Euler update on the GPU; decode.
// Interventions rewrite the step graph once; the step loop only writes σ-dependent inputs and submits.

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
import { Qwen3TextEncoder } from "./qwen3/text_encoder.ts";
import { type EncodedPrompt, encodePrompt, QWEN3_PROMPT_LENGTH } from "./qwen3/prompt.ts";
import { loadQwen3Tokenizer } from "./qwen3/tokenizer.ts";
import { loadChatTemplate } from "./qwen3/template.ts";
import { Vae } from "./vae/vae.ts";
import { loadImage, preprocessReference, toUnitRange } from "./images.ts";
import type { Intervention, RunContext } from "../interventions/intervention.ts";
import type { RunLayout } from "../interventions/groups.ts";

export interface ReferenceImage {
  /** Where it came from (for messages and specs). */
  source: string;
  /** 3×h×w in [−1, 1], already cropped to multiples of 16. */
  pixels: Float32Array;
  width: number;
  height: number;
}

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
  seed?: number;
  /** Initial noise, packed tokens [(h/16)·(w/16), channels]; overrides the seed. */
  initialLatents?: Float32Array;
  interventions?: Intervention[];
  /** Keep the latents after every step (costs one readback per step). */
  keepStepLatents?: boolean;
  /** Multiply in f16 in the transformer blocks' projections (needs shader-f16): about 1e-3 relative error per
   * product; on an H100 no faster than f32 (README, performance). */
  f16?: boolean;
  onStep?: (info: StepInfo) => void;
}

/** A run checked and laid out on the CPU, ready for the GPU. */
export interface PreparedRun {
  request: GenerateRequest;
  steps: number;
  guidance: number;
  refs: ReferenceImage[];
  width: number;
  height: number;
  grid: Grid;
  refGrids: Grid[];
  layout: RunLayout;
  prompt: EncodedPrompt;
  interventions: Intervention[];
  context(attention: RunContext["attention"]): RunContext;
}

export interface StepInfo {
  step: number;
  steps: number;
  sigma: number;
  ms: number;
}

export interface StageTimes {
  textMs: number;
  refsMs: number;
  planMs: number;
  stepsMs: number[];
  decodeMs: number;
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
}

export interface PipelineOptions {
  /** Keep the text encoder on the GPU between runs (default: released after each encode). */
  keepTextEncoder?: boolean;
  log?: (line: string) => void;
}

interface ModelIndex {
  is_distilled?: boolean;
}

/** Output sizes must be multiples of 16 (two 2× VAE stages and 2×2 patches). */
export function checkSize(width: number, height: number, where: string): void {
  for (const [name, v] of [["width", width], ["height", height]] as const) {
    if (!Number.isInteger(v) || v < 16 || v % 16) {
      throw new Error(`${where}: ${name} ${v} must be a positive multiple of 16 (try ${Math.max(16, Math.round(v / 16) * 16)})`);
    }
  }
}

export class Flux2KleinPipeline {
  private textEncoder: Qwen3TextEncoder | null = null;
  private readonly embedCache = new Map<string, { embeds: Float32Array; prompt: EncodedPrompt }>();

  private constructor(
    readonly gpu: GpuContext,
    readonly dir: string,
    readonly transformer: Flux2Transformer,
    readonly vae: Vae,
    readonly distilled: boolean,
    private readonly options: PipelineOptions,
  ) {}

  /** Load a pipeline folder laid out like the published repositories (model_index.json, transformer/, vae/, …). */
  static async load(dir: string, options: PipelineOptions & { transformerPath?: string } = {}): Promise<Flux2KleinPipeline> {
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
    applyDeviceTuning(gpu);
    const transformer = await Flux2Transformer.load(gpu, options.transformerPath ?? join(dir, "transformer"));
    const vae = await Vae.load(gpu, join(dir, "vae"));
    return new Flux2KleinPipeline(gpu, dir, transformer, vae, index.is_distilled !== false, options);
  }

  blockNames(): string[] {
    return this.transformer.blockNames();
  }

  /** Prompt embeddings [512, joint_dim] (cached per prompt). */
  async encodePrompt(prompt: string): Promise<{ embeds: Float32Array; prompt: EncodedPrompt }> {
    const hit = this.embedCache.get(prompt);
    if (hit) return hit;
    if (!this.textEncoder) this.textEncoder = await Qwen3TextEncoder.load(this.gpu, this.dir);
    try {
      const r = await this.textEncoder.encode(prompt);
      if (r.prompt.warning) this.options.log?.(`warning: ${r.prompt.warning}`);
      if (this.embedCache.size >= 8) this.embedCache.delete(this.embedCache.keys().next().value!);
      this.embedCache.set(prompt, r);
      return r;
    } finally {
      if (!this.options.keepTextEncoder) {
        this.textEncoder.release();
        this.textEncoder = null;
      }
    }
  }

  /** Load and preprocess a reference image as the reference pipeline does. */
  async loadReference(path: string): Promise<ReferenceImage> {
    const img = await loadImage(path);
    const pre = preprocessReference(img, path);
    return { source: path, pixels: pre.pixels, width: pre.width, height: pre.height };
  }

  /** Tokenise a prompt on the CPU (no GPU work): ids, mask and token groups. */
  async tokenize(prompt: string): Promise<EncodedPrompt> {
    const dir = join(this.dir, "tokenizer");
    const [tokenizer, template] = await Promise.all([loadQwen3Tokenizer(dir), loadChatTemplate(dir)]);
    return encodePrompt(tokenizer, template, prompt, { maxLength: QWEN3_PROMPT_LENGTH });
  }

  /** Everything about a run that can be known without the GPU: references decoded, the prompt tokenised, sizes,
   * steps and the sequence layout — and every intervention validated against it. Bad input fails here. */
  async prepare(req: GenerateRequest): Promise<PreparedRun> {
    const steps = req.steps ?? (this.distilled ? 4 : 50);
    if (!Number.isInteger(steps) || steps < 1) throw new Error(`steps must be a positive integer, got ${steps}`);
    const guidance = req.guidance ?? (this.distilled ? 1 : 4);
    if (!Number.isFinite(guidance)) throw new Error(`guidance must be a number, got ${guidance}`);
    if (this.distilled && guidance !== 1) {
      throw new Error(`guidance ${guidance}: this checkpoint is guidance-distilled (model_index.json is_distilled); leave guidance at 1`);
    }
    if (req.f16 && !this.gpu.hasF16) {
      throw new Error(`f16: adapter ${this.gpu.adapterDescription} offers no shader-f16; run without f16`);
    }
    const refs: ReferenceImage[] = [];
    for (const r of req.refs ?? []) refs.push(typeof r === "string" ? await this.loadReference(r) : r);
    const width = req.width ?? refs[0]?.width ?? 1024;
    const height = req.height ?? refs[0]?.height ?? 1024;
    checkSize(width, height, "output size");
    const prompt = await this.tokenize(req.prompt);
    const grid: Grid = { h: height / 16, w: width / 16 };
    const refGrids = refs.map((r) => ({ h: r.height / 16, w: r.width / 16 }));
    const layout: RunLayout = {
      textRows: prompt.inputIds.length,
      noiseRows: grid.h * grid.w,
      refRows: refGrids.map((g) => g.h * g.w),
      prompt: prompt.groups,
    };
    const channels = this.transformer.config.inChannels;
    if (req.initialLatents && req.initialLatents.length !== layout.noiseRows * channels) {
      throw new Error(`initial latents hold ${req.initialLatents.length} values; ${width}×${height} needs ${layout.noiseRows}×${channels}`);
    }
    const interventions = req.interventions ?? [];
    const context = (attention: RunContext["attention"]): RunContext => ({
      layout,
      blocks: this.blockNames(),
      steps,
      attention,
      warn: (m) => (this.options.log ?? console.warn)(`warning: ${m}`),
    });
    for (const iv of interventions) iv.validate(context([]));
    return { request: req, steps, guidance, refs, width, height, grid, refGrids, layout, prompt, interventions, context };
  }

  /** Run one generation. */
  async generate(req: GenerateRequest): Promise<GenerateResult> {
    const t0 = performance.now();
    const run = await this.prepare(req);
    const { steps, guidance, refs, width, height, grid, refGrids, layout, interventions } = run;
    const cfg = this.transformer.config;
    const useCfg = !this.distilled && guidance !== 1;

    const tr = performance.now();
    const refTokens: Float32Array[] = [];
    for (const r of refs) refTokens.push(await this.vae.encodeImage(r.pixels, r.width, r.height));
    let vaePlanBytes = (await this.vae.gpuBytes()).plans;
    // The VAE's activations are large at high resolution: free them before the transformer's steps.
    await this.vae.releasePlans();
    const refsMs = performance.now() - tr;

    const tt = performance.now();
    const cond = await this.encodePrompt(req.prompt);
    const uncond = useCfg ? await this.encodePrompt("") : null;
    const textMs = performance.now() - tt;

    const noiseRows = layout.noiseRows;
    const channels = cfg.inChannels;
    const latents0 = req.initialLatents ?? seededNoise(req.seed ?? 0, noiseRows, channels);
    const imageRows = noiseRows + layout.refRows.reduce((a, b) => a + b, 0);

    // The step plan: forward(s) + Euler update, with every intervention's rewrite applied.
    const tp = performance.now();
    const g = new Graph();
    const x = g.state("pipe.x", [imageRows, channels]);
    const ctx = g.state("pipe.ctx", [layout.textRows, cfg.jointAttentionDim]);
    const velocity = g.state("pipe.velocity", [imageRows, cfg.outChannels]);
    const fwd = this.transformer.buildForward(g, layout.textRows, imageRows, { x, ctx, output: velocity, f16: req.f16 });
    let guided = velocity;
    if (useCfg) {
      // Unconditional forward on the same inputs (names under "uncond/"), then v = v_c + (g − 1)·(v_c − v_u).
      const ctxU = g.state("pipe.ctx_uncond", [layout.textRows, cfg.jointAttentionDim]);
      const vU = g.state("pipe.velocity_uncond", [imageRows, cfg.outChannels]);
      g.scoped(
        "uncond/",
        () => this.transformer.buildForward(g, layout.textRows, imageRows, { ...fwd.inputs, ctx: ctxU, output: vU, f16: req.f16 }),
      );
      const diff = g.activation("pipe.cfg_diff", [imageRows, cfg.outChannels]);
      const minusOne = g.constant("pipe.minus_one", [1], "f32", Float32Array.of(-1));
      elementwiseNode(g, "pipe.cfg_diff", { op: "gated_sum", a: vU, b: minusOne, c: velocity, out: diff, cols: 1 });
      guided = g.activation("pipe.velocity_guided", [imageRows, cfg.outChannels]);
      const scale = g.constant("pipe.guidance", [1], "f32", Float32Array.of(guidance - 1));
      elementwiseNode(g, "pipe.cfg", { op: "gated_sum", a: diff, b: scale, c: velocity, out: guided, cols: 1 });
    }
    const noiseView = g.view("pipe.latents", x, 0, [noiseRows, channels]);
    const dt = g.input("pipe.dt", [1]);
    axpyInPlace(g, "pipe.euler", noiseView, g.view("pipe.velocity_noise", guided, 0, [noiseRows, cfg.outChannels]), dt);
    const runCtx = run.context(fwd.attention);
    for (const iv of interventions) iv.validate(runCtx);
    for (const iv of interventions) iv.rewrite(g, runCtx);
    const plan = await Plan.compile(this.gpu, g, this.transformer.store, { label: "step" });
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
      const stepsMs: number[] = [];
      const stepLatents: Float32Array[] = [];
      for (let i = 0; i < steps; i++) {
        const ts = performance.now();
        this.transformer.writeForwardInputs(plan, { timestep: schedule.timesteps[i] });
        plan.write("pipe.dt", Float32Array.of(Math.fround(schedule.sigmas[i + 1] - schedule.sigmas[i])));
        for (const iv of interventions) iv.beforeStep?.(plan, i);
        plan.submit();
        for (const iv of interventions) await iv.afterStep?.(plan, i);
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
      return {
        image,
        width,
        height,
        latents,
        stepLatents,
        prompt: cond.prompt,
        layout,
        times: { textMs, refsMs, planMs, stepsMs, decodeMs, totalMs: performance.now() - t0 },
        planBytes,
        vaePlanBytes,
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
