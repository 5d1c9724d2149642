// SUN397 add/remove tasks, built the way the published study authored its 789 add + 726 remove rows
// (data/datasets/sun397/extract_instructions.py and data/datasets/_vlm_tasks.py there):
//
// - Categories: every line of the dataset's ClassName.txt ("/a/abbey", "/a/athletic_field/outdoor", …), sorted.
// - Images: per category, `imagesPerCategory` (2) JPEGs of the category folder, chosen as Python's
//   random.Random(seed).sample(sorted(names), k) chooses them, with seed = the first 8 bytes (big-endian) of
//   sha256("<imageSeed>|<category>") and imageSeed 42 by default: the study's picks, reproduced without Python
//   (PyRandom below: MT19937 seeded by init_by_array, getrandbits, Python's sample()).
// - Objects: one request per image to the VLM behind the judge's endpoint (experiments/judge.ts), whose system prompt
//   asks for {"add_object", "remove_object"}: an object absent from the scene that could plausibly be added and one
//   visible object that could be removed, each 1–4 lowercase singular words, never naming the scene (the
//   scene-agnostic rule), never one of the over-represented objects (BANNED_OBJECTS), or null when none fits. A reply
//   is valid as the study's validator has it (exactly those two keys, the word pattern, distinct, not both null);
//   anything else is recorded with both objects null and the reason. Replies are cached by the judge client, and every
//   image's outcome is kept in <out>/proposals.jsonl, so a re-run asks only about images it has not seen.
// - Rows: add_sun397_<category slug>__<image stem>_<object slug> ("add a lamp" / "an …") and
//   remove_sun397_…_<object slug> ("remove the chair"), noise seed crc32(id), the SUN397 image as reference, and the
//   output size the study used: the image centre-cropped to multiples of 16, then, above 1024² pixels, scaled to
//   about 1024² (⌊w·s⌋ × ⌊h·s⌋) and floored to multiples of 16. Written to <out>/add/tasks.jsonl and
//   <out>/remove/tasks.jsonl.

import { basename, extname, join, resolve } from "node:path";
import { printable } from "../runtime/printable.ts";
import type { JudgeClient, JudgeImage } from "./judge.ts";
import type { QuestionTemplate } from "./judge_templates.ts";
import { FAMILIES, type Task, writeTaskFile } from "./tasks.ts";
import { taskSeed } from "./task_seed.ts";
import { sha256Hex } from "./files.ts";

/** Objects the study kept out of its proposals (over-represented in its earlier tasks). */
export const BANNED_OBJECTS = ["bird", "backpack", "person", "bicycle", "bench", "bottle", "plant", "dog"] as const;

/** The system prompt of the proposal request (the study's rules, in kleinscope's words). */
export const PROPOSAL_SYSTEM_PROMPT = `You help build test cases for an image-editing study. You are shown ONE photograph.
Name two objects:
1. "add_object": one object that is NOT in the photograph but could plausibly be placed in it. Use null if no object
   fits that also follows the scene-agnostic rule.
2. "remove_object": one object that IS visible and could be removed while the scene still makes sense (not the whole
   subject). Use null if nothing qualifies.

Scene-agnostic rule: a name must not give away which kind of scene or place this is. For a photograph of a volcano,
"lava plume" or "volcanic crater" would reveal the scene and is not allowed; prefer ordinary objects that could fit
many different scenes. If no such object fits a field, use null.

Never propose any of these objects, nor a phrase whose head noun is one of them: ${BANNED_OBJECTS.join(", ")}.

Reply with one JSON object on a single line and nothing else (no markdown):
{"add_object": "<name>" | null, "remove_object": "<name>" | null}

Names: 1 to 4 words, lowercase, singular, no punctuation, no proper nouns or named people; the two names differ.`;

/** The request's identity for the judge client (its cache key: id and version) and its user text. */
export const PROPOSAL_TEMPLATE: QuestionTemplate = {
  id: "sun397.edit_objects",
  version: 1,
  images: [{ role: "reference", label: "Photograph:" }],
  question: "Reply with the JSON object now.",
  polarity: "change",
  passMeans: "(not a verdict: the objects to add and remove)",
};

