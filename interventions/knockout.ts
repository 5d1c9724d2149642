// Attention knockout as a graph rewrite: the attention node of every selected block is rebuilt with a group mask
// ("queries in group B may not read keys in group A"), applied inside the attention kernel from per-token bit sets,
// never as an S×S tensor. Masks switch per step by rewriting the bit sets before each step.

import type { Graph } from "../runtime/graph.ts";
import type { Plan } from "../runtime/executor.ts";
import { fullyMaskedQueries, groupMaskBits, type GroupRule, setAttentionGroupMask } from "../kernels/attention.ts";
import { type Intervention, resolveBlocks, resolveSteps, type RunContext } from "./intervention.ts";
import { resolveGroups, sequenceLength } from "./groups.ts";

export interface KnockoutSetting {
  /** "A->B": queries in B may not read keys in A; several groups on either side joined by "+". */
  setting: string;
  /** Blocks: "all", indices, names, ranges "a..b", "first:k", "last:k", "window:i:k". */
  blocks?: string | (string | number)[];
  /** Steps: "all" (default), indices or ranges. */
  steps?: string | number[];
}

export function parseSetting(setting: string): { sources: string; destinations: string } {
  const parts = setting.split("->");
  if (parts.length !== 2 || !parts[0].trim() || !parts[1].trim()) {
    throw new Error(`knockout setting "${setting}" must look like "A->B" (queries in B may not read keys in A), e.g. "ref->text"`);
  }
  return { sources: parts[0].trim(), destinations: parts[1].trim() };
}

let knockoutCounter = 0;

/** One or several settings (a split schedule: different settings on different blocks and steps) in one run. */
export class KnockoutIntervention implements Intervention {
  readonly label: string;
  private readonly id = knockoutCounter++;
  private readonly warned = new Set<string>();
  /** Per block: the rules active there and at which steps. */
  private perBlock = new Map<number, { rule: GroupRule; steps: Set<number> }[]>();
  private bits = new Map<number, { rules: { rule: GroupRule; steps: Set<number> }[]; s: number; prefix: string }>();

  constructor(readonly settings: KnockoutSetting[]) {
    if (!settings.length) throw new Error("a knockout needs at least one setting");
    this.label = `knockout ${
      settings.map((s) => `${s.setting} @ ${Array.isArray(s.blocks) ? s.blocks.join(",") : s.blocks ?? "all"}`).join("; ")
    }`;
  }

  validate(ctx: RunContext): void {
    this.perBlock.clear();
    const S = sequenceLength(ctx.layout);
    for (const s of this.settings) {
      const { sources, destinations } = parseSetting(s.setting);
      const keys = resolveGroups(ctx.layout, sources);
      const queries = resolveGroups(ctx.layout, destinations);
      const blocks = resolveBlocks(s.blocks ?? "all", ctx.blocks, `knockout ${s.setting}`);
      const steps = resolveSteps(s.steps, ctx.steps, `knockout ${s.setting}`);
      // A group can be legitimately empty in one run (text[content] of an empty prompt, ref in text-to-image):
      // then the setting masks nothing and the run is exactly the plain run.
      if (!keys.length || !queries.length) {
        const message = `knockout ${s.setting}: group ${
          !keys.length ? sources : destinations
        } is empty in this run; this setting masks nothing`;
        if (!this.warned.has(message)) ctx.warn(message);
        this.warned.add(message);
        continue;
      }
      for (const b of blocks) {
        const list = this.perBlock.get(b) ?? [];
        list.push({ rule: { queries, keys }, steps });
        this.perBlock.set(b, list);
      }
    }
    // Refuse before any GPU work if some query would have no key left to read (at any step).
    for (const [b, rules] of this.perBlock) {
      if (rules.length > 32) throw new Error(`knockout: block ${ctx.blocks[b]} has ${rules.length} settings; at most 32 per block`);
      const { queryBits, keyBits } = groupMaskBits(S, S, rules.map((r) => r.rule));
      const dead = fullyMaskedQueries(S, S, { bits: { queryBits, keyBits } });
      if (dead.length) {
        throw new Error(
          `knockout at ${ctx.blocks[b]}: ${dead.length} quer${dead.length === 1 ? "y" : "ies"} (first: sequence position ` +
            `${dead[0]}) would have no key left to attend to; such a mask is undefined (softmax over nothing)`,
        );
      }
    }
  }

  rewrite(g: Graph, ctx: RunContext): void {
    const S = sequenceLength(ctx.layout);
    this.bits.clear();
    for (const [b, rules] of this.perBlock) {
      const p = `knockout${this.id}.${ctx.blocks[b]}`;
      const queryBits = g.state(`${p}.query_bits`, [S], "u32");
      const keyBits = g.state(`${p}.key_bits`, [S], "u32");
      setAttentionGroupMask(g, ctx.attention[b].node, { queryBits, keyBits });
      this.bits.set(b, { rules, s: S, prefix: p });
    }
  }

  beforeStep(plan: Plan, step: number): void {
    for (const { rules, s, prefix } of this.bits.values()) {
      const active = rules.filter((r) => r.steps.has(step)).map((r) => r.rule);
      const bits = active.length ? groupMaskBits(s, s, active) : { queryBits: new Uint32Array(s), keyBits: new Uint32Array(s) };
      plan.write(`${prefix}.query_bits`, bits.queryBits);
      plan.write(`${prefix}.key_bits`, bits.keyBits);
    }
  }
}
