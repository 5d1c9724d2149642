// One shard per GPU, launched and merged by one command (experiments/launcher.ts), without GPUs: the host's adapters
// are described to the launcher, and each shard is a real runner process with the synthetic executor
// (runner_child.ts) started through a small script that also records the GPU pin it was given. Covered: all shards
// succeed → one merged folder equal to an unsharded run; one shard fails → the others' folders intact, the failure
// reported with its exit code and log, exit code 1, and a second launch completes the run; the combined progress
// line; refusals before anything starts (--gpus 3 on a host with 1, a GPU that cannot be chosen, usage mistakes);
// `--shard auto` from a Slurm job array; and the command line end to end on this host's adapter with the tiny
// checkpoint.

import assert from "node:assert/strict";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { writeColourTasks } from "../../experiments/generators.ts";
import { pathExists, readJsonFile } from "../../experiments/files.ts";
import {
  launchOnGpus,
  type LaunchOptions,
  parseGpuCount,
  progressLine,
  shardFromSlurm,
  type ShardRun,
} from "../../experiments/launcher.ts";
import { conditionDir, manifestPath, type RunManifest, shardManifestPath } from "../../experiments/run_folder.ts";
import { shardOfTask } from "../../experiments/runner.ts";
import { type AdapterListing, listAdapters, makeListing, parseNvidiaSmi } from "../../runtime/adapter_select.ts";

const RUNNER_CHILD = new URL("./runner_child.ts", import.meta.url).href;
const MODEL = fileURLToPath(new URL("../fixtures/klein-tiny/model", import.meta.url));
const CLI = fileURLToPath(new URL("../../cli.ts", import.meta.url));
const CONDITIONS = [
  { name: "baseline" },
  { name: "ko", interventions: [{ type: "knockout", setting: "ref->text", blocks: "all" }] },
  { name: "patch", patch: { block: "double.1", mode: "padding_only" } },
];

/** `n` identical GPUs as nvidia-smi would list them. */
function gpus(n: number, deviceSelectLayer = true): AdapterListing {
  const lines = Array.from({ length: n }, (_, i) => `${i}, NVIDIA H200, 00000000:${(0x18 + 0x10 * i).toString(16)}:00.0, 0x233510DE`);
  return makeListing("nvidia-smi", parseNvidiaSmi(lines.join("\n")), deviceSelectLayer);
}

interface Setup {
  root: string;
  experiment: string;
  output: string;
  taskIds: string[];
  /** The fake shard: records its pin in env-k-of-n.json, then runs runner_child.ts on the same arguments. */
  shard: string;
}

async function setup(width = 64, conditions: object[] = CONDITIONS, colours = ["red", "blue", "green"]): Promise<Setup> {
  const root = await Deno.makeTempDir({ prefix: "launcher-" });
  const set = await writeColourTasks({
    out: join(root, "colours"),
    colours,
    objects: ["couch", "vase"],
    seeds: [0],
    width,
    height: width,
    swatchSize: 64,
  });
  const experiment = join(root, "experiment.json");
  await Deno.writeTextFile(
    experiment,
    JSON.stringify({ model: MODEL, tasks: "colours/tasks.jsonl", output: "run", steps: 1, maxSequenceLength: 64, conditions }),
  );
  const shard = join(root, "shard.ts");
  await Deno.writeTextFile(
    shard,
    `const k = Deno.args[Deno.args.indexOf("--shard") + 1].replace("/", "-of-");
const pin = Object.fromEntries(["KLEINSCOPE_GPU", "KLEINSCOPE_GPU_ADAPTER", "DRI_PRIME", "MESA_VK_DEVICE_SELECT_FORCE_DEFAULT_DEVICE"]
  .map((key) => [key, Deno.env.get(key) ?? null]));
await Deno.writeTextFile(${JSON.stringify(root)} + "/env-" + k + ".json", JSON.stringify(pin));
await import(${JSON.stringify(RUNNER_CHILD)});
`,
  );
  return { root, experiment, output: join(root, "run"), taskIds: set.tasks.map((t) => t.task_id), shard };
}

function fakeShards(s: Setup, failing: Record<number, string> = {}): LaunchOptions["shardCommand"] {
  return (shard) => {
    const script = failing[shard.index];
    if (script !== undefined) return { command: Deno.execPath(), args: ["eval", script] };
    return { command: Deno.execPath(), args: ["run", "-A", s.shard, s.experiment, "--shard", `${shard.index}/${shard.count}`] };
  };
}

