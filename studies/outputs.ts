// Writing a spec's outputs next to each other so that the run can be regenerated: the image, the source run's image,
// captures with their index, the spec as it ran and what happened (sizes, times, token groups, warnings).

import { join, resolve } from "node:path";
import { savePng } from "../model/images.ts";
import { writeSafetensors } from "../weights/safetensors_writer.ts";
import { checkpointFingerprint } from "../weights/fingerprint.ts";
import { type RunSpec, SPEC_VERSION } from "./spec.ts";
import { KLEINSCOPE_VERSION, type SpecRunResult } from "./execute.ts";
import { type CaptureFileEntry, captureIndex, CAPTURES_FORMAT, captureTensorName } from "../interventions/capture_file.ts";
import { ATTENTION_FLOW_FORMAT, attentionFlowJson, attentionFlowTensors } from "../interventions/attention_flow.ts";
import { effectsJson } from "./effects.ts";

/** The spec as it ran: defaults made explicit, version and checkpoint fingerprint added. */
export async function resolvedSpec(spec: RunSpec, run: SpecRunResult): Promise<RunSpec> {
  return {
    ...spec,
    kleinscope: { version: KLEINSCOPE_VERSION, spec: SPEC_VERSION, fingerprint: await checkpointFingerprint(spec.model) },
    width: spec.width ?? (spec.interventions?.some((i) => i.type === "lens") ? run.source?.width : run.result.width),
    height: spec.height ?? (spec.interventions?.some((i) => i.type === "lens") ? run.source?.height : run.result.height),
    steps: spec.steps ??
      (spec.interventions?.some((i) => i.type === "lens") ? run.source?.times.stepsMs.length : run.result.times.stepsMs.length),
    seed: spec.latents ? undefined : spec.seed ?? 0,
  };
}

/** Write image.png, spec.json, run.json, (with captures) captures.safetensors + captures.json, (with an attention
 * flow) attention_flow.json + attention_flow.safetensors and (with effects) effects.json, baseline.png and, with a
 * control, control.png into `dir`. */
export async function writeSpecOutputs(dir: string, run: SpecRunResult): Promise<string[]> {
  await Deno.mkdir(dir, { recursive: true });
  const written: string[] = [];
  const image = join(dir, "image.png");
  await savePng(image, run.result.image, run.result.width, run.result.height);
  written.push(image);
  if (run.source) {
    const src = join(dir, "source.png");
    await savePng(src, run.source.image, run.source.width, run.source.height);
    written.push(src);
  }
  const captures = run.captures;
  if (captures?.file) {
    // Streamed during the run: the file is whole already (and, run through an output folder, already here).
    const dest = join(dir, "captures.safetensors");
    if (resolve(captures.file) !== resolve(dest)) await Deno.copyFile(captures.file, dest);
    await Deno.writeTextFile(join(dir, "captures.json"), JSON.stringify(captureIndex(captures.fileEntries), null, 1));
    written.push(dest, join(dir, "captures.json"));
  } else if (captures?.tensors.some((c) => c.steps.size)) {
    const tensors: Record<string, { dtype: "F32"; shape: number[]; data: Float32Array }> = {};
    const entries: CaptureFileEntry[] = [];
    for (const c of captures.tensors) {
      for (const [step, data] of [...c.steps].sort((a, b) => a[0] - b[0])) {
        const name = captureTensorName(c.tap, c.group, c.forward, step);
        const shape: [number, number] = [data.length / c.cols, c.cols];
        tensors[name] = { dtype: "F32", shape, data };
        entries.push({ name, tap: c.tap, group: c.group, forward: c.forward, step, positions: c.positions, shape });
      }
    }
    await writeSafetensors(join(dir, "captures.safetensors"), tensors, { format: CAPTURES_FORMAT });
    await Deno.writeTextFile(join(dir, "captures.json"), JSON.stringify(captureIndex(entries), null, 1));
    written.push(join(dir, "captures.safetensors"), join(dir, "captures.json"));
  }
  if (run.attentionFlow) {
    const tensors = attentionFlowTensors(run.attentionFlow);
    if (Object.keys(tensors).length) {
      await writeSafetensors(join(dir, "attention_flow.safetensors"), tensors, { format: ATTENTION_FLOW_FORMAT });
      written.push(join(dir, "attention_flow.safetensors"));
    }
    await Deno.writeTextFile(join(dir, "attention_flow.json"), JSON.stringify(attentionFlowJson(run.attentionFlow)) + "\n");
    written.push(join(dir, "attention_flow.json"));
  }
  if (run.effects && run.baseline) {
    for (const [name, r] of [["baseline.png", run.baseline], ["control.png", run.control]] as const) {
      if (!r) continue;
      await savePng(join(dir, name), r.image, r.width, r.height);
      written.push(join(dir, name));
    }
    await Deno.writeTextFile(join(dir, "effects.json"), JSON.stringify(effectsJson(run.effects)) + "\n");
    written.push(join(dir, "effects.json"));
  }
  const spec = await resolvedSpec(run.spec, run);
  delete spec.output;
  await Deno.writeTextFile(join(dir, "spec.json"), JSON.stringify(spec, null, 2) + "\n");
  written.push(join(dir, "spec.json"));
  const r = run.result;
  await Deno.writeTextFile(
    join(dir, "run.json"),
    JSON.stringify(
      {
        width: r.width,
        height: r.height,
        times: r.times,
        layout: { ...r.layout, prompt: undefined },
        promptGroups: r.layout.prompt,
        warnings: run.warnings,
      },
      null,
      1,
    ),
  );
  written.push(join(dir, "run.json"));
  return written;
}
