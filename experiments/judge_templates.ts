// The judge's questions, as versioned data. A template's text changes only together with its version: verdicts are
// cached under (template id, version, judge model, image hashes, rendered question), so an edited question is
// asked again and an unchanged one never is.
//
// Convention: a pass means "the intervention worked" — what the condition was meant to do happened. Questions that ask
// whether the output KEPT something the intervention should remove ("does it still take the reference's colour?")
// are inverted: a "no" is a pass. On the baseline (no intervention) the pass rate is then the rate at which the
// unmodified edit already shows the effect — the floor an intervention is compared against.

export type ImageRole = "reference" | "output" | "baseline" | "source_reference" | "source_output";

export interface QuestionTemplate {
  id: string;
  version: number;
  /** Placeholders: {instruction} and {metadata.KEY} from the task. */
  text: string;
  /** The images attached, in the order the text describes them. */
  images: ImageRole[];
  /** "yes" means the output kept something: a pass is a "no". */
  invert: boolean;
  /** What a pass means, for tables. */
  passMeans: string;
}

export const JUDGE_SYSTEM_PROMPT = "You judge images for a research study. Look carefully at every image, then answer the question " +
  "with exactly one word: yes or no.";

export const QUESTION_TEMPLATES: Record<string, QuestionTemplate> = {
  "color.reference_colour": {
    id: "color.reference_colour",
    version: 1,
    text: 'The first image is a solid colour swatch. The second image was generated from the instruction "{instruction}" ' +
      "with the swatch as reference. Does the edited image take on the reference's solid colour (is its main subject " +
      "mostly that colour)?",
    images: ["reference", "output"],
    invert: true,
    passMeans: "the output lost the reference's colour",
  },
  "color.source_colour": {
    id: "color.source_colour",
    version: 1,
    text: "The first image is a solid colour swatch. Is the main subject of the second image mostly the swatch's colour?",
    images: ["source_reference", "output"],
    invert: false,
    passMeans: "the output took the patch source's colour",
  },
  "style.lost_style": {
    id: "style.lost_style",
    version: 1,
    text: 'The first image is a style reference. The second image was generated from the instruction "{instruction}" ' +
      "with that reference. Did the output lose the reference's style (it is not drawn in that style)?",
    images: ["reference", "output"],
    invert: false,
    passMeans: "the output lost the reference's style",
  },
  "style.source_style": {
    id: "style.source_style",
    version: 1,
    text: "The first image is a style reference. Is the second image drawn in the style of the first?",
    images: ["source_reference", "output"],
    invert: false,
    passMeans: "the output took the patch source's style",
  },
  "identity.same_person": {
    id: "identity.same_person",
    version: 1,
    text: "The first image shows a person. Is the person in the second image the same person as in the first?",
    images: ["reference", "output"],
    invert: true,
    passMeans: "the output lost the reference's identity",
  },
  "edit.instruction_followed": {
    id: "edit.instruction_followed",
    version: 1,
    text: 'The first image is a reference given with the instruction "{instruction}". Does the second image carry out ' +
      "that instruction using the reference?",
    images: ["reference", "output"],
    invert: true,
    passMeans: "the edit failed",
  },
};

export function findTemplate(id: string, where: string): QuestionTemplate {
  const t = QUESTION_TEMPLATES[id];
  if (!t) throw new Error(`${where}: unknown question template "${id}" (known: ${Object.keys(QUESTION_TEMPLATES).join(", ")})`);
  return t;
}

/** The question asked of a (family, condition) when the experiment names none: by family, patching or not. */
export function defaultTemplate(family: string, isPatch: boolean): QuestionTemplate | undefined {
  const f = family.toLowerCase();
  if (f.includes("color") || f.includes("colour")) return QUESTION_TEMPLATES[isPatch ? "color.source_colour" : "color.reference_colour"];
  if (f.includes("style")) return QUESTION_TEMPLATES[isPatch ? "style.source_style" : "style.lost_style"];
  if (isPatch) return undefined;
  if (f.includes("human") || f.includes("person") || f.includes("identity")) return QUESTION_TEMPLATES["identity.same_person"];
  return QUESTION_TEMPLATES["edit.instruction_followed"];
}

/** Fill {instruction} and {metadata.KEY}; a placeholder without a value is an error naming it. */
export function renderQuestion(
  t: QuestionTemplate,
  task: { instruction: string; metadata: Record<string, unknown>; task_id: string },
): string {
  return t.text.replace(/\{([a-zA-Z_.]+)\}/g, (_m, key: string) => {
    if (key === "instruction") return task.instruction;
    if (key.startsWith("metadata.")) {
      const v = task.metadata[key.slice("metadata.".length)];
      if (v === undefined || v === null) throw new Error(`template ${t.id}: task ${task.task_id} has no ${key}`);
      return String(v);
    }
    throw new Error(`template ${t.id}: unknown placeholder {${key}}`);
  });
}
