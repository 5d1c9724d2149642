// Attention flow and effects aggregated over the tasks of an experiment: one cell per condition × task family, each
// number the mean over the cell's tasks with its 95% interval (stats.ts meanInterval: Student t with n − 1 degrees
// of freedom for n < 30, normal for n ≥ 30, none for n = 1).
//
// Attention flow (attention_flow.json): per (block, step, query group, key group) the mean-over-heads mass, and per
// (block, step, query group) the summed mass on the reference key groups (flow_plots.ts isReferenceGroup; the
// interval of a sum comes from each task's own sum, not from the groups' intervals). A mean over tasks is only
// meaningful when every task measured the same groups, so a cell uses the group lists (names, in order, and the
// forward) that most of its tasks have (a tie goes to the list of the first task in the run's order); tasks with other
// lists are left out and counted. Token counts are not compared: they follow each task's prompt and references.
//
// Effects (effects.json): per run ("intervention", "control"), block, step and row group, the relL2 and cosine of the
// tasks; the same majority rule applies to the row-group names (a task without references has no "ref" group). A
// relL2 that is undefined (null: an all-zero baseline) is left out of that point's n and counted.
//
// Files beside the report (aggregateFiles): attention_flow_aggregate.{json,csv} and effects_aggregate.{json,csv};
// the CSVs in long form, one row per number with its n, sd, interval and the interval's method.

import { join } from "node:path";
import type { AttentionFlowJson } from "../interventions/attention_flow.ts";
import type { EffectRecord, EffectsJson, RowStats } from "../studies/effects.ts";
import { printable } from "../runtime/printable.ts";
import { isReferenceGroup, parseAttentionFlowJson } from "./flow_plots.ts";
import { parseEffectsJson } from "./effects_plots.ts";
import { pathExists, writeTextAtomic } from "./files.ts";
import { conditionDir, type RunFolder } from "./run_folder.ts";
import { MEAN_INTERVAL_RULE, type MeanInterval, meanInterval } from "./stats.ts";

export const AGGREGATE_FORMAT = "kleinscope-aggregate";

/** One task's parsed file in a cell. */
export interface TaskOutput<T> {
  task_id: string;
  family: string;
  condition: string;
  json: T;
}

/** A task left out of a cell, and why. */
export interface LeftOutTask {
  task_id: string;
  reason: string;
}

export interface FlowAggregateTable {
  block: string;
  blockIndex: number;
  step: number;
  /** [query group][key group]: the mean-over-heads mass over the tasks that have this table. */
  mass: MeanInterval[][];
}

export interface FlowAggregate {
  condition: string;
  family: string;
  forward: "cond" | "uncond";
  queryGroups: string[];
  keyGroups: string[];
  /** Tasks averaged, in the run's order. */
  tasks: string[];
  /** Tasks whose group lists differ from the cell's. */
  leftOut: LeftOutTask[];
  /** In block, then step order. */
  tables: FlowAggregateTable[];
  /** The key groups summed as "the reference" (empty: the key groups hold no reference group). */
  referenceKeys: string[];
  /** Per table (same order): per query group, the summed mass on `referenceKeys`; empty without reference keys. */
  toReference: { block: string; blockIndex: number; step: number; mass: MeanInterval[] }[];
}

export type EffectsRunName = "intervention" | "control";

export interface EffectsAggregatePoint {
  run: EffectsRunName;
  block: string;
  blockIndex: number;
  step: number;
  group: string;
  relL2: MeanInterval;
  /** Tasks whose relL2 here is undefined (null in effects.json), left out of relL2's n. */
  relL2Undefined: number;
  cosine: MeanInterval;
}

export interface EffectsAggregate {
  condition: string;
  family: string;
  groups: string[];
  tasks: string[];
  leftOut: LeftOutTask[];
  /** Tasks with a control run (the control's points average over these). */
  controlTasks: number;
  /** By run, block, step, then group (in `groups` order). */
  points: EffectsAggregatePoint[];
}