function collect() {
  const lines: string[] = [];
  const progress: { line: string; final: boolean }[] = [];
  return {
    lines,
    progress,
    log: (l: string) => lines.push(l),
    onProgress: (line: string, final: boolean) => progress.push({ line, final }),
  };
}

/** Every condition folder under a run, with its image bytes' length and first bytes' sum (enough to tell images apart). */
async function images(run: string, taskIds: string[]): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  for (const id of taskIds) {
    for (const c of CONDITIONS) {
      const image = join(conditionDir(run, id, c.name), "image.png");
      if (await pathExists(image)) out.set(`${id}/${c.name}`, Array.from(await Deno.readFile(image)).join(","));
    }
  }
  return out;
}

Deno.test("all shards succeed: one process per GPU, each pinned to its own, merged in place; the folder equals an unsharded run", async () => {
  const s = await setup();
  try {
    const c = collect();
    const summary = await launchOnGpus(s.experiment, {
      gpus: "all",
      adapters: () => gpus(3),
      shardCommand: fakeShards(s),
      log: c.log,
      progress: c.onProgress,
      pollMs: 50,
    });
    assert.equal(summary.exitCode, 0, c.lines.join("\n"));
    assert.deepEqual(summary.failed, []);
    assert.equal(summary.shards.length, 3);
    // Each shard got its own GPU: GPU k-1, chosen by its PCI address.
    for (let k = 1; k <= 3; k++) {
      const pin = await readJsonFile<Record<string, string | null>>(join(s.root, `env-${k}-of-3.json`));
      assert.equal(pin.KLEINSCOPE_GPU, String(k - 1));
      assert.equal(pin.DRI_PRIME, `pci-0000_${(0x18 + 0x10 * (k - 1)).toString(16)}_00_0`);
      assert.equal(pin.MESA_VK_DEVICE_SELECT_FORCE_DEFAULT_DEVICE, "1");
      assert.equal(JSON.parse(pin.KLEINSCOPE_GPU_ADAPTER!).name, "NVIDIA H200");
      const manifest = await readJsonFile<RunManifest>(shardManifestPath(s.output, { index: k, count: 3 }));
      assert.deepEqual(manifest.tasks, s.taskIds.filter((id) => shardOfTask(id, 3) === k));
      assert.ok((await Deno.readTextFile(join(s.output, "shards", `shard-${k}-of-3.log`))).includes(`done: `));
    }
    // Merged: manifest.json covers everything.
    const merged = await readJsonFile<RunManifest>(manifestPath(s.output));
    assert.equal(merged.shard, null);
    assert.equal(merged.finished, true);
    assert.deepEqual(merged.missing, []);
    assert.equal(summary.merge!.complete, summary.merge!.expected);
    assert.equal(summary.merge!.copied, 0, "nothing to copy: the shards wrote into the output itself");
    assert.equal(merged.mergedFrom!.length, 3);
    // The same folders, byte for byte, as one process running everything.
    const reference = join(s.root, "reference.json");
    await Deno.writeTextFile(reference, JSON.stringify({ ...JSON.parse(await Deno.readTextFile(s.experiment)), output: "reference" }));
    const ref = await new Deno.Command(Deno.execPath(), { args: ["run", "-A", fileURLToPath(RUNNER_CHILD), reference], stderr: "piped" })
      .output();
    assert.equal(ref.code, 0, new TextDecoder().decode(ref.stderr));
    const ours = await images(s.output, s.taskIds), theirs = await images(join(s.root, "reference"), s.taskIds);
    assert.equal(ours.size, theirs.size);
    assert.ok(ours.size >= s.taskIds.length * 2);
    assert.deepEqual(ours, theirs);
    // Progress: lines as the shards went, the last one final and complete.
    const last = c.progress.at(-1)!;
    assert.equal(last.final, true);
    assert.match(
      last.line,
      new RegExp(`^3 GPU\\(s\\): ${summary.merge!.complete}/${summary.merge!.expected} complete · GPU0 done \\d+/\\d+ · GPU1 done`),
    );
    assert.match(last.line, /finished in \d+ s$/);
    assert.ok(c.progress.slice(0, -1).every((p) => !p.final));
    assert.ok(c.lines.some((l) => /^shard times: 1\/3 \d+ s, 2\/3 \d+ s, 3\/3 \d+ s; all: \d+ s$/.test(l)), c.lines.join("\n"));
  } finally {
    await Deno.remove(s.root, { recursive: true });
  }
});

