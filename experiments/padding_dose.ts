// The padding dose-response ablation: each task again with its instruction lengthened by neutral filler, so that a
// chosen number of the text encoder's 512 positions is left as pad tokens (mask 0, after the templated prompt).
// The study's levels are 494, 322, 149 and 0: 494 is a short instruction as it is ("draw a couch in this color" takes
// 18 positions with Qwen3's chat template), 0 fills all 512 with no truncation.
//
// The filler is appended to the instruction after a space: sentences of FILLER_TEXT taken word by word, as many as fit,
// then single-token units (FILLER_TOP_UP) up to the exact count; lengths are measured with the model's own tokenizer
// and chat template (model/qwen3/prompt.ts's encodePrompt), so a level is met exactly or the task is refused with the
// reason (its instruction alone is already longer, or the tokenizer merges the top-up). Tasks keep their noise seed
// (only the prompt length changes between levels) unless `seed: "crc32"`; ids are <task_id>_pad<level>, the family
// padding_dose/<family> (so the judge still asks the base family's question), and the base task, the level and the
// counts go into the metadata. A pair task's patch source gets the same filler (both must share the instruction).

import { encodePrompt, QWEN3_PROMPT_LENGTH } from "../model/qwen3/prompt.ts";
import type { ChatTemplate } from "../model/qwen3/template.ts";
import { loadChatTemplate } from "../model/qwen3/template.ts";
import { loadQwen3Tokenizer, type Qwen3Tokenizer } from "../model/qwen3/tokenizer.ts";
import { printable } from "../runtime/printable.ts";
import { FAMILIES, type Task } from "./tasks.ts";
import { taskSeed } from "./task_seed.ts";
import { join } from "node:path";

/** The study's levels: pad positions left of 512. */
export const STUDY_PADDING_LEVELS = [494, 322, 149, 0] as const;

/** Neutral filler: describes nothing about colour, object or scene. */
export const FILLER_TEXT = "This sentence is included only to make the request longer and it does not change what is asked. " +
  "Please read the request above once more and then carry it out exactly as it is written. ";

/** Appended one at a time to reach an exact count (each is one token after a word in Qwen3's vocabulary). */
export const FILLER_TOP_UP = " .";

export interface PaddingDoseOptions {
  levels?: readonly number[];
  /** "base" (default): keep each task's noise seed; "crc32": crc32 of the new id. */
  seed?: "base" | "crc32";
  filler?: string;
}

/** Pad positions a prompt leaves (of 512). */
export function padPositions(tokenizer: Qwen3Tokenizer, template: ChatTemplate, prompt: string): number {
  const e = encodePrompt(tokenizer, template, prompt);
  return e.truncated ? -1 : QWEN3_PROMPT_LENGTH - e.realTokens;
}

/** The instruction lengthened so that exactly `level` pad positions remain, or why it cannot be. */
export function lengthen(
  tokenizer: Qwen3Tokenizer,
  template: ChatTemplate,
  instruction: string,
  level: number,
  filler = FILLER_TEXT,
): string | Error {
  const pads = (s: string) => padPositions(tokenizer, template, s);
  const base = pads(instruction);
  if (base < level) return new Error(`the instruction alone leaves ${base} pad positions, fewer than ${level}`);
  if (base === level) return instruction;
  const words = filler.trim().split(/\s+/);
  const withWords = (n: number) => {
    const parts: string[] = [];
    for (let i = 0; i < n; i++) parts.push(words[i % words.length]);
    return `${instruction} ${parts.join(" ")}`;
  };
  // The most words that still leave at least `level` pad positions (pad positions fall as words are added).
  let lo = 0, hi = 1;
  while (pads(withWords(hi)) >= level) lo = hi, hi *= 2;
  while (hi - lo > 1) {
    const mid = (lo + hi) >> 1;
    if (pads(withWords(mid)) >= level) lo = mid;
    else hi = mid;
  }
  let text = lo ? withWords(lo) : instruction;
  for (let guard = 0; pads(text) > level && guard < 64; guard++) {
    const next = text + FILLER_TOP_UP;
    if (pads(next) !== pads(text) - 1) break;
    text = next;
  }
  const got = pads(text);
  return got === level ? text : new Error(`filler reaches ${got} pad positions, not ${level} (the tokenizer merges the top-up)`);
}

export interface PaddingDoseResult {
  tasks: Task[];
  /** task × level that could not be built, with the reason. */
  refused: string[];
}

/** Every task at every level (see the header). */
export function paddingDoseTasks(
  tokenizer: Qwen3Tokenizer,
  template: ChatTemplate,
  tasks: Task[],
  options: PaddingDoseOptions = {},
): PaddingDoseResult {
  const levels = options.levels ?? STUDY_PADDING_LEVELS;
  for (const l of levels) {
    if (!Number.isInteger(l) || l < 0 || l >= QWEN3_PROMPT_LENGTH) {
      throw new Error(`padding level ${l}: expected a whole number in [0, ${QWEN3_PROMPT_LENGTH})`);
    }
  }
  if (new Set(levels).size !== levels.length) throw new Error(`padding levels repeat: ${levels.join(", ")}`);
  const out: Task[] = [], refused: string[] = [];
  for (const t of tasks) {
    if (t.patch_source && t.patch_source.instruction !== t.instruction) {
      refused.push(`${printable(t.task_id)}: its patch source has another instruction; both would need the same filler`);
      continue;
    }
    for (const level of levels) {
      const text = lengthen(tokenizer, template, t.instruction, level, options.filler);
      if (text instanceof Error) {
        refused.push(`${printable(t.task_id)} at ${level}: ${text.message}`);
        continue;
      }
      const task_id = `${t.task_id}_pad${level}`;
      out.push({
        ...structuredClone(t),
        task_id,
        family: `${FAMILIES.paddingDose}/${t.family}`,
        instruction: text,
        noise_seed: options.seed === "crc32" ? taskSeed(task_id) : t.noise_seed,
        metadata: {
          ...t.metadata,
          padding_base_task: t.task_id,
          padding_level: level,
          padding_base_instruction: t.instruction,
          real_tokens: QWEN3_PROMPT_LENGTH - level,
        },
        ...(t.patch_source ? { patch_source: { ...structuredClone(t.patch_source), instruction: text } } : {}),
      });
    }
  }
  return { tasks: out, refused };
}

/** The tokenizer and chat template of a model folder (its tokenizer/ subfolder) or of a tokenizer folder. */
export async function loadPromptTools(folder: string): Promise<{ tokenizer: Qwen3Tokenizer; template: ChatTemplate }> {
  let dir = folder;
  try {
    await Deno.stat(join(folder, "tokenizer", "tokenizer.json"));
    dir = join(folder, "tokenizer");
  } catch {
    // A tokenizer folder itself.
  }
  const [tokenizer, template] = await Promise.all([loadQwen3Tokenizer(dir), loadChatTemplate(dir)]);
  return { tokenizer, template };
}
