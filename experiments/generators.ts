// Task families that need no downloaded data, and the pairing rule of I2I-to-I2I patching.
//
// Solid colours: a swatch PNG per colour (a solid square of its sRGB value), crossed with objects and seeds; the
// instruction asks for the object in the swatch's colour ("draw a couch in this color"). The named colours are the
// published study's eight swatches (their exact RGB values, read from its data/solid_colors/*.png), not CSS's.
// `seeds` are noise seeds (task ids end in _s<seed>) unless `noiseSeed: "crc32"`, where they are replicate indices
// and each task's noise seed is crc32(task id), the study's rule (experiments/task_seed.ts); task_sets.ts builds the
// study's 320 rows that way.
//
// Pairing ("shift"): tasks with the same edit_type and instruction form a group; the group's distinct reference sets
// are sorted, and the task whose references are the j-th set takes its patch source from the (j+1 mod m)-th set —
// the same seed if such a task exists, else the first by task_id. The source run starts from noise seed
// target.noise_seed + seedOffset (default 1): a shifted seed, so what reaches the target through the patched rows is
// not the source's noise. A group with a single reference set has no source (such tasks are reported as unpaired).
// The study's own pairings (every directed colour pair, style→real, people) and pair-list files: pairings.ts.

import { dirname, join, resolve } from "node:path";
import { savePng } from "../model/images.ts";
import { type Task, writeTaskFile } from "./tasks.ts";
import { taskSeed } from "./task_seed.ts";

export interface NamedColour {
  name: string;
  /** sRGB, 0..255. */
  rgb: [number, number, number];
}

/** The published study's eight swatch colours (data/solid_colors/solid_<name>.png), in its order. */
export const NAMED_COLOURS: readonly NamedColour[] = [
  { name: "blue", rgb: [40, 90, 220] },
  { name: "brown", rgb: [120, 75, 45] },
  { name: "green", rgb: [50, 170, 80] },
  { name: "orange", rgb: [230, 120, 40] },
  { name: "pink", rgb: [230, 120, 170] },
  { name: "purple", rgb: [140, 60, 180] },
  { name: "red", rgb: [220, 40, 40] },
  { name: "yellow", rgb: [240, 210, 60] },
];

/** The study's eight objects, in its order. */
export const DEFAULT_OBJECTS: readonly string[] = ["ball", "car", "chair", "couch", "hat", "mug", "pillow", "vase"];

export const DEFAULT_COLOUR_INSTRUCTION = "draw a {object} in this color";

export function colourHex(rgb: readonly number[]): string {
  return "#" + rgb.map((v) => v.toString(16).padStart(2, "0")).join("");
}

/** A named colour, or "name=#rrggbb" for one of your own. */
export function findColour(spec: string): NamedColour {
  const own = /^([a-z][a-z0-9-]*)=#?([0-9a-fA-F]{6})$/.exec(spec.trim());
  if (own) {
    const hex = own[2];
    return { name: own[1], rgb: [0, 2, 4].map((i) => parseInt(hex.slice(i, i + 2), 16)) as [number, number, number] };
  }
  const found = NAMED_COLOURS.find((c) => c.name === spec.trim().toLowerCase());
  if (!found) throw new Error(`unknown colour "${spec}" (known: ${NAMED_COLOURS.map((c) => c.name).join(", ")}; or name=#rrggbb)`);
  return found;
}

/** Write a solid-colour square PNG. */
export async function writeSwatch(path: string, rgb: readonly number[], size: number): Promise<void> {
  const n = size * size;
  const planes = new Float32Array(3 * n);
  for (let c = 0; c < 3; c++) planes.fill(rgb[c] / 255, c * n, (c + 1) * n);
  await Deno.mkdir(dirname(path), { recursive: true });
  await savePng(path, planes, size, size);
}

