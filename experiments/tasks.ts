// Task files: one editing task per line (JSON Lines). Two layouts are read:
//
// kleinscope's own
//   {"task_id": "color_red_couch_s0", "edit_type": "color", "family": "color", "instruction": "draw a couch in this color",
//    "refs": ["swatches/red.png"], "width": 1024, "height": 1024, "noise_seed": 0, "metadata": {"colour": "red"}}
// and the published study's
//   {"task_id": …, "edit_type": …, "source": "sun397", "instruction": …, "noise_seed": …, "width": …, "height": …,
//    "source_image_path": "…" | "real_ref_dir": "…", "real_ref_name": "…" | "ref_seed": n, "source_caption": "…",
//    "metadata": {…}}
// where `source_image_path` is one reference image, `real_ref_dir/real_ref_name` names one (the extension may be left
// out: .png, .jpg and .jpeg are tried), and `ref_seed` + `source_caption` ask for a synthetic reference made by
// text-to-image before the edit. `family` groups tasks for statistics and chooses the judge's default question; a
// published row's family comes from its `source` (see publishedFamily: the study's buckets get names that say what
// they test), and without either the family is the edit_type.
//
// Relative image paths are resolved against `refsRoot` (default: the task file's folder). A line that does not parse
// or breaks a rule is reported with its file and line number, and is skipped with a warning or, in strict mode, refused.

import { dirname, isAbsolute, join, relative, resolve } from "node:path";

export interface SyntheticReference {
  /** Text-to-image prompt of the reference. */
  caption: string;
  seed: number;
}

export interface Task {
  task_id: string;
  edit_type: string;
  /** Grouping for statistics and the judge's default question (FAMILIES; a published row's from its `source`). */
  family: string;
  instruction: string;
  /** Reference images, absolute paths, in order. Empty when the reference is synthetic. */
  refs: string[];
  /** A reference to generate first (the published `ref_seed` + `source_caption`). */
  synthetic_ref?: SyntheticReference;
  width: number;
  height: number;
  noise_seed: number;
  metadata: Record<string, unknown>;
  /** The run this task's patch conditions copy rows from, named on the line (pair task files, pairings.ts). */
  patch_source?: PatchSource;
}

/** A patch source carried by a task line: another task's prompt, references and seed. */
export interface PatchSource {
  task_id: string;
  instruction: string;
  /** Absolute paths, in order; empty when the reference is synthetic. */
  refs: string[];
  synthetic_ref?: SyntheticReference;
  noise_seed: number;
}

export interface TaskProblem {
  file: string;
  line: number;
  message: string;
}

export interface TaskFile {
  path: string;
  tasks: Task[];
  /** Lines skipped (non-strict mode), in file order. */
  problems: TaskProblem[];
  /** Top-level fields that were ignored, with the first line each appeared on. */
  ignoredFields: Map<string, number>;
}

export interface ReadTaskOptions {
  /** Refuse the whole file at the first malformed line (default: skip it with a warning). */
  strict?: boolean;
  /** Folder that relative image paths are resolved against (default: the task file's folder). */
  refsRoot?: string;
  /** Check that every reference image exists (default true). */
  checkFiles?: boolean;
  /** Receives one line per skipped task line and per ignored field. */
  warn?: (line: string) => void;
}

/** The published loader's default output size when a line gives none. */
export const DEFAULT_TASK_SIDE = 1024;

/** The families the task builders and the published task files produce. */
export const FAMILIES = {
  /** Solid-colour swatches (the study's 8 colours × 8 objects, or your own). */
  solidColour: "solid_color",
  /** kleinscope's generic colour generator (`experiment colors`). */
  colour: "color",
  /** Illustration references (the study's `property_manual`, 18 subjects × 5 prompts × 5 seeds). */
  style: "style",
  /** Their real-photo counterparts (the study's `manual` rows with axis "style"): patch targets of style→real. */
  styleReal: "style_real",
  /** DreamBench++ people, 10 subjects × 9 individual prompts. */
  human: "human",
  /** The same 10 people × 5 shared prompts (the human pairings). */
  humanShared: "human_shared",
  /** SUN397 scenes: add an object / remove an object. */
  sun397Add: "sun397_add",
  sun397Remove: "sun397_remove",
  /** Prompts lengthened with neutral filler (padding dose-response); the base family is appended: padding_dose/… */
  paddingDose: "padding_dose",
} as const;

