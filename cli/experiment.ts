// `deno task experiment …`: run an experiment file (resumable, shardable), merge shard outputs, judge, compute
// metrics, and write the solid-colour task family.

import { resolve } from "node:path";
import { parseArgs } from "node:util";
import { readExperiment } from "../experiments/experiment.ts";
import { parseShard, runExperiment } from "../experiments/runner.ts";
import { launchOnGpus, parseGpuCount, shardFromSlurm, terminalProgress } from "../experiments/launcher.ts";
import { releaseHeldLocksSync } from "../experiments/run_lock.ts";
import { mergeRuns } from "../experiments/merge.ts";
import { judgeRun, resolveEndpoint } from "../experiments/judge.ts";
import { writeRunMetrics } from "../experiments/run_metrics.ts";
import { readRunFolder } from "../experiments/run_folder.ts";
import { DEFAULT_OBJECTS, writeColourTasks } from "../experiments/generators.ts";
import { integerOption, parseOrUsageError, UsageError, withUsageErrors } from "./common.ts";

const HELP = `usage:
  deno task experiment <experiment.json> [--shard k/n|auto | --gpus all|N | --gpu N] [--limit N] [--output DIR] [--strict] [--low-memory]
  deno task experiment merge <run-dir> <run-dir> … --into DIR [--move]
  deno task experiment judge <run-dir> [--judge openai|anthropic|stub] [--url URL] [--model NAME] [--key KEY]
                                       [--name NAME] [--concurrency N] [--cache DIR] [--timeout S] [--max-attempts N]
  deno task experiment metrics <run-dir> [--baseline NAME]
  deno task experiment colors --out DIR [--colors red,blue,…] [--objects couch,car,…] [--seeds 0,1,…]
                                        [--size N] [--swatch N] [--instruction TEXT]

run        every task × condition of the experiment into <output>/tasks/<task_id>/<condition>/, one pipeline loaded
           once. Complete folders (spec.json + image.png) are skipped, so re-running resumes after a crash or kill.
           Every condition is checked against every task before anything runs. A task that fails is recorded in the
           manifest's failures and the others go on (exit code 1 when any failed). One run at a time per output
           folder (or per shard): a second is refused with the lock's holder; a killed run's lock is taken over.
  --shard k/n   only the tasks of shard k of n (shard = FNV-1a(task_id) mod n + 1): run k = 1..n on n machines
                (Slurm array, indexed job, a loop over GPUs), into one shared output or separate ones to merge.
                auto: k/n of a Slurm job array (SLURM_ARRAY_TASK_ID, _COUNT, _MIN).
  --gpus all|N  one shard per GPU of this host (shard k on GPU k-1), one progress line, merged in place when all
                end; a failed shard is reported with its exit code and log (<output>/shards/shard-k-of-n.log).
  --gpu N       run on GPU N of this host (any command; --gpu list shows them; also KLEINSCOPE_GPU=N).
  --limit N     run at most N condition folders in this invocation.
  --output DIR  write here instead of the experiment's "output" (e.g. a shard's local disk, merged later).
  --strict      refuse a task file with a malformed line (default: skip the line with a warning).
  --low-memory  release the text encoder after each prompt (default: it stays on the GPU for the whole run).
  Ctrl-C stops after the current run (twice: at once; the partial folder is cleaned up on resume).
merge      copy (or --move) complete folders of shard outputs into DIR; identical duplicates are fine, differing ones
           refuse the merge. Writes DIR/manifest.json with the coverage; exit code 3 when folders are missing.
judge      ask a vision-language judge the study's questions (labelled images anchored on a run without the
           intervention; a JSON verdict with a short reason) per folder; writes <run>/judgments/<name>.jsonl.
  --judge    openai (an OpenAI-compatible endpoint: URL, model and key default to KLEINSCOPE_JUDGE_URL,
             KLEINSCOPE_JUDGE_MODEL, KLEINSCOPE_JUDGE_KEY, then the experiment's "judge"), anthropic (the Messages
             API; key from ANTHROPIC_API_KEY), or stub (offline verdicts from image statistics, for dry runs).
             Default: the experiment's judge.provider, else openai. Answers are cached (<run>/judge-cache).
metrics    dominant colour and ΔE00, SSIM, histogram distance, pixel change vs baseline, transfer index → <run>/metrics.jsonl.
colors     the solid-colour family: swatch PNGs and a task file (colours × objects × seeds) in DIR.

Formats, the experiment file and the output layout: experiments/README.md.`;

