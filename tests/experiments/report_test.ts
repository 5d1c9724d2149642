// The HTML report: the study's table per judge (p +Δ/−Δ, also written as CSV and LaTeX), block sweeps (an SVG line
// per setting with its Wilson band, image strips over L), every cell with Wilson intervals, agreement, metrics, image
// grids with inline thumbnails and filters, attention flow and effects aggregated per cell (heatmaps per block, lines
// with interval bands, the files beside the page) — one self-contained page (no external assets), rendered by
// headless Chromium.

import assert from "node:assert/strict";
import { join } from "node:path";
import { decodeImage } from "../../model/images.ts";
import { buildReport, writeReport } from "../../experiments/report.ts";
import { writeColourTasks } from "../../experiments/generators.ts";
import { judgeFileName, type Judgment } from "../../experiments/judge.ts";
import { cellStats, wilsonInterval } from "../../experiments/stats.ts";
import { formatCell } from "../../experiments/tables.ts";
import type { Task } from "../../experiments/tasks.ts";
import type { Condition } from "../../experiments/experiment.ts";
import { writeTextAtomic } from "../../experiments/files.ts";
import { makeFakeRun } from "./fake_run.ts";
import { conditionDir } from "../../experiments/run_folder.ts";
import { AGGREGATE_FILES } from "../../experiments/aggregate.ts";
import { parseAttentionFlowJson } from "../../experiments/flow_plots.ts";
import { meanInterval } from "../../experiments/stats.ts";
import { type AttentionFlowJson, attentionFlowJson, AttentionFlowResult } from "../../interventions/attention_flow.ts";
import { type EffectRecord, effectsJson, type RunEffects } from "../../studies/effects.ts";
import { dumpDom, findChromium, screenshot } from "./chromium.ts";

function verdict(t: Task, condition: string, judge: string, answer: "yes" | "no" | null, polarity: "change" | "keep"): Judgment {
  return {
    task_id: t.task_id,
    condition,
    family: t.family,
    edit_type: t.edit_type,
    template: "color.knockout_kept",
    template_version: 1,
    polarity,
    question: "q",
    images: [],
    judge,
    provider: judge === "stub" ? "stub" : "openai",
    model: `${judge}-model`,
    answer,
    reason: answer === null ? null : `because ${answer}`,
    status: answer === null ? "unparseable" : "ok",
    pass: answer === null ? null : (answer === "yes") === (polarity === "change"),
    raw: answer === null ? "dunno" : answer,
    cached: false,
    tokens: null,
  };
}

async function fakeRunWithJudgments(root: string): Promise<string> {
  const set = await writeColourTasks({
    out: join(root, "colours"),
    colours: ["red", "blue"],
    objects: ["couch", "vase"],
    seeds: [0],
    width: 64,
    height: 64,
    swatchSize: 64,
  });
  const run = join(root, "run");
  const conditions = [{ name: "baseline" }, { name: "ko_ref_text" }, { name: "patch_padding", patch: { block: "double.1" } }];
  await makeFakeRun({
    dir: run,
    tasks: set.tasks,
    conditions,
    colour: (t, c) => c === "baseline" ? t.metadata.rgb as number[] : c === "ko_ref_text" ? [120, 120, 120] : [40, 40, 200],
  });
  for (const [judge, flip] of [["judge-a", false], ["judge-b", true]] as const) {
    const rows: Judgment[] = [];
    for (const [i, t] of set.tasks.entries()) {
      for (const c of ["baseline", "ko_ref_text"]) {
        const answer = c === "baseline" ? "yes" : (i % 2 === 0) !== (flip && i === 1) ? "no" : "yes";
        const unparseable = c === "ko_ref_text" && i === 3;
        rows.push(verdict(t, c, judge, unparseable ? null : answer, "keep"));
      }
    }
    await writeTextAtomic(join(run, "judgments", judgeFileName(judge)), rows.map((r) => JSON.stringify(r)).join("\n") + "\n");
  }
  return run;
}

