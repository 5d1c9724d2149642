// Conformance of whole runs: plain pipelines, knockouts, the T2I lens and I2I-to-I2I patching. Each case is turned
// into the spec a user would write (initial latents named inside the case file as `file#tensor`, captures of the
// expected block outputs) and executed through the study layer, exactly as `deno task run` executes it.

import type { RunSpec } from "../studies/spec.ts";
import { executeSpec } from "../studies/execute.ts";
import type { CaseContext, Computed, GoldenCase, KindHandler } from "./runner.ts";
import { sharedPipeline } from "./models.ts";

const CAPTURE_KEY = /^capture\.step(\d+)\.((?:double|single)\.\d+)\.(txt|img|all)$/;

/** The tap holding an expected capture: a double block's stream, a single block's text rows or whole stream. */
function expectedCaptures(c: GoldenCase, textRows: number): { key: string; tap: string; step: number }[] {
  const out: { key: string; tap: string; step: number }[] = [];
  for (const [key, shape] of Object.entries(c.tensors)) {
    const m = CAPTURE_KEY.exec(key);
    if (!m) continue;
    const [, step, block, part] = m;
    const tap = part === "all" ? (shape[0] === textRows ? `${block}.txt` : block) : `${block}.${part}`;
    out.push({ key, tap, step: Number(step) });
  }
  return out;
}

/** The spec of a case's run: its prompt, references, size, steps, guidance and initial latents. */
function caseSpec(ctx: CaseContext, c: GoldenCase, latents: string): RunSpec {
  const spec: RunSpec = {
    model: ctx.modelDir,
    prompt: c.prompt as string,
    refs: (c.refs as string[]).map((r) => ctx.path(r)),
    width: c.width as number,
    height: c.height as number,
    steps: c.steps as number,
    latents: `${ctx.path(c.file)}#${latents}`,
  };
  if (c.guidance_scale !== undefined) spec.guidance = c.guidance_scale as number;
  if (c.is_distilled !== undefined) spec.distilled = c.is_distilled as boolean;
  return spec;
}

/** Execute a case's spec with captures of every expected block output, and return every expected tensor. */
async function runCase(ctx: CaseContext, spec: RunSpec): Promise<Record<string, Computed>> {
  const pipe = await sharedPipeline(ctx.modelDir);
  const wanted = expectedCaptures(ctx.case, 512);
  const byTap = new Map<string, number[]>();
  for (const w of wanted) byTap.set(w.tap, [...(byTap.get(w.tap) ?? []), w.step]);
  spec.captures = [...byTap].map(([tap, steps]) => ({ tap, steps }));
  const run = await executeSpec(pipe, spec, undefined, { keepStepLatents: true });
  const out: Record<string, Computed> = { image: run.result.image };
  run.result.stepLatents.forEach((l, i) => (out[`latents.step${i}`] = l));
  for (const w of wanted) out[w.key] = run.captures!.at(w.tap, undefined, w.step).data;
  return out;
}

export const pipelineKind: KindHandler = {
  kind: "pipeline",
  inputs: ["initial_latents"],
  run: (ctx) => runCase(ctx, caseSpec(ctx, ctx.case, "initial_latents")),
};

export const knockoutKind: KindHandler = {
  kind: "knockout",
  inputs: ["initial_latents"],
  run(ctx) {
    const c = ctx.case;
    const steps = c.steps_masked === "all" || c.steps_masked === undefined ? undefined : (c.steps_masked as number[]);
    const settings = (c.settings as { setting: string; blocks: "all" | number[] }[] | undefined) ??
      [{ setting: c.setting as string, blocks: c.blocks as "all" | number[] }];
    return runCase(ctx, {
      ...caseSpec(ctx, c, "initial_latents"),
      interventions: [{ type: "knockout", settings: settings.map((s) => ({ setting: s.setting, blocks: s.blocks, steps })) }],
    });
  },
};

export const lensKind: KindHandler = {
  kind: "t2i_lens",
  inputs: ["initial_latents", "source_initial_latents"],
  run(ctx) {
    const c = ctx.case;
    if (c.mode !== "diagonal" && c.mode !== "input_to_block0") throw new Error(`unknown lens mode ${c.mode}`);
    return runCase(ctx, {
      ...caseSpec(ctx, c, "source_initial_latents"),
      steps: c.source_steps as number,
      interventions: [{
        type: "lens",
        block: c.block_name as string,
        mode: c.mode,
        sourceSteps: c.source_steps as number,
        targetSteps: c.target_steps as number,
        targetPrompt: c.target_prompt as string,
        targetLatents: `${ctx.path(c.file)}#initial_latents`,
        group: c.text_mode as string | undefined,
      }],
    });
  },
};

export const patchKind: KindHandler = {
  kind: "i2i_patch",
  inputs: ["initial_latents"],
  run(ctx) {
    const c = ctx.case;
    const sourceCase = ctx.suite.cases.find((x) => x.name === c.source_case);
    if (!sourceCase) throw new Error(`source case ${c.source_case} is not in the suite`);
    if (!["all", "padding_only", "content_only"].includes(c.mode as string)) throw new Error(`unknown patch mode ${c.mode}`);
    const source = caseSpec(ctx, sourceCase, "initial_latents");
    return runCase(ctx, {
      ...caseSpec(ctx, c, "initial_latents"),
      interventions: [{
        type: "patch",
        block: c.block_name as string,
        mode: c.mode as "all" | "padding_only" | "content_only",
        schedule: c.schedule === "fixed" ? "fixed" : "per-step",
        source: { prompt: source.prompt, refs: source.refs, latents: source.latents, steps: source.steps },
      }],
    });
  },
};