/** The cells of a set of outputs: condition (in `conditions` order) × family (sorted). */
function cells<T>(
  outputs: TaskOutput<T>[],
  conditions: readonly string[],
): { condition: string; family: string; items: TaskOutput<T>[] }[] {
  const families = [...new Set(outputs.map((o) => o.family))].sort();
  const known = [...conditions, ...new Set(outputs.map((o) => o.condition).filter((c) => !conditions.includes(c)))];
  const out: { condition: string; family: string; items: TaskOutput<T>[] }[] = [];
  for (const condition of known) {
    for (const family of families) {
      const items = outputs.filter((o) => o.condition === condition && o.family === family);
      if (items.length) out.push({ condition, family, items });
    }
  }
  return out;
}

/** The items whose `key` is the most common one (a tie: the first item's), and the others. */
function majority<T>(items: T[], key: (item: T) => string): { kept: T[]; others: T[]; chosen: string } {
  const counts = new Map<string, number>();
  for (const item of items) counts.set(key(item), (counts.get(key(item)) ?? 0) + 1);
  let chosen = key(items[0]);
  for (const [k, n] of counts) if (n > counts.get(chosen)!) chosen = k;
  return { kept: items.filter((i) => key(i) === chosen), others: items.filter((i) => key(i) !== chosen), chosen };
}

const groupNames = (groups: readonly { name: string }[]) => groups.map((g) => g.name);

/** Attention flow per cell (see the header). `conditions` orders the cells (the run's condition order). */
export function aggregateAttentionFlow(outputs: TaskOutput<AttentionFlowJson>[], conditions: readonly string[] = []): FlowAggregate[] {
  return cells(outputs, conditions).map(({ condition, family, items }) => {
    const layout = (f: AttentionFlowJson) => JSON.stringify([f.forward, groupNames(f.queryGroups), groupNames(f.keyGroups)]);
    const { kept, others } = majority(items, (o) => layout(o.json));
    const first = kept[0].json;
    const describe = (f: AttentionFlowJson) =>
      `${f.forward} forward, query groups [${groupNames(f.queryGroups).join(", ")}], key groups [${groupNames(f.keyGroups).join(", ")}]`;
    const leftOut = others.map((o) => ({
      task_id: o.task_id,
      reason: `its groups differ from the cell's: ${describe(o.json)} instead of ${describe(first)}`,
    }));
    const referenceIndex = first.keyGroups.map((g, i) => (isReferenceGroup(g.name) ? i : -1)).filter((i) => i >= 0);
    // Every (block, step) measured by any kept task, in block then step order.
    const slots = new Map<string, { block: string; blockIndex: number; step: number }>();
    for (const o of kept) {
      for (const t of o.json.tables) {
        slots.set(JSON.stringify([t.blockIndex, t.step]), { block: t.block, blockIndex: t.blockIndex, step: t.step });
      }
    }
    const ordered = [...slots.values()].sort((a, b) => a.blockIndex - b.blockIndex || a.step - b.step);
    const tables: FlowAggregateTable[] = [];
    const toReference: FlowAggregate["toReference"] = [];
    for (const slot of ordered) {
      // The mean-over-heads slice (the last) of each kept task that has this table.
      const slices = kept.flatMap((o) => {
        const t = o.json.tables.find((t) => t.blockIndex === slot.blockIndex && t.step === slot.step);
        return t ? [t.mass[t.mass.length - 1]] : [];
      });
      tables.push({
        ...slot,
        mass: first.queryGroups.map((_, a) => first.keyGroups.map((_, b) => meanInterval(slices.map((m) => m[a][b])))),
      });
      if (referenceIndex.length) {
        toReference.push({
          ...slot,
          mass: first.queryGroups.map((_, a) => meanInterval(slices.map((m) => referenceIndex.reduce((s, b) => s + m[a][b], 0)))),
        });
      }
    }
    return {
      condition,
      family,
      forward: first.forward,
      queryGroups: groupNames(first.queryGroups),
      keyGroups: groupNames(first.keyGroups),
      tasks: kept.map((o) => o.task_id),
      leftOut,
      tables,
      referenceKeys: referenceIndex.map((i) => first.keyGroups[i].name),
      toReference,
    };
  });
}