Deno.test("report: results per cell with Wilson intervals, agreement, metrics and image grids; no external assets", async () => {
  const root = await Deno.makeTempDir({ prefix: "ks-report-" });
  try {
    const run = await fakeRunWithJudgments(root);
    const html = await buildReport(run);
    // ko_ref_text: 3 answered (one unparseable), passes on tasks 0 and 2 → 2/3 for judge-a.
    const w = wilsonInterval(2, 3);
    const pct = (v: number) => `${(100 * v).toFixed(1)}%`;
    assert.ok(
      html.includes(`<td class="num">${pct(2 / 3)}</td><td class="num">${pct(w.low)} – ${pct(w.high)}</td>`),
      "ko cell with its interval",
    );
    // The study's table: the same cell as p +Δ/−Δ, with n and the exclusion under it.
    const cell = formatCell({ ...w, n: 3, passes: 2, condition: "ko_ref_text", family: "color", template: "t", yes: 1, excluded: 1 });
    assert.ok(
      html.includes(`data-n="3" data-rate="${2 / 3}"`) && html.includes(`>${cell}<small>n = 3 · 1 excl.</small></td>`),
      `paper cell ${cell}`,
    );
    assert.ok(
      html.includes("1 verdict(s) excluded") && html.includes('href="tables/judge-a.csv"') && html.includes('href="tables/judge-a.tex"'),
    );
    assert.ok(html.includes("judge-a: 1 (no pass) — because yes"), "verdicts carry the judge's reason");
    assert.ok(html.includes("Judge agreement"));
    assert.ok(html.includes("judge-a vs judge-b"));
    assert.ok(html.includes("Local metrics"));
    // Four tasks, each with a reference and three conditions, all as inline PNG thumbnails.
    assert.equal((html.match(/<div class="task"/g) ?? []).length, 4);
    assert.equal((html.match(/src="data:image\/png;base64,/g) ?? []).length, 4 * 4);
    assert.ok(html.includes('<select id="f-family">') && html.includes('<select id="f-condition">'));
    assert.ok(html.includes('href="tasks/color_red_couch_s0/baseline/image.png"'), "full-size links relative to the page");
    // Self-contained: nothing is fetched from elsewhere.
    assert.equal(/(src|href)="(https?:)?\/\//.test(html), false);
    assert.equal(/<link|@import|url\(/.test(html), false);
    // The patch condition shows its source and transfer index.
    assert.ok(/source color_blue_couch_s0<\/span><br><span class="m">TI pixels/.test(html), "patch source and transfer index");
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("report renders in headless Chromium (needs the Debian package `chromium`)", async (t) => {
  const chromium = await findChromium();
  if (!chromium) {
    console.warn("SKIPPED: chromium is not installed (apt-get install -y chromium); the report was not rendered");
    return;
  }
  const root = await Deno.makeTempDir({ prefix: "ks-report-" });
  try {
    const run = await fakeRunWithJudgments(root);
    const page = await writeReport(run);
    const png = join(root, "report.png");
    await t.step("screenshot", async () => {
      await screenshot(chromium, page, png);
      const bytes = await Deno.readFile(png);
      assert.ok(bytes.length > 20_000, `screenshot of ${bytes.length} bytes`);
      const img = decodeImage(bytes, png);
      assert.deepEqual([img.width, img.height], [1280, 1600]);
      // Not blank: the page has many distinct colours (text, tables, thumbnails).
      const raw = img.data;
      const colours = new Set<number>();
      for (let i = 0; i < raw.length; i += 3 * 97) colours.add((raw[i] << 16) | (raw[i + 1] << 8) | raw[i + 2]);
      assert.ok(colours.size > 20, `${colours.size} colours`);
    });
    await t.step("filters: the condition and family in the address hide the rest", async () => {
      const dom = await dumpDom(chromium, page, "#condition=ko_ref_text&family=color");
      const figures = [...dom.matchAll(/<figure data-condition="([^"]+)"( style="([^"]*)")?/g)];
      assert.equal(figures.length, 16);
      for (const [, condition, , style] of figures) {
        const hidden = /display: none/.test(style ?? "");
        assert.equal(hidden, !["ko_ref_text", "reference"].includes(condition), `${condition}: ${style}`);
      }
      assert.ok(dom.includes('<span id="shown">4</span>'));
      const none = await dumpDom(chromium, page, "#family=style");
      assert.ok(none.includes('<span id="shown">4</span>'), "an unknown family leaves the filter at all");
    });
    const keep = Deno.env.get("KLEINSCOPE_KEEP_SCREENSHOT");
    if (keep) await Deno.copyFile(png, keep);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

const SETTINGS = { suffix: 32, prefix: 8 } as const;

/** A run with two block sweeps of ko_ref_text (suffix over L = 0…31, prefix over 0…7) beside a baseline, judged by
 * the stub: a task passes at L when L < 6 + 6·(task index), so the rate falls with L. */
async function fakeSweepRun(root: string): Promise<{ run: string; tasks: Task[]; verdicts: Judgment[] }> {
  const set = await writeColourTasks({
    out: join(root, "colours"),
    colours: ["red", "blue"],
    objects: ["couch", "vase"],
    seeds: [0],
    width: 32,
    height: 32,
    swatchSize: 64,
  });
  const conditions: Condition[] = [{ name: "baseline" }, {
    name: "ko_ref_text",
    interventions: [{ type: "knockout", setting: "ref->text" }],
  }];
  for (const [kind, count] of Object.entries(SETTINGS)) {
    for (let L = 0; L < count; L++) {
      conditions.push({
        name: `ko_ref_text@${kind}:${L}`,
        interventions: [{ type: "knockout", setting: "ref->text", blocks: `${L}..31` }],
        sweep: { family: "ko_ref_text", kind, L },
      } as Condition);
    }
  }
  const run = join(root, "run");
  await makeFakeRun({
    dir: run,
    tasks: set.tasks,
    conditions,
    size: 32,
    colour: (_t, c) => c === "baseline" ? [200, 30, 30] : [30, 30, 200],
  });
  const verdicts: Judgment[] = [];
  for (const [i, t] of set.tasks.entries()) {
    for (const c of conditions.slice(1)) {
      const L = c.name === "ko_ref_text" ? 0 : Number(c.name.split(":")[1]);
      // One unanswered verdict at suffix L = 5.
      const answer = c.name === "ko_ref_text@suffix:5" && i === 0 ? null : L < 6 + 6 * i ? "yes" : "no";
      verdicts.push({ ...verdict(t, c.name, "stub", answer, "change"), template: "color.knockout_lost" });
    }
  }
  await writeTextAtomic(join(run, "judgments", "stub.jsonl"), verdicts.map((r) => JSON.stringify(r)).join("\n") + "\n");
  return { run, tasks: set.tasks, verdicts };
}

Deno.test("report: block sweeps as a rate-vs-L plot with Wilson bands and image strips; tables written as CSV and LaTeX", async () => {
  const root = await Deno.makeTempDir({ prefix: "ks-report-sweep-" });
  try {
    const { run, tasks, verdicts } = await fakeSweepRun(root);
    const page = await writeReport(run);
    const html = await Deno.readTextFile(page);
    assert.ok(html.includes('<svg xmlns="http://www.w3.org/2000/svg" class="sweep-plot"'));
    assert.ok(html.includes("<b>Stub judge.</b>"), "stub verdicts are labelled");
    // One series per setting; one point per L with its numbers; the band drawn per unbroken run of points.
    const cells = cellStats(verdicts);
    for (const [kind, count] of Object.entries(SETTINGS)) {
      const g = html.match(new RegExp(`<g class="series" data-label="ko_ref_text@${kind}">([\\s\\S]*?)</g>`));
      assert.ok(g, kind);
      const points = [
        ...g[1].matchAll(/<circle [^>]*data-l="(\d+)" data-rate="([^"]+)" data-low="([^"]+)" data-high="([^"]+)" data-n="(\d+)"/g),
      ];
      assert.deepEqual(points.map((p) => Number(p[1])), [...Array(count).keys()]);
      for (const p of points) {
        const c = cells.find((x) => x.condition === `ko_ref_text@${kind}:${p[1]}`)!;
        assert.deepEqual([Number(p[2]), Number(p[3]), Number(p[4]), Number(p[5])], [c.rate, c.low, c.high, c.n]);
      }
      assert.equal((g[1].match(/<polygon class="band"/g) ?? []).length, 1);
    }
    // The sweep's points are not rows of the paper table, nor columns of the main image grid.
    assert.equal(/<tr data-condition="ko_ref_text@/.test(html), false);
    assert.equal(/<figure data-condition="ko_ref_text@/.test(html), false);
    // Strips: a task × setting each, a thumbnail per L with its verdict mark.
    const strips = [...html.matchAll(/<div class="strip" data-family="color" data-setting="([^"]+)">([\s\S]*?)<\/div><\/div>/g)];
    assert.equal(strips.length, tasks.length * 2);
    for (const [, setting, body] of strips) {
      assert.equal((body.match(/<figure data-l=/g) ?? []).length, SETTINGS[setting.split("@")[1] as keyof typeof SETTINGS]);
      assert.equal((body.match(/src="data:image\/png;base64,/g) ?? []).length, SETTINGS[setting.split("@")[1] as keyof typeof SETTINGS]);
    }
    // The tables beside the page.
    const csv = await Deno.readTextFile(join(run, "tables", "stub.csv"));
    assert.deepEqual(csv.trim().split("\n"), [
      "intervention,color,color n",
      `ko_ref_text,${formatCell(cells.find((c) => c.condition === "ko_ref_text"))},4`,
    ]);
    const tex = await Deno.readTextFile(join(run, "tables", "stub.tex"));
    assert.match(tex, /\\begin\{tabular\}\{lc\}/);
    assert.ok(await Deno.readTextFile(join(run, "tables", "stub_cells.csv")));

    const chromium = await findChromium();
    if (!chromium) {
      console.warn("SKIPPED rendering: chromium is not installed (apt-get install -y chromium)");
      return;
    }
    // Rendered: the plot's first setting colour (#0072b2) and its band are on screen.
    const dom = await dumpDom(chromium, page);
    assert.equal((dom.match(/<svg [^>]*class="sweep-plot"/g) ?? []).length, 1);
    // The paper-layout table as the browser parsed it: one row, one family column, the cell as p +Δ/−Δ.
    const table = dom.match(/<table class="paper" data-judge="stub">([\s\S]*?)<\/table>/);
    assert.ok(table, "paper table in the DOM");
    assert.equal((table[1].match(/<tr/g) ?? []).length, 2);
    assert.ok(table[1].includes("<th>color</th>") && table[1].includes("<th>ko_ref_text</th>"));
    assert.ok(table[1].includes(`${formatCell(cells.find((c) => c.condition === "ko_ref_text"))}<small>n = 4</small>`));
    const plotOnly = join(root, "plot.html");
    const svg = html.match(/<svg [\s\S]*?<\/svg>/)![0];
    await Deno.writeTextFile(plotOnly, `<!doctype html><body style="margin:0">${svg}</body>`);
    const png = join(root, "plot.png");
    await screenshot(chromium, plotOnly, png, "640,300");
    const raw = decodeImage(await Deno.readFile(png), png).data;
    let line = 0, band = 0;
    for (let i = 0; i < raw.length; i += 3) {
      const [r, g, b] = [raw[i], raw[i + 1], raw[i + 2]];
      if (Math.abs(r - 0) < 30 && Math.abs(g - 114) < 30 && Math.abs(b - 178) < 30) line++;
      // The band: the blue at 18% over white ≈ (209, 229, 241).
      if (Math.abs(r - 209) < 12 && Math.abs(g - 229) < 12 && Math.abs(b - 241) < 12) band++;
    }
    const keep = Deno.env.get("KLEINSCOPE_KEEP_PLOT");
    if (keep) await Deno.copyFile(png, keep);
    assert.ok(line > 300, `${line} pixels of the line colour`);
    assert.ok(band > 1000, `${band} pixels of the band`);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

// ---- attention flow and effects aggregated per cell ------------------------------------------------------------------

const FLOW_BLOCKS = [["double.0", 0], ["double.1", 1], ["single.0", 2], ["single.1", 3]] as const;
const FLOW_STEPS = [0, 2];
const FLOW_GROUPS = ["text[content]", "text[pad]", "image", "ref[0]"];

/** A flow result as a run would hold it (one kept head and the mean over 2 heads; rows sum to 1), turned into
 * attention_flow.json by the writer the runs use. `seed` varies the numbers between tasks. */
function flowJsonOf(seed: number, queryGroups = FLOW_GROUPS): AttentionFlowJson {
  const gq = queryGroups.length, gk = FLOW_GROUPS.length;
  const tables = FLOW_BLOCKS.flatMap(([block, blockIndex]) =>
    FLOW_STEPS.map((step) => {
      const mass = new Float32Array(2 * gq * gk);
      for (let h = 0; h < 2; h++) {
        for (let a = 0; a < gq; a++) {
          const raw = FLOW_GROUPS.map((_, b) =>
            1 + ((seed * 5 + h * 3 + a * 7 + b * (blockIndex + 2) + step) % 9) + (b === 3 ? blockIndex : 0)
          );
          const sum = raw.reduce((x, y) => x + y, 0);
          raw.forEach((v, b) => mass[(h * gq + a) * gk + b] = v / sum);
        }
      }
      return { block, blockIndex, step, mass };
    })
  );
  const result = new AttentionFlowResult(
    "cond",
    queryGroups.map((name, i) => ({ name, tokens: 8 + i + seed })),
    FLOW_GROUPS.map((name, i) => ({ name, tokens: 8 + i + seed })),
    [1],
    2,
    64,
    0,
    null,
    tables,
  );
  return attentionFlowJson(result);
}

/** Effects of a knockout with its control, as effects.json's writer turns them into text. */
function effectsJsonOf(seed: number) {
  const records = (run: number): EffectRecord[] =>
    FLOW_BLOCKS.flatMap(([block, blockIndex]) =>
      FLOW_STEPS.map((step) => {
        const stats = (g: number) => ({
          relL2: 0.04 * (g + 1) + 0.05 * blockIndex * (run ? 0.3 : 1) + 0.01 * ((seed + g + step) % 3),
          cosine: 1 - 0.02 * (g + 1 + blockIndex) * (run ? 0.3 : 1),
          rowCosine: 0.95,
        });
        return { block, blockIndex, step, text: stats(0), image: stats(1), ref: stats(2) };
      })
    );
  const run = (r: number): RunEffects => ({
    interventions: [{ type: "knockout", setting: r ? "ref->text[3,4]" : "ref->text" }],
    records: records(r),
    final: { latents: { relL2: 0.2, cosine: 0.97, rowCosine: 0.96 }, imageMeanAbsDiff255: 9.5 },
    attentionFlow: null,
    warnings: [],
  });
  return effectsJson({
    blocks: FLOW_BLOCKS.map(([b]) => b),
    steps: FLOW_STEPS,
    groups: [{ name: "text", tap: "txt", rows: 16 }, { name: "image", tap: "img", rows: 64 }, { name: "ref", tap: "img", rows: 64 }],
    baselineBytes: 0,
    baselineDescription: "the same spec without its interventions",
    baselineWarnings: [],
    intervention: run(0),
    control: {
      ...run(1),
      seed: 3,
      settings: [{ intervention: 0, original: "ref->text", setting: "ref->text[3,4]", queries: 2, pool: 12 }],
    },
  });
}

/** A run of 4 colour tasks and 2 style tasks; its ko_ref_text folders hold attention_flow.json and effects.json. The
 * last colour task's flow measured other query groups (left out of its cell). */
async function fakeFlowRun(root: string): Promise<{ run: string; tasks: Task[] }> {
  const colour = await writeColourTasks({
    out: join(root, "colours"),
    colours: ["red", "blue"],
    objects: ["couch", "vase"],
    seeds: [0],
    width: 32,
    height: 32,
    swatchSize: 64,
  });
  const style = await writeColourTasks({
    out: join(root, "styles"),
    colours: ["green"],
    objects: ["couch", "vase"],
    seeds: [0],
    width: 32,
    height: 32,
    swatchSize: 64,
    family: "style",
    idPrefix: "style",
  });
  const tasks = [...colour.tasks, ...style.tasks];
  const run = join(root, "run");
  await makeFakeRun({
    dir: run,
    tasks,
    conditions: [{ name: "baseline" }, {
      name: "ko_ref_text",
      interventions: [{ type: "knockout", setting: "ref->text" }],
      attentionFlow: { steps: FLOW_STEPS },
      effects: true,
      control: { seed: 3 },
    } as Condition],
    size: 32,
  });
  for (const [i, t] of tasks.entries()) {
    const dir = conditionDir(run, t.task_id, "ko_ref_text");
    const flow = i === 3 ? flowJsonOf(i, ["text[content]", "image", "ref[0]"]) : flowJsonOf(i);
    await writeTextAtomic(join(dir, "attention_flow.json"), JSON.stringify(flow) + "\n");
    await writeTextAtomic(join(dir, "effects.json"), JSON.stringify(effectsJsonOf(i)) + "\n");
  }
  return { run, tasks };
}

const svgsOf = (html: string, cls: string) =>
  [...html.matchAll(new RegExp(`<svg [^>]*class="${cls}"[\\s\\S]*?</svg>`, "g"))].map((m) => m[0]);
const titleOf = (svg: string) => svg.match(/<text class="plot-title"[^>]*>([^<]*)<\/text>/)![1];

Deno.test("report: attention flow and effects aggregated per cell, rendered in headless Chromium; files beside the page", async () => {
  const root = await Deno.makeTempDir({ prefix: "ks-report-flow-" });
  try {
    const { run, tasks } = await fakeFlowRun(root);
    const page = await writeReport(run);
    const html = await Deno.readTextFile(page);

    // The aggregate files in tables/, the color cell's mean as the page shows it.
    for (const name of Object.values(AGGREGATE_FILES)) await Deno.stat(join(run, "tables", name));
    const flows = await Promise.all(
      tasks.map(async (t) =>
        parseAttentionFlowJson(await Deno.readTextFile(join(conditionDir(run, t.task_id, "ko_ref_text"), "attention_flow.json")))
      ),
    );
    const kept = flows.slice(0, 3).map((f) => f.tables.find((t) => t.block === "double.1" && t.step === 0)!.mass[1][0][3]);
    const want = meanInterval(kept);
    const csv = (await Deno.readTextFile(join(run, "tables", AGGREGATE_FILES.flowCsv))).split("\n");
    assert.ok(
      csv.includes(`ko_ref_text,color,mass,double.1,1,0,text[content],ref[0],3,${want.mean},${want.sd},${want.low},${want.high},student-t`),
      "the CSV row of one mean",
    );
    assert.match(html, /Student t with n − 1 degrees of freedom for n &lt; 30/);
    assert.ok(
      html.includes("hover a cell or point for its 95% interval (Student t with 2 degrees of freedom) and n"),
      "the color cell's rule",
    );
    assert.ok(html.includes("95% interval of the mean (Student t with 3 degrees of freedom)"), "the color cell's effects rule");
    assert.ok(
      html.includes(`data-left-out="1">Attention flow: 1 task(s) left out — ${tasks[3].task_id} (its groups differ`),
      "left-out task named",
    );

    const chromium = await findChromium();
    if (!chromium) {
      console.warn("SKIPPED rendering: chromium is not installed (apt-get install -y chromium)");
      return;
    }
    const dom = await dumpDom(chromium, page);
    const cells = [
      ...dom.matchAll(
        /<div class="figures aggregate-cell" data-family="([^"]+)" data-condition="([^"]+)"[^>]*>([\s\S]*?)<\/details><\/div>/g,
      ),
    ];
    assert.deepEqual(cells.map((c) => `${c[2]}/${c[1]}`), ["ko_ref_text/color", "ko_ref_text/style"]);
    for (const [, family, , body] of cells) {
      const n = family === "color" ? 3 : 2, nEffects = family === "color" ? 4 : 2;
      // Heatmaps: one per block at each recorded step (the first shown, the second collapsed), in block order.
      const maps = svgsOf(body, "agg-heatmap");
      assert.deepEqual(maps.map(titleOf), FLOW_STEPS.flatMap((s) => FLOW_BLOCKS.map(([b]) => `${b} · step ${s} · mean of ${n} tasks`)));
      for (const m of maps) assert.equal((m.match(/<g data-query=/g) ?? []).length, FLOW_GROUPS.length ** 2);
      // Mass to the reference, with a band per query group (n ≥ 2 everywhere: one unbroken band each).
      const lines = svgsOf(body, "agg-flow-line");
      assert.deepEqual(lines.map(titleOf), FLOW_STEPS.map((s) => `mass to ref[0] · step ${s} · mean over ${n} tasks, 95% band`));
      assert.equal((lines[0].match(/<path class="band" d="M[^"]+Z"/g) ?? []).length, FLOW_GROUPS.length);
      // Effects: relL2 at the first step shown; the other step and the cosines collapsed. Intervention solid, control dashed.
      const effects = svgsOf(body, "agg-effects-line");
      const stat = (name: string, s: number) => `${name} against the baseline · step ${s} · mean over ${nEffects} tasks, 95% band`;
      assert.deepEqual(effects.map(titleOf), [
        stat("relative L2 change", 0),
        stat("relative L2 change", 2),
        stat("cosine (flattened)", 0),
        stat("cosine (flattened)", 2),
      ]);
      const series = [...effects[0].matchAll(/<g class="series" data-run="(\w+)" data-group="(\w+)">([\s\S]*?)<\/g>/g)];
      assert.deepEqual(series.map((s) => `${s[1]}/${s[2]}`), [
        "intervention/text",
        "intervention/image",
        "intervention/ref",
        "control/text",
        "control/image",
        "control/ref",
      ]);
      for (const [, runName, , g] of series) {
        assert.equal((g.match(/<path class="band"/g) ?? []).length, 1);
        assert.equal(/<path class="line"[^>]*stroke-dasharray/.test(g), runName === "control");
      }
      // Each task's own figures, collapsed under the aggregates: 10 flow and 10 effects figures a task.
      const perTask = body.slice(body.indexOf('<details class="per-task">'));
      assert.equal((perTask.match(/<svg /g) ?? []).length, 20 * tasks.filter((t) => t.family === family).length);
    }
    // The mean in the DOM is the CSV's.
    const cell = dom.match(/<svg [^>]*class="agg-heatmap"[^>]*data-block="double.1" data-step="0"[\s\S]*?<\/svg>/)![0];
    const g = cell.match(
      /<g data-query="text\[content\]" data-key="ref\[0\]" data-mean="([^"]+)" data-low="([^"]+)" data-high="([^"]+)" data-n="3">/,
    )!;
    assert.deepEqual(g.slice(1).map(Number), [want.mean, want.low, want.high]);
    // The condition filter hides the cells of other conditions.
    const filtered = await dumpDom(chromium, page, "#condition=baseline");
    assert.equal((filtered.match(/<div class="figures aggregate-cell"[^>]*style="display: none;"/g) ?? []).length, 2);

    // The screenshot is not blank: the heatmaps' blues and the first series' band are on screen.
    const png = join(root, "flow.png");
    await screenshot(chromium, page, png, "1280,2400");
    const img = decodeImage(await Deno.readFile(png), png);
    const keep = Deno.env.get("KLEINSCOPE_KEEP_FLOW_SCREENSHOT");
    if (keep) await Deno.copyFile(png, keep);
    const raw = img.data;
    const colours = new Set<number>();
    let band = 0, dark = 0;
    for (let i = 0; i < raw.length; i += 3) {
      const [r, gr, b] = [raw[i], raw[i + 1], raw[i + 2]];
      colours.add((r << 16) | (gr << 8) | b);
      // #0072b2 at 18% over white ≈ (209, 229, 241).
      if (Math.abs(r - 209) < 10 && Math.abs(gr - 229) < 10 && Math.abs(b - 241) < 10) band++;
      // The heatmap's darker cells: blue well above red.
      if (b > 120 && b - r > 70 && r < 120) dark++;
    }
    assert.ok(colours.size > 200, `${colours.size} colours`);
    assert.ok(band > 2000, `${band} pixels of the band`);
    assert.ok(dark > 5000, `${dark} pixels of heatmap blue`);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});