Deno.test("one shard fails: the others' folders intact, the failure reported with exit code and log, exit 1; a second launch completes", async () => {
  const s = await setup();
  try {
    const c = collect();
    const summary = await launchOnGpus(s.experiment, {
      gpus: 3,
      adapters: () => gpus(4),
      shardCommand: fakeShards(s, { 2: `console.log("loading…"); console.error("error: the device was lost"); Deno.exit(3);` }),
      log: c.log,
      progress: c.onProgress,
      pollMs: 50,
    });
    assert.equal(summary.exitCode, 1);
    assert.deepEqual(summary.failed.map((f) => [f.index, f.exit!.code]), [[2, 3]]);
    const logFile = join(s.output, "shards", "shard-2-of-3.log");
    const report = c.lines.find((l) => l.startsWith("shard 2/3 (GPU"))!;
    assert.ok(
      report.includes("(GPU 1 = NVIDIA H200 (discrete GPU, 0000:28:00.0)) exited with code 3; log: " + logFile),
      c.lines.join("\n"),
    );
    assert.ok(c.lines.includes("  | error: the device was lost"), c.lines.join("\n"));
    assert.ok((await Deno.readTextFile(logFile)).includes("loading…\n"));
    // Shards 1 and 3 finished every folder of theirs; shard 2's tasks have none; the merged manifest lists them missing.
    const done = await images(s.output, s.taskIds);
    for (const id of s.taskIds) {
      const have = CONDITIONS.filter((cond) => done.has(`${id}/${cond.name}`)).length;
      if (shardOfTask(id, 3) === 2) assert.equal(have, 0, id);
      else assert.ok(have >= 2, id);
    }
    const merged = await readJsonFile<RunManifest>(manifestPath(s.output));
    assert.equal(merged.finished, false);
    const shard2 = s.taskIds.filter((id) => shardOfTask(id, 3) === 2);
    assert.ok(shard2.length > 0);
    assert.deepEqual([...new Set(merged.missing!.map((m) => m.task))].sort(), shard2.sort());
    assert.match(c.progress.at(-1)!.line, /GPU1 exit 3/);

    // Again, all well: shards 1 and 3 find their work done, shard 2 runs, the merge is complete.
    const again = await launchOnGpus(s.experiment, {
      gpus: 3,
      adapters: () => gpus(4),
      shardCommand: fakeShards(s),
      log: () => {},
      pollMs: 50,
    });
    assert.equal(again.exitCode, 0);
    for (const k of [1, 3]) {
      const m = await readJsonFile<RunManifest>(shardManifestPath(s.output, { index: k, count: 3 }));
      assert.equal(m.counts.ranNow, 0, `shard ${k} had nothing left to run`);
    }
    assert.deepEqual((await readJsonFile<RunManifest>(manifestPath(s.output))).missing, []);
    assert.ok((await Deno.readTextFile(logFile)).split("=== ").length - 1 === 2, "the log keeps both launches");
  } finally {
    await Deno.remove(s.root, { recursive: true });
  }
});

function shard(gpu: number, o: Partial<ShardRun> = {}): ShardRun {
  return { index: gpu + 1, count: 3, gpu, adapter: `${gpu}`, log: "", tail: [], ...o };
}
const counts = (planned: number, complete: number, ranNow: number, failed = 0, unpaired = 0) => ({
  planned,
  complete,
  ranNow,
  alreadyComplete: complete - ranNow,
  failed,
  unpaired,
});