const NAME_PATTERN = /^[a-z]+(?:-[a-z]+)?(?: [a-z]+(?:-[a-z]+)?){0,3}$/;

export interface Proposal {
  add_object: string | null;
  remove_object: string | null;
}

/** A reply as the study's validator reads it: the proposal, or why it is not one. */
export function parseProposal(text: string): Proposal | string {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text.trim());
  } catch {
    return `not JSON: ${JSON.stringify(text.slice(0, 80))}`;
  }
  if (!parsed || typeof parsed !== "object" || Array.isArray(parsed)) return "not a JSON object";
  const keys = Object.keys(parsed).sort();
  if (keys.join(",") !== "add_object,remove_object") return `unexpected keys: ${keys.join(", ")}`;
  const p = parsed as Record<string, unknown>;
  for (const k of ["add_object", "remove_object"]) {
    const v = p[k];
    if (v !== null && (typeof v !== "string" || !NAME_PATTERN.test(v))) return `${k} invalid: ${JSON.stringify(v)}`;
  }
  if (p.add_object !== null && p.add_object === p.remove_object) return `the two objects are the same: ${JSON.stringify(p.add_object)}`;
  if (p.add_object === null && p.remove_object === null) return "both objects are null";
  return { add_object: p.add_object as string | null, remove_object: p.remove_object as string | null };
}

// ---- Python's random module, as far as sample() uses it ----------------------------------------------------------------

/** Python's random.Random (MT19937 seeded with init_by_array from the seed's 32-bit words). */
export class PyRandom {
  private readonly mt = new Uint32Array(624);
  private mti = 625;

  constructor(seed: bigint) {
    let a = seed < 0n ? -seed : seed;
    const key: number[] = [];
    do {
      key.push(Number(a & 0xffffffffn));
      a >>= 32n;
    } while (a > 0n);
    this.initByArray(key);
  }

  private initGenrand(s: number): void {
    const mt = this.mt;
    mt[0] = s >>> 0;
    for (let i = 1; i < 624; i++) mt[i] = (Math.imul(1812433253, mt[i - 1] ^ (mt[i - 1] >>> 30)) + i) >>> 0;
    this.mti = 624;
  }

  private initByArray(key: number[]): void {
    const mt = this.mt;
    this.initGenrand(19650218);
    let i = 1, j = 0;
    for (let k = Math.max(624, key.length); k > 0; k--) {
      mt[i] = ((mt[i] ^ Math.imul(mt[i - 1] ^ (mt[i - 1] >>> 30), 1664525)) + key[j] + j) >>> 0;
      i++, j++;
      if (i >= 624) mt[0] = mt[623], i = 1;
      if (j >= key.length) j = 0;
    }
    for (let k = 623; k > 0; k--) {
      mt[i] = ((mt[i] ^ Math.imul(mt[i - 1] ^ (mt[i - 1] >>> 30), 1566083941)) - i) >>> 0;
      i++;
      if (i >= 624) mt[0] = mt[623], i = 1;
    }
    mt[0] = 0x80000000;
  }

  private next32(): number {
    const mt = this.mt;
    if (this.mti >= 624) {
      for (let k = 0; k < 624; k++) {
        const y = (mt[k] & 0x80000000) | (mt[(k + 1) % 624] & 0x7fffffff);
        mt[k] = mt[(k + 397) % 624] ^ (y >>> 1) ^ (y & 1 ? 0x9908b0df : 0);
      }
      this.mti = 0;
    }
    let y = mt[this.mti++];
    y ^= y >>> 11;
    y ^= (y << 7) & 0x9d2c5680;
    y ^= (y << 15) & 0xefc60000;
    y ^= y >>> 18;
    return y >>> 0;
  }

  /** getrandbits(k) for 1 ≤ k ≤ 32. */
  getrandbits(k: number): number {
    if (!Number.isInteger(k) || k < 1 || k > 32) throw new Error(`getrandbits(${k}): only 1..32 bits`);
    return this.next32() >>> (32 - k);
  }

