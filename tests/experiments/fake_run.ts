// A run folder written without the GPU — manifest, task.json, complete condition folders with solid-colour images —
// for testing merge, judge, metrics and report quickly. The layout is the runner's (experiments/run_folder.ts).

import { join } from "node:path";
import { savePng } from "../../model/images.ts";
import type { Condition, JudgeSettings } from "../../experiments/experiment.ts";
import { writeJsonAtomic } from "../../experiments/files.ts";
import { pairForPatching } from "../../experiments/generators.ts";
import {
  conditionDir,
  MANIFEST_FORMAT,
  manifestPath,
  PATCH_SOURCE_FILE,
  type RunManifest,
  type ShardInfo,
  shardManifestPath,
  taskDir,
} from "../../experiments/run_folder.ts";
import type { Task } from "../../experiments/tasks.ts";

export interface FakeRunOptions {
  dir: string;
  tasks: Task[];
  conditions: Condition[];
  hash?: string;
  shard?: ShardInfo | null;
  /** Which folders exist (default all). */
  include?: (task: Task, condition: string) => boolean;
  /** Colour of a folder's image (default: the task's colour for the baseline, grey otherwise). */
  colour?: (task: Task, condition: string) => number[];
  judge?: JudgeSettings;
  size?: number;
}

/** A size × size image of one colour with a darker diagonal band (so SSIM has structure to compare). */
export async function writeBandedImage(path: string, rgb: number[], size: number): Promise<void> {
  const n = size * size;
  const planes = new Float32Array(3 * n);
  for (let y = 0; y < size; y++) {
    for (let x = 0; x < size; x++) {
      const band = Math.abs(x - y) < size / 8 ? 0.5 : 1;
      for (let c = 0; c < 3; c++) planes[c * n + y * size + x] = Math.round(rgb[c] * band) / 255;
    }
  }
  await savePng(path, planes, size, size);
}

export async function makeFakeRun(o: FakeRunOptions): Promise<RunManifest> {
  const size = o.size ?? 64;
  const include = o.include ?? (() => true);
  const colourOf = o.colour ?? ((t: Task, c: string) => c === "baseline" ? (t.metadata.rgb as number[]) : [128, 128, 128]);
  const pairs = pairForPatching(o.tasks);
  const inShard = o.tasks;
  const manifest: RunManifest = {
    format: MANIFEST_FORMAT,
    versions: { kleinscope: "0.1.0", spec: 1, deno: Deno.version.deno, v8: Deno.version.v8, typescript: Deno.version.typescript },
    experiment: {
      file: "/fake/experiment.json",
      hash: o.hash ?? "sha256:fake",
      definition: {
        model: "/fake/model",
        tasks: "/fake/tasks.jsonl",
        output: o.dir,
        conditions: o.conditions,
        ...(o.judge ? { judge: o.judge } : {}),
      },
    },
    tasksFile: { path: "/fake/tasks.jsonl", sha256: "sha256:none", tasks: o.tasks.length, skippedLines: [] },
    model: { path: "/fake/model", fingerprint: "sha256:model" },
    shard: o.shard ?? null,
    tasks: inShard.map((t) => t.task_id),
    conditions: o.conditions.map((c) => c.name),
    started: new Date().toISOString(),
    updated: new Date().toISOString(),
    finished: true,
    counts: { planned: 0, complete: 0, ranNow: 0, alreadyComplete: 0, failed: 0, unpaired: 0 },
    failures: [],
    unpaired: [],
  };
  for (const task of inShard) {
    await Deno.mkdir(taskDir(o.dir, task.task_id), { recursive: true });
    await writeJsonAtomic(join(taskDir(o.dir, task.task_id), "task.json"), task);
    for (const cond of o.conditions) {
      if (!include(task, cond.name)) continue;
      const dir = conditionDir(o.dir, task.task_id, cond.name);
      await Deno.mkdir(dir, { recursive: true });
      await writeBandedImage(join(dir, "image.png"), colourOf(task, cond.name), size);
      const pair = cond.patch ? pairs.get(task.task_id) : undefined;
      const interventions = pair
        ? [{ type: "patch", block: cond.patch!.block, mode: cond.patch!.mode, source: { refs: pair.source.refs, seed: pair.sourceSeed } }]
        : [];
      await writeJsonAtomic(join(dir, "spec.json"), {
        model: "/fake/model",
        prompt: task.instruction,
        refs: task.refs,
        seed: task.noise_seed,
        interventions,
      });
      await writeJsonAtomic(join(dir, "run.json"), {});
      if (pair) {
        await writeBandedImage(join(dir, "source.png"), pair.source.metadata.rgb as number[], size);
        await writeJsonAtomic(join(dir, PATCH_SOURCE_FILE), {
          source_task: pair.source.task_id,
          source_seed: pair.sourceSeed,
          rule: "shift",
        });
      }
    }
  }
  await writeJsonAtomic(o.shard ? shardManifestPath(o.dir, o.shard) : manifestPath(o.dir), manifest);
  return manifest;
}
