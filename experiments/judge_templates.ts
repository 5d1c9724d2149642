// The judge's questions, as versioned data: the study's protocol of labelled image bundles anchored on a run without
// the intervention. A template lists its images in order, each with the role it is taken from and the label shown
// before it ("Image 2 – the edit without intervention:"), then one question whose answer is a pass (1) or not (0).
//
// A template's text changes only together with its version: verdicts are cached under (template id, version,
// provider, model, image hashes, rendered labels and question), so an edited question is asked again and an unchanged
// one never is.
//
// Polarity. A pass in the tables means "the intervention worked" (what it was meant to do happened). A question of
// polarity "change" asks whether that happened ("has the output lost the reference's colour?"): a 1 is a pass.
// A question of polarity "keep" asks whether the output kept what the intervention should have removed ("does it
// still show the colour?"): a 1 is no pass — the tables invert it.
//
// Image roles, resolved per task and condition by judge.ts:
//   reference          the task's (first) reference image
//   output             this condition's image.png
//   baseline           the same task under the experiment's baseline condition (judge.baseline, default "baseline")
//   t2i_clean          the same task under the clean text-to-image condition (judge.t2iClean, default "t2i_clean")
//   source_reference   a patch's source run's (first) reference — for pairing, the other task's reference
//   source_output      this condition's source.png (the unpatched source run, or the lens's editing run)
//   condition:NAME     the same task under condition NAME

export type ImageRole =
  | "reference"
  | "output"
  | "baseline"
  | "t2i_clean"
  | "source_reference"
  | "source_output"
  | `condition:${string}`;

export type Polarity = "change" | "keep";

export interface LabelledImage {
  role: ImageRole;
  /** Shown before the image; {instruction} and {metadata.KEY} are filled in. */
  label: string;
}

export interface QuestionTemplate {
  id: string;
  version: number;
  images: LabelledImage[];
  /** Placeholders: {instruction} and {metadata.KEY} from the task. */
  question: string;
  polarity: Polarity;
  /** What a pass means, for tables. */
  passMeans: string;
  /** Where it was defined: "built-in", "experiment.judge.templates[2]" or "file.jsonl:3". */
  origin?: string;
}

/** The verdict format the judge is asked for: one JSON object on one line. */
export const JUDGE_SYSTEM_PROMPT =
  "You are a careful visual judge in an interpretability study of an image-editing model. You are shown several " +
  "images, each introduced by a label, and one question about them that predicts what happened.\n" +
  "Answer with a single JSON object on one line and nothing else (no markdown, no preamble):\n" +
  '{"pass": 1 or 0, "reason": "<one short sentence of at most 25 words>"}\n' +
  'Use "pass": 1 when the prediction holds and 0 when it does not. When the images do not let you decide, answer ' +
  '{"pass": 0, "reason": "cannot determine"}.';

/** Bumped when the system prompt or the reply format changes (part of every cache key). */
export const PROTOCOL_VERSION = 2;

// ---- built-in templates ------------------------------------------------------------------------------------------

type Subject = "color" | "style" | "identity" | "generic";

const REFERENCE_LABEL: Record<Subject, string> = {
  color: "a solid colour reference",
  style: "a style reference",
  identity: "a reference photo of a person",
  generic: "the reference image the edit was conditioned on",
};

/** How each subject phrases "what reached the output from the reference". */
const KNOCKOUT_LOST: Record<Subject, string> = {
  color: "Compared with Image 2, has Image 3 lost the dominant solid colour of Image 1? Answer 1 if that colour is clearly " +
    "gone or much weaker in Image 3.",
  style: "Compared with Image 2, has Image 3 lost the style of Image 1 and turned more photographic or realistic? Judge " +
    "the whole picture, subject and background. Answer 1 if Image 3 is clearly less stylised than Image 2.",
  identity: "Look at the person in Image 3. Compared with Image 2, has Image 3 lost the identity of the person in " +
    "Image 1, so that it shows a recognisably different individual (face, hair, build)? Answer 1 if the identity " +
    "is gone; 0 if Image 3 still shows the person of Image 1.",
  generic: "Compared with Image 2, has Image 3 lost what Image 1 contributed to the edit (its colours, textures, " +
    "layout, style, shapes or subject)? Answer 1 if that contribution is clearly gone or much weaker.",
};

