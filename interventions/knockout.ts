// Attention knockout: "queries in group B may not read keys in group A", in selected blocks and steps. A knockout
// hands its edges to the run as attention cuts; the run unites the cuts of every intervention per block and step
// and applies them inside the attention kernel from per-token bit sets, never as an S×S tensor.

import type { Intervention, RunBinding, RunContext } from "../model/run.ts";
import { resolveBlocks, resolveSteps } from "./intervention.ts";
import { resolveGroups } from "./groups.ts";

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

function describeBlocks(blocks: KnockoutSetting["blocks"]): string {
  return Array.isArray(blocks) ? blocks.join(",") : blocks ?? "all";
}

/** One or several settings in one run (a composite such as image<->ref, or a split schedule: different settings on
 * different blocks and steps). Several knockouts in one run cut the union of their edges. */
export class KnockoutIntervention implements Intervention {
  readonly label: string;

  constructor(readonly settings: KnockoutSetting[]) {
    if (!settings.length) throw new Error("a knockout needs at least one setting");
    for (const s of settings) parseSetting(s.setting);
    this.label = `knockout ${settings.map((s) => `${s.setting} @ ${describeBlocks(s.blocks)}`).join("; ")}`;
  }

  bind(ctx: RunContext): RunBinding {
    for (const s of this.settings) {
      const { sources, destinations } = parseSetting(s.setting);
      const where = `knockout ${s.setting}`;
      const [keys, queries] = [sources, destinations].map((group) => {
        try {
          return resolveGroups(ctx.layout, group);
        } catch (e) {
          throw new Error(`${where}: ${(e as Error).message}`);
        }
      });
      const blocks = resolveBlocks(s.blocks ?? "all", ctx.blocks, where);
      const steps = resolveSteps(s.steps, ctx.steps, where);
      // A group can be legitimately empty in one run (text[content] of an empty prompt, ref in text-to-image):
      // then the setting masks nothing and the run is exactly the plain run.
      if (!keys.length || !queries.length) {
        ctx.warn(`${where}: group ${!keys.length ? sources : destinations} is empty in this run; this setting masks nothing`);
        continue;
      }
      for (const block of blocks) ctx.cutAttention({ block, queries, keys, steps, label: `${where} @ ${describeBlocks(s.blocks)}` });
    }
    return {};
  }
}
