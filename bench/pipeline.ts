// Benchmark of a whole FLUX.2 klein edit (text encoder, VAE, transformer) and of the cost of interventions.
//
//   deno run -A bench/pipeline.ts --model PIPELINE_DIR | --random klein-4b|klein-9b|tiny
//                                 [--size 1024] [--steps 4] [--overhead [--capture-budget MIB]] [--python python3]
//
// Prints each stage's time (text encoding includes loading the text encoder, which is released afterwards), the
// per-step times, and the GPU memory held: transformer and VAE weights, the text encoder while it lives, the step
// plan and the VAE plans. --overhead also runs the same edit with a knockout (ref->text on every block), a patch of
// the second block's padding rows from a source run (studies/source_rows.ts), and with a
// capture of the text rows of every block at every step — streamed to a temporary captures file (the path of an
// output folder; --capture-budget bounds its host memory) and kept in memory — and reports their step time (the median
// of the steps after the first, and the mean of all) and memory over the plain run.
// --random PRESET writes a random pipeline folder to /tmp/kleinscope-pipeline-PRESET with
// bench/make_random_checkpoint.py when missing.

import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { getGpu } from "../runtime/device.ts";
import { Flux2KleinPipeline, type GenerateRequest, type GenerateResult } from "../model/pipeline.ts";
import { savePng } from "../model/images.ts";
import { Rng } from "../runtime/random.ts";
import { KnockoutIntervention } from "../interventions/knockout.ts";
import { CaptureIntervention } from "../interventions/capture_run.ts";
import { PatchIntervention } from "../interventions/patch.ts";
import { SourceRows } from "../studies/source_rows.ts";
import { exists, formatGB, formatTable, median, parseBenchArgs, runCommand } from "./common.ts";

export const USAGE = `usage: deno task bench pipeline --model PIPELINE_DIR | --random klein-4b|klein-9b|tiny
         [--size 1024] [--steps 4] [--overhead [--capture-budget MIB]] [--python python3]
A whole edit: each stage's time, the step times and the GPU memory held; --overhead also times a knockout, a patch and
captures (streamed and in memory) against the plain run.`;

const CHECKPOINT_SCRIPT = fileURLToPath(new URL("./make_random_checkpoint.py", import.meta.url));

/** A smooth random RGB image (the reference), written as PNG. */
async function referenceImage(path: string, size: number): Promise<void> {
  const rng = new Rng(11);
  const [a, b, c] = [rng.uniform() * 6, rng.uniform() * 6, rng.uniform() * 6];
  const chw = new Float32Array(3 * size * size);
  for (let y = 0; y < size; y++) {
    for (let x = 0; x < size; x++) {
      const u = x / size, v = y / size;
      chw[y * size + x] = 0.5 + 0.4 * Math.sin(a * u + b * v);
      chw[size * size + y * size + x] = 0.5 + 0.4 * Math.sin(b * u - c * v + 1);
      chw[2 * size * size + y * size + x] = 0.5 + 0.4 * Math.cos(c * u + a * v);
    }
  }
  await savePng(path, chw, size, size);
}

