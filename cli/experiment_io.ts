// Shared by `run` and the intervention shortcuts: load the pipeline, execute a spec, write its folder atomically.

import { basename, dirname, join } from "node:path";
import { Flux2KleinPipeline } from "../model/pipeline.ts";
import { executePlan, planSpec } from "../studies/execute.ts";
import { writeSpecOutputs } from "../studies/outputs.ts";
import type { RunSpec } from "../studies/spec.ts";

export async function runSpecToFolder(spec: RunSpec, out: string, overwrite: boolean): Promise<void> {
  let exists = false;
  try {
    exists = [...Deno.readDirSync(out)].length > 0;
  } catch { /* does not exist */ }
  if (exists && !overwrite) throw new Error(`output folder ${out} is not empty (choose another with --out, or pass --overwrite)`);
  // Write into a sibling temporary folder and rename at the end: a failed run leaves nothing behind.
  const parent = dirname(out);
  try {
    await Deno.mkdir(parent, { recursive: true });
  } catch (e) {
    throw new Error(`cannot create ${parent}: ${(e as Error).message}`);
  }
  const tmp = join(parent, `.${basename(out)}.partial-${crypto.randomUUID().slice(0, 8)}`);
  try {
    await Deno.mkdir(tmp);
  } catch (e) {
    throw new Error(`cannot write into ${parent}: ${(e as Error).message}`);
  }
  const t0 = performance.now();
  let pipe: Flux2KleinPipeline | null = null;
  try {
    // The checkpoints are validated but the weights stay on disk until the spec's runs are planned and checked.
    pipe = await Flux2KleinPipeline.load(spec.model, { log: (l) => console.error(l), deferUpload: true });
    const run = await executePlan(pipe, await planSpec(pipe, spec), (l) => console.error(l));
    const files = await writeSpecOutputs(tmp, run);
    if (exists) await Deno.remove(out, { recursive: true });
    await Deno.rename(tmp, out);
    const r = run.result;
    console.log(
      `wrote ${out}/ (${files.map((f) => basename(f)).join(", ")}) — ${r.width}×${r.height}, ` +
        `${r.times.stepsMs.length} steps, ${(performance.now() - t0).toFixed(0)} ms`,
    );
  } catch (e) {
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
    throw e;
  } finally {
    pipe?.release();
  }
}

export function defaultOut(kind: string): string {
  const stamp = new Date().toISOString().replace(/[:.]/g, "-").slice(0, 19);
  return join("out", `${kind}-${stamp}`);
}
