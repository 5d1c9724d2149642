// Attention flow by token group as an intervention: for chosen blocks and steps of a run, the softmax probability
// mass each query group sends to each key group, per head and averaged over heads. It is computed on the GPU from
// the attention node's own q and k (after RoPE) under the node's own mask: the run applies knockout cuts to the
// attention nodes before bindings rewrite the graph, so a flow attached here sees them. Only the group tables (and,
// if asked, the per-key masses of one query group) leave the GPU, after the chosen steps.
//
// The flow passes are part of the step graph but are dispatched only at the chosen steps (the plan leaves them out of
// the other steps' submits), and only those steps are read back.

import type { Plan } from "../runtime/executor.ts";
import { printable } from "../runtime/printable.ts";
import { attentionFlowOfNode, flowGroupIds, MAX_FLOW_GROUPS } from "../kernels/attention_flow.ts";
import type { GenerateResult } from "../model/pipeline.ts";
import { type Intervention, type RunBinding, type RunContext, type RunLayout, sequenceLength } from "../model/run.ts";
import { resolveBlocks, resolveSteps } from "./intervention.ts";
import { resolveGroups } from "./groups.ts";

export interface AttentionFlowRequest {
  /** Blocks: "all" (default), indices, names, "a..b", "first:k", "last:k", "window:i:k". */
  blocks?: string | (string | number)[];
  /** Steps read back: "all" (default), indices or ranges. */
  steps?: string | number[];
  /** Token-group expressions of the query side (default: defaultFlowGroups of the run). Must not overlap. */
  queryGroups?: string[];
  /** Token-group expressions of the key side (default: defaultFlowGroups of the run). Must not overlap. */
  keyGroups?: string[];
  /** Heads whose own tables are kept (default all); the last slice is always the mean over all heads. */
  heads?: number[];
  /** One of the query groups: also keep the mass each key receives from it (averaged over its rows). */
  tokenGroup?: string;
  /** In a guided run, which forward of a step: "cond" (default) or "uncond". */
  forward?: "cond" | "uncond";
}

/** A group of one side as it was measured: its expression and its number of tokens in this run. */
export interface FlowGroup {
  name: string;
  /** Tokens of the group (query rows on the query side, keys on the key side). */
  tokens: number;
}

/** The flow of one block at one step. */
export interface AttentionFlowTable {
  block: string;
  /** Absolute block index (double blocks first). */
  blockIndex: number;
  step: number;
  /** f32 [heads.length + 1, Gq, Gk]: slice i is head heads[i]; the last slice is the mean over all heads. Entry
   * [h, a, b] is the mean, over the rows of query group a, of the probability mass on the keys of key group b. */
  mass: Float32Array;
  /** f32 [heads.length + 1, S], with a token group: the mass each key (sequence position) receives from the token
   * group's rows, averaged over them; slices as in `mass`. */
  tokens?: Float32Array;
}

/** What an attention flow collected in one run. */
export class AttentionFlowResult {
  constructor(
    readonly forward: "cond" | "uncond",
    readonly queryGroups: readonly FlowGroup[],
    readonly keyGroups: readonly FlowGroup[],
    /** Head indices of the per-head slices; the slice after them is the mean over all `totalHeads` heads. */
    readonly heads: readonly number[],
    readonly totalHeads: number,
    readonly sequenceLength: number,
    /** Sequence positions in no key group (0: the key groups cover the sequence, and every table row sums to 1). */
    readonly uncoveredKeys: number,
    readonly tokenGroup: string | null,
    /** In block order, then step order. */
    readonly tables: readonly AttentionFlowTable[],
  ) {}

  /** The table of `block` (name or index) at `step`, refused when it was not measured. */
  at(block: string | number, step: number): AttentionFlowTable {
    const t = this.tables.find((t) => (typeof block === "number" ? t.blockIndex === block : t.block === block) && t.step === step);
    if (!t) {
      const known = [...new Set(this.tables.map((t) => t.block))].join(", ");
      const steps = [...new Set(this.tables.map((t) => t.step))].join(", ");
      throw new Error(
        `no attention flow of block ${block} at step ${step} in this run (blocks: ${known || "none"}; steps: ${steps || "none"})`,
      );
    }
    return t;
  }