/** The family of a published row: its `source`, refined where the study's buckets mean different things. */
export function publishedFamily(source: string, editType: string, metadata: Record<string, unknown>): string {
  switch (source) {
    case "solid_color":
      return FAMILIES.solidColour;
    case "property_manual":
      return metadata.axis === undefined || metadata.axis === "style" ? FAMILIES.style : `property_${String(metadata.axis)}`;
    case "manual":
      return metadata.axis === "style" ? FAMILIES.styleReal : source;
    case "dreambench_plus":
      return metadata.category === "live_subject_human_shared" ? FAMILIES.humanShared : FAMILIES.human;
    case "sun397":
      return editType === "add" ? FAMILIES.sun397Add : editType === "remove" ? FAMILIES.sun397Remove : source;
    default:
      return source;
  }
}

/** A task id names a folder: letters, digits and . _ + - (not starting with a dot). */
export const TASK_ID_PATTERN = /^[A-Za-z0-9_][A-Za-z0-9._+-]*$/;

const KNOWN_FIELDS = new Set([
  "task_id",
  "edit_type",
  "family",
  "source",
  "instruction",
  "refs",
  "source_image_path",
  "real_ref_dir",
  "real_ref_name",
  "ref_seed",
  "source_caption",
  "synthetic_ref",
  "patch_source",
  "width",
  "height",
  "noise_seed",
  "metadata",
]);

const IMAGE_EXTENSIONS = [".png", ".jpg", ".jpeg"];

class LineError extends Error {}

function isFile(path: string): boolean {
  try {
    return Deno.statSync(path).isFile;
  } catch {
    return false;
  }
}

function text(o: Record<string, unknown>, key: string, required: boolean): string | undefined {
  const v = o[key];
  if (v === undefined || v === null) {
    if (required) throw new LineError(`"${key}" is required`);
    return undefined;
  }
  if (typeof v !== "string" || (required && v.trim() === "")) {
    throw new LineError(`"${key}" must be a non-empty string, got ${JSON.stringify(v)}`);
  }
  return v;
}

function wholeNumber(o: Record<string, unknown>, key: string, min: number): number | undefined {
  const v = o[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== "number" || !Number.isSafeInteger(v) || v < min) {
    throw new LineError(`"${key}" must be an integer ≥ ${min}, got ${JSON.stringify(v)}`);
  }
  return v;
}

function side(o: Record<string, unknown>, key: "width" | "height"): number {
  const v = wholeNumber(o, key, 16) ?? DEFAULT_TASK_SIDE;
  if (v % 16) throw new LineError(`"${key}" ${v} is not a multiple of 16 (the model's patch grid)`);
  return v;
}

/** One image path of a line: resolved against the root, checked when asked. */
function imagePath(path: string, root: string, field: string, checkFiles: boolean): string {
  const abs = isAbsolute(path) ? path : resolve(root, path);
  if (checkFiles && !isFile(abs)) throw new LineError(`"${field}": image ${abs} does not exist`);
  return abs;
}

/** `real_ref_dir/real_ref_name`, trying the usual extensions when the name has none that exists. */
function namedReference(dir: string, name: string, root: string, checkFiles: boolean): string {
  const base = isAbsolute(dir) ? join(dir, name) : resolve(root, dir, name);
  if (!checkFiles) return IMAGE_EXTENSIONS.some((e) => name.toLowerCase().endsWith(e)) ? base : `${base}.png`;
  if (isFile(base)) return base;
  for (const ext of IMAGE_EXTENSIONS) if (isFile(base + ext)) return base + ext;
  throw new LineError(`"real_ref_name": no image ${base}{,${IMAGE_EXTENSIONS.join(",")}}`);
}

function parseSyntheticRef(v: unknown, field: string): SyntheticReference {
  const s = v as Record<string, unknown>;
  if (
    !s || typeof s !== "object" || Array.isArray(s) || typeof s.caption !== "string" || !Number.isSafeInteger(s.seed) ||
    (s.seed as number) < 0
  ) {
    throw new LineError(`"${field}" must be {"caption": text, "seed": integer ≥ 0}`);
  }
  return { caption: s.caption, seed: s.seed as number };
}

