// A prompt as FLUX.2 klein's text encoder receives it: Qwen3's chat template around one user message (generation
// prompt on, thinking off), tokenised, cut to or padded on the right to a fixed length with the pad token, and an
// attention mask (1 real token, 0 pad). The same as the reference pipeline's `_get_qwen3_prompt_embeds` input.
//
// Token groups, by position in the padded sequence:
// - content: tokens carrying the prompt's own characters. Found through character offsets: the template inserts
//   the prompt verbatim at a known span, and a token is content when its characters overlap that span. A token
//   that straddles the span's edge (the template's "\n" merged with a prompt that starts with line breaks, say)
//   counts as content, since it carries some of the prompt; for the reference prompts no token straddles and the
//   groups equal the reference's. Special-token strings typed in the prompt ("<|im_end|>") become those special
//   tokens, as in the reference (it matches added tokens anywhere in the text), and are content.
// - scaffold: every other real token (the chat template's own tokens).
// - pad: positions with mask 0.
// - padding: scaffold ∪ pad, every text position that is not content.
// Each content token also keeps its character span in the user's prompt (contentSpans), so that a part of the prompt
// given by characters — the instruction and the filler of a lengthened prompt — can be told apart by tokens
// (interventions/groups.ts, text[chars:i..j]).

import type { ChatTemplate } from "./template.ts";
import { type CharSpan, findLoneSurrogate, type Qwen3Tokenizer } from "./tokenizer.ts";

/** The text encoder's sequence length in FLUX.2 klein. */
export const QWEN3_PROMPT_LENGTH = 512;

export interface PromptGroups {
  content: number[];
  scaffold: number[];
  pad: number[];
  padding: number[];
  /** Per content token (aligned with `content`): its characters in the user's prompt, [start, end) in UTF-16 code
   * units, clipped to the prompt (a token straddling the template's edge keeps only its prompt part). */
  contentSpans?: CharSpan[];
  /** Length of the user's prompt in UTF-16 code units. */
  promptLength?: number;
}

export interface EncodedPrompt {
  inputIds: Int32Array;
  attentionMask: Int32Array;
  /** Count of mask-1 positions (all come first). */
  realTokens: number;
  /** The templated prompt had more tokens than the sequence length and was cut. */
  truncated: boolean;
  /** Set when `truncated`: says how many tokens were dropped, for the caller to show. */
  warning: string | null;
  templated: string;
  /** Where the prompt sits in `templated`, in UTF-16 code units, [start, end). */
  promptSpan: CharSpan;
  /** Character span in `templated` of each real token. */
  offsets: CharSpan[];
  groups: PromptGroups;
}

export interface EncodePromptOptions {
  maxLength?: number;
}

export function encodePrompt(
  tokenizer: Qwen3Tokenizer,
  template: ChatTemplate,
  prompt: string,
  options: EncodePromptOptions = {},
): EncodedPrompt {
  const { maxLength = QWEN3_PROMPT_LENGTH } = options;
  if (!Number.isInteger(maxLength) || maxLength < 1) {
    throw new Error(`encodePrompt: maxLength must be a positive integer, got ${maxLength}`);
  }
  const bad = findLoneSurrogate(prompt);
  if (bad >= 0) {
    const unit = prompt.charCodeAt(bad).toString(16).toUpperCase();
    throw new Error(`encodePrompt: the prompt has a lone UTF-16 surrogate U+${unit} at index ${bad}; it is not valid Unicode text`);
  }

  const { templated, promptStart, promptEnd } = template.renderUserPrompt(prompt, { addGenerationPrompt: true, enableThinking: false });
  const encoding = tokenizer.encode(templated);
  const total = encoding.ids.length;
  const realTokens = Math.min(total, maxLength);
  const truncated = total > maxLength;

  const inputIds = new Int32Array(maxLength).fill(tokenizer.padTokenId);
  const attentionMask = new Int32Array(maxLength);
  const groups: PromptGroups = { content: [], scaffold: [], pad: [], padding: [], contentSpans: [], promptLength: promptEnd - promptStart };
  for (let i = 0; i < realTokens; i++) {
    inputIds[i] = encoding.ids[i];
    attentionMask[i] = 1;
    const [start, end] = encoding.offsets[i];
    const overlapsPrompt = start < promptEnd && end > promptStart;
    (overlapsPrompt ? groups.content : groups.scaffold).push(i);
    if (overlapsPrompt) groups.contentSpans!.push([Math.max(start, promptStart) - promptStart, Math.min(end, promptEnd) - promptStart]);
    else groups.padding.push(i);
  }
  for (let i = realTokens; i < maxLength; i++) {
    groups.pad.push(i);
    groups.padding.push(i);
  }

  let warning: string | null = null;
  if (truncated) {
    const droppedPromptTokens = encoding.offsets.slice(maxLength).filter(([start, end]) => start < promptEnd && end > promptStart).length;
    warning = `prompt truncated: the templated prompt has ${total} tokens and the text encoder takes ${maxLength}; ` +
      `the last ${total - maxLength} are dropped, ${droppedPromptTokens} of them from the prompt itself`;
  }
  return {
    inputIds,
    attentionMask,
    realTokens,
    truncated,
    warning,
    templated,
    promptSpan: [promptStart, promptEnd],
    offsets: encoding.offsets.slice(0, realTokens),
    groups,
  };
}
