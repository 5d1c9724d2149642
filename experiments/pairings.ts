// Pairings for I2I-to-I2I patching as the published study ran them, and pair-list files for any other design.
//
// A pairing is a list of directed pairs {source, target} of task ids: the source run's text rows are patched into
// the target run. The study's three designs (its experiments/i2i_to_i2i_patching/build_pairs_*.py):
// - "colour-directed": tasks with the same instruction form a group (one object); within it every directed pair of
//   distinct references (colours a → b, a ≠ b, in sorted order, a major) is one pair, and the replicate slots
//   cycle: the n-th directed pair of the group takes the source from replicate i = n mod R and the target from
//   replicate (i + 1) mod R (R replicates, the _s<i> suffix of the ids). 8 objects × 56 pairs = 448.
// - "style-to-real": an illustration task (family style) is the source of the real-photo task (family style_real)
//   with the same subject (metadata.subject) and instruction, replicate i → replicate (i + 1) mod R.
//   18 subjects × 5 prompts × 5 replicates = 450.
// - "human-shared": the shared-prompt people (family human_shared) are grouped by metadata.shared_slug; every
//   directed pair of distinct people (metadata.human_idx, ascending, a major) within a prompt. 5 × 90 = 450.
// Every pair must share the instruction (unless allowed otherwise), differ in reference, and share the output size.
//
// Pair files are JSON Lines, one {"target": id, "source": id} per line; the published plain lists ("source target"
// per line, # comments) are read too. Bad lines are refused with file:line.
//
// The runner runs tasks, so a pairing is written as a pair task file (writePairTaskFile): one line per pair, with
// the id <source>__<target>, the target's fields, and `patch_source` naming the source run — its instruction,
// references and noise seed (the source's own, as the study ran it). Every condition then runs once per pair (the
// baseline is the target's baseline of that pair, as in the study's pair folders) and patch conditions take the
// rows from the named source.

import { printable } from "../runtime/printable.ts";
import { type Task, TASK_ID_PATTERN, writeTaskFile } from "./tasks.ts";
import { FAMILIES } from "./tasks.ts";

export interface PairIds {
  source: string;
  target: string;
}

export const PAIR_DESIGNS = ["colour-directed", "style-to-real", "human-shared"] as const;
export type PairDesign = typeof PAIR_DESIGNS[number];

export interface PairCheckOptions {
  /** Allow a source and target with different instructions (default: refused, as in the study's runner). */
  allowMismatchedInstruction?: boolean;
}

const byText = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0);

function referenceKey(t: Task): string {
  return t.synthetic_ref ? `synthetic:${t.synthetic_ref.seed}:${t.synthetic_ref.caption}` : t.refs.join("\u0000");
}

/** The replicate index of a task id ending in _s<i>. */
export function replicateOf(taskId: string): number | undefined {
  const m = /_s(\d+)$/.exec(taskId);
  return m ? Number(m[1]) : undefined;
}

/** Why a pair cannot be patched, or null. */
export function pairProblem(source: Task, target: Task, options: PairCheckOptions = {}): string | null {
  if (source.task_id === target.task_id) return "source and target are the same task";
  if (!options.allowMismatchedInstruction && source.instruction !== target.instruction) {
    return `different instructions (${JSON.stringify(source.instruction)} vs ${JSON.stringify(target.instruction)})`;
  }
  if (referenceKey(source) === referenceKey(target)) return "source and target have the same reference";
  if (source.width !== target.width || source.height !== target.height) {
    return `different sizes (${source.width}×${source.height} vs ${target.width}×${target.height}); patched rows would not line up`;
  }
  if (source.patch_source || target.patch_source) return "a task of a pair task file cannot be paired again";
  return null;
}

/** Group values by a key, keys in first-seen order. */
function groupBy<T>(items: T[], key: (t: T) => string): Map<string, T[]> {
  const out = new Map<string, T[]>();
  for (const t of items) {
    const k = key(t);
    if (!out.has(k)) out.set(k, []);
    out.get(k)!.push(t);
  }
  return out;
}

/** Tasks of one concept by replicate slot, every slot 0..R−1 present once. */
function slots(tasks: Task[], where: string): Task[] {
  const bySlot: Task[] = [];
  for (const t of tasks) {
    const r = replicateOf(t.task_id);
    if (r === undefined) throw new Error(`${where}: task ${printable(t.task_id)} has no replicate suffix _s<i>`);
    if (bySlot[r]) throw new Error(`${where}: tasks ${printable(bySlot[r].task_id)} and ${printable(t.task_id)} share replicate ${r}`);
    bySlot[r] = t;
  }
  for (let i = 0; i < bySlot.length; i++) if (!bySlot[i]) throw new Error(`${where}: replicate _s${i} is missing`);
  return bySlot;
}

