// Every table cell of the paper, end to end on the tiny checkpoint: the committed experiment files of
// experiments/paper/ run on a tiny task subset (1–2 tasks per family), judged by the stub judge, and pooled into the
// study table of experiments/paper/table.json, which must have the paper's shape — rows the interventions, columns
// colour, style, humans, add, remove, a cell wherever the paper has one and none elsewhere.
//
// What differs from the paper's runs, and why:
// - the checkpoint is tests/fixtures/klein-tiny (2 double + 2 single blocks): the files' blocks double.7 and single.9
//   (klein 9B) become double.1 and single.1; images are 16×16 at 1 step (lens targets too), and prompts are padded to
//   64 text rows instead of 512 (maxSequenceLength; every prompt here still has padding), so it runs on llvmpipe;
// - the task sets are small stand-ins in the published layout: the study's colour set built as `deno task tasks
//   study-colors` builds it (2 colours × 1 object × 1 replicate), published rows from
//   tests/fixtures/protocol/published_sample.json for style and people, and SUN397-layout add/remove rows; the
//   published reference images are not here, so every reference is a synthetic 64×64 image written at the path the
//   row names (and the add/remove .jpg paths point at .png files);
// - the verdicts are the stub judge's (image statistics), so only the table's shape is checked, not its numbers.
// The sweep file (the knockout layer-mode figure) runs too, on one task, and its report plots the sweeps; a condition
// with an attention flow and effects gets its figures in the report.

import assert from "node:assert/strict";
import { join } from "node:path";
import { Flux2KleinPipeline } from "../../model/pipeline.ts";
import { encodePng } from "../../model/images.ts";
import { readExperiment } from "../../experiments/experiment.ts";
import { runExperiment } from "../../experiments/runner.ts";
import { readRunFolder } from "../../experiments/run_folder.ts";
import { judgeRun, resolveEndpoint } from "../../experiments/judge.ts";
import { buildPairs, writePairTaskFile } from "../../experiments/pairings.ts";
import { writeColourTasks } from "../../experiments/generators.ts";
import { FAMILIES, readTaskFile } from "../../experiments/tasks.ts";
import { buildReport, readStudyTable, writeStudyTable } from "../../experiments/report.ts";

const MODEL = join(import.meta.dirname!, "../fixtures/klein-tiny/model");
/** Text rows of every run (maxSequenceLength): the table's shape does not depend on it, the CPU time does. */
const TEXT_ROWS = 64;
const PAPER = join(import.meta.dirname!, "../../experiments/paper");
const published = JSON.parse(await Deno.readTextFile(join(import.meta.dirname!, "../fixtures/protocol/published_sample.json")));

/** The paper's cells: row (condition) → the columns it has. */
const ALL = ["colour", "style", "humans", "add", "remove"];
const THREE = ["colour", "style", "humans"];
const CELLS: Record<string, string[]> = {
  lens: ALL,
  lens_padding: ["style"],
  lens_content: ["style"],
  ko_full: THREE,
  ko_padding: THREE,
  ko_content: THREE,
  ko_ref_image: THREE,
  patch_all: THREE,
  patch_padding: THREE,
  patch_content: THREE,
};
const CELL_FILES = [
  "lens_colour",
  "lens_style",
  "lens_humans",
  "lens_add",
  "lens_remove",
  "knockout_colour",
  "knockout_style",
  "knockout_humans",
  "patching_colour",
  "patching_style",
  "patching_humans",
];

/** A 64×64 picture of its own (a two-colour gradient from a seed), standing in for a published reference. */
async function standIn(path: string, seed: number): Promise<void> {
  const data = new Uint8Array(64 * 64 * 3);
  for (let i = 0; i < 64 * 64; i++) {
    for (let c = 0; c < 3; c++) data[3 * i + c] = (seed * 67 + c * 91 + (i % 64) * (c + 1) * 3 + Math.floor(i / 64) * seed) % 256;
  }
  await Deno.mkdir(join(path, ".."), { recursive: true });
  await Deno.writeFile(path, encodePng({ width: 64, height: 64, data }));
}

