// What a prepared run offers the code that intervenes in it. The model defines these hooks and calls them; it never
// knows which experiment is bound to it. An intervention is bound to one prepared run: validated once, against that
// run's layout, blocks, steps and tap points, and every bit of per-run state lives in the binding it returns.

import type { Graph } from "../runtime/graph.ts";
import type { Plan } from "../runtime/executor.ts";
import type { AttentionArgs } from "../kernels/attention.ts";
import type { PromptGroups } from "./qwen3/prompt.ts";

export type { PromptGroups };

/** The transformer's sequence of one run: [text ; noise (image) ; reference 0 ; reference 1 ; …]. */
export interface RunLayout {
  textRows: number;
  noiseRows: number;
  refRows: number[];
  prompt: PromptGroups;
}

export function sequenceLength(l: RunLayout): number {
  return l.textRows + l.noiseRows + l.refRows.reduce((a, b) => a + b, 0);
}

/** A tap point of the forward graph: its shape and where its rows sit in the sequence. */
export interface TapInfo {
  name: string;
  rows: number;
  cols: number;
  /** Sequence position of the tap's row 0; null for taps whose rows are not tokens (the timestep embedding). */
  sequenceStart: number | null;
}

/** Attention edges to cut: queries at `queries` may not read keys at `keys` (sequence positions), in `block`,
 * at `steps`. Cuts from every intervention of a run are united per block and step. */
export interface AttentionCut {
  block: number;
  queries: number[];
  keys: number[];
  steps: Set<number>;
  /** Names the cut in messages, e.g. `knockout ref->text`. */
  label: string;
}

/** One transformer forward of a step: the conditional one, and for guided runs also the unconditional one. */
export interface ForwardSite {
  forward: "cond" | "uncond";
  /** Prefix of this forward's node, tensor and tap names ("" or "uncond/"). */
  scope: string;
  /** The attention node of every block, in block order. */
  attention: { node: string; args: AttentionArgs & { out: number } }[];
}

/** What a run offers an intervention when it is bound (before any GPU work). */
export interface RunContext {
  layout: RunLayout;
  /** Block names in absolute order (double.0 … single.N). */
  blocks: string[];
  steps: number;
  /** Every tap point of one forward, by name (the unconditional forward has the same taps under "uncond/"). */
  taps: ReadonlyMap<string, TapInfo>;
  /** True when each step runs a conditional and an unconditional forward (classifier-free guidance). */
  guided: boolean;
  /** Report something the user should know that does not stop the run; it is kept with the run's result. */
  warn(message: string): void;
  /** Cut attention edges (knockout); the union over the run is checked before any GPU work. */
  cutAttention(cut: AttentionCut): void;
}

/** What a bound intervention does to one run: rewrite its step graph once, act around every step, and report. */
export interface RunBinding {
  /** Rewrite the step graph; `forwards` lists the forwards of a step (interventions apply to each, as the
   * reference implementation does, unless they say otherwise). */
  rewrite?(g: Graph, forwards: readonly ForwardSite[]): void;
  beforeStep?(plan: Plan, step: number): void;
  afterStep?(plan: Plan, step: number): Promise<void>;
  /** What the binding collected (captures), handed back on the run's result. */
  output?(): unknown;
}

export interface Intervention {
  /** A short human description, e.g. "knockout ref->text on all blocks". */
  readonly label: string;
  /** Check everything against one run (groups, blocks, steps, taps, shapes) and return its per-run state. */
  bind(ctx: RunContext): RunBinding;
}

/** What the bound interventions of a run handed back, keyed by the intervention object. */
export type InterventionOutputs = ReadonlyMap<Intervention, unknown>;
