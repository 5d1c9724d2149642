// Checks of a whole experiment before anything runs, so that a mistake in one condition is found before any folder is
// created rather than when that condition's turn comes:
//
// 1. names: every task id and condition name can name a folder and collides with nothing (the runner's own file
//    names, another id differing only in letter case) — a task is named with its file and line;
// 2. specs: every task × condition builds into a valid spec (prompt placeholders against every task's fields, the
//    spec's own validation), and block selections, steps and knockout settings read with the checkpoint's
//    block names, taken from its transformer config.json (no weights are read);
// 3. after the checkpoint is loaded, before the first task: the first task's spec of every condition goes through
//    the spec checker (checkSpec: taps, groups against the run's layout, patch row counts, images). An error that the
//    same task's plain run (no interventions, no captures) also gives belongs to the task and is left for that task
//    to fail on its own; the next task is tried instead.

import { printable } from "../runtime/printable.ts";
import type { RunSpec } from "../studies/spec.ts";
import { resolveBlocks, resolveSteps } from "../interventions/intervention.ts";
import { parseSetting } from "../interventions/knockout.ts";
import { conditionToSpec, type LoadedExperiment, modelBlockNames, type SpecContext, UnpairedTaskError } from "./experiment.ts";
import { folderNameProblem } from "./run_folder.ts";
import type { Task } from "./tasks.ts";

/** An experiment that cannot run as written; one line naming the file and the field or task. */
export class PreflightError extends Error {}

/** Line numbers of the task ids in a task file (first occurrence), for messages. */
async function taskLines(path: string): Promise<Map<string, number>> {
  const lines = new Map<string, number>();
  let text = "";
  try {
    text = await Deno.readTextFile(path);
  } catch { /* read already; numbers are only for messages */ }
  text.split("\n").forEach((line, i) => {
    try {
      const id = JSON.parse(line)?.task_id;
      if (typeof id === "string" && !lines.has(id)) lines.set(id, i + 1);
    } catch { /* a line the task reader skipped */ }
  });
  return lines;
}

/** Task ids and condition names that cannot name their folders. */
export async function checkNames(loaded: LoadedExperiment, tasks: Task[]): Promise<void> {
  const exp = loaded.experiment;
  const lines = await taskLines(exp.tasks);
  const where = (id: string) => `${printable(exp.tasks)}:${lines.get(id) ?? "?"}`;
  const seen = new Map<string, string>();
  for (const t of tasks) {
    const problem = folderNameProblem(t.task_id);
    if (problem) throw new PreflightError(`${where(t.task_id)}: task_id "${printable(t.task_id)}" cannot name a folder (${problem})`);
    const key = t.task_id.toLowerCase();
    const other = seen.get(key);
    if (other !== undefined) {
      throw new PreflightError(
        `${where(t.task_id)}: task_id "${printable(t.task_id)}" differs from "${printable(other)}" (${where(other)}) only in letter ` +
          `case; they would share a folder on some file systems`,
      );
    }
    seen.set(key, t.task_id);
  }
  const names = new Map<string, number>();
  for (const [i, c] of exp.conditions.entries()) {
    const problem = folderNameProblem(c.name);
    const at = `${printable(loaded.file)}: conditions[${i}].name`;
    if (problem) throw new PreflightError(`${at}: "${printable(c.name)}" cannot name a folder (${problem})`);
    const j = names.get(c.name.toLowerCase());
    if (j !== undefined) throw new PreflightError(`${at}: "${printable(c.name)}" differs from conditions[${j}].name only in letter case`);
    names.set(c.name.toLowerCase(), i);
  }
}

