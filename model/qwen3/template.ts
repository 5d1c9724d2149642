// Qwen3's chat template, rendered with @huggingface/jinja as the reference's `apply_chat_template(tokenize=False)`
// does: trim_blocks and lstrip_blocks on, the special tokens of tokenizer_config.json in the context, extra
// keyword arguments (here `enable_thinking`) passed through as variables.

import { resolve } from "node:path";
import { Template } from "npm:@huggingface/jinja@0.5.11";
import { readJson, tokenContent } from "./tokenizer.ts";

export interface ChatMessage {
  role: string;
  content: string;
}

export interface ChatTemplateOptions {
  /** Append the assistant header, as the text encoder is prompted (default true). */
  addGenerationPrompt?: boolean;
  /** Qwen3's switch; false adds the empty `<think>\n\n</think>\n\n` block FLUX.2 klein is conditioned with (default false). */
  enableThinking?: boolean;
}

/** A user prompt rendered as one user message, with where the prompt sits in the rendered text. */
export interface RenderedPrompt {
  templated: string;
  /** [promptStart, promptEnd) in UTF-16 code units of `templated` holds the prompt verbatim. */
  promptStart: number;
  promptEnd: number;
}

/** Stands in for the prompt to find where the template puts it; private-use characters no template produces. */
const PROMPT_SENTINEL = "\uE000kleinscope:prompt\uE001";

const SPECIAL_TOKEN_KEYS = ["bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"];

export class ChatTemplate {
  private readonly template: Template;
  private readonly specialTokens: Record<string, unknown>;

  /** `config` is tokenizer_config.json; its special tokens are visible to the template as in the reference. */
  constructor(readonly source: string, config: Record<string, unknown> = {}, readonly origin = "(in memory)") {
    try {
      this.template = new Template(source);
    } catch (e) {
      throw new Error(`chat template ${origin}: cannot parse: ${e instanceof Error ? e.message : String(e)}`);
    }
    this.specialTokens = {};
    for (const key of SPECIAL_TOKEN_KEYS) {
      const content = tokenContent(config[key]);
      if (content !== null) this.specialTokens[key] = content;
    }
    if (Array.isArray(config.additional_special_tokens)) {
      this.specialTokens.additional_special_tokens = config.additional_special_tokens.map(tokenContent);
    }
  }

  render(messages: ChatMessage[], options: ChatTemplateOptions = {}): string {
    const { addGenerationPrompt = true, enableThinking = false } = options;
    try {
      return this.template.render({
        ...this.specialTokens,
        messages,
        add_generation_prompt: addGenerationPrompt,
        enable_thinking: enableThinking,
      });
    } catch (e) {
      throw new Error(`chat template ${this.origin}: rendering failed: ${e instanceof Error ? e.message : String(e)}`);
    }
  }

  /** Renders `prompt` as a single user message and locates it: the template is rendered once with a sentinel
   * in place of the prompt, and the real rendering must be that text with the sentinel replaced by the prompt. */
  renderUserPrompt(prompt: string, options: ChatTemplateOptions = {}): RenderedPrompt {
    const withSentinel = this.render([{ role: "user", content: PROMPT_SENTINEL }], options);
    const at = withSentinel.indexOf(PROMPT_SENTINEL);
    if (at < 0 || withSentinel.indexOf(PROMPT_SENTINEL, at + 1) >= 0) {
      throw new Error(`chat template ${this.origin}: the user message does not appear exactly once in the rendered text`);
    }
    const before = withSentinel.slice(0, at);
    const after = withSentinel.slice(at + PROMPT_SENTINEL.length);
    const templated = this.render([{ role: "user", content: prompt }], options);
    if (templated !== before + prompt + after) {
      throw new Error(`chat template ${this.origin}: the template does not insert this prompt verbatim; its position cannot be located`);
    }
    return { templated, promptStart: before.length, promptEnd: before.length + prompt.length };
  }
}

const loaded = new Map<string, Promise<ChatTemplate>>();

/** The chat template of a tokenizer folder: `chat_template.jinja` beside tokenizer_config.json when present (it
 * takes precedence, as in the reference), else tokenizer_config.json's `chat_template` (a string, or a list of
 * named templates of which "default" is used). Loaded once per folder. */
export function loadChatTemplate(folder: string): Promise<ChatTemplate> {
  const key = resolve(folder);
  let pending = loaded.get(key);
  if (pending === undefined) {
    pending = readChatTemplate(key);
    loaded.set(key, pending);
    pending.catch(() => loaded.delete(key));
  }
  return pending;
}

async function readChatTemplate(folder: string): Promise<ChatTemplate> {
  const configPath = `${folder}/tokenizer_config.json`;
  const config = await readJson(configPath);
  if (typeof config !== "object" || config === null) throw new Error(`${configPath} is not an object`);
  const record = config as Record<string, unknown>;
  const jinjaPath = `${folder}/chat_template.jinja`;
  let jinja: string | null = null;
  try {
    jinja = await Deno.readTextFile(jinjaPath);
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw new Error(`cannot read ${jinjaPath}: ${e instanceof Error ? e.message : String(e)}`);
  }
  if (jinja !== null) return new ChatTemplate(jinja, record, jinjaPath);
  const fromConfig = record.chat_template;
  if (typeof fromConfig === "string") return new ChatTemplate(fromConfig, record, configPath);
  if (Array.isArray(fromConfig)) {
    const named = fromConfig.find((t) => t?.name === "default");
    if (typeof named?.template === "string") return new ChatTemplate(named.template, record, `${configPath} (default)`);
    throw new Error(`${configPath}: chat_template is a list without a "default" template`);
  }
  throw new Error(`no chat template in ${folder}: neither chat_template.jinja nor tokenizer_config.json's chat_template`);
}