  /** _randbelow(n): uniform in [0, n) by rejection on n's bit length. */
  randbelow(n: number): number {
    const k = Math.floor(Math.log2(n)) + 1;
    let r = this.getrandbits(k);
    while (r >= n) r = this.getrandbits(k);
    return r;
  }

  /** sample(population, k), Python 3's algorithm (a pool for small populations, else a set of chosen indices). */
  sample<T>(population: readonly T[], k: number): T[] {
    const n = population.length;
    if (!Number.isInteger(k) || k < 0 || k > n) throw new Error(`sample larger than population or negative (k = ${k}, n = ${n})`);
    let setsize = 21;
    if (k > 5) setsize += 4 ** Math.ceil(Math.log(k * 3) / Math.log(4));
    const result: T[] = [];
    if (n <= setsize) {
      const pool = [...population];
      for (let i = 0; i < k; i++) {
        const j = this.randbelow(n - i);
        result.push(pool[j]);
        pool[j] = pool[n - i - 1];
      }
    } else {
      const selected = new Set<number>();
      for (let i = 0; i < k; i++) {
        let j = this.randbelow(n);
        while (selected.has(j)) j = this.randbelow(n);
        selected.add(j);
        result.push(population[j]);
      }
    }
    return result;
  }
}

/** The study's per-category seed: the first 8 bytes of sha256("<imageSeed>|<category>"), big-endian. */
export async function categorySeed(imageSeed: number, category: string): Promise<bigint> {
  return BigInt(`0x${(await sha256Hex(new TextEncoder().encode(`${imageSeed}|${category}`))).slice(0, 16)}`);
}

// ---- the dataset folder ----------------------------------------------------------------------------------------------

/** ClassName.txt's categories, checked line by line (file:line). */
export function parseClassNames(content: string, file: string): string[] {
  const out: string[] = [];
  const seen = new Map<string, number>();
  const problems: string[] = [];
  content.split("\n").forEach((raw, i) => {
    const line = raw.trim();
    if (!line) return;
    const at = `${printable(file)}:${i + 1}`;
    if (!/^\/[a-z0-9_]\/[A-Za-z0-9_\-/ ]+$/.test(line) || line.split("/").some((p) => p === "." || p === "..") || line.endsWith("/")) {
      problems.push(`${at}: ${JSON.stringify(printable(line))} is not a SUN397 category path like /a/abbey`);
    } else if (seen.has(line)) {
      problems.push(`${at}: category ${printable(line)} repeats line ${seen.get(line)}`);
    } else {
      seen.set(line, i + 1);
      out.push(line);
    }
  });
  if (problems.length) throw new Error(`SUN397 class list: ${problems.length} bad line(s):\n${problems.slice(0, 20).join("\n")}`);
  if (!out.length) throw new Error(`SUN397 class list ${printable(file)} names no category`);
  return out.sort();
}

/** "/a/athletic_field/outdoor" → "a_athletic_field_outdoor". */
export function categorySlug(category: string): string {
  return category.replace(/^\/+/, "").replaceAll("/", "_").replaceAll(" ", "_").replaceAll("-", "_");
}

/** Width and height from a JPEG's frame header or a PNG's IHDR, without decoding. */
export function imageSize(bytes: Uint8Array, where: string): { width: number; height: number } {
  if (bytes[0] === 0x89 && bytes[1] === 0x50 && bytes.length >= 24) {
    const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    return { width: v.getUint32(16), height: v.getUint32(20) };
  }
  if (bytes[0] !== 0xff || bytes[1] !== 0xd8) throw new Error(`${where}: not a JPEG or PNG image`);
  let i = 2;
  while (i + 4 <= bytes.length) {
    if (bytes[i] !== 0xff) throw new Error(`${where}: corrupt JPEG (no marker at byte ${i})`);
    const marker = bytes[i + 1];
    if (marker === 0xff) {
      i++;
      continue;
    }
    const length = (bytes[i + 2] << 8) | bytes[i + 3];
    const isFrame = marker >= 0xc0 && marker <= 0xcf && marker !== 0xc4 && marker !== 0xc8 && marker !== 0xcc;
    if (isFrame && i + 9 <= bytes.length) {
      return { height: (bytes[i + 5] << 8) | bytes[i + 6], width: (bytes[i + 7] << 8) | bytes[i + 8] };
    }
    i += 2 + length;
  }
  throw new Error(`${where}: JPEG without a frame header`);
}