const KNOCKOUT_KEPT: Record<Subject, string> = {
  color: "Compared with Image 2, does Image 3 still show the dominant solid colour of Image 1? Answer 1 if the colour " +
    "is still there.",
  style: "Does Image 3 still look drawn in the style of Image 1, as Image 2 does? Judge the whole picture, subject and " +
    "background. Answer 1 if the style survived.",
  identity: "Look at the person in Image 3. Is it still the same individual as in Image 1 (face, hair, build)? Answer " +
    "1 if the identity survived; 0 if Image 3 now shows someone else.",
  generic: "Compared with Image 2, does Image 3 still carry what Image 1 contributed to the edit (its colours, " +
    "textures, layout, style, shapes or subject)? Answer 1 if that contribution survived.",
};

const LENS_QUESTION: Record<Subject, string> = {
  color: "Compared with Image 2, has Image 3 taken on the dominant solid colour of Image 1? Answer 1 if that colour is " +
    "now clearly present in Image 3 and was not in Image 2.",
  style: "Compared with Image 2, has Image 3 moved towards the style of Image 1 (illustrated, cartoon-like, less " +
    "photographic)? Any part of the picture counts. Answer 1 if Image 3 is clearly more stylised than Image 2.",
  identity: "Look at the person in Image 3. Is it a recognisably different individual (face, hair, build) from the " +
    "person in Image 1? Answer 1 if a viewer would call it a different person; 0 only if it is the same person.",
  generic: "Compared with Image 2, does Image 3 show anything that comes from Image 1 — colours, textures, layout, " +
    "style, distinctive shapes or features of its subject — that Image 2 does not? Answer 1 if you can point to such " +
    "a detail.",
};

const PATCH_QUESTION: Record<Subject, string> = {
  color: "Image 3 shows the colour of Image 2. Has Image 4 taken on the colour of Image 1 (the source) instead? Answer " +
    "1 if the colour of Image 4 is closer to Image 1 than to Image 2.",
  style: "Compared with Image 3, has Image 4 become more stylised (illustrated, cartoon-like, less realistic), like " +
    "Image 1? Any part of the picture counts. Answer 1 if Image 4 is clearly more stylised than Image 3.",
  identity: "Look at the person in Image 4. Does that person look more like person A (Image 1, the source) than like " +
    "person B (Image 2, the target)? Answer 1 if A's identity came across.",
  generic: "Compared with Image 3, has Image 4 taken on what Image 1 (the source reference) contributes instead of " +
    "Image 2 (the target reference)? Answer 1 if Image 4 is clearly closer to Image 1's contribution.",
};

function builtins(): Record<string, QuestionTemplate> {
  const out: Record<string, QuestionTemplate> = {};
  const add = (t: QuestionTemplate) => out[t.id] = { ...t, origin: "built-in" };
  const subjects: Subject[] = ["color", "style", "identity", "generic"];
  for (const s of subjects) {
    const ref = { role: "reference" as const, label: `Image 1 – ${REFERENCE_LABEL[s]}:` };
    const i2i = { role: "baseline" as const, label: "Image 2 – the I2I baseline: the reference-conditioned edit without intervention:" };
    add({
      id: `${s}.knockout_lost`,
      version: 1,
      images: [ref, i2i, { role: "output", label: "Image 3 – the same edit with attention from the reference to the text knocked out:" }],
      question: KNOCKOUT_LOST[s],
      polarity: "change",
      passMeans: "the knockout removed what the reference contributed",
    });
    add({
      id: `${s}.knockout_kept`,
      version: 1,
      images: [ref, i2i, { role: "output", label: "Image 3 – the same edit with the knocked-out attention path:" }],
      question: KNOCKOUT_KEPT[s],
      polarity: "keep",
      passMeans: "the knockout removed what the reference contributed (a “still there” answer is inverted)",
    });
    add({
      id: `${s}.lens`,
      version: 1,
      images: [
        ref,
        { role: "t2i_clean", label: "Image 2 – t2i clean: the text-to-image run of the prompt, no intervention:" },
        {
          role: "output",
          label: "Image 3 – the same text-to-image run with text-token states of the reference-conditioned edit patched in:",
        },
      ],
      question: LENS_QUESTION[s],
      // "Different person" is the identity lens's question as the study asks it: a 1 means the reference's identity
      // did not come through the text tokens, so the tables invert it.
      polarity: s === "identity" ? "keep" : "change",
      passMeans: "the text tokens carried the reference's content into the text-to-image run",
    });
    add({
      id: `${s}.patch`,
      version: 1,
      images: [
        { role: "source_reference", label: `Image 1 – ${REFERENCE_LABEL[s]} of the SOURCE edit:` },
        { role: "reference", label: `Image 2 – ${REFERENCE_LABEL[s]} of the TARGET edit:` },
        { role: "baseline", label: "Image 3 – the target edit without intervention:" },
        { role: "output", label: "Image 4 – the same target edit with text-token activations patched in from the SOURCE edit:" },
      ],
      question: PATCH_QUESTION[s],
      polarity: "change",
      passMeans: "the patched text tokens carried the source's content into the target",
    });
  }
  return out;
}