Deno.test("the progress line: sums over shards, per-GPU counts, the slowest shard's ETA, exits", () => {
  // GPU0: 9 to do (1 unpaired), 5 complete of which 2 run now in 10 s since its start → 4 left at 5 s each → 20 s.
  // GPU1: 12 to do, 3 complete, 3 run in 6 s (started at 4 s) → 9 left at 2 s → 18 s. GPU2: not started yet.
  const line = progressLine(
    [shard(0, { counts: counts(10, 5, 2, 0, 1), startedMs: 0 }), shard(1, { counts: counts(12, 3, 3), startedMs: 4000 }), shard(2)],
    10_000,
  );
  assert.equal(line, "3 GPU(s): 8/21 complete · GPU0 5/9 · GPU1 3/12 · GPU2 starting · ETA —");
  const started = progressLine(
    [shard(0, { counts: counts(10, 5, 2, 0, 1), startedMs: 0 }), shard(1, { counts: counts(12, 3, 3), startedMs: 4000 })],
    10_000,
  );
  assert.equal(started, "2 GPU(s): 8/21 complete · GPU0 5/9 · GPU1 3/12 · ETA 20 s");
  const ended = progressLine(
    [
      shard(0, { counts: counts(10, 9, 6, 0, 1), startedMs: 0, exit: { code: 0 } }),
      shard(1, { counts: counts(12, 10, 10, 2), startedMs: 0, exit: { code: 1 } }),
      shard(2, { exit: { code: 3 } }),
    ],
    125_000,
  );
  assert.equal(ended, "3 GPU(s): 19/21 complete, 2 failed · GPU0 done 9/9 · GPU1 exit 1 10/12 · GPU2 exit 3 · finished in 2 min 05 s");
});

Deno.test("--gpus 3 on a host with 1, or a GPU that cannot be chosen: refused before anything starts or is created", async () => {
  const s = await setup();
  try {
    let started = 0;
    const command: LaunchOptions["shardCommand"] = () => (started++, { command: "false", args: [] });
    await assert.rejects(
      launchOnGpus(s.experiment, { gpus: 3, adapters: () => gpus(1), shardCommand: command, log: () => {} }),
      (e: Error) =>
        e.message ===
          "--gpus 3: this host has 1 usable; 1 adapter(s) found through nvidia-smi: 0 = NVIDIA H200 (discrete GPU, 0000:18:00.0)",
    );
    await assert.rejects(
      launchOnGpus(s.experiment, { gpus: 2, adapters: () => gpus(2, false), shardCommand: command, log: () => {} }),
      /choosing GPU 1 needs Mesa's device-select Vulkan layer/,
    );
    // A device-select layer that shows GPU 2 whatever is asked for (checked on the Vulkan loader before anything starts).
    const stuck = () => ({ ...gpus(3), probe: () => [gpus(3).adapters[2]] });
    await assert.rejects(
      launchOnGpus(s.experiment, { gpus: 3, adapters: stuck, shardCommand: command, log: () => {} }),
      /GPU 0 \(0 = NVIDIA H200 \(discrete GPU, 0000:18:00.0\)\) cannot be chosen on this host/,
    );
    await assert.rejects(
      launchOnGpus(s.experiment, {
        gpus: "all",
        adapters: () => makeListing("/sys/class/drm", [], false),
        shardCommand: command,
        log: () => {},
      }),
      /--gpus all: no adapter found through \/sys\/class\/drm/,
    );
    assert.equal(started, 0);
    assert.equal(await pathExists(s.output), false);
    assert.equal(parseGpuCount(" all "), "all");
    assert.equal(parseGpuCount("8"), 8);
    for (const bad of ["0", "-1", "two", "1.5", ""]) assert.throws(() => parseGpuCount(bad), /must be "all" or a number of GPUs/);
  } finally {
    await Deno.remove(s.root, { recursive: true });
  }
});

async function cli(args: string[], env: Record<string, string> = {}) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", CLI, "experiment", ...args],
    env,
    stdout: "piped",
    stderr: "piped",
  })
    .output();
  return { code: out.code, stdout: new TextDecoder().decode(out.stdout), stderr: new TextDecoder().decode(out.stderr) };
}

Deno.test("the command line refuses --gpus beyond this host's adapters, and usage mistakes, before creating anything", async () => {
  const s = await setup();
  try {
    const n = listAdapters().adapters.length;
    const r = await cli([s.experiment, "--gpus", String(n + 2)]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, new RegExp(`^error: --gpus ${n + 2}: this host has ${n} usable; ${n} adapter\\(s\\) found through [^\\n]*0 = `));
    for (
      const [args, message] of [
        [["--gpus", "0"], 'must be "all" or a number of GPUs'],
        [["--gpus", "2", "--shard", "1/2"], "--gpus chooses the shards itself"],
        [["--gpus", "2", "--gpu", "0"], "--gpu and --gpus cannot be combined"],
      ] as const
    ) {
      const u = await cli([s.experiment, ...args]);
      assert.equal(u.code, 2, u.stderr);
      assert.ok(u.stderr.includes(message), u.stderr);
    }
    assert.equal(await pathExists(s.output), false);
  } finally {
    await Deno.remove(s.root, { recursive: true });
  }
});

