// `deno task demo`: one text-to-image run and one edit on the bundled tiny checkpoint, to show that the whole
// pipeline works on this machine (any WebGPU adapter, the software one included) before real weights are fetched.

import { parseArgs } from "node:util";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { Flux2KleinPipeline } from "../model/pipeline.ts";
import { BUNDLED_MODEL_DIR, displayPath, formatBytes, formatMs, parseOrUsageError, UsageError, withUsageErrors } from "./common.ts";
import { prepareJob, runGeneration } from "./generate.ts";

const REFERENCE = fileURLToPath(new URL("../tests/fixtures/klein-tiny/images/ref0_80x64.png", import.meta.url));

const HELP = `usage: deno task demo [--out DIR]

Runs FLUX.2 klein end to end on the bundled tiny checkpoint (tests/fixtures/klein-tiny/model): one text-to-image
generation (64×96) and one edit of tests/fixtures/klein-tiny/images/ref0_80x64.png, 4 steps each, and writes both
as PNG. The tiny checkpoint has random weights, so the images look like noise: the demo shows that every stage
(tokenizer, text encoder, transformer, VAE) runs on this machine's WebGPU adapter, and how fast.

  --out DIR    folder for the two images (default out/demo)
  -h, --help   this text

example: deno task demo`;

export async function main(args: string[]): Promise<number> {
  return await withUsageErrors("demo", async () => {
    const { values, positionals } = parseOrUsageError(() =>
      parseArgs({ args, strict: true, allowPositionals: true, options: { out: { type: "string" }, help: { type: "boolean", short: "h" } } })
    );
    if (values.help) {
      console.log(HELP);
      return 0;
    }
    if (positionals.length) throw new UsageError(`unexpected argument "${positionals[0]}"`);
    const dir = values.out ?? join("out", "demo");

    const textToImage = await prepareJob({
      modelDir: BUNDLED_MODEL_DIR,
      prompt: "a red couch in a sunny room",
      refPaths: [],
      width: 64,
      height: 96,
      seed: 0,
      out: join(dir, "text-to-image.png"),
    });
    const edit = await prepareJob({
      modelDir: BUNDLED_MODEL_DIR,
      prompt: "make the couch green",
      refPaths: [REFERENCE],
      seed: 0,
      out: join(dir, "edit.png"),
    });

    const t0 = performance.now();
    const pipeline = await Flux2KleinPipeline.load(BUNDLED_MODEL_DIR, { log: (line) => console.log(line) });
    try {
      console.log(`device: ${pipeline.gpu.adapterDescription}`);
      console.log(`model:  ${displayPath(BUNDLED_MODEL_DIR)} (tiny, random weights: the images look like noise)`);
      console.log(`\ntext-to-image, "${textToImage.request.prompt}", 64×96`);
      const a = await runGeneration(pipeline, textToImage, (line) => console.log(`  ${line}`));
      console.log(`\nedit of ${displayPath(REFERENCE)}, "${edit.request.prompt}"`);
      const b = await runGeneration(pipeline, edit, (line) => console.log(`  ${line}`));
      console.log("");
      console.log(`wrote ${displayPath(textToImage.out)} (${a.width}×${a.height}) and ${displayPath(edit.out)} (${b.width}×${b.height})`);
      console.log(
        `in ${formatMs(performance.now() - t0)} (step plan ${formatBytes(Math.max(a.planBytes, b.planBytes))} of GPU activations)`,
      );
    } finally {
      pipeline.release();
    }
    console.log(`
With real weights (several GB; a gated repository needs HF_TOKEN):
  deno task download black-forest-labs/FLUX.2-klein-4B --dir models/klein-4b
  deno task edit --model models/klein-4b --prompt "make the couch green" --ref photo.png
  deno task generate --model models/klein-4b --prompt "a red couch in a sunny room" --width 1024 --height 768
Every command explains its options with --help.`);
    return 0;
  });
}