/** The study's output size for a reference of w × h: crop to multiples of 16, then (over 1024² pixels) scale to about
 * 1024² and floor to multiples of 16. */
export function studyOutputSize(width: number, height: number): { width: number; height: number } {
  let w = width - (width % 16), h = height - (height % 16);
  if (w < 16 || h < 16) throw new Error(`image ${width}×${height} is smaller than 16 px after cropping`);
  const max = 1024 * 1024;
  if (w * h > max) {
    const s = Math.sqrt(max / (w * h));
    [w, h] = [Math.floor(w * s), Math.floor(h * s)];
  }
  return { width: w - (w % 16), height: h - (h % 16) };
}

// ---- the builder -------------------------------------------------------------------------------------------------------

export interface Sun397Options {
  /** The SUN397 folder (holds ClassName.txt and the category folders). */
  root: string;
  /** Output folder: proposals.jsonl, add/tasks.jsonl, remove/tasks.jsonl. */
  out: string;
  /** Asks the VLM (the judge's client: endpoint, retries, cache). */
  client: JudgeClient;
  imagesPerCategory?: number;
  imageSeed?: number;
  /** Only these categories (default all of ClassName.txt). */
  categories?: string[];
  /** At most this many new requests in this run. */
  limit?: number;
  concurrency?: number;
  log?: (line: string) => void;
}

export interface ImageOutcome {
  category: string;
  file: string;
  width: number;
  height: number;
  add_object: string | null;
  remove_object: string | null;
  /** Why both are null: the reply was not a valid proposal (the raw reply is in the judge cache). */
  error?: string;
}

export interface Sun397Result {
  add: Task[];
  remove: Task[];
  outcomes: ImageOutcome[];
  /** Images left for a later run (limit reached) and categories without images. */
  pending: number;
  missing: string[];
  requests: number;
}

const article = (noun: string) => ("aeiou".includes(noun[0]) ? "an" : "a");
const objectSlug = (s: string) => s.replaceAll(" ", "_").replaceAll("-", "_").replaceAll("/", "-");

async function readOutcomes(path: string): Promise<Map<string, ImageOutcome>> {
  const out = new Map<string, ImageOutcome>();
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return out;
    throw new Error(`${printable(path)}: cannot read it: ${(e as Error).message}`);
  }
  text.split("\n").forEach((line, i) => {
    if (!line.trim()) return;
    let o: ImageOutcome;
    try {
      o = JSON.parse(line);
    } catch {
      throw new Error(`${printable(path)}:${i + 1}: not valid JSON; move the file away to ask again`);
    }
    if (typeof o?.category !== "string" || typeof o?.file !== "string") {
      throw new Error(`${printable(path)}:${i + 1}: not an image outcome`);
    }
    out.set(`${o.category}/${o.file}`, o);
  });
  return out;
}

