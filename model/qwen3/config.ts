// Qwen3 text-encoder configuration (transformers' text_encoder/config.json), validated before anything is built:
// every field's type and range (QWEN3_LIMITS) and the consistency between them. Only what FLUX.2 klein's prompt
// embeddings need is kept: the first 27 decoder layers of a dense Qwen3 with full causal attention and plain
// (unscaled) RoPE, and the final norm when the model has exactly 27 layers (see qwen3AppliesFinalNorm).

import { readJson } from "../../weights/checkpoint.ts";
import { printable } from "../../runtime/printable.ts";

/** HF `hidden_states` indices concatenated into FLUX.2 klein's prompt embeddings (index 0 = the embeddings, index
 * i < num_hidden_layers = the output of decoder layer i - 1; index num_hidden_layers = the last layer's output
 * after the final norm, as transformers records it). */
export const QWEN3_EMBED_HIDDEN_STATES = [9, 18, 27] as const;

/** Decoder layers the encoder runs: hidden_states[27] is the output of the 27th layer; the rest are never loaded. */
export const QWEN3_LAYERS_USED = Math.max(...QWEN3_EMBED_HIDDEN_STATES);

/** Bounds on every size: far above any Qwen3 (8B: hidden 4096, 36 layers, 32 heads of 128, vocabulary 151,936),
 * low enough that a mistyped or hostile config is refused before anything is allocated for it. */
export const QWEN3_LIMITS = {
  hiddenSize: 65536,
  intermediateSize: 262144,
  layers: 1024,
  heads: 1024,
  headDim: 1024,
  vocabSize: 1 << 24,
  ropeTheta: 1e12,
} as const;

export interface Qwen3Config {
  hiddenSize: number;
  intermediateSize: number;
  /** Layers in the checkpoint (at least QWEN3_LAYERS_USED). */
  numLayers: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  vocabSize: number;
  rmsNormEps: number;
  ropeTheta: number;
}

const REQUIRED = ["hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size", "rms_norm_eps"];

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function describe(v: unknown): string {
  if (v === undefined) return "nothing";
  const s = JSON.stringify(v) ?? String(v);
  return printable(s.length > 60 ? `${s.slice(0, 57)}...` : s);
}

