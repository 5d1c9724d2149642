// Metrics of every complete condition folder of a run (definitions in metrics.ts), written to <run>/metrics.jsonl:
//   change_vs_baseline     mean absolute pixel change against the task's baseline condition (8-bit levels)
//   ssim_vs_baseline       SSIM against the baseline;   histogram_vs_baseline   colour-histogram (Hellinger) distance
//   dominant_hex           the dominant colour;          delta_e_reference       its ΔE00 to the task's colour
//                                                         (metadata.rgb, set by the solid-colour generator)
//   patch conditions:      transfer_pixels  — transfer index with the mean absolute pixel change, between the source
//                          run (source.png, the unpatched source) and the target's baseline;
//                          transfer_colour — the same index on the dominant colour, with ΔE00 to the target's and
//                          the source's reference colours (solid-colour tasks): 1 = the source's colour, −1 = the
//                          target's own; delta_e_source_colour — ΔE00 of the dominant colour to the source's colour.
// Comparisons between images of different sizes are left out (null).

import { join } from "node:path";
import { loadImage, type RgbImage } from "../model/images.ts";
import { pathExists, readJsonFile, writeTextAtomic } from "./files.ts";
import { colourHex } from "./generators.ts";
import { ciede2000, dominantColour, histogramDistance, meanAbsoluteDifference, srgbToLab, ssim, transferIndex } from "./metrics.ts";
import { conditionDir, PATCH_SOURCE_FILE, type RunFolder } from "./run_folder.ts";
import type { Task } from "./tasks.ts";

export interface FolderMetrics {
  task_id: string;
  condition: string;
  family: string;
  edit_type: string;
  change_vs_baseline: number | null;
  ssim_vs_baseline: number | null;
  histogram_vs_baseline: number | null;
  dominant_hex: string;
  dominant_fraction: number;
  delta_e_reference: number | null;
  source_task: string | null;
  transfer_pixels: number | null;
  transfer_colour: number | null;
  delta_e_source_colour: number | null;
}

export const METRICS_FILE = "metrics.jsonl";

function taskColour(task: Task | undefined): number[] | undefined {
  const rgb = task?.metadata.rgb;
  return Array.isArray(rgb) && rgb.length === 3 && rgb.every((v) => Number.isInteger(v) && v >= 0 && v <= 255)
    ? rgb as number[]
    : undefined;
}

const sameSize = (a: RgbImage, b: RgbImage) => a.width === b.width && a.height === b.height;
const finiteOrNull = (v: number) => Number.isFinite(v) ? v : null;

/** Metrics of every complete folder, in task then condition order. `baseline` names the comparison condition. */
export async function computeRunMetrics(run: RunFolder, baseline = "baseline"): Promise<FolderMetrics[]> {
  const rows: FolderMetrics[] = [];
  const byId = new Map(run.tasks.map((t) => [t.task_id, t]));
  for (const task of run.tasks) {
    const done = run.complete.get(task.task_id) ?? new Set();
    const base = done.has(baseline) ? await loadImage(join(conditionDir(run.dir, task.task_id, baseline), "image.png")) : undefined;
    const colour = taskColour(task);
    for (const condition of run.conditions) {
      if (!done.has(condition)) continue;
      const dir = conditionDir(run.dir, task.task_id, condition);
      const img = await loadImage(join(dir, "image.png"));
      const dom = dominantColour(img);
      const compare = base && condition !== baseline && sameSize(base, img);
      const row: FolderMetrics = {
        task_id: task.task_id,
        condition,
        family: task.family,
        edit_type: task.edit_type,
        change_vs_baseline: compare ? meanAbsoluteDifference(img, base) : null,
        ssim_vs_baseline: compare ? ssim(img, base) : null,
        histogram_vs_baseline: compare ? histogramDistance(img, base) : null,
        dominant_hex: colourHex(dom.rgb),
        dominant_fraction: dom.fraction,
        delta_e_reference: colour ? ciede2000(dom.lab, srgbToLab(colour)) : null,
        source_task: null,
        transfer_pixels: null,
        transfer_colour: null,
        delta_e_source_colour: null,
      };
      if (await pathExists(join(dir, PATCH_SOURCE_FILE))) {
        const pairing = await readJsonFile<{ source_task: string }>(join(dir, PATCH_SOURCE_FILE));
        row.source_task = pairing.source_task;
        const source = await loadImage(join(dir, "source.png"));
        if (base && sameSize(source, img) && sameSize(base, img)) row.transfer_pixels = finiteOrNull(transferIndex(img, source, base));
        const sourceColour = taskColour(byId.get(pairing.source_task));
        if (colour && sourceColour) {
          const labs = [dom.lab, srgbToLab(sourceColour), srgbToLab(colour)];
          row.transfer_colour = finiteOrNull(transferIndex(labs[0], labs[1], labs[2], (a, b) => ciede2000(a, b)));
          row.delta_e_source_colour = ciede2000(labs[0], labs[1]);
        }
      }
      rows.push(row);
    }
  }
  return rows;
}

/** Compute and write <run>/metrics.jsonl. */
export async function writeRunMetrics(run: RunFolder, baseline = "baseline"): Promise<{ path: string; rows: FolderMetrics[] }> {
  const rows = await computeRunMetrics(run, baseline);
  const path = join(run.dir, METRICS_FILE);
  await writeTextAtomic(path, rows.map((r) => JSON.stringify(r)).join("\n") + (rows.length ? "\n" : ""));
  return { path, rows };
}