/** The published clone's task files (the study's rows, references written as stand-ins) and the pair task files. */
async function taskSets(root: string): Promise<Record<string, string>> {
  const clone = join(root, "paper/i2i-interp");
  let seed = 1;
  const write = async (name: string, rows: Record<string, unknown>[]) => {
    for (const r of rows) {
      if (typeof r.source_image_path === "string") {
        const path = r.source_image_path.replace(/\.jpe?g$/, ".png");
        r.source_image_path = path;
        await standIn(join(clone, path), seed++);
      } else await standIn(join(clone, `${r.real_ref_dir}/${r.real_ref_name}.png`), seed++);
    }
    await Deno.writeTextFile(join(clone, `${name}.jsonl`), rows.map((r) => JSON.stringify(r)).join("\n") + "\n");
    return join(clone, `${name}.jsonl`);
  };
  const style = published.style.rows as Record<string, unknown>[];
  const first = style[0];
  const pick = (source: string) =>
    style.filter((r) => r.source === source && r.instruction === first.instruction && /_s0$/.test(r.task_id as string));
  const people = (published.human_shared.rows as Record<string, unknown>[]).filter((r) =>
    (r.metadata as Record<string, unknown>).shared_slug === "walking_city_street"
  ).slice(0, 2);
  const sun = (edit: string, object: string) => ({
    task_id: `${edit}_sun397_abbey_0001`,
    edit_type: edit,
    source: "sun397",
    instruction: edit === "add" ? `Add a ${object} to this image` : `Remove the ${object} from this image`,
    source_image_path: `data/tasks/${edit}/images/sun397_abbey_0001.jpg`,
    noise_seed: edit === "add" ? 11 : 12,
    width: 1024,
    height: 1024,
    metadata: { category: "/a/abbey" },
  });
  const files: Record<string, string> = {
    style: await write("style", pick("property_manual")),
    manual: await write("manual", pick("manual")),
    dreambench_humans: await write("dreambench_humans", [{
      ...people[0],
      task_id: "customize_dreambench_plus_human_01_portrait",
      metadata: { category: "live_subject_human", human_idx: 1 },
    }]),
    dreambench_humans_shared: await write("dreambench_humans_shared", people),
    add: await write("add", [sun("add", "wooden bench")]),
    remove: await write("remove", [sun("remove", "tree")]),
  };
  // The study's colour set as `deno task tasks study-colors` writes it, at 2 colours × 1 object × 1 replicate.
  const colours = await writeColourTasks({
    out: join(root, "paper/tasks/solid_color"),
    colours: ["red", "blue"],
    objects: ["couch"],
    seeds: [0],
    swatchSize: 64,
    idPrefix: "solid",
    noiseSeed: "crc32",
    editType: "customize",
    family: FAMILIES.solidColour,
    swatchPrefix: "solid_",
  });
  files.solid_color = colours.taskFile;
  // The pair task files, as `deno task tasks pairs … --design …` writes them.
  const read = async (...paths: string[]) =>
    (await Promise.all(paths.map((p) => readTaskFile(p, { strict: true })))).flatMap((f) => f.tasks);
  const pairs = join(root, "paper/tasks/pairs");
  const colourTasks = await read(files.solid_color);
  // One pair per family (the designs give two here: a → b and b → a).
  await writePairTaskFile(join(pairs, "colour.jsonl"), colourTasks, buildPairs(colourTasks, "colour-directed").slice(0, 1));
  const styleTasks = await read(files.style, files.manual);
  await writePairTaskFile(join(pairs, "style.jsonl"), styleTasks, buildPairs(styleTasks, "style-to-real"));
  const humanTasks = await read(files.dreambench_humans_shared);
  await writePairTaskFile(join(pairs, "humans.jsonl"), humanTasks, buildPairs(humanTasks, "human-shared").slice(0, 1));
  // Lens and knockout take one colour task (the pair needed both).
  files.one_colour = join(root, "paper/tasks/solid_color/one.jsonl");
  await Deno.writeTextFile(files.one_colour, (await Deno.readTextFile(files.solid_color)).split("\n")[0] + "\n");
  return files;
}

/** A paper experiment file for the tiny checkpoint (see the header): same conditions, tiny model, size and steps. */
async function forTinyModel(name: string, root: string, tasksOf: (original: string) => string): Promise<string> {
  const raw = JSON.parse(await Deno.readTextFile(join(PAPER, `${name}.json`)));
  const tiny = JSON.parse(
    JSON.stringify(raw).replace(/"double\.\d+"/g, '"double.1"').replace(/"single\.\d+"/g, '"single.1"'),
  );
  for (const c of tiny.conditions) {
    for (const iv of c.interventions ?? []) if (iv.type === "lens" && iv.targetSteps) iv.targetSteps = 1;
  }
  Object.assign(tiny, {
    model: MODEL,
    tasks: tasksOf(raw.tasks),
    output: join(root, "runs", name),
    width: 16,
    height: 16,
    steps: 1,
    maxSequenceLength: TEXT_ROWS,
  });
  const file = join(root, "experiments", `${name}.json`);
  await Deno.mkdir(join(root, "experiments"), { recursive: true });
  await Deno.writeTextFile(file, JSON.stringify(tiny));
  return file;
}