/** Effects per cell (see the header). `conditions` orders the cells (the run's condition order). */
export function aggregateEffects(outputs: TaskOutput<EffectsJson>[], conditions: readonly string[] = []): EffectsAggregate[] {
  return cells(outputs, conditions).map(({ condition, family, items }) => {
    const { kept, others } = majority(items, (o) => JSON.stringify(groupNames(o.json.groups)));
    const groups = groupNames(kept[0].json.groups);
    const leftOut = others.map((o) => ({
      task_id: o.task_id,
      reason: `its row groups differ from the cell's: [${groupNames(o.json.groups).join(", ")}] instead of [${groups.join(", ")}]`,
    }));
    const points: EffectsAggregatePoint[] = [];
    for (const run of ["intervention", "control"] as const) {
      const records = kept.flatMap((o) => {
        const r = run === "intervention" ? o.json.intervention : o.json.control;
        return r ? [r.records] : [];
      });
      const slots = new Map<string, { block: string; blockIndex: number; step: number }>();
      for (const rs of records) {
        for (const r of rs) slots.set(JSON.stringify([r.blockIndex, r.step]), { block: r.block, blockIndex: r.blockIndex, step: r.step });
      }
      for (const slot of [...slots.values()].sort((a, b) => a.blockIndex - b.blockIndex || a.step - b.step)) {
        const here = records.flatMap((rs) => rs.filter((r) => r.blockIndex === slot.blockIndex && r.step === slot.step));
        for (const group of groups) {
          const stats = here.map((r) => r[group as keyof EffectRecord] as RowStats | undefined).filter((s): s is RowStats => !!s);
          if (!stats.length) continue;
          points.push({
            run,
            ...slot,
            group,
            relL2: meanInterval(stats.map((s) => s.relL2)),
            relL2Undefined: stats.filter((s) => s.relL2 === null).length,
            cosine: meanInterval(stats.map((s) => s.cosine)),
          });
        }
      }
    }
    return {
      condition,
      family,
      groups,
      tasks: kept.map((o) => o.task_id),
      leftOut,
      controlTasks: kept.filter((o) => o.json.control !== null).length,
      points,
    };
  });
}

/** A file that could not be read or parsed (shown in the report, left out of every cell). */
export interface UnreadableOutput {
  path: string;
  message: string;
}

export interface RunOutputs {
  attentionFlow: TaskOutput<AttentionFlowJson>[];
  effects: TaskOutput<EffectsJson>[];
  unreadable: UnreadableOutput[];
}

/** Every complete condition folder's attention_flow.json and effects.json of a run, parsed. */
export async function readRunOutputs(run: RunFolder): Promise<RunOutputs> {
  const out: RunOutputs = { attentionFlow: [], effects: [], unreadable: [] };
  for (const task of run.tasks) {
    for (const condition of run.conditions) {
      if (!run.complete.get(task.task_id)?.has(condition)) continue;
      const dir = conditionDir(run.dir, task.task_id, condition);
      const base = { task_id: task.task_id, family: task.family, condition };
      for (
        const [file, parse, list] of [
          ["attention_flow.json", parseAttentionFlowJson, out.attentionFlow],
          ["effects.json", parseEffectsJson, out.effects],
        ] as const
      ) {
        const path = join(dir, file);
        if (!(await pathExists(path))) continue;
        try {
          (list as TaskOutput<unknown>[]).push({ ...base, json: parse(await Deno.readTextFile(path), path) });
        } catch (e) {
          out.unreadable.push({ path, message: printable((e as Error).message) });
        }
      }
    }
  }
  return out;
}

// ---- files -----------------------------------------------------------------------------------------------------------

/** Names of the aggregate files (in the report's tables/ folder). */
export const AGGREGATE_FILES = {
  flowJson: "attention_flow_aggregate.json",
  flowCsv: "attention_flow_aggregate.csv",
  effectsJson: "effects_aggregate.json",
  effectsCsv: "effects_aggregate.csv",
} as const;

