// Conformance of whole runs: plain pipelines, knockouts, the T2I lens and I2I-to-I2I patching. Each case's
// expected captures (capture.stepS.<block>.<txt|img|all>) are taken with the project's own capture.

import type { Flux2KleinPipeline, GenerateRequest, GenerateResult } from "../model/pipeline.ts";
import { packLatents } from "../model/sampler.ts";
import { CaptureIntervention, type CaptureRequest } from "../interventions/capture_run.ts";
import { KnockoutIntervention } from "../interventions/knockout.ts";
import { PatchIntervention } from "../interventions/patch.ts";
import type { Intervention } from "../interventions/intervention.ts";
import { resolveGroups } from "../interventions/groups.ts";
import { takeRows, textTapOfBlock } from "../interventions/taps.ts";
import type { CaseContext, Computed, GoldenCase, KindHandler } from "./runner.ts";
import { sharedPipeline } from "./models.ts";
import { SingleBlockRopeOmission } from "./reference_quirks.ts";

const CAPTURE_KEY = /^capture\.step(\d+)\.((?:double|single)\.\d+)\.(txt|img|all)$/;

/** The captures a case expects, as capture requests (text-only when the expected rows are fewer than the tap's). */
function expectedCaptures(c: GoldenCase, textRows: number): { key: string; request: CaptureRequest; step: number }[] {
  const out: { key: string; request: CaptureRequest; step: number }[] = [];
  for (const [key, shape] of Object.entries(c.tensors)) {
    const m = CAPTURE_KEY.exec(key);
    if (!m) continue;
    const [, step, block, part] = m;
    const tap = part === "all" ? block : `${block}.${part}`;
    const textOnly = part !== "img" && shape[0] === textRows && (part === "all" || block.startsWith("double"));
    out.push({ key, step: Number(step), request: { tap, group: textOnly && part === "all" ? "text" : undefined, steps: [Number(step)] } });
  }
  return out;
}

/** Merge capture requests on the same tap and group into one (steps united). */
function mergeRequests(list: { request: CaptureRequest }[]): CaptureRequest[] {
  const byKey = new Map<string, CaptureRequest>();
  for (const { request } of list) {
    const k = `${request.tap}|${request.group ?? ""}`;
    const prev = byKey.get(k);
    if (prev) (prev.steps as number[]).push(...(request.steps as number[]));
    else byKey.set(k, { ...request, steps: [...(request.steps as number[])] });
  }
  return [...byKey.values()];
}

async function initialLatents(ctx: CaseContext, name: string): Promise<Float32Array> {
  const chw = await ctx.tensor(name);
  const [c, h, w] = ctx.case.tensors[name];
  return packLatents(chw, c, h, w);
}

interface CaseRun {
  request: GenerateRequest;
  interventions: Intervention[];
}

/** Run a case's generation with its captures and return every expected tensor. */
async function runWithCaptures(pipe: Flux2KleinPipeline, c: GoldenCase, run: CaseRun): Promise<Record<string, Computed>> {
  const textRows = 512;
  const wanted = expectedCaptures(c, textRows);
  const capture = new CaptureIntervention(mergeRequests(wanted));
  const result = await pipe.generate({ ...run.request, interventions: [...run.interventions, capture], keepStepLatents: true });
  const out: Record<string, Computed> = { image: result.image };
  result.stepLatents.forEach((l, i) => (out[`latents.step${i}`] = l));
  for (const w of wanted) {
    const key = w.request.group ? `${w.request.tap}[${w.request.group}]` : w.request.tap;
    const data = capture.captured.get(key)?.steps.get(w.step);
    if (data) out[w.key] = data;
  }
  return out;
}

function baseRequest(c: GoldenCase, ctx: CaseContext): Omit<GenerateRequest, "initialLatents"> {
  return {
    prompt: c.prompt as string,
    refs: (c.refs as string[]).map((r) => ctx.path(r)),
    width: c.width as number,
    height: c.height as number,
    steps: c.steps as number,
  };
}

export const pipelineKind: KindHandler = {
  kind: "pipeline",
  inputs: ["initial_latents"],
  async run(ctx) {
    const pipe = await sharedPipeline(ctx.modelDir);
    return await runWithCaptures(pipe, ctx.case, {
      request: { ...baseRequest(ctx.case, ctx), initialLatents: await initialLatents(ctx, "initial_latents") },
      interventions: [],
    });
  },
};