Deno.test("the paper's table, every cell, on the tiny checkpoint with the stub judge", async () => {
  const root = await Deno.makeTempDir({ prefix: "ks-paper-" });
  const pipeline = await Flux2KleinPipeline.load(MODEL, { keepTextEncoder: true, log: () => {} });
  const t0 = performance.now();
  try {
    const files = await taskSets(root);
    // The files name the task sets relative to experiments/paper/: ../../paper/… is <root>/paper/… here.
    const tasksOf = (original: string) =>
      original.endsWith("solid_color/tasks.jsonl") ? files.one_colour : join(root, original.replace(/^\.\.\/\.\.\//, ""));
    const stub = resolveEndpoint({ provider: "stub" });
    const runs: string[] = [];
    for (const name of CELL_FILES) {
      const loaded = await readExperiment(await forTinyModel(name, root, tasksOf));
      const s = await runExperiment(loaded, { pipeline, log: () => {} });
      assert.deepEqual(s.failed, [], `${name}: ${JSON.stringify(s.failed)}`);
      assert.deepEqual(s.unpaired, [], name);
      assert.equal(s.remaining, 0, name);
      assert.equal(s.tasks, 1, name);
      await judgeRun(await readRunFolder(loaded.experiment.output), { endpoint: stub, log: () => {} });
      runs.push(loaded.experiment.output);
    }
    const definition = await readStudyTable(join(PAPER, "table.json"));
    const page = join(root, "table", "table.html");
    const { tables, leftOut } = await writeStudyTable(join(PAPER, "table.json"), runs, page);
    assert.equal(tables.length, 1);
    const { table } = tables[0];
    assert.equal(table.judge, "stub");
    assert.deepEqual(table.columns, ALL);
    assert.deepEqual(table.rows.map((r) => r.label), definition.rows.map((r) => r.label), "a row per intervention, in order");
    for (const [i, row] of table.rows.entries()) {
      const condition = definition.rows[i].conditions[0];
      const present = table.columns.filter((_, k) => row.cells[k] !== undefined);
      assert.deepEqual(present, CELLS[condition], `row ${row.label}: cells where the paper has them`);
      for (const c of row.cells) if (c) assert.equal(c.n, 1, `${row.label} / ${c.family}`);
    }
    // Only baselines and t2i-clean bookends (no question) and nothing else are outside the table.
    assert.deepEqual(leftOut.map((l) => l.verdicts), runs.map(() => 0));
    const csv = await Deno.readTextFile(join(root, "table", "tables", "stub.csv"));
    assert.equal(csv.split("\n")[0], "intervention,colour,colour n,style,style n,humans,humans n,add,add n,remove,remove n");
    assert.match(await Deno.readTextFile(join(root, "table", "tables", "stub.tex")), /Knockout ref to text, padding &/);
    assert.match(await Deno.readTextFile(page), /Stub judge/);

    // The knockout layer-mode figure: its four kinds expanded over the 4 blocks (windows of 3: only 2, the end is not
    // clipped); the baseline and the suffix points run on one task, and the report plots them.
    const sweep = await readExperiment(await forTinyModel("knockout_sweeps_colour", root, () => files.one_colour));
    const kinds = sweep.experiment.conditions.map((c) => c.sweep ? `${c.sweep.kind}-${c.sweep.L}` : c.name);
    assert.deepEqual(kinds, [
      "baseline",
      ...["suffix", "prefix", "single"].flatMap((k) => [0, 1, 2, 3].map((L) => `${k}-${L}`)),
      "window3-0",
      "window3-1",
    ]);
    const swept = await runExperiment(sweep, { pipeline, limit: 5, log: () => {} });
    assert.deepEqual([swept.failed, swept.ranNow], [[], 5]);
    await judgeRun(await readRunFolder(sweep.experiment.output), { endpoint: stub, log: () => {} });
    const sweepPage = await buildReport(sweep.experiment.output);
    assert.match(sweepPage, /<h2>Block sweeps<\/h2>/);
    assert.match(sweepPage, /ko_ref_text@suffix/);

    // Attention flow and effects of a condition: their figures in the report.
    const flowFile = join(root, "experiments", "flow.json");
    await Deno.writeTextFile(
      flowFile,
      JSON.stringify({
        model: MODEL,
        tasks: files.one_colour,
        output: join(root, "runs", "flow"),
        width: 16,
        height: 16,
        steps: 1,
        maxSequenceLength: TEXT_ROWS,
        conditions: [{
          name: "ko_flow",
          interventions: [{ type: "knockout", setting: "ref->text" }],
          attentionFlow: { blocks: "double.1,single.0" },
          effects: true,
        }],
      }),
    );
    const flow = await readExperiment(flowFile);
    assert.deepEqual((await runExperiment(flow, { pipeline, log: () => {} })).failed, []);
    const flowPage = await buildReport(flow.experiment.output);
    assert.match(flowPage, /<h2>Attention flow and effects<\/h2>/);
    assert.match(flowPage, /Attention flow: solid_red_couch_s0 · ko_flow/);
    assert.match(flowPage, /Effects against the baseline: solid_red_couch_s0 · ko_flow/);
    assert.ok((flowPage.match(/<svg/g) ?? []).length >= 3, "heatmaps and effect plots");
    console.log(`paper cells: ${runs.length} runs and the sweep in ${((performance.now() - t0) / 1000).toFixed(0)} s`);
  } finally {
    pipeline.release();
    await Deno.remove(root, { recursive: true });
  }
});