/** `patch_source`: {"task_id", "instruction", "refs": [...] or "synthetic_ref": {...}, "noise_seed"}. */
function parsePatchSource(v: unknown, root: string, checkFiles: boolean): PatchSource {
  if (!v || typeof v !== "object" || Array.isArray(v)) throw new LineError(`"patch_source" must be an object`);
  const o = v as Record<string, unknown>;
  const unknown = Object.keys(o).filter((k) => !["task_id", "instruction", "refs", "synthetic_ref", "noise_seed"].includes(k));
  if (unknown.length) throw new LineError(`"patch_source" has unknown field "${unknown[0]}"`);
  const task_id = text(o, "task_id", true)!;
  if (!TASK_ID_PATTERN.test(task_id)) throw new LineError(`"patch_source.task_id" ${JSON.stringify(task_id)} cannot name a folder`);
  const instruction = text(o, "instruction", true)!;
  const noise_seed = wholeNumber(o, "noise_seed", 0);
  if (noise_seed === undefined) throw new LineError(`"patch_source.noise_seed" is required`);
  const refs: string[] = [];
  if (o.refs !== undefined && o.refs !== null) {
    if (!Array.isArray(o.refs) || o.refs.some((r) => typeof r !== "string" || r === "")) {
      throw new LineError(`"patch_source.refs" must be a list of image paths`);
    }
    (o.refs as string[]).forEach((r, i) => refs.push(imagePath(r, root, `patch_source.refs[${i}]`, checkFiles)));
  }
  const synthetic_ref = o.synthetic_ref === undefined || o.synthetic_ref === null
    ? undefined
    : parseSyntheticRef(o.synthetic_ref, "patch_source.synthetic_ref");
  if (refs.length && synthetic_ref) throw new LineError(`"patch_source" takes "refs" or "synthetic_ref", not both`);
  if (!refs.length && !synthetic_ref) {
    throw new LineError(`"patch_source" needs "refs" or "synthetic_ref" (a patch source has a reference)`);
  }
  return { task_id, instruction, refs, ...(synthetic_ref ? { synthetic_ref } : {}), noise_seed };
}

/** Check one parsed line and turn it into a Task. Throws a LineError naming the field. */
function taskFromLine(raw: unknown, root: string, checkFiles: boolean): Task {
  if (!raw || typeof raw !== "object" || Array.isArray(raw)) {
    throw new LineError(`expected a JSON object, got ${JSON.stringify(raw)?.slice(0, 60)}`);
  }
  const o = raw as Record<string, unknown>;
  const task_id = text(o, "task_id", true)!;
  if (!TASK_ID_PATTERN.test(task_id)) {
    throw new LineError(
      `"task_id" ${JSON.stringify(task_id)} cannot name a folder (use letters, digits and . _ + -, not starting with a dot)`,
    );
  }
  const edit_type = text(o, "edit_type", true)!;
  const instruction = text(o, "instruction", true)!;
  const source = text(o, "source", false);
  const metadata = o.metadata ?? {};
  if (typeof metadata !== "object" || Array.isArray(metadata)) throw new LineError(`"metadata" must be an object`);
  const family = text(o, "family", false) ??
    (source === undefined ? edit_type : publishedFamily(source, edit_type, metadata as Record<string, unknown>));

  const refs: string[] = [];
  const published = ["source_image_path", "real_ref_name", "real_ref_dir", "ref_seed"].filter((k) => o[k] !== undefined && o[k] !== null);
  if (o.refs !== undefined && o.refs !== null) {
    if (published.length) throw new LineError(`give either "refs" or the published reference fields (${published.join(", ")}), not both`);
    if (!Array.isArray(o.refs) || o.refs.some((r) => typeof r !== "string" || r === "")) {
      throw new LineError(`"refs" must be a list of image paths`);
    }
    (o.refs as string[]).forEach((r, i) => refs.push(imagePath(r, root, `refs[${i}]`, checkFiles)));
  }
  const sourcePath = text(o, "source_image_path", false);
  const refDir = text(o, "real_ref_dir", false), refName = text(o, "real_ref_name", false);
  if (sourcePath !== undefined && refName !== undefined) throw new LineError(`"source_image_path" and "real_ref_name" exclude each other`);
  if ((refDir === undefined) !== (refName === undefined)) throw new LineError(`"real_ref_dir" and "real_ref_name" go together`);
  if (sourcePath !== undefined) refs.push(imagePath(sourcePath, root, "source_image_path", checkFiles));
  if (refName !== undefined) refs.push(namedReference(refDir!, refName, root, checkFiles));

  let synthetic_ref: SyntheticReference | undefined;
  const refSeed = wholeNumber(o, "ref_seed", 0);
  if (o.synthetic_ref !== undefined && o.synthetic_ref !== null) {
    synthetic_ref = parseSyntheticRef(o.synthetic_ref, "synthetic_ref");
  } else if (refSeed !== undefined) {
    if (refs.length) throw new LineError(`"ref_seed" (a synthetic reference) cannot be combined with a reference image`);
    const caption = text(o, "source_caption", false);
    if (caption === undefined) throw new LineError(`"ref_seed" needs "source_caption" (the prompt of the synthetic reference)`);
    synthetic_ref = { caption, seed: refSeed };
  }

  const noise_seed = wholeNumber(o, "noise_seed", 0) ?? 0;
  if (synthetic_ref && synthetic_ref.seed === noise_seed) {
    throw new LineError(
      `the synthetic reference's seed equals "noise_seed" (${noise_seed}); the edit would start from the reference's noise`,
    );
  }
  let patch_source: PatchSource | undefined;
  if (o.patch_source !== undefined && o.patch_source !== null) {
    patch_source = parsePatchSource(o.patch_source, root, checkFiles);
    if (patch_source.task_id === task_id) throw new LineError(`"patch_source" names the task itself`);
  }
  return {
    task_id,
    edit_type,
    family,
    instruction,
    refs,
    ...(synthetic_ref ? { synthetic_ref } : {}),
    width: side(o, "width"),
    height: side(o, "height"),
    noise_seed,
    metadata: metadata as Record<string, unknown>,
    ...(patch_source ? { patch_source } : {}),
  };
}