export const knockoutKind: KindHandler = {
  kind: "knockout",
  inputs: ["initial_latents"],
  async run(ctx) {
    const c = ctx.case;
    const pipe = await sharedPipeline(ctx.modelDir);
    const blocks = c.blocks === "all" ? "all" : (c.blocks as number[]);
    const steps = c.steps_masked === "all" || c.steps_masked === undefined ? "all" : (c.steps_masked as number[]);
    return await runWithCaptures(pipe, c, {
      request: { ...baseRequest(c, ctx), initialLatents: await initialLatents(ctx, "initial_latents") },
      // The reference's knockout cases ran their single blocks without RoPE (see reference_quirks.ts).
      interventions: [new KnockoutIntervention([{ setting: c.setting as string, blocks, steps }]), new SingleBlockRopeOmission()],
    });
  },
};

/** Text rows [512, hidden] of `block`'s output at each step of a run. */
async function textRowsOfBlock(
  pipe: Flux2KleinPipeline,
  request: GenerateRequest,
  block: string,
): Promise<{ rows: Float32Array[]; result: GenerateResult }> {
  const tap = textTapOfBlock(block);
  const capture = new CaptureIntervention([{ tap, group: block.startsWith("single") ? "text" : undefined }]);
  const result = await pipe.generate({ ...request, interventions: [...(request.interventions ?? []), capture] });
  const got = [...capture.captured.values()][0];
  const rows = Array.from({ length: request.steps ?? 0 }, (_, s) => got.steps.get(s)!);
  return { rows, result };
}

export const lensKind: KindHandler = {
  kind: "t2i_lens",
  inputs: ["initial_latents", "source_initial_latents"],
  async run(ctx) {
    const c = ctx.case;
    const pipe = await sharedPipeline(ctx.modelDir);
    const block = c.block_name as string;
    const source = await textRowsOfBlock(pipe, {
      ...baseRequest(c, ctx),
      steps: c.source_steps as number,
      initialLatents: await initialLatents(ctx, "source_initial_latents"),
    }, block);
    const rows = source.rows[0];
    const textRows = source.result.layout.textRows;
    const positions = Array.from({ length: textRows }, (_, i) => i);
    const tap = c.mode === "diagonal" ? textTapOfBlock(block) : c.mode === "input_to_block0" ? "context_embedder" : null;
    if (!tap) throw new Error(`unknown lens mode ${c.mode}`);
    return await runWithCaptures(pipe, c, {
      request: {
        prompt: c.target_prompt as string,
        refs: [],
        width: c.width as number,
        height: c.height as number,
        steps: c.target_steps as number,
        initialLatents: await initialLatents(ctx, "initial_latents"),
      },
      interventions: [new PatchIntervention({ tap, positions, rows, label: `lens ${c.mode} from ${block}` })],
    });
  },
};

export const patchKind: KindHandler = {
  kind: "i2i_patch",
  inputs: ["initial_latents"],
  async run(ctx) {
    const c = ctx.case;
    const pipe = await sharedPipeline(ctx.modelDir);
    const sourceCase = ctx.suite.cases.find((x) => x.name === c.source_case);
    if (!sourceCase) throw new Error(`source case ${c.source_case} is not in the suite`);
    const block = c.block_name as string;
    const sourceFile = await ctx.caseTensor(sourceCase, "initial_latents");
    const [ch, h, w] = sourceCase.tensors.initial_latents;
    const source = await textRowsOfBlock(
      pipe,
      { ...baseRequest(sourceCase, ctx), initialLatents: packLatents(sourceFile, ch, h, w) },
      block,
    );
    const group = c.mode === "all"
      ? "text"
      : c.mode === "padding_only"
      ? "text[padding]"
      : c.mode === "content_only"
      ? "text[content]"
      : null;
    if (!group) throw new Error(`unknown patch mode ${c.mode}`);
    const sourcePositions = resolveGroups(source.result.layout, group);
    const cols = source.rows[0].length / source.result.layout.textRows;
    const rows = source.rows.map((r) => takeRows(r, cols, sourcePositions));
    return await runWithCaptures(pipe, c, {
      request: { ...baseRequest(c, ctx), initialLatents: await initialLatents(ctx, "initial_latents") },
      interventions: [
        new PatchIntervention({
          tap: textTapOfBlock(block),
          positions: (rc) => resolveGroups(rc.layout, group),
          rows,
          label: `patch ${c.mode} at ${block}`,
        }),
      ],
    });
  },
};