export async function main(args: string[]): Promise<void> {
  const parsed = parseBenchArgs(args, {
    model: { type: "string" },
    random: { type: "string" },
    size: { type: "string", default: "1024" },
    steps: { type: "string", default: "4" },
    overhead: { type: "boolean" },
    python: { type: "string", default: "python3" },
    "capture-budget": { type: "string" },
  }, USAGE);
  if (parsed === "help") return;
  const values = parsed;
  const size = Number(values.size), steps = Number(values.steps);
  let model = values.model;
  if (!model) {
    if (!values.random) throw new Error("give --model PIPELINE_DIR or --random PRESET");
    model = `/tmp/kleinscope-pipeline-${values.random}`;
    if (!(await exists(model))) {
      const t0 = performance.now();
      const r = await runCommand(values.python!, [CHECKPOINT_SCRIPT, "--kind", "pipeline", "--preset", values.random, "--out", model]);
      if (r.code !== 0) throw new Error(`writing the random pipeline failed:\n${r.stderr || r.stdout}`);
      console.log(`random ${values.random} pipeline written in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    }
  }
  const gpu = await getGpu();
  console.log(`device: ${gpu.adapterDescription}`);
  const ref = join(await Deno.makeTempDir(), "reference.png");
  await referenceImage(ref, size);
  const tl = performance.now();
  const pipe = await Flux2KleinPipeline.load(model, { log: (l) => console.log(l) });
  const loadMs = performance.now() - tl;
  const request: GenerateRequest = {
    prompt: "turn the scene into a watercolour painting, keep the layout",
    refs: [ref],
    width: size,
    height: size,
    steps,
    seed: 1,
  };
  const stepLine = (label: string) => (i: { step: number; steps: number; ms: number }) =>
    console.log(`  ${label} step ${i.step + 1}/${i.steps}: ${i.ms.toFixed(0)} ms`);
  const plain = await pipe.generate({ ...request, onStep: stepLine("plain") });
  const vae = await pipe.vae.gpuBytes();
  const tWeights = pipe.transformer.store.bytes();
  const t = plain.times;
  console.log(formatTable(["stage", "ms"], [
    ["load transformer + VAE", loadMs.toFixed(0)],
    ["text encoder load", t.textLoadMs.toFixed(0)],
    ["text encoder (encode, release)", t.textMs.toFixed(0)],
    ["VAE encode of the reference", t.refsMs.toFixed(0)],
    ["step plan (build + compile)", t.planMs.toFixed(0)],
    ...t.stepsMs.map((ms, i) => [`step ${i + 1}`, ms.toFixed(0)]),
    ["VAE decode", t.decodeMs.toFixed(0)],
    ["total with the text encoder's load", t.totalMs.toFixed(0)],
    ["total (without loads)", (t.totalMs - t.textLoadMs).toFixed(0)],
  ]));
  const resident = tWeights + vae.weights;
  console.log(
    `GPU memory: transformer weights ${formatGB(tWeights)}, VAE weights ${formatGB(vae.weights)}, ` +
      `step plan ${formatGB(plain.planBytes)}, largest VAE plan ${formatGB(plain.vaePlanBytes)}; ` +
      `peak ≈ ${formatGB(resident + Math.max(plain.planBytes, plain.vaePlanBytes))} ` +
      `(the text encoder is released before the steps; VAE plans and the step plan never coexist)`,
  );
  if (values.overhead) {
    const rows: string[][] = [];
    const row = (name: string, r: GenerateResult) => {
      const ms = median(r.times.stepsMs.slice(1).length ? r.times.stepsMs.slice(1) : r.times.stepsMs);
      const base = median(plain.times.stepsMs.slice(1).length ? plain.times.stepsMs.slice(1) : plain.times.stepsMs);
      // The mean over every step includes what only the first or last step pays (a capture's last rows are written
      // after the last step, with no step left to hide behind).
      const mean = (t: number[]) => t.reduce((a, b) => a + b, 0) / t.length;
      const all = mean(r.times.stepsMs), allBase = mean(plain.times.stepsMs);
      rows.push([
        name,
        ms.toFixed(0),
        `${(((ms - base) / base) * 100).toFixed(1)}%`,
        all.toFixed(0),
        `${(((all - allBase) / allBase) * 100).toFixed(1)}%`,
        formatGB(r.planBytes),
        formatGB(r.planBytes - plain.planBytes),
      ]);
    };
    row("plain", plain);
    const ko = await pipe.generate({ ...request, interventions: [new KnockoutIntervention([{ setting: "ref->text", blocks: "all" }])] });
    row("knockout ref->text, all blocks", ko);
    // The text rows of every block at every step, streamed to disk as `deno task capture --out` writes them (each
    // step's readback overlaps the next step; host memory bounded by the budget), then kept in memory.
    const taps = pipe.blockNames().map((b) => ({ tap: `${b}.txt` }));
    const what = `capture text rows, ${taps.length} blocks × ${steps} steps`;
    const budgetMB = values["capture-budget"] === undefined ? undefined : Number(values["capture-budget"]);
    const dir = await Deno.makeTempDir({ prefix: "kleinscope-bench-captures-" });
    try {
      const streamed = new CaptureIntervention(taps, { file: join(dir, "captures.safetensors"), budgetMB });
      const run = await pipe.generate({ ...request, interventions: [streamed] });
      const st = streamed.results(run).stats;
      row(`${what}, streamed (${formatGB(st.bytes)} to disk, host peak ${formatGB(st.peakHostBytes)})`, run);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
    const kept = new CaptureIntervention(taps, { budgetMB });
    const inMemory = await pipe.generate({ ...request, interventions: [kept] });
    row(`${what}, in memory (${formatGB(kept.results(inMemory).stats.bytes)})`, inMemory);
    // I2I patching: the padding rows of the second block's text stream, step k from step k of a source run (the
    // study layer's "rows of a source run", as `deno task patch` uses it); the source is this same edit.
    const block = pipe.blockNames()[Math.min(1, pipe.blockNames().length - 1)];
    const source = await SourceRows.prepare(pipe, request, { tap: `${block}.txt`, group: "text[padding]", schedule: "per-step" }, steps);
    await source.execute(pipe);
    const patch = new PatchIntervention({ tap: `${block}.txt`, positions: source.positions, rows: source, label: `patch at ${block}` });
    row(
      `patch text[padding] at ${block} from a source run (${source.count} rows per step)`,
      await pipe.generate({ ...request, interventions: [patch] }),
    );
    console.log(
      formatTable(["run", "median step ms", "over plain", "mean step ms", "mean over plain", "plan GPU", "plan over plain"], rows),
    );
  }
  pipe.release();
}

if (import.meta.main) await main(Deno.args);