export const BUILTIN_TEMPLATES: Readonly<Record<string, QuestionTemplate>> = builtins();

/** Which built-in subject a task family falls under. */
export function subjectOf(family: string): Subject {
  const f = family.toLowerCase();
  if (f.includes("color") || f.includes("colour")) return "color";
  if (f.includes("style") || f === "manual") return "style";
  if (f.includes("human") || f.includes("person") || f.includes("identity") || f.includes("face")) return "identity";
  return "generic";
}

/** What an intervention does, as far as the default questions care. */
export type InterventionKind = "knockout_to_text" | "knockout_to_image" | "lens" | "patch";

/** The question asked of a (family, intervention) when the experiment names none; none for a run without one. */
export function defaultTemplate(family: string, kind: InterventionKind | undefined): QuestionTemplate | undefined {
  if (!kind) return undefined;
  const s = subjectOf(family);
  const id = kind === "knockout_to_text"
    ? `${s}.knockout_lost`
    : kind === "knockout_to_image"
    ? `${s}.knockout_kept`
    : kind === "lens"
    ? `${s}.lens`
    : `${s}.patch`;
  return BUILTIN_TEMPLATES[id];
}

/** A pass ("the intervention worked") from the judge's answer and the question's polarity. */
export function isPass(answer: "yes" | "no", polarity: Polarity): boolean {
  return (answer === "yes") === (polarity === "change");
}

/** Fill {instruction} and {metadata.KEY}; a placeholder without a value is an error naming it. */
export function renderText(
  text: string,
  templateId: string,
  task: { instruction: string; metadata: Record<string, unknown>; task_id: string },
): string {
  return text.replace(/\{([a-zA-Z_.]+)\}/g, (_m, key: string) => {
    if (key === "instruction") return task.instruction;
    if (key.startsWith("metadata.")) {
      const v = task.metadata[key.slice("metadata.".length)];
      if (v === undefined || v === null) throw new Error(`template ${templateId}: task ${task.task_id} has no ${key}`);
      return String(v);
    }
    throw new Error(`template ${templateId}: unknown placeholder {${key}}`);
  });
}

// ---- templates from files and experiment files --------------------------------------------------------------------

export const TEMPLATE_ID_PATTERN = /^[A-Za-z0-9_][A-Za-z0-9._-]*$/;
const ROLES = ["reference", "output", "baseline", "t2i_clean", "source_reference", "source_output"];
const FIELDS = ["id", "version", "images", "question", "polarity", "passMeans"];

function checkPlaceholders(text: string, where: string): void {
  for (const m of text.matchAll(/\{([^}]*)\}/g)) {
    if (m[1] !== "instruction" && !/^metadata\.[A-Za-z0-9_]+$/.test(m[1])) {
      throw new Error(`${where}: unknown placeholder {${m[1]}} (use {instruction} or {metadata.KEY})`);
    }
  }
}

/** Check one template definition; errors name the field (`where.images[1].role: …`, or with sep ": " as in a file,
 * `file.jsonl:3: images[1].role: …`). */