function colourDirected(tasks: Task[]): PairIds[] {
  const pairs: PairIds[] = [];
  const groups = groupBy(tasks, (t) => `${t.edit_type}\u0000${t.instruction}`);
  for (const key of [...groups.keys()].sort(byText)) {
    const group = groups.get(key)!;
    const where = `colour pairs of "${printable(group[0].instruction)}"`;
    const concepts = groupBy(group, referenceKey);
    const names = [...concepts.keys()].sort(byText);
    if (names.length < 2) continue;
    const replicas = names.map((n) => slots(concepts.get(n)!, where));
    const r = replicas[0].length;
    if (replicas.some((x) => x.length !== r)) throw new Error(`${where}: the references have different numbers of replicates`);
    let n = 0;
    for (let a = 0; a < names.length; a++) {
      for (let b = 0; b < names.length; b++) {
        if (a === b) continue;
        const i = n++ % r;
        pairs.push({ source: replicas[a][i].task_id, target: replicas[b][(i + 1) % r].task_id });
      }
    }
  }
  return pairs;
}

function styleToReal(tasks: Task[]): PairIds[] {
  const subject = (t: Task) => {
    const s = t.metadata.subject;
    if (typeof s !== "string" || !s) throw new Error(`style pairs: task ${printable(t.task_id)} has no metadata.subject`);
    return s;
  };
  const styles = groupBy(tasks.filter((t) => t.family === FAMILIES.style), (t) => `${subject(t)}\u0000${t.instruction}`);
  const reals = groupBy(tasks.filter((t) => t.family === FAMILIES.styleReal), (t) => `${subject(t)}\u0000${t.instruction}`);
  if (!styles.size) throw new Error(`style pairs: no task of family "${FAMILIES.style}"`);
  const pairs: PairIds[] = [];
  for (const key of [...styles.keys()].sort(byText)) {
    const [subj, instruction] = key.split("\u0000");
    const where = `style pairs of ${printable(subj)} / "${printable(instruction)}"`;
    const real = reals.get(key);
    if (!real) throw new Error(`${where}: no ${FAMILIES.styleReal} task with this subject and instruction`);
    const src = slots(styles.get(key)!, where), tgt = slots(real, where);
    if (src.length !== tgt.length) throw new Error(`${where}: ${src.length} illustration replicates but ${tgt.length} real ones`);
    for (let i = 0; i < src.length; i++) pairs.push({ source: src[i].task_id, target: tgt[(i + 1) % tgt.length].task_id });
  }
  return pairs;
}

function humanShared(tasks: Task[]): PairIds[] {
  const people = tasks.filter((t) => t.family === FAMILIES.humanShared);
  if (!people.length) throw new Error(`human pairs: no task of family "${FAMILIES.humanShared}"`);
  const bySlug = groupBy(people, (t) => {
    const s = t.metadata.shared_slug;
    if (typeof s !== "string" || !s) throw new Error(`human pairs: task ${printable(t.task_id)} has no metadata.shared_slug`);
    return s;
  });
  const pairs: PairIds[] = [];
  let persons: string | undefined;
  for (const slug of [...bySlug.keys()].sort(byText)) {
    const byIdx = new Map<number, Task>();
    for (const t of bySlug.get(slug)!) {
      const idx = t.metadata.human_idx;
      if (!Number.isSafeInteger(idx)) throw new Error(`human pairs: task ${printable(t.task_id)} has no integer metadata.human_idx`);
      if (byIdx.has(idx as number)) throw new Error(`human pairs: prompt ${printable(slug)} has person ${idx} twice`);
      byIdx.set(idx as number, t);
    }
    const idxs = [...byIdx.keys()].sort((a, b) => a - b);
    const list = idxs.join(",");
    if (persons !== undefined && persons !== list) {
      throw new Error(`human pairs: prompt ${printable(slug)} has people ${list}, another prompt ${persons}`);
    }
    persons = list;
    for (const a of idxs) for (const b of idxs) if (a !== b) pairs.push({ source: byIdx.get(a)!.task_id, target: byIdx.get(b)!.task_id });
  }
  return pairs;
}

/** The study's pairs of a design over a task set, checked (instruction, reference, size). */
export function buildPairs(tasks: Task[], design: PairDesign, options: PairCheckOptions = {}): PairIds[] {
  let pairs: PairIds[];
  if (design === "colour-directed") pairs = colourDirected(tasks);
  else if (design === "style-to-real") pairs = styleToReal(tasks);
  else if (design === "human-shared") pairs = humanShared(tasks);
  else throw new Error(`unknown pair design "${printable(String(design))}" (known: ${PAIR_DESIGNS.join(", ")})`);
  if (!pairs.length) throw new Error(`pair design ${design}: the task set gives no pair`);
  const byId = new Map(tasks.map((t) => [t.task_id, t]));
  for (const p of pairs) {
    const problem = pairProblem(byId.get(p.source)!, byId.get(p.target)!, options);
    if (problem) throw new Error(`pair design ${design}: ${p.source} → ${p.target}: ${problem}`);
  }
  return pairs;
}

// ---- pair files ----------------------------------------------------------------------------------------------------

