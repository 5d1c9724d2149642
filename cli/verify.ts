// `deno task verify <run-dir> [--tolerance L] [--keep DIR]`: run a stored run again from its spec.json, through the
// same path as `deno task run`, and compare the images. The study's rule: the run reproduces when the mean absolute
// pixel difference of every image (image.png, and source.png where the run has one) to the stored one is at most 1.0
// on the 0–255 scale — GPUs are not bit-identical across machines, so a small drift passes and a different picture
// does not.

import { join } from "node:path";
import { parseArgs } from "node:util";
import { readSpec, type RunSpec } from "../studies/spec.ts";
import { loadImage } from "../model/images.ts";
import { meanAbsoluteDifference } from "../experiments/metrics.ts";
import { printable } from "../runtime/printable.ts";
import { runSpecToFolder } from "./experiment_io.ts";
import { parseOrUsageError, UsageError, withUsageErrors } from "./common.ts";

const HELP = `usage: deno task verify <run-dir> [--tolerance L] [--keep DIR]

Runs the run stored in <run-dir> again from its spec.json — the folder \`deno task run\`, a shortcut or an experiment
(tasks/<task_id>/<condition>/) wrote — the same way \`deno task run\` does, into a temporary folder, then compares the
images: for image.png (and source.png where the run has one) the mean absolute pixel difference to the stored image,
over pixels and channels on the 0–255 scale. Passes (exit 0) when every one is at most the tolerance, else exit 1.

  --tolerance L  largest mean absolute difference that passes (default 1.0, the study's rule)
  --keep DIR     keep the new run in DIR (default: a temporary folder, removed afterwards)

Paths inside the spec are relative to the current folder, as for \`deno task run\`.`;

export const DEFAULT_TOLERANCE = 1.0;

/** The images a run folder may hold that a re-run must reproduce. */
const IMAGES = ["image.png", "source.png"];

export interface ImageComparison {
  name: string;
  /** Mean absolute difference in 8-bit levels, or null when it cannot be computed (see problem). */
  difference: number | null;
  problem?: string;
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}

/** Compare the images of a stored run folder with those of a new one. */
export async function compareRunImages(stored: string, fresh: string): Promise<ImageComparison[]> {
  const out: ImageComparison[] = [];
  for (const name of IMAGES) {
    const [a, b] = [await exists(join(stored, name)), await exists(join(fresh, name))];
    if (!a && !b) continue;
    if (a !== b) {
      out.push({ name, difference: null, problem: a ? "the new run did not write it" : "the stored run has none" });
      continue;
    }
    const [x, y] = await Promise.all([loadImage(join(stored, name)), loadImage(join(fresh, name))]);
    if (x.width !== y.width || x.height !== y.height) {
      out.push({ name, difference: null, problem: `sizes differ: stored ${x.width}×${x.height}, new ${y.width}×${y.height}` });
      continue;
    }
    out.push({ name, difference: meanAbsoluteDifference(x, y) });
  }
  return out;
}

/** Whether every comparison is within the tolerance. */
export function verdictOf(comparisons: ImageComparison[], tolerance: number): boolean {
  return comparisons.length > 0 && comparisons.every((c) => c.difference !== null && c.difference <= tolerance);
}

function fingerprintOf(spec: RunSpec): string | undefined {
  return spec.kleinscope?.fingerprint;
}

export function main(args: string[]): Promise<number> {
  return withUsageErrors("verify", async () => {
    const { values, positionals } = parseOrUsageError(() =>
      parseArgs({
        args,
        allowPositionals: true,
        options: { tolerance: { type: "string" }, keep: { type: "string" }, help: { type: "boolean", short: "h" } },
      })
    );
    if (values.help) {
      console.log(HELP);
      return 0;
    }
    if (positionals.length !== 1) throw new UsageError("give one run folder (it holds spec.json and image.png)");
    const tolerance = values.tolerance === undefined ? DEFAULT_TOLERANCE : Number(values.tolerance);
    if (!Number.isFinite(tolerance) || tolerance < 0) {
      throw new UsageError(`--tolerance "${printable(values.tolerance!)}" is not a number ≥ 0`);
    }
    const dir = positionals[0];
    const shown = printable(dir);
    if (!(await exists(join(dir, "spec.json")))) {
      const hint = (await exists(join(dir, "manifest.json")))
        ? " (an experiment's output folder: give one of its condition folders, tasks/<task_id>/<condition>)"
        : "";
      throw new Error(`${shown} holds no spec.json${hint}`);
    }
    if (!(await exists(join(dir, "image.png")))) throw new Error(`${shown} holds no image.png to compare with`);
    const spec = await readSpec(join(dir, "spec.json"));

    const tmp = values.keep ? undefined : await Deno.makeTempDir({ prefix: "ks-verify-" });
    const fresh = values.keep ?? join(tmp!, "run");
    try {
      await runSpecToFolder(spec, fresh, false);
      const again = await readSpec(join(fresh, "spec.json"));
      const [before, now] = [fingerprintOf(spec), fingerprintOf(again)];
      if (before && now && before !== now) {
        console.log(
          `note: the checkpoint differs from the one the stored run used (${before.slice(0, 19)}… then, ${now.slice(0, 19)}… now)`,
        );
      }
      const comparisons = await compareRunImages(dir, fresh);
      for (const c of comparisons) {
        console.log(
          c.difference === null
            ? `${c.name}: ${c.problem} — fail`
            : `${c.name}: mean |Δ| = ${c.difference.toFixed(4)} of 255 (tolerance ${tolerance}) — ${
              c.difference <= tolerance ? "pass" : "fail"
            }`,
        );
      }
      const pass = verdictOf(comparisons, tolerance);
      const worst = Math.max(...comparisons.map((c) => c.difference ?? Infinity));
      console.log(
        `verify ${shown}: ${pass ? "PASS" : "FAIL"} (largest mean |Δ| ${
          Number.isFinite(worst) ? worst.toFixed(4) : "–"
        } of 255, tolerance ${tolerance})`,
      );
      return pass ? 0 : 1;
    } finally {
      if (tmp) await Deno.remove(tmp, { recursive: true }).catch(() => {});
    }
  });
}