/** Block selections, steps and knockout settings of a spec, read with the checkpoint's block names. */
function checkSelections(spec: RunSpec, blocks: string[] | undefined): void {
  const steps = spec.steps;
  spec.captures?.forEach((c, i) => {
    if (steps !== undefined) resolveSteps(c.steps, steps, `captures[${i}].steps`);
  });
  spec.interventions?.forEach((iv, i) => {
    const at = `interventions[${i}]`;
    if (iv.type === "knockout") {
      const settings = iv.settings ?? [{ setting: iv.setting ?? "", blocks: iv.blocks, steps: iv.steps }];
      settings.forEach((k, j) => {
        const where = iv.settings ? `${at}.settings[${j}]` : at;
        parseSetting(k.setting);
        if (blocks) resolveBlocks(k.blocks ?? "all", blocks, `${where}.blocks`);
        if (steps !== undefined) resolveSteps(k.steps, steps, `${where}.steps`);
      });
    } else if (iv.type === "patch") {
      if (blocks && iv.block) resolveBlocks([iv.block], blocks, `${at}.block`);
      if (steps !== undefined) resolveSteps(iv.steps, steps, `${at}.steps`);
    } else if (iv.type === "lens" && blocks) resolveBlocks([iv.block], blocks, `${at}.block`);
  });
}

/** Build every task × condition spec and check its selections; returns the specs (null: no patch source). */
export async function checkSpecs(
  loaded: LoadedExperiment,
  tasks: Task[],
  ctx: SpecContext,
): Promise<Map<string, Map<string, RunSpec | null>>> {
  const exp = loaded.experiment;
  const blocks = await modelBlockNames(exp.model);
  const specs = new Map<string, Map<string, RunSpec | null>>();
  const problems: string[] = [];
  for (const [i, c] of exp.conditions.entries()) {
    for (const task of tasks) {
      let row = specs.get(task.task_id);
      if (!row) specs.set(task.task_id, row = new Map());
      try {
        const spec = conditionToSpec(exp, c, task, ctx);
        checkSelections(spec, blocks);
        row.set(c.name, spec);
      } catch (e) {
        if (e instanceof UnpairedTaskError) {
          row.set(c.name, null);
          continue;
        }
        const msg = oneLine((e as Error).message).replace(/^task [^,]*, condition [^:]*: /, "");
        problems.push(`conditions[${i}] "${printable(c.name)}", task ${printable(task.task_id)}: ${msg}`);
        break; // one problem per condition is enough to show
      }
    }
  }
  if (problems.length) {
    const more = problems.length > 1 ? ` (and ${problems.length - 1} more condition(s) with problems)` : "";
    throw new PreflightError(`${printable(loaded.file)}: ${problems[0]}${more}; nothing was run`);
  }
  return specs;
}

/** The checks that need the loaded checkpoint, on the first usable task of every condition (see the header). */
export async function checkWithModel(
  loaded: LoadedExperiment,
  tasks: Task[],
  specs: Map<string, Map<string, RunSpec | null>>,
  check: (spec: RunSpec) => Promise<void>,
  log: (line: string) => void,
): Promise<void> {
  const exists = (p: string) => {
    try {
      return Deno.statSync(p).isFile;
    } catch {
      return false;
    }
  };
  // Tasks whose reference images are already there come first (a synthetic one is made only when its task runs).
  const ordered = [...tasks].sort((a, b) =>
    Number(!a.refs.every(exists) || !!a.synthetic_ref) - Number(!b.refs.every(exists) || !!b.synthetic_ref)
  );
  for (const [i, c] of loaded.experiment.conditions.entries()) {
    let tried = 0;
    for (const task of ordered) {
      const spec = specs.get(task.task_id)?.get(c.name);
      if (!spec || tried >= 3) continue;
      tried++;
      try {
        await check(spec);
        break;
      } catch (e) {
        const reason = oneLine((e as Error).message);
        if (await plainRunFails(spec, check)) {
          log(`  check of condition ${printable(c.name)} on task ${printable(task.task_id)} skipped: the task itself fails (${reason})`);
          continue;
        }
        throw new PreflightError(
          `${printable(loaded.file)}: conditions[${i}] "${printable(c.name)}" (checked on task ${printable(task.task_id)}): ${reason}; ` +
            `no task was run`,
        );
      }
    }
  }
}

async function plainRunFails(spec: RunSpec, check: (spec: RunSpec) => Promise<void>): Promise<boolean> {
  try {
    await check({ ...spec, interventions: [], captures: [] });
    return false;
  } catch {
    return true;
  }
}

/** The first line of a message, control characters escaped. */
export function oneLine(message: string): string {
  return printable(String(message ?? "").split("\n")[0].trim());
}
