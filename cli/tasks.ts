// `deno task tasks …`: build the published study's task sets, pairings and ablations as task files.

import { join, resolve } from "node:path";
import { parseArgs } from "node:util";
import { writeStudyColourTasks } from "../experiments/task_sets.ts";
import { buildPairs, PAIR_DESIGNS, type PairDesign, pairLines, readPairFile, writePairTaskFile } from "../experiments/pairings.ts";
import { buildSun397Tasks } from "../experiments/sun397.ts";
import { loadPromptTools, paddingDoseTasks, STUDY_PADDING_LEVELS } from "../experiments/padding_dose.ts";
import { readTaskFile, type Task, writeTaskFile } from "../experiments/tasks.ts";
import { JudgeClient, resolveEndpoint } from "../experiments/judge.ts";
import { writeTextAtomic } from "../experiments/files.ts";
import { printable } from "../runtime/printable.ts";
import { integerOption, parseOrUsageError, UsageError } from "./common.ts";

const HELP = `usage:
  deno task tasks study-colors --out DIR
  deno task tasks pairs <tasks.jsonl>… (--design ${PAIR_DESIGNS.join("|")} | --pairs FILE) --out FILE
                        [--pair-list FILE] [--allow-mismatched-instruction] [--strict]
  deno task tasks sun397 --root SUN397_DIR --out DIR [--per-category 2] [--image-seed 42] [--category /a/abbey]…
                         [--limit N] [--concurrency N] [--provider openai|anthropic] [--url URL] [--model NAME] [--key KEY]
                         [--cache DIR]
  deno task tasks padding <tasks.jsonl> --model MODEL_DIR --out FILE [--levels 494,322,149,0] [--seed base|crc32] [--strict]

study-colors  the study's 320 solid-colour tasks (8 colours × 8 objects × _s0…_s4, its ids, instructions, RGB
              swatches at 1024², noise seed crc32(task id)): DIR/tasks.jsonl and DIR/swatches/solid_<colour>.png.
pairs         a pair task file: one task per (source, target) pair, id <source>__<target>, the target's fields and
              the source named as its patch source. --design: the study's pairings (colour-directed: every directed
              colour pair per object with cycling replicates, 448 on study-colors; style-to-real; human-shared), or
              --pairs: a JSON Lines file of {"target", "source"} (or "source target" lines). Several task files are
              read together (style-to-real needs the style and real-photo files). --pair-list also writes the pairs.
              Use the file with "pairing": "task" in patch conditions.
sun397        SUN397 add/remove tasks: the study's image picks, one VLM request per image for an object to add and one
              to remove (the judge's endpoint: flags, else KLEINSCOPE_JUDGE_* / ANTHROPIC_API_KEY), outcomes kept in
              DIR/proposals.jsonl and replies cached (DIR/judge-cache): a re-run asks only about new images.
              Writes DIR/add/tasks.jsonl and DIR/remove/tasks.jsonl.
padding       the padding dose-response ablation: every task again with neutral filler so that exactly 494, 322, 149
              and 0 (or --levels) of the 512 text positions remain pad tokens, counted with MODEL_DIR's tokenizer.`;

function help(values: { help?: boolean }): boolean {
  if (values.help) console.log(HELP);
  return !!values.help;
}

async function studyColors(args: string[]): Promise<number> {
  const { values } = parseOrUsageError(() =>
    parseArgs({ args, options: { out: { type: "string" }, help: { type: "boolean", short: "h" } } })
  );
  if (help(values)) return 0;
  if (!values.out) throw new UsageError("--out DIR is required");
  const set = await writeStudyColourTasks(values.out);
  console.log(`wrote ${printable(set.taskFile)} (${set.tasks.length} tasks) and ${set.swatches.size} swatches`);
  return 0;
}

async function readAll(files: string[], strict: boolean): Promise<Task[]> {
  if (!files.length) throw new UsageError("give at least one task file");
  const tasks: Task[] = [];
  const seen = new Map<string, string>();
  for (const f of files) {
    for (const t of (await readTaskFile(f, { strict, warn: (l) => console.error(l) })).tasks) {
      if (seen.has(t.task_id)) {
        throw new Error(`task ${printable(t.task_id)} is in both ${printable(seen.get(t.task_id)!)} and ${printable(f)}`);
      }
      seen.set(t.task_id, f);
      tasks.push(t);
    }
  }
  return tasks;
}