function list(v: string | undefined): string[] | undefined {
  return v === undefined ? undefined : v.split(",").map((s) => s.trim()).filter(Boolean);
}

async function runCommand(args: string[]): Promise<number> {
  const { values, positionals } = parseOrUsageError(() =>
    parseArgs({
      args,
      allowPositionals: true,
      options: {
        shard: { type: "string" },
        gpus: { type: "string" },
        limit: { type: "string" },
        output: { type: "string" },
        strict: { type: "boolean" },
        "low-memory": { type: "boolean" },
        help: { type: "boolean", short: "h" },
      },
    })
  );
  if (values.help) return console.log(HELP), 0;
  if (positionals.length !== 1) throw new UsageError("give one experiment file");
  let shard: { index: number; count: number } | undefined;
  try {
    shard = values.shard === undefined
      ? undefined
      : values.shard === "auto"
      ? shardFromSlurm(Deno.env.toObject())
      : parseShard(values.shard);
  } catch (e) {
    throw new UsageError(`--shard: ${(e as Error).message}`);
  }
  const limit = integerOption("limit", values.limit, 0);
  if (values.gpus !== undefined) {
    if (shard) throw new UsageError("--gpus chooses the shards itself; leave out --shard");
    let gpus: "all" | number;
    try {
      gpus = parseGpuCount(values.gpus);
    } catch (e) {
      throw new UsageError((e as Error).message);
    }
    const opts = { output: values.output, limit, strict: values.strict, lowMemory: values["low-memory"], progress: terminalProgress() };
    return (await launchOnGpus(positionals[0], { gpus, ...opts })).exitCode;
  }
  const loaded = await readExperiment(positionals[0]);
  if (values.output) loaded.experiment.output = resolve(values.output);
  const stop = new AbortController();
  let interrupts = 0;
  const onInterrupt = () => {
    if (++interrupts > 1) {
      releaseHeldLocksSync(); // the partial folder is cleaned up on resume; the lock goes now
      Deno.exit(130);
    }
    console.error("stopping after the current run (Ctrl-C again to stop now)");
    stop.abort();
  };
  Deno.addSignalListener("SIGINT", onInterrupt);
  try {
    const s = await runExperiment(loaded, {
      shard,
      limit,
      strictTasks: values.strict,
      lowMemory: values["low-memory"],
      signal: stop.signal,
    });
    console.log(
      `${s.ranNow} run now, ${s.alreadyComplete} already complete, ${s.failed.length} failed, ${s.unpaired.length} unpaired, ` +
        `${s.remaining} still to run — manifest ${s.manifestPath}`,
    );
    return s.failed.length ? 1 : 0;
  } finally {
    Deno.removeSignalListener("SIGINT", onInterrupt);
  }
}

async function mergeCommand(args: string[]): Promise<number> {
  const { values, positionals } = parseOrUsageError(() =>
    parseArgs({
      args,
      allowPositionals: true,
      options: { into: { type: "string" }, move: { type: "boolean" }, help: { type: "boolean", short: "h" } },
    })
  );
  if (values.help) return console.log(HELP), 0;
  if (!values.into) throw new UsageError("--into DIR is required");
  if (!positionals.length) throw new UsageError("give the run folders to merge");
  const s = await mergeRuns(positionals, values.into, { move: values.move });
  console.log(
    `${s.complete} of ${s.expected} folder(s) complete in ${s.into} (${s.copied} copied, ${s.duplicates} duplicate(s)); manifest ${s.manifest}`,
  );
  return s.missing.length ? 3 : 0;
}

