// `deno task generate` (text-to-image) and `deno task edit` (in-context editing with reference images).
// Every input is checked before the GPU is touched — model folder, reference images, sizes, initial latents,
// output folders — so a mistake costs a second, not a model load, and leaves no file behind.

import { readInitialLatents } from "../model/latents_file.ts";
import { parseArgs } from "node:util";
import { join } from "node:path";
import {
  Flux2KleinPipeline,
  type GenerateRequest,
  type GenerateResult,
  MAX_SEQUENCE_LENGTH,
  type ReferenceImage,
} from "../model/pipeline.ts";
import { loadImage, preprocessReference, savePng } from "../model/images.ts";
import { parseFlux2Config } from "../model/flux2/config.ts";
import { readJson } from "../weights/checkpoint.ts";
import { writeSafetensors } from "../weights/safetensors_writer.ts";
import {
  BUNDLED_MODEL_DIR,
  defaultOutputPath,
  displayPath,
  formatBytes,
  formatMs,
  fsReason,
  integerOption,
  numberOption,
  parseOrUsageError,
  prepareOutputFile,
  sideOption,
  UsageError,
  withUsageErrors,
} from "./common.ts";

const DEFAULT_SIDE = 1024;

function help(command: string): string {
  const edit = command === "edit";
  return `usage: deno task ${command} --prompt TEXT ${edit ? "--ref IMG [--ref IMG …] " : ""}[options]

${
    edit
      ? "In-context editing: generates an image conditioned on the prompt and on one or more reference images."
      : "Text-to-image: generates an image from the prompt alone (use deno task edit for reference images)."
  }
Prints one line per denoising step, then the device, sizes, stage times and memory. Exit code 0 when the image
was written, 1 for a runtime or input error (nothing is written), 2 for a mistake in the command line.

  --model DIR          pipeline folder laid out like the published repositories (model_index.json, transformer/,
                       vae/, text_encoder/, tokenizer/). Default: the bundled tiny checkpoint
                       tests/fixtures/klein-tiny/model, whose weights are random (its images look like noise).
                       Real weights: deno task download black-forest-labs/FLUX.2-klein-4B --dir models/klein-4b
  --prompt TEXT        the instruction or description (required; may be "" for an empty prompt)
${
    edit
      ? `  --ref IMG            a reference image, PNG or JPEG (required; repeat for several, in order). Each side must be
                       at least 64 px; images over 1024² pixels are resized to about 1024² (Lanczos), then
                       centre-cropped to multiples of 16.
`
      : ""
  }  --width N, --height N
                       output size in pixels. Must be multiples of 16 (the VAE halves twice and latents are
                       packed 2×2); other values are refused with the nearest multiple, not rounded silently.
                       Default: ${edit ? "the first reference's size after cropping" : `${DEFAULT_SIDE}×${DEFAULT_SIDE}`}.
  --steps N            denoising steps (default: 4 for distilled checkpoints, 50 for base ones)
  --guidance G         classifier-free guidance scale, base (non-distilled) checkpoints only (default 4 there)
  --seed N             seed of the initial noise (default 0)
  --max-sequence-length N
                       text rows: the prompt is padded (or truncated, with a warning) to N tokens, as the
                       reference pipeline's max_sequence_length (default 512, what the checkpoints were trained with;
                       fewer means fewer padding tokens)
  --latents FILE       initial latents from a safetensors file instead of seeded noise: the tensor "latents", or
                       else the file's first tensor, of shape [C, H/16, W/16] (channel-major) or [H/16·W/16, C]
                       (packed tokens, as --save-latents writes them); a leading batch dimension of 1 is allowed
  --out FILE.png       where to write the image (default out/${command}-<date>-<time>.png); folders are created
  --save-latents FILE  also write the final packed latents [H/16·W/16, C] (float32 safetensors, tensor "latents")
  -h, --help           this text

example: ${
    edit
      ? 'deno task edit --prompt "make the couch green" --ref tests/fixtures/klein-tiny/images/ref0_80x64.png --out out/edit.png'
      : 'deno task generate --prompt "a red couch in a sunny room" --width 512 --height 384 --seed 7'
  }`;
}

/** Everything a generation needs, validated. */
export interface GenerationJob {
  modelDir: string;
  request: Omit<GenerateRequest, "refs"> & { refs: ReferenceImage[] };
  /** Absolute path of the PNG to write. */
  out: string;
  /** Absolute path of the latents file to write, if asked for. */
  saveLatents?: string;
}

