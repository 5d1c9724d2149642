// Activation patching as a graph rewrite: after the node that produces a tap point, rows at given positions are
// replaced by (or shifted by alpha times) rows supplied per step or fixed for the whole run.

import type { Graph } from "../runtime/graph.ts";
import type { Plan } from "../runtime/executor.ts";
import { type PatchMode, patchRows } from "../kernels/patch.ts";
import { type Intervention, resolveSteps, type RunContext } from "./intervention.ts";

export interface PatchSpec {
  /** The tap point whose rows are replaced (e.g. "double.1.txt", "single.0", "context_embedder"). */
  tap: string;
  /** Row positions inside the tap's rows, or a function of the run's layout that gives them. */
  positions: number[] | ((ctx: RunContext) => number[]);
  /** Rows [positions.length, cols]: one array for every step, or a list indexed by step. */
  rows: Float32Array | Float32Array[];
  mode?: PatchMode;
  /** Scale of the added rows in "add" mode (steering). */
  alpha?: number;
  /** Steps at which the patch is active; default all. */
  steps?: string | number[];
  label?: string;
}

let patchCounter = 0;

export class PatchIntervention implements Intervention {
  readonly label: string;
  private readonly id = patchCounter++;
  private positions: number[] = [];
  private active = new Set<number>();
  private fixedWritten = false;
  private warnedEmpty = false;

  constructor(readonly spec: PatchSpec) {
    this.label = spec.label ?? `patch ${spec.tap} (${spec.mode ?? "replace"})`;
  }

  private rowsFor(step: number): Float32Array {
    const r = this.spec.rows;
    if (!Array.isArray(r)) return r;
    const rows = r[step];
    if (!rows) throw new Error(`${this.label}: no patch rows for step ${step} (the source has ${r.length} steps)`);
    return rows;
  }

  validate(ctx: RunContext): void {
    const positions = typeof this.spec.positions === "function" ? this.spec.positions(ctx) : this.spec.positions;
    this.positions = positions;
    this.active = resolveSteps(this.spec.steps, ctx.steps, this.label);
    const mode = this.spec.mode ?? "replace";
    if (mode !== "replace" && mode !== "add") throw new Error(`${this.label}: mode must be "replace" or "add", got ${mode}`);
    if (!positions.length) {
      if (!this.warnedEmpty) ctx.warn(`${this.label}: the patched token group is empty in this run; nothing is patched`);
      this.warnedEmpty = true;
      return;
    }
    if (Array.isArray(this.spec.rows) && this.spec.rows.length < Math.max(...this.active) + 1) {
      throw new Error(
        `${this.label}: the source has ${this.spec.rows.length} step(s) but the patch is active up to step ${Math.max(...this.active)}`,
      );
    }
  }

  rewrite(g: Graph, _ctx: RunContext): void {
    if (!this.positions.length) return;
    const dst = g.tapTensor(this.spec.tap);
    const [tapRows, cols] = g.shape(dst);
    this.fixedWritten = false;
    const bad = this.positions.find((p) => !Number.isInteger(p) || p < 0 || p >= tapRows);
    if (bad !== undefined) throw new Error(`${this.label}: position ${bad} is outside the ${tapRows} rows of ${this.spec.tap}`);
    for (const step of this.active) {
      const rows = this.rowsFor(step);
      if (rows.length !== this.positions.length * cols) {
        throw new Error(
          `${this.label}: the source gives ${rows.length / cols} rows of ${cols} at step ${step}, ` +
            `but ${this.positions.length} positions are patched (row counts must match group by group)`,
        );
      }
    }
    const producer = g.producerIndex(dst);
    if (producer < 0) throw new Error(`${this.label}: nothing produces ${this.spec.tap}`);
    const p = `patch${this.id}`;
    g.insertBuilt(producer, () => {
      const src = g.state(`${p}.rows`, [this.positions.length, cols]);
      const index = g.constant(`${p}.index`, [this.positions.length], "u32", Uint32Array.from(this.positions));
      const control = g.state(`${p}.control`, [2]);
      patchRows(g, `${p}:${this.spec.tap}`, { src, dst, index, control, mode: this.spec.mode ?? "replace" });
    });
  }

  beforeStep(plan: Plan, step: number): void {
    if (!this.positions.length) return;
    const p = `patch${this.id}`;
    const on = this.active.has(step);
    plan.write(`${p}.control`, Float32Array.of(on ? 1 : 0, this.spec.alpha ?? 1));
    // Per-step rows change every step; fixed rows are written once, at the first active step.
    if (on && (Array.isArray(this.spec.rows) || !this.fixedWritten)) {
      plan.write(`${p}.rows`, this.rowsFor(step));
      this.fixedWritten = true;
    }
  }
}