  /** One slice of a table as rows of query groups × columns of key groups: a kept head (by its head number) or the
   * mean over all heads. */
  matrix(table: AttentionFlowTable, head: number | "mean" = "mean"): number[][] {
    let slice = this.heads.length;
    if (head !== "mean") {
      slice = this.heads.indexOf(head);
      if (slice < 0) throw new Error(`head ${head} was not kept (kept: ${this.heads.join(", ")})`);
    }
    const gq = this.queryGroups.length, gk = this.keyGroups.length;
    return Array.from({ length: gq }, (_, a) => Array.from(table.mass.subarray((slice * gq + a) * gk, (slice * gq + a + 1) * gk)));
  }
}

/** The default groups of a run: text[content], text[scaffold], text[pad], image, ref[0], ref[1], … (a partition of
 * the sequence). */
export function defaultFlowGroups(layout: RunLayout): string[] {
  return ["text[content]", "text[scaffold]", "text[pad]", "image", ...layout.refRows.map((_, k) => `ref[${k}]`)];
}

/** Resolve one side's groups: empty ones dropped with a warning, overlaps and too many groups refused. */
function resolveSide(
  ctx: RunContext,
  names: readonly string[],
  side: "query" | "key",
  where: string,
): { names: string[]; lists: number[][] } {
  if (!names.length) throw new Error(`${where}: no ${side} groups given`);
  const kept: string[] = [], lists: number[][] = [];
  const owner = new Map<number, string>();
  for (const raw of names) {
    const name = raw.trim();
    if (kept.includes(name)) throw new Error(`${where}: ${side} group ${printable(name)} is given twice`);
    let positions: number[];
    try {
      positions = resolveGroups(ctx.layout, name);
    } catch (e) {
      throw new Error(`${where}: ${side} groups: ${(e as Error).message}`);
    }
    if (!positions.length) {
      ctx.warn(`${where}: ${side} group ${printable(name)} is empty in this run; dropped`);
      continue;
    }
    for (const p of positions) {
      const other = owner.get(p);
      if (other !== undefined) {
        throw new Error(
          `${where}: ${side} groups ${printable(other)} and ${
            printable(name)
          } overlap (sequence position ${p}); groups of one side must not overlap`,
        );
      }
      owner.set(p, name);
    }
    kept.push(name);
    lists.push(positions);
  }
  if (kept.length > MAX_FLOW_GROUPS) {
    throw new Error(`${where}: ${kept.length} non-empty ${side} groups; at most ${MAX_FLOW_GROUPS} per side`);
  }
  return { names: kept, lists };
}

let flowCounter = 0;

export class AttentionFlowIntervention implements Intervention {
  readonly label: string;

  constructor(readonly request: AttentionFlowRequest = {}) {
    const r = request;
    const blocks = Array.isArray(r.blocks) ? r.blocks.join(",") : r.blocks ?? "all";
    this.label = `attention flow @ ${blocks}`;
    if (r.forward !== undefined && r.forward !== "cond" && r.forward !== "uncond") {
      throw new Error(`${this.label}: forward must be "cond" or "uncond", got ${printable(String(r.forward))}`);
    }
    if (r.heads !== undefined) {
      if (!r.heads.length) throw new Error(`${this.label}: heads is an empty list (leave it out for every head)`);
      for (const h of r.heads) {
        if (!Number.isInteger(h) || h < 0) throw new Error(`${this.label}: head ${h} is not a head index (0, 1, …)`);
      }
      if (new Set(r.heads).size !== r.heads.length) throw new Error(`${this.label}: heads lists a head twice`);
    }
  }

  /** What this intervention collected in `run` (an error if it was not part of that run). */
  results(run: Pick<GenerateResult, "outputs">): AttentionFlowResult {
    const out = run.outputs.get(this);
    if (!(out instanceof AttentionFlowResult)) throw new Error(`${this.label} was not an intervention of this run`);
    return out;
  }

