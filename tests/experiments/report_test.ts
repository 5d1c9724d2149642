// The HTML report: results table with Wilson intervals per cell, agreement, metrics, image grids with inline
// thumbnails and filters — one self-contained page (no external assets), rendered by headless Chromium.

import assert from "node:assert/strict";
import { join } from "node:path";
import { decode } from "image-js";
import { buildReport, writeReport } from "../../experiments/report.ts";
import { writeColourTasks } from "../../experiments/generators.ts";
import { judgeFileName, type Judgment } from "../../experiments/judge.ts";
import { wilsonInterval } from "../../experiments/stats.ts";
import { writeTextAtomic } from "../../experiments/files.ts";
import { makeFakeRun } from "./fake_run.ts";
import { dumpDom, findChromium, screenshot } from "./chromium.ts";

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
        rows.push({
          task_id: t.task_id,
          condition: c,
          family: t.family,
          edit_type: t.edit_type,
          template: "color.reference_colour",
          template_version: 1,
          question: "q",
          images: {},
          judge,
          model: `${judge}-model`,
          answer: unparseable ? null : answer,
          status: unparseable ? "unparseable" : "ok",
          pass: unparseable ? null : answer === "no",
          raw: unparseable ? "dunno" : answer,
          cached: false,
        });
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
      const img = decode(bytes);
      assert.deepEqual([img.width, img.height], [1280, 1600]);
      // Not blank: the page has many distinct colours (text, tables, thumbnails).
      const raw = img.getRawImage().data;
      const colours = new Set<number>();
      for (let i = 0; i < raw.length; i += img.channels * 97) colours.add((raw[i] << 16) | (raw[i + 1] << 8) | raw[i + 2]);
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