/** Parse and check a config object; `where` names the file for messages. Every problem is reported at once, in one line. */
export function parseQwen3Config(raw: unknown, where: string): Qwen3Config {
  if (!isObject(raw)) throw new Error(`${printable(where)}: expected a JSON object of Qwen3 settings, got ${describe(raw)}`);
  const L = QWEN3_LIMITS;
  const problems: string[] = [];
  const missing = REQUIRED.filter((k) => raw[k] === undefined || raw[k] === null);
  if (missing.length) problems.push(`missing keys: ${missing.join(", ")}`);

  /** An integer in [min, max]; absent keys fall back (or were reported missing). */
  const intField = (key: string, min: number, max: number, fallback?: number): number => {
    const v = raw[key] ?? fallback;
    if (v === undefined) return min; // already reported as missing
    if (typeof v !== "number" || !Number.isInteger(v) || v < min || v > max) {
      problems.push(`${key} must be an integer from ${min} to ${max} (got ${describe(raw[key])})`);
      return min;
    }
    return v;
  };
  const flag = (key: string) => {
    if (raw[key] !== undefined && raw[key] !== null && typeof raw[key] !== "boolean") {
      problems.push(`${key} must be true or false (got ${describe(raw[key])})`);
    }
  };

  if (raw.model_type !== undefined && raw.model_type !== "qwen3") {
    problems.push(`model_type is ${describe(raw.model_type)}, expected "qwen3" (a dense Qwen3 decoder)`);
  }
  const hiddenSize = intField("hidden_size", 1, L.hiddenSize);
  const intermediateSize = intField("intermediate_size", 1, L.intermediateSize);
  const numLayers = intField("num_hidden_layers", 1, L.layers);
  const heads = intField("num_attention_heads", 1, L.heads);
  // transformers' defaults: as many key/value heads as query heads, head_dim = hidden_size / heads.
  const kvHeads = intField("num_key_value_heads", 1, L.heads, heads);
  let headDim: number;
  if (raw.head_dim === undefined || raw.head_dim === null) {
    headDim = Math.floor(hiddenSize / heads);
    if (headDim * heads !== hiddenSize) {
      problems.push(`head_dim is not given and hidden_size ${hiddenSize} is not a multiple of num_attention_heads ${heads}`);
    }
  } else {
    headDim = intField("head_dim", 1, L.headDim);
  }
  const vocabSize = intField("vocab_size", 1, L.vocabSize);

  if (heads % kvHeads !== 0) {
    problems.push(`num_attention_heads ${heads} is not a multiple of num_key_value_heads ${kvHeads} (grouped-query attention needs it)`);
  }
  if (headDim % 4 !== 0) problems.push(`head_dim ${headDim} must be a multiple of 4 (RoPE pairs halves; attention reads vec4)`);
  if (numLayers < QWEN3_LAYERS_USED) {
    problems.push(
      `num_hidden_layers is ${numLayers}, but FLUX.2 klein reads hidden_states[${QWEN3_EMBED_HIDDEN_STATES.join(", ")}] and needs ` +
        `at least ${QWEN3_LAYERS_USED} layers`,
    );
  }

  const eps = raw.rms_norm_eps;
  if (eps !== undefined && eps !== null && (typeof eps !== "number" || !(eps > 0) || !(eps < 1))) {
    problems.push(`rms_norm_eps must be a number greater than 0 and less than 1 (got ${describe(eps)})`);
  }
  if (raw.hidden_act !== undefined && raw.hidden_act !== "silu") {
    problems.push(`hidden_act ${describe(raw.hidden_act)} is not supported (Qwen3 uses "silu")`);
  }
  for (const key of ["attention_bias", "use_sliding_window", "tie_word_embeddings", "use_cache"]) flag(key);
  if (raw.attention_bias === true) {
    problems.push("attention_bias=true is not supported: this encoder has no q/k/v/o biases (Qwen3 checkpoints have none)");
  }
  if (raw.use_sliding_window === true) {
    problems.push("use_sliding_window=true is not supported: the encoder implements full causal attention only");
  }
  if (raw.layer_types !== undefined && raw.layer_types !== null) {
    const types = raw.layer_types;
    if (!Array.isArray(types)) problems.push(`layer_types must be a list (got ${describe(types)})`);
    else {
      if (types.length !== numLayers) problems.push(`layer_types has ${types.length} entries, num_hidden_layers is ${numLayers}`);
      const other = types.slice(0, QWEN3_LAYERS_USED).findIndex((t) => t !== "full_attention");
      if (other >= 0) problems.push(`layer_types[${other}] is ${describe(types[other])}; only "full_attention" is supported`);
    }
  }

  // RoPE: transformers 4.x has rope_theta + rope_scaling; 5.x has rope_parameters {rope_theta, rope_type}.
  let ropeTheta = 1;
  const params = raw.rope_parameters;
  const scaling = raw.rope_scaling;
  let thetaValue: unknown = raw.rope_theta;
  let ropeType: unknown = "default";
  if (params !== undefined && params !== null) {
    if (!isObject(params)) problems.push(`rope_parameters must be an object (got ${describe(params)})`);
    else {
      thetaValue = params.rope_theta ?? thetaValue;
      ropeType = params.rope_type ?? params.type ?? "default";
    }
  }
  if (scaling !== undefined && scaling !== null) {
    if (!isObject(scaling)) problems.push(`rope_scaling must be an object or null (got ${describe(scaling)})`);
    else ropeType = scaling.rope_type ?? scaling.type ?? ropeType;
  }
  if (ropeType !== "default") {
    problems.push(`RoPE type ${describe(ropeType)} (rope_scaling / rope_parameters) is not supported; only "default" is`);
  }
  if (thetaValue === undefined || thetaValue === null) {
    problems.push("missing keys: rope_theta (or rope_parameters.rope_theta)");
  } else if (typeof thetaValue !== "number" || !(thetaValue > 0) || !(thetaValue <= L.ropeTheta)) {
    problems.push(`rope_theta must be a number greater than 0 and at most ${L.ropeTheta} (got ${describe(thetaValue)})`);
  } else {
    ropeTheta = thetaValue;
  }

  if (problems.length) throw new Error(`${printable(where)}: invalid Qwen3 text encoder config: ${problems.join("; ")}`);
  return { hiddenSize, intermediateSize, numLayers, heads, kvHeads, headDim, vocabSize, rmsNormEps: eps as number, ropeTheta };
}

/** Whether the prompt embeddings read the model's last hidden state (an index equal to the layer count), which
 * transformers records after the final norm: true for a 27-layer model, false for the published 36-layer one. */
export function qwen3AppliesFinalNorm(cfg: Qwen3Config): boolean {
  return (QWEN3_EMBED_HIDDEN_STATES as readonly number[]).includes(cfg.numLayers);
}

/** Read and check `path` (a text_encoder/config.json). */
export async function loadQwen3Config(path: string): Promise<Qwen3Config> {
  return parseQwen3Config(await readJson(path), path);
}

/** Width of one prompt-embedding row: the hidden states of QWEN3_EMBED_HIDDEN_STATES side by side. */
export function promptEmbedWidth(cfg: Qwen3Config): number {
  return QWEN3_EMBED_HIDDEN_STATES.length * cfg.hiddenSize;
}
