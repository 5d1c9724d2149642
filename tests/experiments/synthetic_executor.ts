// Specs run without a GPU, for testing the runner's bookkeeping (locks, resume, kills, failures) quickly: the
// references are decoded by the real image loader (so a poisoned image fails as it would), and the "result" is a
// small image whose colour is a hash of the spec, so equal specs give byte-identical folders. `pauseMs` spaces out
// the writes of a folder so that a test can kill the process in the middle of one.

import { join } from "node:path";
import { loadImage } from "../../model/images.ts";
import { savePng } from "../../model/images.ts";
import type { SpecExecutor } from "../../experiments/runner.ts";
import { canonicalJson, sha256Hex } from "../../experiments/files.ts";
import type { RunSpec } from "../../studies/spec.ts";

export const SYNTHETIC_DEVICE = "synthetic (no GPU)";

async function solid(path: string, seedText: string, side = 16): Promise<void> {
  const hex = await sha256Hex(seedText);
  const rgb = [0, 2, 4].map((i) => parseInt(hex.slice(i, i + 2), 16) / 255);
  const planes = new Float32Array(3 * side * side);
  for (let c = 0; c < 3; c++) planes.fill(rgb[c], c * side * side, (c + 1) * side * side);
  await savePng(path, planes, side, side);
}

export function syntheticExecutor(options: { pauseMs?: number; log?: (line: string) => void } = {}): SpecExecutor {
  const pause = () => new Promise((r) => setTimeout(r, options.pauseMs ?? 0));
  return {
    open: () => Promise.resolve(SYNTHETIC_DEVICE),
    async check(spec: RunSpec) {
      for (const r of spec.refs ?? []) await loadImage(r);
    },
    async run(spec: RunSpec, dir: string, log) {
      for (const r of spec.refs ?? []) await loadImage(r);
      const key = canonicalJson(spec);
      await solid(join(dir, "image.png"), key);
      log("wrote image.png");
      await pause();
      await Deno.writeTextFile(join(dir, "spec.json"), JSON.stringify(spec, null, 2) + "\n");
      log("wrote spec.json");
      await pause();
      await Deno.writeTextFile(join(dir, "run.json"), JSON.stringify({ synthetic: true }) + "\n");
      log("wrote run.json");
    },
    async reference(request, path) {
      await solid(path, canonicalJson(request));
    },
    close() {},
  };
}
