// FLUX.2 klein's text encoder: prompt → chat template → tokens padded to 512 → Qwen3 (its first 27 layers, and the
// final norm only for a 27-layer model) → prompt embeddings [512, 3·hidden], as the reference pipeline's
// `_get_qwen3_prompt_embeds` computes them.
//
// The plan is compiled once at load and replayed for every prompt: token ids and the padding mask are per-run
// inputs (the mask is an attention group-mask rule, not a baked key length), so prompts of any real length reuse it.
// Encodes are serialised, since they share the plan's buffers.

import { join } from "node:path";
import type { GpuContext } from "../../runtime/device.ts";
import { Graph } from "../../runtime/graph.ts";
import { Plan } from "../../runtime/executor.ts";
import { Checkpoint } from "../../weights/checkpoint.ts";
import type { UploadProgress, WeightStore } from "../../weights/store.ts";
import { loadQwen3Tokenizer, type Qwen3Tokenizer } from "./tokenizer.ts";
import { type ChatTemplate, loadChatTemplate } from "./template.ts";
import { type EncodedPrompt, encodePrompt, QWEN3_PROMPT_LENGTH } from "./prompt.ts";
import { loadQwen3Config, promptEmbedWidth, type Qwen3Config } from "./config.ts";
import { uploadQwen3Weights } from "./weights.ts";
import { buildQwen3Encoder, QWEN3_TENSORS, qwen3PadKeyBits } from "./encoder.ts";

export interface TextEncoderLoadOptions {
  /** Sequence length of the plan (default 512, FLUX.2 klein's). */
  seqLen?: number;
  onProgress?: (p: UploadProgress) => void;
}

export interface TextEncoding {
  /** [seqLen, 3·hidden] row-major. */
  embeds: Float32Array;
  prompt: EncodedPrompt;
}

export interface TextEncoderMemory {
  /** GPU bytes of the uploaded weights. */
  weights: number;
  /** GPU bytes the plan allocated: activation pool, inputs, constants and the output. */
  plan: number;
  /** Both: the encoder's peak GPU footprint (the plan holds its buffers for its whole life). */
  total: number;
}

export class Qwen3TextEncoder {
  private queue: Promise<unknown> = Promise.resolve();
  private released = false;

  private constructor(
    readonly config: Qwen3Config,
    readonly tokenizer: Qwen3Tokenizer,
    readonly template: ChatTemplate,
    readonly seqLen: number,
    private readonly store: WeightStore,
    private readonly plan: Plan,
    /** The folder it was loaded from. */
    readonly source: string,
  ) {}

  /** Load from a pipeline folder holding `text_encoder/` (config.json + safetensors, sharded or not) and `tokenizer/`. */
  static async load(gpu: GpuContext, pipelineDir: string, options: TextEncoderLoadOptions = {}): Promise<Qwen3TextEncoder> {
    const seqLen = options.seqLen ?? QWEN3_PROMPT_LENGTH;
    const encoderDir = join(pipelineDir, "text_encoder");
    const tokenizerDir = join(pipelineDir, "tokenizer");
    const config = await loadQwen3Config(join(encoderDir, "config.json"));
    const [tokenizer, template] = await Promise.all([loadQwen3Tokenizer(tokenizerDir), loadChatTemplate(tokenizerDir)]);
    if (tokenizer.padTokenId >= config.vocabSize) {
      throw new Error(
        `${tokenizerDir}: pad token id ${tokenizer.padTokenId} is outside the text encoder's vocabulary of ${config.vocabSize}`,
      );
    }
    const ckpt = await Checkpoint.open(encoderDir);
    let store: WeightStore;
    let dtypes: Map<string, "bf16" | "f32">;
    try {
      ({ store, dtypes } = await uploadQwen3Weights(gpu, ckpt, config, { where: encoderDir, onProgress: options.onProgress }));
    } finally {
      ckpt.close();
    }
    try {
      const g = new Graph();
      buildQwen3Encoder(g, config, { seqLen, weightDType: (name) => dtypes.get(name) ?? "bf16" });
      const plan = await Plan.compile(gpu, g, store, { label: "qwen3" });
      return new Qwen3TextEncoder(config, tokenizer, template, seqLen, store, plan, pipelineDir);
    } catch (e) {
      store.release();
      throw e;
    }
  }

  /** Template, tokenise and pad `prompt`, then run the encoder. */
  async encode(prompt: string): Promise<TextEncoding> {
    this.checkLive();
    const encoded = encodePrompt(this.tokenizer, this.template, prompt, { maxLength: this.seqLen });
    const embeds = await this.encodeTokens(encoded.inputIds, encoded.attentionMask);
    return { embeds, prompt: encoded };
  }

  /** Run the encoder on token ids and an attention mask (1 real, 0 pad) of seqLen entries each; the first position
   * must be real, so that every query sees at least one key. Returns [seqLen, 3·hidden]. */
  encodeTokens(inputIds: ArrayLike<number>, attentionMask: ArrayLike<number>): Promise<Float32Array> {
    this.checkLive();
    const S = this.seqLen;
    if (inputIds.length !== S || attentionMask.length !== S) {
      throw new Error(`text encoder: expected ${S} token ids and ${S} mask entries, got ${inputIds.length} and ${attentionMask.length}`);
    }
    const ids = new Uint32Array(S);
    for (let i = 0; i < S; i++) {
      const id = inputIds[i];
      if (!Number.isInteger(id) || id < 0 || id >= this.config.vocabSize) {
        throw new Error(`text encoder: token id ${id} at position ${i} is outside the vocabulary [0, ${this.config.vocabSize})`);
      }
      const m = attentionMask[i];
      if (m !== 0 && m !== 1) throw new Error(`text encoder: attention mask entry ${m} at position ${i} is neither 0 nor 1`);
      ids[i] = id;
    }
    if (attentionMask[0] !== 1) {
      throw new Error("text encoder: the attention mask starts with a pad position; the first query would see no key (use right padding)");
    }
    const bits = qwen3PadKeyBits(attentionMask);
    const run = this.queue.then(async () => {
      this.checkLive();
      this.plan.write(QWEN3_TENSORS.inputIds, ids);
      this.plan.write(QWEN3_TENSORS.padKeyBits, bits);
      await this.plan.run();
      return await this.plan.read(QWEN3_TENSORS.promptEmbeds);
    });
    this.queue = run.catch(() => {});
    return run;
  }

  /** Width of an embedding row (3·hidden). */
  embedWidth(): number {
    return promptEmbedWidth(this.config);
  }

  /** GPU memory held while loaded. */
  gpuBytes(): TextEncoderMemory {
    const weights = this.released ? 0 : this.store.bytes();
    const plan = this.released ? 0 : this.plan.allocatedBytes;
    return { weights, plan, total: weights + plan };
  }

  /** Free the weights and the plan's buffers; the encoder refuses further use. */
  release(): void {
    if (this.released) return;
    this.released = true;
    this.plan.destroy();
    this.store.release();
  }

  private checkLive(): void {
    if (this.released) throw new Error(`the text encoder loaded from ${this.source} was released; load it again`);
  }
}

// The pipeline and most callers know it as the text encoder. Note that importing it under this name shadows the
// global (web) TextEncoder in the importing module.
export { Qwen3TextEncoder as TextEncoder };