/** Picks the images, asks for the objects (cached), writes the two task files. */
export async function buildSun397Tasks(o: Sun397Options): Promise<Sun397Result> {
  const root = resolve(o.root), out = resolve(o.out);
  const log = o.log ?? ((l: string) => console.error(l));
  const perCategory = o.imagesPerCategory ?? 2, imageSeed = o.imageSeed ?? 42;
  if (!Number.isInteger(perCategory) || perCategory < 1) throw new Error(`images per category ${perCategory} must be ≥ 1`);
  const classFile = join(root, "ClassName.txt");
  let classText: string;
  try {
    classText = await Deno.readTextFile(classFile);
  } catch {
    throw new Error(
      `SUN397 not found at ${printable(root)}: no ClassName.txt (download it from https://vision.princeton.edu/projects/2010/SUN/)`,
    );
  }
  const all = parseClassNames(classText, classFile);
  const categories = o.categories ?? all;
  for (const c of categories) if (!all.includes(c)) throw new Error(`category ${printable(c)} is not in ${printable(classFile)}`);

  const picks: { category: string; file: string; path: string }[] = [];
  const missing: string[] = [];
  for (const category of categories) {
    const dir = join(root, category.replace(/^\/+/, ""));
    const names: string[] = [];
    try {
      for await (const e of Deno.readDir(dir)) if (e.isFile && extname(e.name) === ".jpg") names.push(e.name);
    } catch {
      // A category without its folder is reported, as the study's extractor does.
    }
    if (!names.length) {
      missing.push(category);
      continue;
    }
    names.sort();
    const rng = new PyRandom(await categorySeed(imageSeed, category));
    for (const file of rng.sample(names, Math.min(perCategory, names.length))) picks.push({ category, file, path: join(dir, file) });
  }
  if (missing.length) log(`warning: ${missing.length} SUN397 categories have no .jpg: ${missing.slice(0, 5).map(printable).join(", ")}…`);

  await Deno.mkdir(out, { recursive: true });
  const outcomesPath = join(out, "proposals.jsonl");
  const known = await readOutcomes(outcomesPath);
  const todo = picks.filter((p) => !known.has(`${p.category}/${p.file}`));
  const limit = o.limit ?? Infinity;
  const asking = todo.slice(0, limit);
  const requestsBefore = o.client.requests;
  let next = 0;
  const worker = async () => {
    while (next < asking.length) {
      const p = asking[next++];
      const bytes = await Deno.readFile(p.path);
      const size = imageSize(bytes, p.path);
      const image: JudgeImage = { role: "reference", label: PROPOSAL_TEMPLATE.images[0].label, path: p.path, bytes };
      const question = { template: PROPOSAL_TEMPLATE, text: PROPOSAL_TEMPLATE.question, images: [image], system: PROPOSAL_SYSTEM_PROMPT };
      const reply = await o.client.complete(question);
      const parsed = parseProposal(reply.text);
      const outcome: ImageOutcome = typeof parsed === "string"
        ? { category: p.category, file: p.file, ...size, add_object: null, remove_object: null, error: parsed }
        : { category: p.category, file: p.file, ...size, ...parsed };
      known.set(`${p.category}/${p.file}`, outcome);
      // Appended as it comes: an interrupted run keeps what it paid for.
      await Deno.writeTextFile(outcomesPath, JSON.stringify(outcome) + "\n", { append: true });
      if (outcome.error) log(`${printable(p.category)} ${printable(p.file)}: no proposal (${printable(outcome.error)})`);
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, o.concurrency ?? 4) }, worker));

  const add: Task[] = [], remove: Task[] = [], outcomes: ImageOutcome[] = [];
  for (const p of picks) {
    const outcome = known.get(`${p.category}/${p.file}`);
    if (!outcome) continue;
    outcomes.push(outcome);
    const stem = `sun397_${categorySlug(p.category)}__${basename(p.file, ".jpg")}`;
    const size = studyOutputSize(outcome.width, outcome.height);
    const meta = { sun397_category: p.category, sun397_src_filename: p.file };
    const row = (kind: "add" | "remove", object: string): Task => {
      const task_id = `${kind}_${stem}_${objectSlug(object)}`;
      return {
        task_id,
        edit_type: kind,
        family: kind === "add" ? FAMILIES.sun397Add : FAMILIES.sun397Remove,
        instruction: kind === "add" ? `add ${article(object)} ${object}` : `remove the ${object}`,
        refs: [p.path],
        ...size,
        noise_seed: taskSeed(task_id),
        metadata: { ...meta, [`${kind}_object`]: object },
      };
    };
    if (outcome.add_object) add.push(row("add", outcome.add_object));
    if (outcome.remove_object) remove.push(row("remove", outcome.remove_object));
  }
  await writeTaskFile(join(out, "add", "tasks.jsonl"), add);
  await writeTaskFile(join(out, "remove", "tasks.jsonl"), remove);
  return { add, remove, outcomes, pending: todo.length - asking.length, missing, requests: o.client.requests - requestsBefore };
}