Deno.test("--shard auto: k/n of a Slurm job array, from any first index and step; missing variables named", async () => {
  assert.deepEqual(shardFromSlurm({ SLURM_ARRAY_TASK_ID: "3", SLURM_ARRAY_TASK_COUNT: "8" }), { index: 3, count: 8 });
  const zeroBased = { SLURM_ARRAY_TASK_COUNT: "8", SLURM_ARRAY_TASK_MIN: "0", SLURM_ARRAY_TASK_MAX: "7" };
  assert.deepEqual(shardFromSlurm({ ...zeroBased, SLURM_ARRAY_TASK_ID: "0" }), { index: 1, count: 8 });
  assert.deepEqual(shardFromSlurm({ ...zeroBased, SLURM_ARRAY_TASK_ID: "7" }), { index: 8, count: 8 });
  const stepped = { SLURM_ARRAY_TASK_COUNT: "8", SLURM_ARRAY_TASK_MIN: "10", SLURM_ARRAY_TASK_MAX: "24", SLURM_ARRAY_TASK_STEP: "2" };
  assert.deepEqual(shardFromSlurm({ ...stepped, SLURM_ARRAY_TASK_ID: "16" }), { index: 4, count: 8 });
  assert.throws(() => shardFromSlurm({ ...stepped, SLURM_ARRAY_TASK_ID: "15" }), /not one of 8 evenly spaced array indices starting at 10/);
  assert.throws(() => shardFromSlurm({ ...zeroBased, SLURM_ARRAY_TASK_ID: "8" }), /not one of 8/);
  // --array=1,3,7: three tasks, not one range.
  assert.throws(
    () => shardFromSlurm({ SLURM_ARRAY_TASK_ID: "3", SLURM_ARRAY_TASK_COUNT: "3", SLURM_ARRAY_TASK_MIN: "1", SLURM_ARRAY_TASK_MAX: "7" }),
    /not one range with one step/,
  );
  assert.throws(
    () => shardFromSlurm({ SLURM_ARRAY_TASK_ID: "x", SLURM_ARRAY_TASK_COUNT: "8" }),
    /SLURM_ARRAY_TASK_ID="x" is not a whole number/,
  );
  assert.throws(() => shardFromSlurm({}), /SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT are not set/);
  assert.throws(() => shardFromSlurm({ SLURM_ARRAY_TASK_ID: "1" }), /and SLURM_ARRAY_TASK_COUNT is not set: run it in a Slurm job array/);
  // Through the command line: a usage mistake, before anything.
  const s = await setup();
  try {
    const r = await cli([s.experiment, "--shard", "auto"]);
    assert.equal(r.code, 2);
    assert.ok(r.stderr.includes("--shard auto reads SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT"), r.stderr);
    assert.equal(await pathExists(s.output), false);
  } finally {
    await Deno.remove(s.root, { recursive: true });
  }
});

Deno.test("the command line end to end on this host: --gpus 1 runs the tiny checkpoint in a pinned shard and merges it", async () => {
  const s = await setup(32, [{ name: "baseline" }], ["red"]);
  try {
    const r = await cli([s.experiment, "--gpus", "1"]);
    assert.equal(r.code, 0, r.stderr);
    const adapter = listAdapters().adapters[0];
    assert.ok(r.stderr.includes(`shard 1/1: GPU 0 = ${adapter.name}`), r.stderr);
    assert.match(r.stderr, /1 GPU\(s\): 2\/2 complete · GPU0 done 2\/2 · finished in/);
    const merged = await readJsonFile<RunManifest>(manifestPath(s.output));
    assert.deepEqual(merged.missing, []);
    const shardManifest = await readJsonFile<RunManifest>(shardManifestPath(s.output, { index: 1, count: 1 }));
    assert.equal(shardManifest.device, adapter.name, "the shard ran on the adapter it was pinned to");
    for (const id of s.taskIds) assert.ok(await pathExists(join(conditionDir(s.output, id, "baseline"), "image.png")));
  } finally {
    await Deno.remove(s.root, { recursive: true });
  }
});
