// Qwen3 text-encoder configuration (transformers' text_encoder/config.json), validated before anything is built.
// Only what FLUX.2 klein's prompt embeddings need is kept: the first 27 decoder layers of a dense Qwen3 with
// full causal attention and plain (unscaled) RoPE.

import { readJson } from "../../weights/checkpoint.ts";

/** HF `hidden_states` indices concatenated into FLUX.2 klein's prompt embeddings (index 0 = the embeddings, index
 * i = the output of decoder layer i - 1; no final norm). */
export const QWEN3_EMBED_HIDDEN_STATES = [9, 18, 27] as const;

/** Decoder layers the encoder runs: hidden_states[27] is the output of the 27th layer; the rest are never loaded. */
export const QWEN3_LAYERS_USED = Math.max(...QWEN3_EMBED_HIDDEN_STATES);

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

/** Parse and check a config object; `where` names the file for messages. Every problem is reported at once. */
export function parseQwen3Config(raw: unknown, where: string): Qwen3Config {
  if (!isObject(raw)) throw new Error(`${where}: expected a JSON object, got ${Array.isArray(raw) ? "an array" : JSON.stringify(raw)}`);
  const problems: string[] = [];
  const missing = REQUIRED.filter((k) => raw[k] === undefined || raw[k] === null);
  if (missing.length) problems.push(`missing keys: ${missing.join(", ")}`);

  const positiveInt = (key: string, fallback?: number): number => {
    const v = raw[key] ?? fallback;
    if (v === undefined) return 1; // already reported as missing
    if (typeof v !== "number" || !Number.isInteger(v) || v <= 0) {
      problems.push(`${key} must be a positive integer (got ${JSON.stringify(raw[key])})`);
      return 1;
    }
    return v;
  };

  if (raw.model_type !== undefined && raw.model_type !== "qwen3") {
    problems.push(`model_type is ${JSON.stringify(raw.model_type)}, expected "qwen3" (a dense Qwen3 decoder)`);
  }
  const hiddenSize = positiveInt("hidden_size");
  const intermediateSize = positiveInt("intermediate_size");
  const numLayers = positiveInt("num_hidden_layers");
  const heads = positiveInt("num_attention_heads");
  // transformers' defaults: as many key/value heads as query heads, head_dim = hidden_size / heads.
  const kvHeads = positiveInt("num_key_value_heads", heads);
  let headDim: number;
  if (raw.head_dim === undefined || raw.head_dim === null) {
    headDim = Math.floor(hiddenSize / heads);
    if (headDim * heads !== hiddenSize) {
      problems.push(`head_dim is not given and hidden_size ${hiddenSize} is not a multiple of num_attention_heads ${heads}`);
    }
  } else {
    headDim = positiveInt("head_dim");
  }
  const vocabSize = positiveInt("vocab_size");

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
  if (eps !== undefined && eps !== null && (typeof eps !== "number" || !(eps > 0) || !Number.isFinite(eps))) {
    problems.push(`rms_norm_eps must be a positive number (got ${JSON.stringify(eps)})`);
  }
  if (raw.hidden_act !== undefined && raw.hidden_act !== "silu") {
    problems.push(`hidden_act ${JSON.stringify(raw.hidden_act)} is not supported (Qwen3 uses "silu")`);
  }
  if (raw.attention_bias === true) {
    problems.push("attention_bias=true is not supported: this encoder has no q/k/v/o biases (Qwen3 checkpoints have none)");
  }
  if (raw.use_sliding_window === true) {
    problems.push("use_sliding_window=true is not supported: the encoder implements full causal attention only");
  }
  if (Array.isArray(raw.layer_types)) {
    const other = (raw.layer_types as unknown[]).slice(0, QWEN3_LAYERS_USED).findIndex((t) => t !== "full_attention");
    if (other >= 0) {
      problems.push(
        `layer_types[${other}] is ${JSON.stringify((raw.layer_types as unknown[])[other])}; only "full_attention" is supported`,
      );
    }
  }

  // RoPE: transformers 4.x has rope_theta + rope_scaling; 5.x has rope_parameters {rope_theta, rope_type}.
  let ropeTheta = 1;
  const params = raw.rope_parameters;
  const scaling = raw.rope_scaling;
  let thetaValue: unknown = raw.rope_theta;
  let ropeType: unknown = "default";
  if (params !== undefined && params !== null) {
    if (!isObject(params)) problems.push(`rope_parameters must be an object (got ${JSON.stringify(params)})`);
    else {
      thetaValue = params.rope_theta ?? thetaValue;
      ropeType = params.rope_type ?? params.type ?? "default";
    }
  }
  if (scaling !== undefined && scaling !== null) {
    if (!isObject(scaling)) problems.push(`rope_scaling must be an object or null (got ${JSON.stringify(scaling)})`);
    else ropeType = scaling.rope_type ?? scaling.type ?? ropeType;
  }
  if (ropeType !== "default") {
    problems.push(`RoPE type ${JSON.stringify(ropeType)} (rope_scaling / rope_parameters) is not supported; only "default" is`);
  }
  if (thetaValue === undefined || thetaValue === null) {
    problems.push("missing keys: rope_theta (or rope_parameters.rope_theta)");
  } else if (typeof thetaValue !== "number" || !(thetaValue > 0) || !Number.isFinite(thetaValue)) {
    problems.push(`rope_theta must be a positive number (got ${JSON.stringify(thetaValue)})`);
  } else {
    ropeTheta = thetaValue;
  }

  if (problems.length) throw new Error(`${where}: invalid Qwen3 text encoder config:\n  - ${problems.join("\n  - ")}`);
  return { hiddenSize, intermediateSize, numLayers, heads, kvHeads, headDim, vocabSize, rmsNormEps: eps as number, ropeTheta };
}

/** Read and check `path` (a text_encoder/config.json). */
export async function loadQwen3Config(path: string): Promise<Qwen3Config> {
  return parseQwen3Config(await readJson(path), path);
}

/** Width of one prompt-embedding row: the hidden states of QWEN3_EMBED_HIDDEN_STATES side by side. */
export function promptEmbedWidth(cfg: Qwen3Config): number {
  return QWEN3_EMBED_HIDDEN_STATES.length * cfg.hiddenSize;
}