/** Parse task lines (the text of a task file). `file` is used in messages and, by default, as the root of relative paths. */
export function parseTaskLines(content: string, file: string, options: ReadTaskOptions = {}): TaskFile {
  const root = options.refsRoot ? resolve(options.refsRoot) : dirname(resolve(file));
  const checkFiles = options.checkFiles ?? true;
  const tasks: Task[] = [];
  const problems: TaskProblem[] = [];
  const ignoredFields = new Map<string, number>();
  const seen = new Map<string, number>();
  const lines = content.split("\n");
  for (let i = 0; i < lines.length; i++) {
    const lineNo = i + 1;
    const line = lines[i].trim();
    if (!line) continue;
    try {
      let raw: unknown;
      try {
        raw = JSON.parse(line);
      } catch (e) {
        throw new LineError(`not valid JSON (${(e as Error).message})`);
      }
      const task = taskFromLine(raw, root, checkFiles);
      const first = seen.get(task.task_id);
      if (first !== undefined) throw new LineError(`task_id "${task.task_id}" repeats line ${first}`);
      seen.set(task.task_id, lineNo);
      for (const k of Object.keys(raw as object)) if (!KNOWN_FIELDS.has(k) && !ignoredFields.has(k)) ignoredFields.set(k, lineNo);
      tasks.push(task);
    } catch (e) {
      if (!(e instanceof LineError)) throw e;
      const problem = { file, line: lineNo, message: e.message };
      if (options.strict) throw new Error(`${file}:${lineNo}: ${e.message} (strict mode refuses the file)`);
      problems.push(problem);
      options.warn?.(`warning: ${file}:${lineNo}: ${e.message}; line skipped`);
    }
  }
  for (const [k, line] of ignoredFields) {
    options.warn?.(`warning: ${file}: field "${k}" (first on line ${line}) is not a task field; ignored`);
  }
  return { path: file, tasks, problems, ignoredFields };
}

/** Read a task file (see the header for the two layouts). */
export async function readTaskFile(path: string, options: ReadTaskOptions = {}): Promise<TaskFile> {
  let content: string;
  try {
    content = await Deno.readTextFile(path);
  } catch (e) {
    const why = e instanceof Deno.errors.NotFound ? "no such file" : (e as Error).message;
    throw new Error(`task file ${path}: cannot read it: ${why}`);
  }
  return parseTaskLines(content, path, options);
}

/** A task as one line of kleinscope's layout; image paths inside `root` are written relative to it. */
export function taskToLine(task: Task, root?: string): string {
  const rel = (p: string) => {
    if (!root) return p;
    const r = relative(root, p);
    return r.startsWith("..") || isAbsolute(r) ? p : r;
  };
  return JSON.stringify({
    task_id: task.task_id,
    edit_type: task.edit_type,
    family: task.family,
    instruction: task.instruction,
    refs: task.refs.map(rel),
    ...(task.synthetic_ref ? { synthetic_ref: task.synthetic_ref } : {}),
    width: task.width,
    height: task.height,
    noise_seed: task.noise_seed,
    metadata: task.metadata,
    ...(task.patch_source ? { patch_source: { ...task.patch_source, refs: task.patch_source.refs.map(rel) } } : {}),
  });
}

/** Write tasks as a task file (kleinscope's layout, paths relative to the file's folder), atomically. */
export async function writeTaskFile(path: string, tasks: Task[]): Promise<void> {
  const abs = resolve(path);
  const root = dirname(abs);
  await Deno.mkdir(root, { recursive: true });
  const tmp = join(root, `.${crypto.randomUUID()}.jsonl.tmp`);
  try {
    await Deno.writeTextFile(tmp, tasks.map((t) => taskToLine(t, root)).join("\n") + "\n");
    await Deno.rename(tmp, abs);
  } catch (e) {
    await Deno.remove(tmp).catch(() => {});
    throw new Error(`task file ${path}: cannot write it: ${(e as Error).message}`);
  }
}
