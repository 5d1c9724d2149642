// Capture as an intervention: selected rows of tap points at selected steps, read back after each step. What a run
// captured comes back on its result (typed: tap, group, forward, step → rows × cols), never kept in the intervention.

import type { Plan } from "../runtime/executor.ts";
import type { GenerateResult } from "../model/pipeline.ts";
import type { Intervention, RunBinding, RunContext } from "../model/run.ts";
import { insertCapture, type RowSelection } from "./capture.ts";
import { resolveSteps } from "./intervention.ts";
import { resolveGroups } from "./groups.ts";
import { findTap, tapRows } from "./patch.ts";

export interface CaptureRequest {
  /** A tap point name, e.g. "double.1.txt", "single.0", "single.0.img", "context_embedder", "double.0.attn.q". */
  tap: string;
  /** Token group of the rows to keep (e.g. "text[content]", "image", "ref[0]"); default: every row of the tap. */
  group?: string;
  /** Steps to capture ("all", "0,2", "1..3"); default all. */
  steps?: string | number[];
  /** In a guided run, which forward of a step: "cond" (default) or "uncond". */
  forward?: "cond" | "uncond";
}

/** Rows of one tap (and group) at one step. */
export interface CapturedRows {
  rows: number;
  cols: number;
  /** Row-major [rows, cols]. */
  data: Float32Array;
}

/** What a capture request collected in one run. */
export interface CapturedTensor {
  tap: string;
  /** The token group asked for, or "all". */
  group: string;
  forward: "cond" | "uncond";
  /** Sequence positions of the rows (null: every row of the tap, or a tap whose rows are not tokens). */
  positions: number[] | null;
  cols: number;
  /** step → rows [count, cols]. */
  steps: Map<number, Float32Array>;
}

/** The captures of one run. */
export class CaptureSet {
  constructor(readonly tensors: readonly CapturedTensor[]) {}

  /** The capture of `tap` (and `group`, default every row; `forward`, default "cond"), refused when not asked for. */
  get(tap: string, group = "all", forward: "cond" | "uncond" = "cond"): CapturedTensor {
    const t = this.tensors.find((c) => c.tap === tap && c.group === group && c.forward === forward);
    if (!t) {
      const known = this.tensors.map((c) => `${c.tap}[${c.group}]${c.forward === "uncond" ? " (uncond)" : ""}`).join(", ");
      throw new Error(
        `no capture of ${tap}[${group}]${forward === "uncond" ? " (uncond)" : ""} in this run (captured: ${known || "none"})`,
      );
    }
    return t;
  }

  /** Rows of `tap` (and `group`) at `step`. */
  at(tap: string, group: string | undefined, step: number, forward: "cond" | "uncond" = "cond"): CapturedRows {
    const t = this.get(tap, group, forward);
    const data = t.steps.get(step);
    if (!data) throw new Error(`the capture of ${tap}[${t.group}] holds steps ${[...t.steps.keys()].join(", ")}, not step ${step}`);
    return { rows: data.length / t.cols, cols: t.cols, data };
  }
}

let captureCounter = 0;

export class CaptureIntervention implements Intervention {
  readonly label: string;

  constructor(readonly requests: CaptureRequest[]) {
    this.label = `capture ${requests.map((r) => r.tap + (r.group ? `[${r.group}]` : "")).join(", ")}`;
  }

  /** The captures this intervention made in `run` (an error if it was not part of that run). */
  results(run: Pick<GenerateResult, "outputs">): CaptureSet {
    const out = run.outputs.get(this);
    if (!(out instanceof CaptureSet)) throw new Error(`${this.label} was not an intervention of this run`);
    return out;
  }

  bind(ctx: RunContext): RunBinding {
    const wanted = this.requests.map((r) => {
      const where = `capture of ${r.tap}`;
      const tap = findTap(ctx, r.tap, where);
      const forward = r.forward ?? "cond";
      if (forward === "uncond" && !ctx.guided) throw new Error(`${where}: forward "uncond" exists only in a guided run (guidance ≠ 1)`);
      const steps = resolveSteps(r.steps, ctx.steps, where);
      const positions = r.group ? resolveGroups(ctx.layout, r.group) : null;
      const rows = positions ? tapRows(tap, positions, `${where}[${r.group}]`) : null;
      if (rows && !rows.length) ctx.warn(`${where}: group ${r.group} is empty in this run; nothing is captured`);
      return { request: r, tap, forward, steps, positions, rows };
    });
    const keys = wanted.map((w) => `${w.tap.name}[${w.request.group ?? "all"}]${w.forward}`);
    const twice = keys.find((k, i) => keys.indexOf(k) !== i);
    if (twice) throw new Error(`capture of ${twice.replace(/(cond|uncond)$/, "")} is requested twice`);
    const tensors: CapturedTensor[] = wanted.map((w) => ({
      tap: w.tap.name,
      group: w.request.group ?? "all",
      forward: w.forward,
      positions: w.positions,
      cols: w.tap.cols,
      steps: new Map(),
    }));
    const stateNames: string[] = [];
    const id = captureCounter++;
    return {
      rewrite(g, forwards) {
        wanted.forEach((w, i) => {
          if (w.rows && !w.rows.length) return;
          const scope = forwards.find((f) => f.forward === w.forward)!.scope;
          const sel: RowSelection = w.rows ? { positions: w.rows } : { all: true };
          stateNames[i] = insertCapture(g, scope + w.tap.name, sel, `capture${id}.${i}/${keys[i]}`).tensor;
        });
      },
      async afterStep(plan: Plan, step: number) {
        for (const [i, w] of wanted.entries()) {
          if (stateNames[i] && w.steps.has(step)) tensors[i].steps.set(step, await plan.read(stateNames[i]));
        }
      },
      output: () => new CaptureSet(tensors),
    };
  }
}