export interface ColourTaskOptions {
  /** Folder that receives tasks.jsonl and swatches/. */
  out: string;
  colours: (string | NamedColour)[];
  objects: string[];
  seeds: number[];
  /** Output size of every task (default 1024). */
  width?: number;
  height?: number;
  /** Side of the swatch images (default 256; the pipeline needs at least 64). */
  swatchSize?: number;
  /** Instruction with an {object} placeholder (default "draw a {object} in this color"). */
  instruction?: string;
  /** First part of every task id (default "color": color_<colour>_<object>_s<seed>). */
  idPrefix?: string;
  /** "seed" (default): `seeds` are the noise seeds. "crc32": they are replicate indices and the noise seed is
   * crc32(task id). */
  noiseSeed?: "seed" | "crc32";
  /** edit_type and family of every task (default "color" and "color"). */
  editType?: string;
  family?: string;
  /** Swatch file name prefix (default none: swatches/<colour>.png; the study's: "solid_"). */
  swatchPrefix?: string;
}

export interface ColourTaskSet {
  taskFile: string;
  tasks: Task[];
  swatches: Map<string, string>;
}

function slug(s: string): string {
  const out = s.trim().toLowerCase().replace(/[^a-z0-9]+/g, "-").replace(/^-+|-+$/g, "");
  if (!out) throw new Error(`"${s}" gives an empty name`);
  return out;
}

/** Solid colours × objects × seeds, written as `<out>/tasks.jsonl` and `<out>/swatches/<colour>.png`. */
export async function writeColourTasks(options: ColourTaskOptions): Promise<ColourTaskSet> {
  const out = resolve(options.out);
  const size = options.swatchSize ?? 256;
  if (!Number.isInteger(size) || size < 64) throw new Error(`swatch size ${size}: references need at least 64 px a side`);
  const template = options.instruction ?? DEFAULT_COLOUR_INSTRUCTION;
  if (!template.includes("{object}")) throw new Error(`instruction "${template}" has no {object} placeholder`);
  if (!options.colours.length || !options.objects.length || !options.seeds.length) {
    throw new Error("give at least one colour, object and seed");
  }
  const colours = options.colours.map((c) => typeof c === "string" ? findColour(c) : c);
  for (const s of options.seeds) if (!Number.isSafeInteger(s) || s < 0) throw new Error(`seed ${s} must be a whole number ≥ 0`);
  const noiseSeed = options.noiseSeed ?? "seed";
  if (noiseSeed !== "seed" && noiseSeed !== "crc32") throw new Error(`noise seed rule "${noiseSeed}": expected seed or crc32`);
  const idPrefix = slug(options.idPrefix ?? "color").replaceAll("-", "_");
  const swatches = new Map<string, string>();
  await Deno.mkdir(join(out, "swatches"), { recursive: true });
  for (const c of colours) {
    if (swatches.has(c.name)) throw new Error(`colour "${c.name}" is listed twice`);
    const path = join(out, "swatches", `${options.swatchPrefix ?? ""}${slug(c.name)}.png`);
    await writeSwatch(path, c.rgb, size);
    swatches.set(c.name, path);
  }
  const tasks: Task[] = [];
  for (const c of colours) {
    for (const object of options.objects) {
      for (const seed of options.seeds) {
        const task_id = `${idPrefix}_${slug(c.name)}_${slug(object)}_s${seed}`;
        tasks.push({
          task_id,
          edit_type: options.editType ?? "color",
          family: options.family ?? "color",
          instruction: template.replaceAll("{object}", object),
          refs: [swatches.get(c.name)!],
          width: options.width ?? 1024,
          height: options.height ?? 1024,
          noise_seed: noiseSeed === "crc32" ? taskSeed(task_id) : seed,
          metadata: { colour: c.name, rgb: c.rgb, hex: colourHex(c.rgb), object },
        });
      }
    }
  }
  const ids = new Set(tasks.map((t) => t.task_id));
  if (ids.size !== tasks.length) throw new Error("two colours or objects give the same task id; rename one");
  const taskFile = join(out, "tasks.jsonl");
  await writeTaskFile(taskFile, tasks);
  return { taskFile, tasks, swatches };
}