  bind(ctx: RunContext): RunBinding {
    const r = this.request;
    const where = this.label;
    const forward = r.forward ?? "cond";
    if (forward === "uncond" && !ctx.guided) throw new Error(`${where}: forward "uncond" exists only in a guided run (guidance ≠ 1)`);
    const blocks = resolveBlocks(r.blocks ?? "all", ctx.blocks, where);
    const steps = resolveSteps(r.steps, ctx.steps, where);
    const defaults = defaultFlowGroups(ctx.layout);
    const queries = resolveSide(ctx, r.queryGroups ?? defaults, "query", where);
    const keys = resolveSide(ctx, r.keyGroups ?? defaults, "key", where);
    let tokenGroup: number | undefined;
    if (r.tokenGroup !== undefined) {
      const name = r.tokenGroup.trim();
      tokenGroup = queries.names.indexOf(name);
      if (tokenGroup < 0) {
        if (!(r.queryGroups ?? defaults).some((q) => q.trim() === name)) {
          throw new Error(
            `${where}: tokenGroup ${printable(name)} is not one of the query groups (${
              (r.queryGroups ?? defaults).map(printable).join(", ")
            })`,
          );
        }
        tokenGroup = undefined; // dropped as empty, with its warning
      }
    }
    const S = sequenceLength(ctx.layout);
    const uncoveredKeys = S - keys.lists.reduce((n, l) => n + l.length, 0);
    const tables: AttentionFlowTable[] = [];
    const queryGroups = queries.names.map((name, i) => ({ name, tokens: queries.lists[i].length }));
    const keyGroups = keys.names.map((name, i) => ({ name, tokens: keys.lists[i].length }));
    const make = (totalHeads: number, heads: number[]) =>
      new AttentionFlowResult(
        forward,
        queryGroups,
        keyGroups,
        heads,
        totalHeads,
        S,
        uncoveredKeys,
        tokenGroup === undefined ? null : queries.names[tokenGroup],
        tables,
      );
    if (!queries.names.length || !keys.names.length) {
      ctx.warn(`${where}: every ${!queries.names.length ? "query" : "key"} group is empty in this run; nothing is measured`);
      return { output: () => make(0, []) };
    }
    const queryIds = flowGroupIds(S, queries.lists, `${where}: query groups`);
    const keyIds = flowGroupIds(S, keys.lists, `${where}: key groups`);
    const id = flowCounter++;
    const outputs: { block: number; mass: string; tokens?: string }[] = [];
    let totalHeads = 0;
    let kept: number[] = [];
    const gq = queries.names.length, gk = keys.names.length;
    /** The flow's own dispatches: they run only at the chosen steps. */
    const flowNodes: string[] = [];
    let flowOn: boolean | null = null;
    return {
      rewrite(g, forwards) {
        const site = forwards.find((f) => f.forward === forward)!;
        const queryGroupIds = g.constant(`flow${id}.query_groups`, [S], "u32", queryIds);
        const keyGroupIds = g.constant(`flow${id}.key_groups`, [S], "u32", keyIds);
        for (const block of blocks) {
          const node = site.attention[block];
          const heads = node.args.heads;
          if (totalHeads && heads !== totalHeads) throw new Error(`${where}: blocks have different head counts (${totalHeads}, ${heads})`);
          totalHeads = heads;
          const name = `flow${id}/${site.scope}${ctx.blocks[block]}`;
          const before = new Set(g.nodes);
          const flow = attentionFlowOfNode(g, node.node, name, {
            queryGroups: queryGroupIds,
            queryGroupCount: gq,
            keyGroups: keyGroupIds,
            keyGroupCount: gk,
            tokenGroup,
          });
          flowNodes.push(...g.nodes.filter((n) => !before.has(n)).map((n) => n.name));
          outputs.push({ block, mass: g.get(flow.mass).name, tokens: flow.tokens === undefined ? undefined : g.get(flow.tokens).name });
        }
        const bad = r.heads?.find((h) => h >= totalHeads);
        if (bad !== undefined) {
          throw new Error(`${where}: head ${bad} does not exist (this model has ${totalHeads} heads: 0..${totalHeads - 1})`);
        }
        kept = r.heads ? [...r.heads] : Array.from({ length: totalHeads }, (_, h) => h);
      },
      beforeStep(plan: Plan, step: number) {
        const on = steps.has(step);
        if (on !== flowOn) plan.setNodesEnabled(flowNodes, on);
        flowOn = on;
      },
      async afterStep(plan: Plan, step: number) {
        if (!steps.has(step)) return;
        for (const o of outputs) {
          const mass = selectSlices(await plan.read(o.mass), kept, totalHeads, gq * gk);
          const tokens = o.tokens === undefined ? undefined : selectSlices(await plan.read(o.tokens), kept, totalHeads, S);
          tables.push({ block: ctx.blocks[o.block], blockIndex: o.block, step, mass, tokens });
        }
      },
      output() {
        tables.sort((a, b) => a.blockIndex - b.blockIndex || a.step - b.step);
        return make(totalHeads, kept);
      },
    };
  }
}