/** JSON text with NaN (an undefined mean, sd or bound) written as null. */
function jsonText(value: unknown): string {
  return JSON.stringify(value, (_k, v) => (typeof v === "number" && !Number.isFinite(v) ? null : v), 1) + "\n";
}

const csvField = (v: string | number) => {
  if (typeof v === "number") return Number.isFinite(v) ? String(v) : "";
  return /[",\n\r]/.test(v) ? `"${v.replace(/"/g, '""')}"` : v;
};
const csvRow = (fields: (string | number)[]) => fields.map(csvField).join(",");
const intervalFields = (m: MeanInterval) => [m.n, m.mean, m.sd, m.low, m.high, m.method];
const INTERVAL_HEADER = ["n", "mean", "sd", "low", "high", "interval"];

export function flowAggregateJson(aggregates: FlowAggregate[]): string {
  return jsonText({ format: AGGREGATE_FORMAT, version: 1, kind: "attention-flow", interval: MEAN_INTERVAL_RULE, cells: aggregates });
}

export function effectsAggregateJson(aggregates: EffectsAggregate[]): string {
  return jsonText({ format: AGGREGATE_FORMAT, version: 1, kind: "effects", interval: MEAN_INTERVAL_RULE, cells: aggregates });
}

/** One row per (cell, block, step, query group, key group): the mean-over-heads mass; key group "reference" rows
 * (measure "to_reference") hold the summed mass on the reference key groups. */
export function flowAggregateCsv(aggregates: FlowAggregate[]): string {
  const rows = [csvRow(["condition", "family", "measure", "block", "block_index", "step", "query_group", "key_group", ...INTERVAL_HEADER])];
  for (const c of aggregates) {
    for (const t of c.tables) {
      c.queryGroups.forEach((q, a) =>
        c.keyGroups.forEach((k, b) =>
          rows.push(csvRow([c.condition, c.family, "mass", t.block, t.blockIndex, t.step, q, k, ...intervalFields(t.mass[a][b])]))
        )
      );
    }
    for (const t of c.toReference) {
      c.queryGroups.forEach((q, a) =>
        rows.push(
          csvRow([
            c.condition,
            c.family,
            "to_reference",
            t.block,
            t.blockIndex,
            t.step,
            q,
            c.referenceKeys.join("+"),
            ...intervalFields(t.mass[a]),
          ]),
        )
      );
    }
  }
  return rows.join("\n") + "\n";
}

/** One row per (cell, run, block, step, group, statistic). */
export function effectsAggregateCsv(aggregates: EffectsAggregate[]): string {
  const rows = [
    csvRow(["condition", "family", "run", "block", "block_index", "step", "group", "statistic", ...INTERVAL_HEADER, "undefined"]),
  ];
  for (const c of aggregates) {
    for (const p of c.points) {
      const base = [c.condition, c.family, p.run, p.block, p.blockIndex, p.step, p.group];
      rows.push(csvRow([...base, "relL2", ...intervalFields(p.relL2), p.relL2Undefined]));
      rows.push(csvRow([...base, "cosine", ...intervalFields(p.cosine), 0]));
    }
  }
  return rows.join("\n") + "\n";
}

/** Write the aggregate files into `dir` (only those with cells); returns the paths. */
export async function writeAggregates(dir: string, flow: FlowAggregate[], effects: EffectsAggregate[]): Promise<string[]> {
  const files: [string, string][] = [];
  if (flow.length) files.push([AGGREGATE_FILES.flowJson, flowAggregateJson(flow)], [AGGREGATE_FILES.flowCsv, flowAggregateCsv(flow)]);
  if (effects.length) {
    files.push([AGGREGATE_FILES.effectsJson, effectsAggregateJson(effects)], [AGGREGATE_FILES.effectsCsv, effectsAggregateCsv(effects)]);
  }
  const written: string[] = [];
  for (const [name, text] of files) {
    await writeTextAtomic(join(dir, name), text);
    written.push(join(dir, name));
  }
  return written;
}