export async function main(args: string[], command: string): Promise<number> {
  if (command !== "generate" && command !== "edit") throw new Error(`cli/generate.ts serves generate and edit, not "${command}"`);
  return await withUsageErrors(command, async () => {
    const { values, positionals } = parseOrUsageError(() =>
      parseArgs({
        args,
        strict: true,
        allowPositionals: true,
        options: {
          model: { type: "string" },
          prompt: { type: "string" },
          ref: { type: "string", multiple: true },
          width: { type: "string" },
          height: { type: "string" },
          steps: { type: "string" },
          guidance: { type: "string" },
          seed: { type: "string" },
          "max-sequence-length": { type: "string" },
          latents: { type: "string" },
          out: { type: "string" },
          "save-latents": { type: "string" },
          help: { type: "boolean", short: "h" },
        },
      })
    );
    if (values.help) {
      console.log(help(command));
      return 0;
    }
    if (positionals.length) throw new UsageError(`unexpected argument "${positionals[0]}" (options start with --)`);
    if (values.prompt === undefined) throw new UsageError("--prompt is required");
    const refPaths = values.ref ?? [];
    if (command === "generate" && refPaths.length) throw new UsageError("generate takes no --ref; use deno task edit for reference images");
    if (command === "edit" && !refPaths.length) throw new UsageError("edit needs at least one --ref image");
    const width = sideOption("width", values.width);
    const height = sideOption("height", values.height);
    const steps = integerOption("steps", values.steps, 1);
    const guidance = numberOption("guidance", values.guidance);
    const seed = integerOption("seed", values.seed, 0) ?? 0;
    const maxSequenceLength = integerOption("max-sequence-length", values["max-sequence-length"], 1);
    if (maxSequenceLength !== undefined && maxSequenceLength > MAX_SEQUENCE_LENGTH) {
      throw new UsageError(`--max-sequence-length ${maxSequenceLength}: at most ${MAX_SEQUENCE_LENGTH} tokens`);
    }
    const outPath = values.out ?? defaultOutputPath(command);
    if (!/\.png$/i.test(outPath)) throw new UsageError(`--out ${outPath}: the image is written as PNG, give a name ending in .png`);
    if (values["save-latents"] !== undefined && values["save-latents"] === outPath) {
      throw new UsageError("--save-latents and --out name the same file");
    }

    if (values.model === undefined) {
      console.log(`note: no --model given, using the bundled tiny checkpoint (random weights: the image will look like noise)`);
    }
    const job = await prepareJob({
      modelDir: values.model ?? BUNDLED_MODEL_DIR,
      prompt: values.prompt,
      refPaths,
      width,
      height,
      steps,
      guidance,
      seed,
      maxSequenceLength,
      latentsPath: values.latents,
      out: outPath,
      saveLatents: values["save-latents"],
    });

    console.log(`loading ${displayPath(job.modelDir)}`);
    const tl = performance.now();
    const pipeline = await Flux2KleinPipeline.load(job.modelDir, { log: (line) => console.log(line) });
    const loadMs = performance.now() - tl;
    try {
      const result = await runGeneration(pipeline, job);
      printSummary(pipeline, job, result, loadMs);
      return 0;
    } finally {
      pipeline.release();
    }
  });
}

export interface JobOptions {
  modelDir: string;
  prompt: string;
  refPaths: string[];
  width?: number;
  height?: number;
  steps?: number;
  guidance?: number;
  seed: number;
  maxSequenceLength?: number;
  latentsPath?: string;
  out: string;
  saveLatents?: string;
}

/** Check every input without the GPU: the model folder, the references (read and preprocessed here), the output
 * size, the initial latents, and that the output folders accept files. */
export async function prepareJob(o: JobOptions): Promise<GenerationJob> {
  const { distilled, inChannels } = await checkModelFolder(o.modelDir);
  if (distilled && o.guidance !== undefined && o.guidance !== 1) {
    throw new UsageError(
      `--guidance ${o.guidance}: ${displayPath(o.modelDir)} is guidance-distilled (model_index.json is_distilled); leave --guidance out`,
    );
  }
  const refs: ReferenceImage[] = [];
  for (const path of o.refPaths) {
    const prepared = preprocessReference(await loadImage(path), `reference image ${path}`);
    refs.push({ source: path, ...prepared });
  }
  const width = o.width ?? refs[0]?.width ?? DEFAULT_SIDE;
  const height = o.height ?? refs[0]?.height ?? DEFAULT_SIDE;
  const initialLatents = o.latentsPath === undefined ? undefined : await readInitialLatents(o.latentsPath, inChannels, width, height);
  const out = await prepareOutputFile(o.out, "output image");
  const saveLatents = o.saveLatents === undefined ? undefined : await prepareOutputFile(o.saveLatents, "latents file");
  return {
    modelDir: o.modelDir,
    request: {
      prompt: o.prompt,
      refs,
      width,
      height,
      steps: o.steps,
      guidance: o.guidance,
      seed: o.seed,
      maxSequenceLength: o.maxSequenceLength,
      initialLatents,
    },
    out,
    saveLatents,
  };
}