/** Slices `heads` of [H + 1, n] data, then the mean slice (index H). */
function selectSlices(data: Float32Array, heads: readonly number[], totalHeads: number, n: number): Float32Array {
  if (heads.length === totalHeads && heads.every((h, i) => h === i)) return data;
  const out = new Float32Array((heads.length + 1) * n);
  heads.forEach((h, i) => out.set(data.subarray(h * n, (h + 1) * n), i * n));
  out.set(data.subarray(totalHeads * n, (totalHeads + 1) * n), heads.length * n);
  return out;
}

// ---- Files: attention_flow.json and attention_flow.safetensors -----------------------------------------------------

export const ATTENTION_FLOW_FORMAT = "kleinscope-attention-flow";

/** A float32 value written with the fewest digits that read back to the same float32 (9 significant digits). */
function f32(x: number): number {
  return Number(x.toPrecision(9));
}

/** The JSON document of a flow result (attention_flow.json): groups with their sizes, the kept heads, and per block
 * and step the tables [heads + 1][Gq][Gk] (the last slice the mean over all heads), values as float32 written with
 * 9 significant digits. Per-key masses are in the safetensors file, under the name in `tokens`. */
export function attentionFlowJson(r: AttentionFlowResult): AttentionFlowJson {
  const gq = r.queryGroups.length, gk = r.keyGroups.length;
  return {
    format: ATTENTION_FLOW_FORMAT,
    version: 1,
    forward: r.forward,
    totalHeads: r.totalHeads,
    heads: [...r.heads],
    sequenceLength: r.sequenceLength,
    uncoveredKeys: r.uncoveredKeys,
    queryGroups: r.queryGroups.map((g) => ({ ...g })),
    keyGroups: r.keyGroups.map((g) => ({ ...g })),
    tokenGroup: r.tokenGroup,
    tables: r.tables.map((t) => ({
      block: t.block,
      blockIndex: t.blockIndex,
      step: t.step,
      mass: Array.from(
        { length: r.heads.length + 1 },
        (_, h) => Array.from({ length: gq }, (_, a) => Array.from(t.mass.subarray((h * gq + a) * gk, (h * gq + a + 1) * gk), f32)),
      ),
      tokens: t.tokens ? tokensTensorName(t) : null,
    })),
  };
}

export interface AttentionFlowJson {
  format: typeof ATTENTION_FLOW_FORMAT;
  version: 1;
  forward: "cond" | "uncond";
  totalHeads: number;
  /** Head index of each per-head slice of `mass`; the slice after them is the mean over all heads. */
  heads: number[];
  sequenceLength: number;
  /** Sequence positions in no key group (0: each table row sums to 1). */
  uncoveredKeys: number;
  queryGroups: FlowGroup[];
  keyGroups: FlowGroup[];
  tokenGroup: string | null;
  tables: {
    block: string;
    blockIndex: number;
    step: number;
    /** [heads.length + 1][Gq][Gk]. */
    mass: number[][][];
    /** Name of the per-key masses [heads.length + 1, S] in attention_flow.safetensors, or null. */
    tokens: string | null;
  }[];
}

function tokensTensorName(t: AttentionFlowTable): string {
  return `tokens/${t.block}@step${t.step}`;
}

/** The tensors of attention_flow.safetensors: `mass/<block>@step<k>` [heads + 1, Gq, Gk] and, with a token group,
 * `tokens/<block>@step<k>` [heads + 1, S]. */
export function attentionFlowTensors(r: AttentionFlowResult): Record<string, { dtype: "F32"; shape: number[]; data: Float32Array }> {
  const out: Record<string, { dtype: "F32"; shape: number[]; data: Float32Array }> = {};
  const slices = r.heads.length + 1;
  for (const t of r.tables) {
    out[`mass/${t.block}@step${t.step}`] = { dtype: "F32", shape: [slices, r.queryGroups.length, r.keyGroups.length], data: t.mass };
    if (t.tokens) out[tokensTensorName(t)] = { dtype: "F32", shape: [slices, r.sequenceLength], data: t.tokens };
  }
  return out;
}