async function pairs(args: string[]): Promise<number> {
  const { values, positionals } = parseOrUsageError(() =>
    parseArgs({
      args,
      allowPositionals: true,
      options: {
        design: { type: "string" },
        pairs: { type: "string" },
        out: { type: "string" },
        "pair-list": { type: "string" },
        "allow-mismatched-instruction": { type: "boolean" },
        strict: { type: "boolean" },
        help: { type: "boolean", short: "h" },
      },
    })
  );
  if (help(values)) return 0;
  if (!values.out) throw new UsageError("--out FILE is required");
  if ((values.design === undefined) === (values.pairs === undefined)) throw new UsageError("give --design or --pairs (one of them)");
  if (values.design !== undefined && !PAIR_DESIGNS.includes(values.design as PairDesign)) {
    throw new UsageError(`--design ${JSON.stringify(values.design)}: expected ${PAIR_DESIGNS.join(", ")}`);
  }
  const tasks = await readAll(positionals, !!values.strict);
  const options = { allowMismatchedInstruction: !!values["allow-mismatched-instruction"] };
  const list = values.design ? buildPairs(tasks, values.design as PairDesign, options) : await readPairFile(values.pairs!, tasks, options);
  const units = await writePairTaskFile(values.out, tasks, list);
  if (values["pair-list"]) await writeTextAtomic(resolve(values["pair-list"]), pairLines(list));
  console.log(`wrote ${printable(values.out)} (${units.length} pair tasks)`);
  return 0;
}

async function sun397(args: string[]): Promise<number> {
  const { values } = parseOrUsageError(() =>
    parseArgs({
      args,
      options: {
        root: { type: "string" },
        out: { type: "string" },
        "per-category": { type: "string" },
        "image-seed": { type: "string" },
        category: { type: "string", multiple: true },
        limit: { type: "string" },
        concurrency: { type: "string" },
        provider: { type: "string" },
        url: { type: "string" },
        model: { type: "string" },
        key: { type: "string" },
        cache: { type: "string" },
        help: { type: "boolean", short: "h" },
      },
    })
  );
  if (help(values)) return 0;
  if (!values.root || !values.out) throw new UsageError("--root SUN397_DIR and --out DIR are required");
  const endpoint = resolveEndpoint({ provider: values.provider, url: values.url, model: values.model, key: values.key });
  if (endpoint.provider === "stub") throw new UsageError("the stub judge cannot propose objects: give an endpoint");
  const client = new JudgeClient(endpoint, resolve(values.cache ?? join(values.out, "judge-cache")));
  const r = await buildSun397Tasks({
    root: values.root,
    out: values.out,
    client,
    imagesPerCategory: integerOption("per-category", values["per-category"], 1),
    imageSeed: integerOption("image-seed", values["image-seed"], 0),
    categories: values.category,
    limit: integerOption("limit", values.limit, 0),
    concurrency: integerOption("concurrency", values.concurrency, 1),
  });
  const refused = r.outcomes.filter((o) => o.error).length;
  console.log(
    `${r.outcomes.length} images (${r.requests} asked now, ${refused} without a proposal, ${r.pending} left for later, ` +
      `${r.missing.length} categories without images): ${r.add.length} add and ${r.remove.length} remove tasks in ${printable(values.out)}`,
  );
  return 0;
}

async function padding(args: string[]): Promise<number> {
  const { values, positionals } = parseOrUsageError(() =>
    parseArgs({
      args,
      allowPositionals: true,
      options: {
        model: { type: "string" },
        out: { type: "string" },
        levels: { type: "string" },
        seed: { type: "string" },
        strict: { type: "boolean" },
        help: { type: "boolean", short: "h" },
      },
    })
  );
  if (help(values)) return 0;
  if (!values.model || !values.out) throw new UsageError("--model MODEL_DIR and --out FILE are required");
  if (values.seed !== undefined && values.seed !== "base" && values.seed !== "crc32") {
    throw new UsageError(`--seed ${JSON.stringify(values.seed)}: expected base or crc32`);
  }
  const levels = values.levels === undefined
    ? [...STUDY_PADDING_LEVELS]
    : values.levels.split(",").map((s) => integerOption("levels", s.trim(), 0)!);
  const tasks = await readAll(positionals, !!values.strict);
  const { tokenizer, template } = await loadPromptTools(values.model);
  const r = paddingDoseTasks(tokenizer, template, tasks, { levels, seed: values.seed as "base" | "crc32" | undefined });
  for (const line of r.refused) console.error(`warning: ${line}`);
  await writeTaskFile(values.out, r.tasks);
  console.log(`wrote ${printable(values.out)} (${r.tasks.length} tasks; ${r.refused.length} task × level refused)`);
  return r.tasks.length ? 0 : 1;
}

export async function main(args: string[]): Promise<number> {
  const [first, ...rest] = args;
  const sub: Record<string, (a: string[]) => Promise<number>> = {
    "study-colors": studyColors,
    pairs,
    sun397,
    padding,
  };
  if (!first || first === "--help" || first === "-h") {
    console.log(HELP);
    return first ? 0 : 2;
  }
  const run = sub[first];
  if (!run) throw new UsageError(`unknown tasks command "${printable(first)}" (known: ${Object.keys(sub).join(", ")})`);
  return await run(rest);
}
