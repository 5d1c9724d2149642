// Capture as an intervention: selected rows of tap points at selected steps, read back after each step.

import type { Graph } from "../runtime/graph.ts";
import type { Plan } from "../runtime/executor.ts";
import { insertCapture, type RowSelection } from "./capture.ts";
import { type Intervention, resolveSteps, type RunContext } from "./intervention.ts";
import { resolveGroups } from "./groups.ts";

export interface CaptureRequest {
  /** A tap point name, e.g. "double.1.txt", "single.0", "context_embedder", "double.0.attn.q". */
  tap: string;
  /** Token group of the rows to keep (positions inside the tap's rows); default: every row. */
  group?: string;
  /** Steps to capture ("all", "0,2", "1..3"); default all. */
  steps?: string | number[];
}

export interface CapturedTensor {
  tap: string;
  group: string;
  /** Row positions inside the tap's rows. */
  positions: number[] | null;
  cols: number;
  /** step → rows [count, cols]. */
  steps: Map<number, Float32Array>;
}

export class CaptureIntervention implements Intervention {
  readonly label: string;
  readonly captured: Map<string, CapturedTensor> = new Map();
  private plans: { key: string; tensor: string; steps: Set<number> }[] = [];

  constructor(readonly requests: CaptureRequest[]) {
    this.label = `capture ${requests.map((r) => r.tap + (r.group ? `[${r.group}]` : "")).join(", ")}`;
  }

  validate(ctx: RunContext): void {
    for (const r of this.requests) {
      resolveSteps(r.steps, ctx.steps, `capture of ${r.tap}`);
      if (r.group) resolveGroups(ctx.layout, r.group);
    }
  }

  rewrite(g: Graph, ctx: RunContext): void {
    this.plans = [];
    this.captured.clear();
    for (const r of this.requests) {
      const steps = resolveSteps(r.steps, ctx.steps, `capture of ${r.tap}`);
      let sel: RowSelection = { all: true };
      let positions: number[] | null = null;
      if (r.group) {
        positions = resolveGroups(ctx.layout, r.group);
        sel = { positions };
      }
      const key = r.group ? `${r.tap}[${r.group}]` : r.tap;
      if (this.captured.has(key)) throw new Error(`capture of ${key} is requested twice`);
      const inserted = insertCapture(g, r.tap, sel, `capture/${key}`);
      this.captured.set(key, { tap: r.tap, group: r.group ?? "all", positions, cols: inserted.cols, steps: new Map() });
      this.plans.push({ key, tensor: inserted.tensor, steps });
    }
  }

  async afterStep(plan: Plan, step: number): Promise<void> {
    for (const p of this.plans) {
      if (p.steps.has(step)) this.captured.get(p.key)!.steps.set(step, await plan.read(p.tensor));
    }
  }
}