/** The model folder exists and looks like a FLUX.2 klein pipeline; returns what the early checks need. */
async function checkModelFolder(dir: string): Promise<{ distilled: boolean; inChannels: number }> {
  let stat: Deno.FileInfo;
  try {
    stat = await Deno.stat(dir);
  } catch (e) {
    throw new Error(
      `model folder ${dir}: ${fsReason(e)} (download one with deno task download black-forest-labs/FLUX.2-klein-4B --dir models/klein-4b)`,
    );
  }
  if (!stat.isDirectory) {
    throw new Error(`model folder ${dir} is a file, expected a pipeline folder (model_index.json, transformer/, vae/, …)`);
  }
  const missing: string[] = [];
  for (const part of ["model_index.json", "transformer", "vae", "text_encoder", "tokenizer"]) {
    try {
      await Deno.stat(join(dir, part));
    } catch {
      missing.push(part);
    }
  }
  if (missing.length) throw new Error(`model folder ${dir} is not a FLUX.2 klein pipeline folder: it lacks ${missing.join(", ")}`);
  const index = await readJson<{ is_distilled?: boolean }>(join(dir, "model_index.json"));
  const configPath = join(dir, "transformer", "config.json");
  const config = parseFlux2Config(await readJson(configPath), configPath);
  return { distilled: index?.is_distilled !== false, inChannels: config.inChannels };
}

/** Run one generation with a progress line per step, then write its files. Either every requested file is
 * written or none is (each write is atomic; a failure removes the ones already written by this call). */
export async function runGeneration(
  pipeline: Flux2KleinPipeline,
  job: GenerationJob,
  log: (line: string) => void = (line) => console.log(line),
): Promise<GenerateResult> {
  const result = await pipeline.generate({
    ...job.request,
    onStep: (s) => log(`step ${s.step + 1}/${s.steps}  σ=${s.sigma.toFixed(3)}  ${formatMs(s.ms)}`),
  });
  const written: string[] = [];
  try {
    await savePng(job.out, result.image, result.width, result.height);
    written.push(job.out);
    if (job.saveLatents) {
      const rows = result.layout.noiseRows;
      await writeSafetensors(
        job.saveLatents,
        { latents: { dtype: "F32", shape: [rows, result.latents.length / rows], data: result.latents } },
        { layout: "packed tokens [(height/16)·(width/16), channels]", width: String(result.width), height: String(result.height) },
      );
      written.push(job.saveLatents);
    }
  } catch (e) {
    for (const f of written) await Deno.remove(f).catch(() => {});
    throw e;
  }
  return result;
}

/** The closing lines of a run: device, sizes, stage times, memory, files. */
export function printSummary(
  pipeline: Flux2KleinPipeline,
  job: GenerationJob,
  result: GenerateResult,
  loadMs: number,
  log: (line: string) => void = (line) => console.log(line),
): void {
  const t = result.times;
  const stepsTotal = t.stepsMs.reduce((a, b) => a + b, 0);
  const refs = job.request.refs.map((r) => `${r.width}×${r.height}`);
  const seed = job.request.initialLatents ? "latents from file" : `seed ${job.request.seed ?? 0}`;
  log(`device   ${pipeline.gpu.adapterDescription}`);
  log(`model    ${displayPath(pipeline.dir)}`);
  log(
    `size     ${result.width}×${result.height}, ${t.stepsMs.length} steps, ${seed}` +
      (refs.length ? `, ${refs.length} reference${refs.length > 1 ? "s" : ""} (${refs.join(", ")})` : ""),
  );
  log(
    `times    load ${formatMs(loadMs + t.textLoadMs)} · text ${formatMs(t.textMs)} · references ${formatMs(t.refsMs)} · plan ${
      formatMs(t.planMs)
    } · ` +
      `steps ${formatMs(stepsTotal)} (${formatMs(stepsTotal / Math.max(1, t.stepsMs.length))}/step) · decode ${formatMs(t.decodeMs)} · ` +
      `total ${formatMs(t.totalMs)}`,
  );
  log(
    `memory   step plan ${formatBytes(result.planBytes)} of GPU activations · transformer weights ${
      formatBytes(pipeline.transformer.store.bytes())
    }`,
  );
  log(`image    ${displayPath(job.out)}`);
  if (job.saveLatents) log(`latents  ${displayPath(job.saveLatents)}`);
}

export { readInitialLatents };