async function judgeCommand(args: string[]): Promise<number> {
  const { values, positionals } = parseOrUsageError(() =>
    parseArgs({
      args,
      allowPositionals: true,
      options: {
        judge: { type: "string" },
        url: { type: "string" },
        model: { type: "string" },
        key: { type: "string" },
        name: { type: "string" },
        cache: { type: "string" },
        concurrency: { type: "string" },
        timeout: { type: "string" },
        "max-attempts": { type: "string" },
        baseline: { type: "string" },
        help: { type: "boolean", short: "h" },
      },
    })
  );
  if (values.help) return console.log(HELP), 0;
  if (positionals.length !== 1) throw new UsageError("give one run folder");
  const run = await readRunFolder(positionals[0]);
  const endpoint = resolveEndpoint(
    { provider: values.judge, url: values.url, model: values.model, key: values.key },
    run.experiment.judge,
  );
  const timeout = integerOption("timeout", values.timeout, 1);
  if (timeout !== undefined) endpoint.timeoutMs = timeout * 1000;
  endpoint.maxAttempts = integerOption("max-attempts", values["max-attempts"], 1) ?? endpoint.maxAttempts;
  const s = await judgeRun(run, {
    endpoint,
    name: values.name,
    cacheDir: values.cache,
    concurrency: integerOption("concurrency", values.concurrency, 1),
    baseline: values.baseline,
  });
  return s.failed ? 1 : 0;
}

async function metricsCommand(args: string[]): Promise<number> {
  const { values, positionals } = parseOrUsageError(() =>
    parseArgs({ args, allowPositionals: true, options: { baseline: { type: "string" }, help: { type: "boolean", short: "h" } } })
  );
  if (values.help) return console.log(HELP), 0;
  if (positionals.length !== 1) throw new UsageError("give one run folder");
  const { path, rows } = await writeRunMetrics(await readRunFolder(positionals[0]), values.baseline);
  console.log(`wrote ${path} (${rows.length} folder(s))`);
  return 0;
}

async function colorsCommand(args: string[]): Promise<number> {
  const { values } = parseOrUsageError(() =>
    parseArgs({
      args,
      options: {
        out: { type: "string" },
        colors: { type: "string" },
        objects: { type: "string" },
        seeds: { type: "string" },
        size: { type: "string" },
        swatch: { type: "string" },
        instruction: { type: "string" },
        help: { type: "boolean", short: "h" },
      },
    })
  );
  if (values.help) return console.log(HELP), 0;
  if (!values.out) throw new UsageError("--out DIR is required");
  const seeds = (list(values.seeds) ?? ["0"]).map((s) => integerOption("seeds", s, 0)!);
  const size = integerOption("size", values.size, 16);
  if (size !== undefined && size % 16) throw new UsageError(`--size ${size} is not a multiple of 16`);
  const set = await writeColourTasks({
    out: values.out,
    colours: list(values.colors) ?? ["red", "blue", "green", "yellow"],
    objects: list(values.objects) ?? [...DEFAULT_OBJECTS],
    seeds,
    width: size,
    height: size,
    swatchSize: integerOption("swatch", values.swatch, 64),
    instruction: values.instruction,
  });
  console.log(`wrote ${set.taskFile} (${set.tasks.length} task(s)) and ${set.swatches.size} swatch(es)`);
  return 0;
}

export function main(args: string[]): Promise<number> {
  const [first, ...rest] = args;
  const sub: Record<string, (a: string[]) => Promise<number>> = {
    merge: mergeCommand,
    judge: judgeCommand,
    metrics: metricsCommand,
    colors: colorsCommand,
  };
  return withUsageErrors("experiment", async () => {
    if (!first || first === "--help" || first === "-h") {
      console.log(HELP);
      return first ? 0 : 2;
    }
    return first in sub ? await sub[first](rest) : await runCommand(args);
  });
}