export function parseTemplate(raw: unknown, where: string, sep = "."): QuestionTemplate {
  const at = (field: string) => `${where}${sep}${field}`;
  if (raw === null || typeof raw !== "object" || Array.isArray(raw)) throw new Error(`${where}: expected a template object`);
  const o = raw as Record<string, unknown>;
  for (const k of Object.keys(o)) if (!FIELDS.includes(k)) throw new Error(`${where}: unknown field "${k}" (known: ${FIELDS.join(", ")})`);
  const str = (k: string) => {
    const v = o[k];
    if (typeof v !== "string" || !v.trim()) throw new Error(`${at(k)}: expected a non-empty string, got ${JSON.stringify(v)}`);
    return v;
  };
  const id = str("id");
  if (!TEMPLATE_ID_PATTERN.test(id)) throw new Error(`${at("id")}: "${id}" is not a template id (letters, digits, . _ -)`);
  if (BUILTIN_TEMPLATES[id]) throw new Error(`${at("id")}: "${id}" is a built-in template; give yours another id`);
  const version = o.version;
  if (typeof version !== "number" || !Number.isSafeInteger(version) || version < 1) {
    throw new Error(`${at("version")}: expected a whole number ≥ 1, got ${JSON.stringify(version)}`);
  }
  const polarity = o.polarity;
  if (polarity !== "change" && polarity !== "keep") {
    throw new Error(
      `${at("polarity")}: expected "change" (a 1 means the intervention worked) or "keep" (a 1 means the output kept ` +
        `what it should have lost), got ${JSON.stringify(polarity)}`,
    );
  }
  const question = str("question");
  checkPlaceholders(question, at("question"));
  if (!Array.isArray(o.images) || o.images.length < 1 || o.images.length > 8) {
    throw new Error(`${at("images")}: expected a list of 1 to 8 labelled images`);
  }
  const images = o.images.map((im, i): LabelledImage => {
    const p = at(`images[${i}]`);
    if (im === null || typeof im !== "object" || Array.isArray(im)) throw new Error(`${p}: expected {"role": …, "label": …}`);
    const io = im as Record<string, unknown>;
    for (const k of Object.keys(io)) if (k !== "role" && k !== "label") throw new Error(`${p}: unknown field "${k}" (role, label)`);
    const role = io.role;
    if (typeof role !== "string" || !(ROLES.includes(role) || /^condition:[A-Za-z0-9_][A-Za-z0-9._+@:-]*$/.test(role))) {
      throw new Error(`${p}.role: expected one of ${ROLES.join(", ")} or condition:NAME, got ${JSON.stringify(role)}`);
    }
    if (typeof io.label !== "string" || !io.label.trim()) throw new Error(`${p}.label: expected a non-empty string`);
    checkPlaceholders(io.label, `${p}.label`);
    return { role: role as ImageRole, label: io.label };
  });
  if (!images.some((im) => im.role === "output")) throw new Error(`${at("images")}: no image has the role "output" (the image judged)`);
  return { id, version, images, question, polarity, passMeans: o.passMeans === undefined ? "" : str("passMeans"), origin: where };
}

/** A template file: one JSON template per line (blank lines and lines starting with # or // are skipped). Every
 * malformed line is reported as file:line; any one of them refuses the whole file. */
export function parseTemplateLines(text: string, file: string): QuestionTemplate[] {
  const out: QuestionTemplate[] = [];
  const problems: string[] = [];
  const seen = new Map<string, number>();
  text.split("\n").forEach((line, i) => {
    const trimmed = line.trim();
    if (!trimmed || trimmed.startsWith("#") || trimmed.startsWith("//")) return;
    const where = `${file}:${i + 1}`;
    let raw: unknown;
    try {
      raw = JSON.parse(trimmed);
    } catch (e) {
      problems.push(`${where}: not valid JSON (${(e as Error).message})`);
      return;
    }
    try {
      const t = parseTemplate(raw, where, ": ");
      if (seen.has(t.id)) throw new Error(`${where}: template "${t.id}" is already defined on line ${seen.get(t.id)}`);
      seen.set(t.id, i + 1);
      out.push(t);
    } catch (e) {
      problems.push((e as Error).message);
    }
  });
  if (problems.length) {
    throw new Error(`${file}: ${problems.length} malformed template line(s), file refused:\n  ${problems.join("\n  ")}`);
  }
  if (!out.length) throw new Error(`${file}: no templates (one JSON object per line)`);
  return out;
}

/** Built-in templates plus the experiment's own, by id. */
export function templateCatalogue(own: QuestionTemplate[] = []): Map<string, QuestionTemplate> {
  const all = new Map(Object.entries(BUILTIN_TEMPLATES));
  for (const t of own) {
    if (all.has(t.id)) throw new Error(`${t.origin ?? "template"}: template "${t.id}" is defined twice`);
    all.set(t.id, t);
  }
  return all;
}