/** Parse a pair file (JSON Lines {"target", "source"}, or "source target" lines). Every bad line is one error naming
 * file:line; all of them are reported together. */
export function parsePairLines(content: string, file: string, tasks: Task[], options: PairCheckOptions = {}): PairIds[] {
  const byId = new Map(tasks.map((t) => [t.task_id, t]));
  const pairs: PairIds[] = [];
  const problems: string[] = [];
  const seen = new Map<string, number>();
  const lines = content.split("\n");
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i].trim();
    if (!line || line.startsWith("#")) continue;
    const at = `${printable(file)}:${i + 1}`;
    let pair: PairIds;
    if (line.startsWith("{")) {
      let raw: unknown;
      try {
        raw = JSON.parse(line);
      } catch (e) {
        problems.push(`${at}: not valid JSON (${(e as Error).message})`);
        continue;
      }
      const o = raw as Record<string, unknown>;
      const extra = Object.keys(o).filter((k) => k !== "source" && k !== "target");
      if (typeof o.source !== "string" || typeof o.target !== "string" || !o.source || !o.target) {
        problems.push(`${at}: expected {"target": task id, "source": task id}`);
        continue;
      }
      if (extra.length) {
        problems.push(`${at}: unknown field "${printable(extra[0])}" (a pair is {"target", "source"})`);
        continue;
      }
      pair = { source: o.source, target: o.target };
    } else {
      const parts = line.split(/\s+/);
      if (parts.length !== 2) {
        problems.push(`${at}: expected a JSON object or two task ids ("source target"), got ${parts.length} fields`);
        continue;
      }
      pair = { source: parts[0], target: parts[1] };
    }
    const missing = [pair.source, pair.target].filter((id) => !byId.has(id));
    if (missing.length) {
      problems.push(`${at}: no task ${missing.map((m) => `"${printable(m)}"`).join(" or ")} in the task file`);
      continue;
    }
    const key = `${pair.source}\u0000${pair.target}`;
    if (seen.has(key)) {
      problems.push(`${at}: the pair ${printable(pair.source)} → ${printable(pair.target)} repeats line ${seen.get(key)}`);
      continue;
    }
    const problem = pairProblem(byId.get(pair.source)!, byId.get(pair.target)!, options);
    if (problem) {
      problems.push(`${at}: ${problem}`);
      continue;
    }
    if (!TASK_ID_PATTERN.test(pairTaskId(pair))) {
      problems.push(`${at}: the pair's id ${printable(pairTaskId(pair))} cannot name a folder`);
      continue;
    }
    seen.set(key, i + 1);
    pairs.push(pair);
  }
  if (problems.length) {
    const shown = problems.slice(0, 20).join("\n");
    throw new Error(`pair file ${printable(file)}: ${problems.length} bad line(s):\n${shown}${problems.length > 20 ? "\n…" : ""}`);
  }
  if (!pairs.length) throw new Error(`pair file ${printable(file)} holds no pair`);
  return pairs;
}

export async function readPairFile(path: string, tasks: Task[], options: PairCheckOptions = {}): Promise<PairIds[]> {
  let content: string;
  try {
    content = await Deno.readTextFile(path);
  } catch (e) {
    const why = e instanceof Deno.errors.NotFound ? "no such file" : (e as Error).message;
    throw new Error(`pair file ${printable(path)}: cannot read it: ${why}`);
  }
  return parsePairLines(content, path, tasks, options);
}

export function pairLines(pairs: PairIds[]): string {
  return pairs.map((p) => JSON.stringify({ target: p.target, source: p.source })).join("\n") + "\n";
}

// ---- pair task files -----------------------------------------------------------------------------------------------

/** The id of a pair's task: <source>__<target>, as the study names its pair folders. */
export function pairTaskId(p: PairIds): string {
  return `${p.source}__${p.target}`;
}

/** One task per pair: the target's fields under the pair's id, with the source named as its patch source. */
export function pairTasks(tasks: Task[], pairs: PairIds[]): Task[] {
  const byId = new Map(tasks.map((t) => [t.task_id, t]));
  return pairs.map((p) => {
    const source = byId.get(p.source), target = byId.get(p.target);
    if (!source || !target) throw new Error(`pair ${p.source} → ${p.target}: no such task`);
    return {
      ...structuredClone(target),
      task_id: pairTaskId(p),
      metadata: { ...target.metadata, pair_source: source.task_id, pair_target: target.task_id },
      patch_source: {
        task_id: source.task_id,
        instruction: source.instruction,
        refs: [...source.refs],
        ...(source.synthetic_ref ? { synthetic_ref: { ...source.synthetic_ref } } : {}),
        noise_seed: source.noise_seed,
      },
    };
  });
}

/** Write the pair task file of a pairing (see the header). */
export async function writePairTaskFile(path: string, tasks: Task[], pairs: PairIds[]): Promise<Task[]> {
  const units = pairTasks(tasks, pairs);
  await writeTaskFile(path, units);
  return units;
}
