// Activation patching as a graph rewrite: after the node that produces a tap point, rows at given token positions
// are replaced by (or shifted by alpha times) rows supplied per step or fixed for the whole run. In a guided run the
// patch applies to both forwards of a step, as the reference implementation's hooks do.

import type { Graph } from "../runtime/graph.ts";
import type { Plan } from "../runtime/executor.ts";
import { type PatchMode, patchRows } from "../kernels/patch.ts";
import type { Intervention, RunBinding, RunContext, TapInfo } from "../model/run.ts";
import { resolveSteps } from "./intervention.ts";

/** Rows supplied while the run goes on (e.g. by a source run that ran first): `count` rows of `cols` per step. */
export interface RowSupply {
  count: number;
  cols: number;
  /** Rows [count, cols] for a step of the patched run. */
  rowsAt(step: number): Float32Array;
}

export interface PatchSpec {
  /** The tap point whose rows are replaced (e.g. "double.1.txt", "single.0.txt", "context_embedder"). */
  tap: string;
  /** Sequence positions of the replaced rows, or a function of the run that gives them. */
  positions: number[] | ((ctx: RunContext) => number[]);
  /** Rows [positions.length, cols]: one array for every step, a list indexed by step, or a supply. */
  rows: Float32Array | Float32Array[] | RowSupply;
  mode?: PatchMode;
  /** Scale of the added rows in "add" mode (steering). */
  alpha?: number;
  /** Steps at which the patch is active; default all. */
  steps?: string | number[];
  label?: string;
}

let patchCounter = 0;

/** The tap's row index of every sequence position, refused when a position lies outside the tap. */
export function tapRows(tap: TapInfo, positions: readonly number[], where: string): number[] {
  if (tap.sequenceStart === null) throw new Error(`${where}: the rows of tap ${tap.name} are not tokens; it cannot be indexed by group`);
  const start = tap.sequenceStart;
  return positions.map((p) => {
    const row = p - start;
    if (!Number.isInteger(p) || row < 0 || row >= tap.rows) {
      throw new Error(`${where}: sequence position ${p} is outside tap ${tap.name} (positions ${start}..${start + tap.rows - 1})`);
    }
    return row;
  });
}

/** A tap of the run, refused with the known names when it does not exist. */
export function findTap(ctx: Pick<RunContext, "taps" | "blocks">, tap: string, where: string): TapInfo {
  const info = ctx.taps.get(tap);
  if (!info) {
    const b = ctx.blocks;
    throw new Error(
      `${where}: unknown tap point "${tap}" (e.g. ${b[0]}.txt, ${b[0]}.img, ${b[b.length - 1]}.txt, ${b[b.length - 1]}, ` +
        `context_embedder, ${b[0]}.attn.q)`,
    );
  }
  return info;
}

function supplyOf(rows: PatchSpec["rows"], count: number, cols: number, label: string): RowSupply {
  if (!(rows instanceof Float32Array) && !Array.isArray(rows)) return rows;
  return {
    count,
    cols,
    rowsAt(step) {
      const r = rows instanceof Float32Array ? rows : rows[step];
      if (!r) throw new Error(`${label}: no patch rows for step ${step} (the source gives ${(rows as Float32Array[]).length} step(s))`);
      return r;
    },
  };
}

export class PatchIntervention implements Intervention {
  readonly label: string;

  constructor(readonly spec: PatchSpec) {
    this.label = spec.label ?? `patch ${spec.tap} (${spec.mode ?? "replace"})`;
  }

  bind(ctx: RunContext): RunBinding {
    const spec = this.spec;
    const label = this.label;
    const mode = spec.mode ?? "replace";
    if (mode !== "replace" && mode !== "add") throw new Error(`${label}: mode must be "replace" or "add", got ${mode}`);
    const tap = findTap(ctx, spec.tap, label);
    const positions = typeof spec.positions === "function" ? spec.positions(ctx) : spec.positions;
    const active = resolveSteps(spec.steps, ctx.steps, label);
    if (!positions.length) {
      ctx.warn(`${label}: the patched token group is empty in this run; nothing is patched`);
      return {};
    }
    const rows = tapRows(tap, positions, label);
    const supply = supplyOf(spec.rows, positions.length, tap.cols, label);
    if (supply.count !== positions.length || supply.cols !== tap.cols) {
      throw new Error(
        `${label}: the source gives ${supply.count} rows of ${supply.cols}, but ${positions.length} rows of ${tap.cols} are patched ` +
          `at ${spec.tap} (row counts must match group by group)`,
      );
    }
    if (Array.isArray(spec.rows)) {
      const last = Math.max(...active);
      if (spec.rows.length <= last) {
        throw new Error(`${label}: the source has ${spec.rows.length} step(s) but the patch is active up to step ${last}`);
      }
      spec.rows.forEach((r, s) => {
        if (r.length !== rows.length * tap.cols) {
          throw new Error(
            `${label}: the rows for step ${s} hold ${r.length} values, not ${rows.length}×${tap.cols} (row counts must match)`,
          );
        }
      });
    } else if (spec.rows instanceof Float32Array && spec.rows.length !== rows.length * tap.cols) {
      throw new Error(`${label}: the rows hold ${spec.rows.length} values, not ${rows.length}×${tap.cols} (row counts must match)`);
    }
    const p = `patch${patchCounter++}`;
    let written: Float32Array | null = null;
    return {
      rewrite(g: Graph, forwards) {
        const src = g.state(`${p}.rows`, [rows.length, tap.cols]);
        const index = g.constant(`${p}.index`, [rows.length], "u32", Uint32Array.from(rows));
        const control = g.state(`${p}.control`, [2]);
        for (const f of forwards) {
          const dst = g.tapTensor(f.scope + spec.tap);
          const producer = g.producerIndex(dst);
          if (producer < 0) throw new Error(`${label}: nothing produces ${f.scope}${spec.tap}`);
          g.insertBuilt(producer, () => patchRows(g, `${p}:${f.scope}${spec.tap}`, { src, dst, index, control, mode }));
        }
      },
      beforeStep(plan: Plan, step: number) {
        const on = active.has(step);
        plan.write(`${p}.control`, Float32Array.of(on ? 1 : 0, spec.alpha ?? 1));
        if (!on) return;
        const data = supply.rowsAt(step);
        if (data.length !== rows.length * tap.cols) {
          throw new Error(`${label}: the source gives ${data.length} values at step ${step}, not ${rows.length}×${tap.cols}`);
        }
        // Rows that stay the same across steps (a fixed source step) are written once.
        if (data !== written) plan.write(`${p}.rows`, data);
        written = data;
      },
    };
  }
}