// ---- pairing for I2I-to-I2I patching ---------------------------------------------------------------------------

/** "shift": the source a task line names, else the shift rule. "task": only the source a task line names (pair task
 * files, pairings.ts). */
export type PairingRule = "shift" | "task";
export const PAIRING_RULES: readonly PairingRule[] = ["shift", "task"];

export interface TaskPair {
  target: Task;
  source: Task;
  /** Noise seed of the source run. */
  sourceSeed: number;
}

export interface PairingOptions {
  rule?: PairingRule;
  /** Added to the target's noise seed for the source run (default 1). */
  seedOffset?: number;
}

function referenceKey(t: Task): string {
  return t.synthetic_ref ? `synthetic:${t.synthetic_ref.seed}:${t.synthetic_ref.caption}` : t.refs.join("\u0000");
}

/** The task a line's `patch_source` describes (sizes and grouping from the target). */
export function patchSourceTask(target: Task): Task {
  const s = target.patch_source;
  if (!s) throw new Error(`task ${target.task_id} names no patch source`);
  return {
    task_id: s.task_id,
    edit_type: target.edit_type,
    family: target.family,
    instruction: s.instruction,
    refs: s.refs,
    ...(s.synthetic_ref ? { synthetic_ref: s.synthetic_ref } : {}),
    width: target.width,
    height: target.height,
    noise_seed: s.noise_seed,
    metadata: {},
  };
}

/** Source task of every pairable task, by target task_id (see the header for the rule). A task whose line names its
 * patch source (a pair task file) is paired with it, at the source's own noise seed. */
export function pairForPatching(tasks: Task[], options: PairingOptions = {}): Map<string, TaskPair> {
  const rule = options.rule ?? "shift";
  if (!PAIRING_RULES.includes(rule)) throw new Error(`unknown pairing rule "${rule}" (known: ${PAIRING_RULES.join(", ")})`);
  const offset = options.seedOffset ?? 1;
  if (!Number.isSafeInteger(offset)) throw new Error(`seed offset ${offset} must be an integer`);
  const named = new Map<string, TaskPair>();
  for (const t of tasks) {
    if (t.patch_source) named.set(t.task_id, { target: t, source: patchSourceTask(t), sourceSeed: t.patch_source.noise_seed });
  }
  if (rule === "task") return named;
  const groups = new Map<string, Task[]>();
  for (const t of tasks) {
    if (t.patch_source) continue;
    const key = `${t.edit_type}\u0000${t.instruction}`;
    if (!groups.has(key)) groups.set(key, []);
    groups.get(key)!.push(t);
  }
  const pairs = new Map<string, TaskPair>();
  for (const group of groups.values()) {
    const byRefs = new Map<string, Task[]>();
    for (const t of group) {
      const k = referenceKey(t);
      if (!byRefs.has(k)) byRefs.set(k, []);
      byRefs.get(k)!.push(t);
    }
    const keys = [...byRefs.keys()].sort();
    if (keys.length < 2) continue;
    for (const [j, key] of keys.entries()) {
      const candidates = [...byRefs.get(keys[(j + 1) % keys.length])!].sort((a, b) =>
        a.task_id < b.task_id ? -1 : a.task_id > b.task_id ? 1 : 0
      );
      for (const target of byRefs.get(key)!) {
        const source = candidates.find((c) => c.noise_seed === target.noise_seed) ?? candidates[0];
        const sourceSeed = target.noise_seed + offset;
        if (sourceSeed < 0) throw new Error(`task ${target.task_id}: seed offset ${offset} gives a negative source seed`);
        pairs.set(target.task_id, { target, source, sourceSeed });
      }
    }
  }
  for (const [id, pair] of named) pairs.set(id, pair);
  return pairs;
}
