// Shared by `run` and the intervention shortcuts: load the pipeline, execute a spec, write its folder atomically.

import { basename, join } from "node:path";
import { Flux2KleinPipeline } from "../model/pipeline.ts";
import { executePlan, planSpec } from "../studies/execute.ts";
import { writeSpecOutputs } from "../studies/outputs.ts";
import type { RunSpec } from "../studies/spec.ts";
import { writeOutputFolder } from "../studies/output_folder.ts";

export async function runSpecToFolder(spec: RunSpec, out: string, overwrite: boolean): Promise<void> {
  const t0 = performance.now();
  let pipe: Flux2KleinPipeline | null = null;
  try {
    // Written into a sibling temporary folder and swapped in at the end: a failed run leaves nothing behind, and
    // --overwrite only ever replaces a folder kleinscope wrote (never ., a parent, home, a root or the model folder).
    const { run, files } = await writeOutputFolder(
      out,
      { overwrite, protect: [{ path: spec.model, what: "model folder" }], warn: (l) => console.error(`warning: ${l}`) },
      async (tmp) => {
        // The checkpoints are validated but the weights stay on disk until the spec's runs are planned and checked.
        pipe = await Flux2KleinPipeline.load(spec.model, { log: (l) => console.error(l), deferUpload: true });
        // Captures stream into the folder while the run goes (bounded host memory); writeSpecOutputs keeps the file.
        const planned = await planSpec(pipe, spec, { captureFile: join(tmp, "captures.safetensors") });
        const run = await executePlan(pipe, planned, (l) => console.error(l));
        return { run, files: await writeSpecOutputs(tmp, run) };
      },
    );
    const r = run.result;
    console.log(
      `wrote ${out}/ (${files.map((f) => basename(f)).join(", ")}) — ${r.width}×${r.height}, ` +
        `${r.times.stepsMs.length} steps, ${(performance.now() - t0).toFixed(0)} ms`,
    );
  } finally {
    (pipe as Flux2KleinPipeline | null)?.release();
  }
}

export function defaultOut(kind: string): string {
  const stamp = new Date().toISOString().replace(/[:.]/g, "-").slice(0, 19);
  return join("out", `${kind}-${stamp}`);
}
