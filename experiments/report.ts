// One self-contained HTML page per run: per judge, the study's results table (rows = interventions, columns = task
// families, cells p +Δ/−Δ with 95% Wilson intervals; also written as CSV and LaTeX under tables/ beside the page),
// block sweeps as rate-versus-L plots (SVG, one line per setting with its Wilson band) and per-task image strips over
// L, every cell in detail, judge agreement, the local metrics per cell, and an image grid per task (references, then
// every condition that is not a sweep point) with each image's metrics and verdicts (and the judge's reasons) beside
// it, filterable by family and condition. Verdicts of the stub judge are marked as such wherever they appear.
// Condition folders holding attention_flow.json or effects.json (conditions with "attentionFlow" or "effects") are
// aggregated per cell (condition × task family, aggregate.ts: means over tasks with 95% intervals, also written as JSON
// and CSV under tables/): per cell the mean heatmaps (one per block), the mass to the reference over the blocks and
// the effects' relL2 over the blocks, each with its band (flow_plots.ts, effects_plots.ts); each task's own figures
// follow, collapsed.
//
// A study table over several runs (writeStudyTable, `deno task report --table`): the published study runs each
// intervention × family as its own experiment; a table definition names the rows (conditions) and the columns (task
// families pooled into one column: the style patching targets are style_real tasks, the people's are human_shared),
// and the verdicts of every run given go into one table per judge.
//
// Images: every picture is an inline PNG thumbnail (data URL, longest side `thumb` px, default 160; smaller images are
// kept as they are and enlarged by the browser), so the page needs no other file and can be mailed or archived
// alone. Each thumbnail links to its full-size file by a path relative to the page, which works while the page stays
// where it was written (by default <run>/report.html). No external assets; the filters are a few lines of inline JS.

import { dirname, isAbsolute, join, relative, resolve } from "node:path";
import { encodePng, loadImage, resizeLanczos, type RgbImage } from "../model/images.ts";
import { pathExists, readJsonFile, writeTextAtomic } from "./files.ts";
import { attentionFlowSection, flowAggregateSection } from "./flow_plots.ts";
import { effectsAggregateSection, effectsSection } from "./effects_plots.ts";
import {
  AGGREGATE_FILES,
  aggregateAttentionFlow,
  aggregateEffects,
  type EffectsAggregate,
  type FlowAggregate,
  readRunOutputs,
  type RunOutputs,
  writeAggregates,
} from "./aggregate.ts";
import { printable } from "../runtime/printable.ts";
import { judgeFileName, type Judgment, readJudgments } from "./judge.ts";
import { BUILTIN_TEMPLATES, type QuestionTemplate, templateCatalogue } from "./judge_templates.ts";
import { computeRunMetrics, type FolderMetrics } from "./run_metrics.ts";
import { conditionDir, readRunFolder, type RunFolder, taskReferences } from "./run_folder.ts";
import { cellStats, judgeAgreement, MEAN_INTERVAL_RULE, sweepOf, type SweepPoint, sweepSeries } from "./stats.ts";
import { formatCell, type PaperTable, paperTable, tableFiles, writeTables } from "./tables.ts";
import { rateVsBlockSvg } from "./svg_plot.ts";

export interface ReportOptions {
  /** Where the page will be written (relative links are computed from it); default <run>/report.html. */
  out?: string;
  /** Longest side of the thumbnails, px (default 160). */
  thumb?: number;
  /** The condition metrics compare against (default "baseline"). */
  baseline?: string;
  /** Longest side of the thumbnails in sweep strips, px (default 72). */
  stripThumb?: number;
}

/** Where a report's tables go: tables/ beside the page. */
export const tablesDir = (page: string) => join(dirname(page), "tables");

const esc = (s: unknown) =>
  String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]!);

const fmt = (v: number | null | undefined, digits = 3) => v === null || v === undefined || !Number.isFinite(v) ? "–" : v.toFixed(digits);
const pct = (v: number) => Number.isFinite(v) ? `${(100 * v).toFixed(1)}%` : "–";

/** A PNG data URL of an image file, shrunk so its longest side is at most `side`. */
async function thumbnail(path: string, side: number): Promise<string | null> {
  if (!(await pathExists(path))) return null;
  let img: RgbImage;
  try {
    img = await loadImage(path);
  } catch {
    return null;
  }
  const scale = side / Math.max(img.width, img.height);
  if (scale < 1) {
    img = resizeLanczos(img, Math.max(1, Math.round(img.width * scale)), Math.max(1, Math.round(img.height * scale)));
  }
  const bytes = encodePng(img);
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return `data:image/png;base64,${btoa(s)}`;
}

const STYLE = `
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{margin:0 0 .3em}h2{margin:1.4em 0 .4em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.5em 0;background:#fff}th,td{border:1px solid #ddd;padding:3px 8px;text-align:left}
th{background:#eee}td.num{text-align:right;font-variant-numeric:tabular-nums}
.ci{display:inline-block;position:relative;width:120px;height:10px;background:#eee;vertical-align:middle}
.ci span{position:absolute;top:0;height:10px;background:#7aa7d8}.ci i{position:absolute;top:-2px;width:2px;height:14px;background:#123}
.meta{color:#555}.filters{position:sticky;top:0;background:#fafafa;padding:.5em 0;z-index:1;border-bottom:1px solid #ddd}
.task{background:#fff;border:1px solid #ddd;margin:.8em 0;padding:.5em}.task h3{margin:.1em 0 .4em;font-size:15px}
.row{display:flex;flex-wrap:wrap;gap:10px}figure{margin:0;width:170px}figure img{width:160px;height:auto;image-rendering:pixelated;border:1px solid #ccc}
figcaption{font-size:12px}figcaption b{display:block}.m{color:#444}.pass{color:#0a6b2b;font-weight:600}.fail{color:#a11;font-weight:600}
.na{color:#888}.missing{width:160px;height:160px;display:flex;align-items:center;justify-content:center;background:#eee;color:#888}
.swatch{display:inline-block;width:10px;height:10px;border:1px solid #999;vertical-align:middle}
table.paper td.cell{text-align:center;font-variant-numeric:tabular-nums;white-space:nowrap}table.paper td.cell small{color:#777;display:block}
.stub{background:#fff3cd;border:1px solid #e0b800;padding:.4em .7em;margin:.5em 0}.plots{display:flex;flex-wrap:wrap;gap:12px}
.strip{background:#fff;border:1px solid #ddd;margin:.5em 0;padding:.4em}.strip .row{gap:4px}.strip figure{width:auto}
.strip figure img{width:auto;max-width:none}.strip figcaption{text-align:center}
.figures{background:#fff;border:1px solid #ddd;margin:.8em 0;padding:.5em}.figures h2{font-size:15px;border:0}
.figures h3{margin:.2em 0 .4em}.figures h4{margin:.8em 0 .3em}details{margin:.4em 0}summary{cursor:pointer;color:#124}`;

// Filters: a family and a condition select; "#family=…&condition=…" in the address preselects them (for links).
const SCRIPT = `
function applyFilters(){
  var f=document.getElementById('f-family').value, c=document.getElementById('f-condition').value;
  document.querySelectorAll('[data-family],[data-condition]').forEach(function(el){
    var okF=!f||!el.dataset.family||el.dataset.family===f, okC=!c||!el.dataset.condition||el.dataset.condition===c||el.dataset.condition==='reference';
    el.style.display=(okF&&okC)?'':'none';
  });
  var shown=0;document.querySelectorAll('.task').forEach(function(t){if(t.style.display!=='none')shown++;});
  document.getElementById('shown').textContent=shown;
}
new URLSearchParams(location.hash.slice(1)).forEach(function(v,k){
  var s=document.getElementById('f-'+k);if(s&&[].some.call(s.options,function(o){return o.value===v;}))s.value=v;
});
document.getElementById('f-family').addEventListener('change',applyFilters);
document.getElementById('f-condition').addEventListener('change',applyFilters);
applyFilters();`;

function ciBar(low: number, high: number, rate: number): string {
  if (!Number.isFinite(rate)) return "";
  return `<span class="ci" title="${pct(low)} – ${pct(high)}"><span style="left:${100 * low}%;width:${100 * (high - low)}%"></span>` +
    `<i style="left:calc(${100 * rate}% - 1px)"></i></span>`;
}

function resultsTables(judgments: Map<string, Judgment[]>, catalogue: Map<string, QuestionTemplate>): string {
  if (!judgments.size) return `<p class="meta">No judgments yet: run <code>deno task experiment judge &lt;run-dir&gt;</code>.</p>`;
  const parts: string[] = [];
  for (const [name, verdicts] of judgments) {
    const model = verdicts[0]?.model ?? "";
    parts.push(`<h3>Judge ${esc(name)}${model && model !== name ? ` (${esc(model)})` : ""}</h3>`);
    parts.push(
      `<table class="results"><tr><th>condition</th><th>family</th><th>question</th><th>a pass means</th><th>pass rate</th>` +
        `<th>95% Wilson interval</th><th></th><th>n</th><th>passes</th><th>“yes”</th><th>excluded</th></tr>`,
    );
    for (const c of cellStats(verdicts)) {
      const t = catalogue.get(c.template);
      parts.push(
        `<tr data-family="${esc(c.family)}" data-condition="${esc(c.condition)}"><td>${esc(c.condition)}</td><td>${esc(c.family)}</td>` +
          `<td title="${esc(t?.question ?? "")}">${esc(c.template)}</td><td>${esc(t?.passMeans ?? "")}</td>` +
          `<td class="num">${pct(c.rate)}</td><td class="num">${Number.isFinite(c.rate) ? `${pct(c.low)} – ${pct(c.high)}` : "–"}</td>` +
          `<td>${
            ciBar(c.low, c.high, c.rate)
          }</td><td class="num">${c.n}</td><td class="num">${c.passes}</td><td class="num">${c.yes}</td>` +
          `<td class="num">${c.excluded}</td></tr>`,
      );
    }
    parts.push("</table>");
  }
  const names = [...judgments.keys()];
  if (names.length >= 2) {
    parts.push(
      `<h3>Judge agreement</h3><table><tr><th>judges</th><th>n</th><th>raw agreement</th><th>Cohen's κ</th><th>yes/yes · yes/no · no/yes · no/no</th></tr>`,
    );
    for (let i = 0; i < names.length; i++) {
      for (let j = i + 1; j < names.length; j++) {
        const a = judgeAgreement(judgments.get(names[i])!, judgments.get(names[j])!);
        parts.push(
          `<tr><td>${esc(names[i])} vs ${esc(names[j])}</td><td class="num">${a.n}</td><td class="num">${pct(a.agreement)}</td>` +
            `<td class="num">${fmt(a.kappa)}</td><td class="num">${a.table.yy} · ${a.table.yn} · ${a.table.ny} · ${a.table.nn}</td></tr>`,
        );
      }
    }
    parts.push("</table>");
  }
  return parts.join("\n");
}

function mean(values: (number | null)[]): number | null {
  const v = values.filter((x): x is number => x !== null && Number.isFinite(x));
  return v.length ? v.reduce((a, b) => a + b, 0) / v.length : null;
}

function metricsTable(rows: FolderMetrics[]): string {
  if (!rows.length) return `<p class="meta">No complete folders.</p>`;
  const cells = new Map<string, FolderMetrics[]>();
  for (const r of rows) {
    const k = JSON.stringify([r.condition, r.family]);
    if (!cells.has(k)) cells.set(k, []);
    cells.get(k)!.push(r);
  }
  const out = [
    `<table class="metrics"><tr><th>condition</th><th>family</th><th>n</th><th>mean |Δpixel| vs baseline</th><th>SSIM vs baseline</th>` +
    `<th>histogram distance</th><th>ΔE00 to reference colour</th><th>transfer index (pixels)</th><th>transfer index (colour)</th></tr>`,
  ];
  for (const [k, rs] of cells) {
    const [condition, family] = JSON.parse(k);
    out.push(
      `<tr data-family="${esc(family)}" data-condition="${esc(condition)}"><td>${esc(condition)}</td><td>${
        esc(family)
      }</td><td class="num">${rs.length}</td>` +
        [
          mean(rs.map((r) => r.change_vs_baseline)),
          mean(rs.map((r) => r.ssim_vs_baseline)),
          mean(rs.map((r) => r.histogram_vs_baseline)),
          mean(rs.map((r) => r.delta_e_reference)),
          mean(rs.map((r) => r.transfer_pixels)),
          mean(rs.map((r) => r.transfer_colour)),
        ].map((v) => `<td class="num">${fmt(v, 3)}</td>`).join("") + "</tr>",
    );
  }
  out.push("</table>");
  return out.join("\n");
}

function metricLines(m: FolderMetrics | undefined): string {
  if (!m) return "";
  const lines = [`dominant <span class="swatch" style="background:${esc(m.dominant_hex)}"></span> ${esc(m.dominant_hex)}`];
  if (m.delta_e_reference !== null) lines.push(`ΔE00 ref ${fmt(m.delta_e_reference, 1)}`);
  if (m.change_vs_baseline !== null) lines.push(`|Δ| ${fmt(m.change_vs_baseline, 1)} · SSIM ${fmt(m.ssim_vs_baseline, 3)}`);
  if (m.histogram_vs_baseline !== null) lines.push(`hist ${fmt(m.histogram_vs_baseline, 3)}`);
  if (m.source_task) lines.push(`source ${esc(m.source_task)}`);
  if (m.transfer_pixels !== null) lines.push(`TI pixels ${fmt(m.transfer_pixels, 2)}`);
  if (m.transfer_colour !== null) lines.push(`TI colour ${fmt(m.transfer_colour, 2)}`);
  return lines.map((l) => `<span class="m">${l}</span>`).join("<br>");
}

function verdictLines(verdicts: Judgment[]): string {
  return verdicts.map((v) => {
    const cls = v.pass === null ? "na" : v.pass ? "pass" : "fail";
    const label = v.pass === null ? v.status : v.pass ? "pass" : "no pass";
    const said = v.answer === null ? "?" : v.answer === "yes" ? "1" : "0";
    const reason = v.reason ? ` — ${esc(v.reason)}` : "";
    return `<span class="${cls}" title="${esc(v.question)} → ${esc(v.raw)}">${esc(v.judge)}${v.provider === "stub" ? " (stub)" : ""}: ` +
      `${said} (${label})${reason}</span>`;
  }).join("<br>");
}

function paperTableHtml(t: PaperTable, base: string, link: (p: string) => string, catalogue: Map<string, QuestionTemplate>): string {
  const f = tableFiles(base);
  const head = t.columns.map((c) => `<th>${esc(c)}</th>`).join("");
  const rows = t.rows.map((r) => {
    const cells = r.cells.map((c) => {
      if (!c) return `<td class="cell na">–</td>`;
      const q = catalogue.get(c.template);
      const title = `${c.template}${q?.passMeans ? ` — a pass: ${q.passMeans}` : ""}; ${c.passes}/${c.n} passes, ` +
        `95% ${pct(c.low)}–${pct(c.high)}${c.excluded ? `, ${c.excluded} excluded` : ""}`;
      return `<td class="cell" data-col="${esc(c.family)}" data-n="${c.n}" data-rate="${c.rate}" title="${esc(title)}">` +
        `${esc(formatCell(c))}<small>n = ${c.n}${c.excluded ? ` · ${c.excluded} excl.` : ""}</small></td>`;
    }).join("");
    return `<tr data-condition="${esc(r.condition)}"><th>${esc(r.label)}</th>${cells}</tr>`;
  }).join("\n");
  return `<table class="paper" data-judge="${esc(t.judge)}"><tr><th>intervention</th>${head}</tr>\n${rows}</table>` +
    `<p class="meta">${t.excluded} verdict(s) excluded (unparseable or failed; not in any n). Files: ` +
    [f.csv, f.cells, f.tex].map((n) => `<a href="${esc(link(n))}">${esc(n.split("/").pop())}</a>`).join(" · ") + "</p>";
}

function isStub(verdicts: Judgment[]): boolean {
  return verdicts.some((v) => v.provider === "stub");
}

const STUB_NOTE = `<p class="stub"><b>Stub judge.</b> These verdicts come from image statistics (the output's colour change against ` +
  `the bundle's anchor image), not from a vision-language model: for dry runs and tests only, never for results.</p>`;

/** The "Attention flow and effects" section: per cell the aggregated figures, then each task's own (collapsed). */
function aggregateFigures(
  run: RunFolder,
  outputs: RunOutputs,
  flowCells: FlowAggregate[],
  effectsCells: EffectsAggregate[],
  tablesLink: string,
): string {
  if (!flowCells.length && !effectsCells.length && !outputs.unreadable.length) return "";
  const key = (c: { condition: string; family: string }) => JSON.stringify([c.condition, c.family]);
  const order = [...new Set([...flowCells, ...effectsCells].map(key))].map((k) => JSON.parse(k) as [string, string])
    .sort((a, b) => run.conditions.indexOf(a[0]) - run.conditions.indexOf(b[0]) || a[1].localeCompare(b[1]));
  const leftOutNote = (what: string, left: { task_id: string; reason: string }[]) =>
    left.length
      ? `<p class="meta left-out" data-left-out="${left.length}">${what}: ${left.length} task(s) left out — ` +
        left.map((l) => `${esc(l.task_id)} (${esc(l.reason)})`).join("; ") + `</p>`
      : "";
  const parts: string[] = [];
  for (const [condition, family] of order) {
    const flow = flowCells.find((c) => c.condition === condition && c.family === family);
    const effects = effectsCells.find((c) => c.condition === condition && c.family === family);
    const perTask: string[] = [];
    for (const task of run.tasks.filter((t) => t.family === family)) {
      const where = `${task.task_id} · ${condition}`;
      const f = outputs.attentionFlow.find((o) => o.task_id === task.task_id && o.condition === condition);
      const e = outputs.effects.find((o) => o.task_id === task.task_id && o.condition === condition);
      if (f) perTask.push(attentionFlowSection(f.json, `Attention flow: ${where}`));
      if (e) perTask.push(effectsSection(e.json, `Effects against the baseline: ${where}`));
    }
    parts.push(
      `<div class="figures aggregate-cell" data-family="${esc(family)}" data-condition="${esc(condition)}">` +
        `<h3>${esc(condition)} · ${esc(family)}</h3>\n` +
        (flow ? leftOutNote("Attention flow", flow.leftOut) + flowAggregateSection(flow) : "") +
        (effects ? leftOutNote("Effects", effects.leftOut) + effectsAggregateSection(effects) : "") +
        `\n<details class="per-task"><summary>Each task's figures (${perTask.length})</summary>\n${perTask.join("\n")}</details></div>`,
    );
  }
  const files = [
    ...(flowCells.length ? [AGGREGATE_FILES.flowJson, AGGREGATE_FILES.flowCsv] : []),
    ...(effectsCells.length ? [AGGREGATE_FILES.effectsJson, AGGREGATE_FILES.effectsCsv] : []),
  ];
  const unreadable = outputs.unreadable.length
    ? `<p class="meta unreadable">${outputs.unreadable.length} file(s) could not be read and are in no cell: ` +
      outputs.unreadable.map((u) => esc(u.message)).join("; ") + `</p>`
    : "";
  return `<h2>Attention flow and effects</h2>
<p class="meta">One block per cell (condition × task family). Means over the cell's tasks; the ${esc(MEAN_INTERVAL_RULE)}. Tasks
whose group lists differ from those most of the cell's tasks have are left out and named. Files: ${
    files.map((n) => `<a href="${esc(`${tablesLink}/${n}`)}">${esc(n)}</a>`).join(" · ")
  }</p>
${unreadable}
${parts.join("\n")}`;
}

/** The report page of a run folder, and its tables. */
async function assembleReport(
  runDir: string,
  options: ReportOptions,
): Promise<{ html: string; tables: { base: string; table: PaperTable }[]; flowCells: FlowAggregate[]; effectsCells: EffectsAggregate[] }> {
  const run: RunFolder = await readRunFolder(resolve(runDir));
  const out = resolve(options.out ?? join(run.dir, "report.html"));
  const thumb = options.thumb ?? 160;
  const stripThumb = options.stripThumb ?? 72;
  const baseline = options.baseline ?? "baseline";
  const link = (p: string) => {
    const r = relative(dirname(out), resolve(dirname(out), p));
    return isAbsolute(r) ? `file://${r}` : r.split("/").map(encodeURIComponent).join("/");
  };
  let catalogue: Map<string, QuestionTemplate>;
  try {
    catalogue = templateCatalogue(run.experiment.judge?.templates ?? []);
  } catch {
    catalogue = new Map(Object.entries(BUILTIN_TEMPLATES));
  }
  const sweeps = new Map<string, SweepPoint>();
  for (const c of run.experiment.conditions) {
    const s = sweepOf(c as { name: string; sweep?: unknown });
    if (s) sweeps.set(c.name, s);
  }
  const plainConditions = run.conditions.filter((c) => !sweeps.has(c));
  const judgments = await readJudgments(run.dir);
  const metrics = await computeRunMetrics(run, baseline);
  const metricsOf = new Map(metrics.map((m) => [`${m.task_id}/${m.condition}`, m]));
  const verdictsOf = new Map<string, Judgment[]>();
  for (const vs of judgments.values()) {
    for (const v of vs) {
      const k = `${v.task_id}/${v.condition}`;
      if (!verdictsOf.has(k)) verdictsOf.set(k, []);
      verdictsOf.get(k)!.push(v);
    }
  }
  const families = [...new Set(run.tasks.map((t) => t.family))].sort();
  const main = run.manifests.find((m) => !m.manifest.shard)?.manifest ?? run.manifests[0].manifest;
  const complete = [...run.complete.values()].reduce((a, s) => a + s.size, 0);
  const expected = main.tasks.length * run.conditions.length - main.unpaired.length;

  // The study's tables, one per judge (sweep points are plotted instead).
  const tables: { base: string; table: PaperTable }[] = [];
  const paper: string[] = [];
  for (const [name, verdicts] of judgments) {
    const table = paperTable(name, verdicts, { conditions: run.conditions, families, skip: new Set(sweeps.keys()) });
    if (!table.rows.length && !table.excluded) continue;
    const base = judgeFileName(name).replace(/\.jsonl$/, "");
    tables.push({ base, table });
    const model = verdicts[0]?.model ?? "";
    paper.push(`<h3>Judge ${esc(name)}${model && model !== name ? ` (${esc(model)})` : ""}</h3>`);
    if (isStub(verdicts)) paper.push(STUB_NOTE);
    paper.push(paperTableHtml(table, `tables/${base}`, link, catalogue));
  }

  // Block sweeps: a plot per judge × task family (a line per setting and question), then image strips per task.
  const plots: string[] = [];
  if (sweeps.size) {
    for (const [name, verdicts] of judgments) {
      const series = sweepSeries(cellStats(verdicts), sweeps);
      if (!series.length) continue;
      const templates = new Set(series.map((s) => s.template));
      plots.push(`<h3>Judge ${esc(name)}</h3>${isStub(verdicts) ? STUB_NOTE : ""}<div class="plots">`);
      for (const family of [...new Set(series.map((s) => s.taskFamily))].sort()) {
        const own = series.filter((s) => s.taskFamily === family);
        const svg = rateVsBlockSvg(
          own.map((s) => ({ label: templates.size > 1 ? `${s.setting} · ${s.template}` : s.setting, points: s.points })),
          { title: `${family}: pass rate by block (${name})` },
        );
        plots.push(`<div data-family="${esc(family)}">${svg}</div>`);
      }
      plots.push("</div>");
    }
    if (!plots.length) plots.push(`<p class="meta">No verdicts on the sweep's conditions yet.</p>`);
  }
  const strips: string[] = [];
  const settings = [...new Set([...sweeps.values()].map((s) => `${s.family}@${s.kind}`))];
  for (const task of run.tasks) {
    for (const setting of settings) {
      const points = run.conditions.filter((c) => sweeps.has(c) && `${sweeps.get(c)!.family}@${sweeps.get(c)!.kind}` === setting)
        .sort((a, b) => sweeps.get(a)!.L - sweeps.get(b)!.L);
      const figures: string[] = [];
      for (const condition of points) {
        const file = join(conditionDir(run.dir, task.task_id, condition), "image.png");
        const data = run.complete.get(task.task_id)?.has(condition) ? await thumbnail(file, stripThumb) : null;
        const verdicts = verdictsOf.get(`${task.task_id}/${condition}`) ?? [];
        const marks = verdicts.map((v) =>
          `<span class="${v.pass === null ? "na" : v.pass ? "pass" : "fail"}" title="${esc(v.judge)}: ${esc(v.reason ?? v.status)}">` +
          `${v.pass === null ? "?" : v.pass ? "✓" : "✗"}</span>`
        ).join("");
        figures.push(
          `<figure data-l="${sweeps.get(condition)!.L}">` +
            (data
              ? `<a href="${esc(link(file))}"><img src="${data}" alt="${esc(condition)}" title="${esc(condition)}"></a>`
              : `<div class="missing" style="width:${stripThumb}px;height:${stripThumb}px">–</div>`) +
            `<figcaption>L ${sweeps.get(condition)!.L} ${marks}</figcaption></figure>`,
        );
      }
      strips.push(
        `<div class="strip" data-family="${esc(task.family)}" data-setting="${esc(setting)}"><b>${esc(task.task_id)}</b> · ${
          esc(setting)
        }` +
          `<div class="row">${figures.join("")}</div></div>`,
      );
    }
  }

  const grids: string[] = [];
  for (const task of run.tasks) {
    const figures: string[] = [];
    for (const [i, ref] of taskReferences(run.dir, task).entries()) {
      const data = await thumbnail(ref, thumb);
      figures.push(
        `<figure data-condition="reference">${
          data ? `<a href="${esc(link(ref))}"><img src="${data}" alt="reference ${i}"></a>` : `<div class="missing">missing</div>`
        }` +
          `<figcaption><b>reference${task.refs.length > 1 ? ` ${i}` : ""}</b></figcaption></figure>`,
      );
    }
    for (const condition of plainConditions) {
      const dir = conditionDir(run.dir, task.task_id, condition);
      const done = run.complete.get(task.task_id)?.has(condition);
      const data = done ? await thumbnail(join(dir, "image.png"), thumb) : null;
      const key = `${task.task_id}/${condition}`;
      figures.push(
        `<figure data-condition="${esc(condition)}">` +
          (data
            ? `<a href="${esc(link(join(dir, "image.png")))}"><img src="${data}" alt="${esc(condition)}"></a>`
            : `<div class="missing">not run</div>`) +
          `<figcaption><b>${esc(condition)}</b>${metricLines(metricsOf.get(key))}${
            verdictsOf.has(key) ? "<br>" + verdictLines(verdictsOf.get(key)!) : ""
          }</figcaption></figure>`,
      );
    }
    grids.push(
      `<div class="task" data-family="${esc(task.family)}"><h3>${esc(task.task_id)} <span class="meta">— ${esc(task.instruction)} · ${
        esc(task.family)
      }` +
        ` · ${esc(task.edit_type)} · seed ${task.noise_seed}</span></h3><div class="row">${figures.join("")}</div></div>`,
    );
  }
  // Attention flow and effects: per cell (condition × task family) the mean over tasks, then each task's own figures.
  const outputs = await readRunOutputs(run);
  const flowCells = aggregateAttentionFlow(outputs.attentionFlow, run.conditions);
  const effectsCells = aggregateEffects(outputs.effects, run.conditions);
  const figures = aggregateFigures(run, outputs, flowCells, effectsCells, link(tablesDir(out)));
  const options_ = (values: string[]) => values.map((v) => `<option value="${esc(v)}">${esc(v)}</option>`).join("");
  const html = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>kleinscope report — ${esc(run.dir.split("/").pop())}</title>
<style>${STYLE}</style></head><body>
<h1>Experiment report</h1>
<p class="meta">run <code>${esc(run.dir)}</code> · experiment ${esc(run.hash.slice(0, 19))}… · model <code>${esc(main.model.path)}</code>
(${esc(main.model.fingerprint.slice(0, 19))}…) · kleinscope ${esc(main.versions.kleinscope)} · ${run.tasks.length} task(s) ×
${run.conditions.length} condition(s) · ${complete} of ${expected} folder(s) complete${main.device ? ` · device ${esc(main.device)}` : ""}
· written ${esc(new Date().toISOString())}</p>
<div class="filters">family <select id="f-family"><option value="">all</option>${options_(families)}</select>
condition <select id="f-condition"><option value="">all</option>${options_(plainConditions)}</select>
<span class="meta"><span id="shown">${run.tasks.length}</span> task(s) shown</span></div>
<h2>Results</h2>
<p class="meta">Rows are interventions, columns task families; each cell is the pass rate p with its 95% Wilson interval as
p +Δ/−Δ. High means the intervention worked: questions that ask whether the output kept something are inverted.
Unparseable and failed verdicts are excluded from n and counted under each table.</p>
${paper.length ? paper.join("\n") : `<p class="meta">No judgments yet: run <code>deno task experiment judge &lt;run-dir&gt;</code>.</p>`}
${sweeps.size ? `<h2>Block sweeps</h2>\n${plots.join("\n")}\n<h3>Images over L</h3>\n${strips.join("\n")}` : ""}
${figures}
<h2>Every cell</h2>
${resultsTables(judgments, catalogue)}
<h2>Local metrics (means per cell)</h2>
${metricsTable(metrics)}
<h2>Images</h2>
${grids.join("\n")}
<script>${SCRIPT}</script>
</body></html>
`;
  return { html, tables, flowCells, effectsCells };
}

/** The report page of a run folder, as HTML text (its tables' files are written by writeReport). */
export async function buildReport(runDir: string, options: ReportOptions = {}): Promise<string> {
  return (await assembleReport(runDir, options)).html;
}

/** Build the report and write it (default <run>/report.html), with each judge's table as CSV and LaTeX, and the
 * attention-flow and effects aggregates as JSON and CSV, in tables/ beside it. Returns the page's path. */
export async function writeReport(runDir: string, options: ReportOptions = {}): Promise<string> {
  const out = resolve(options.out ?? join(runDir, "report.html"));
  const { html, tables, flowCells, effectsCells } = await assembleReport(runDir, { ...options, out });
  await writeTables(tablesDir(out), tables);
  await writeAggregates(tablesDir(out), flowCells, effectsCells);
  await writeTextAtomic(out, html);
  return out;
}

// ---- a study table over several runs -------------------------------------------------------------------------------

/** Rows and columns of a study table (a JSON file; see experiments/paper/table.json). */
export interface StudyTableDefinition {
  title?: string;
  /** Each column pools task families, e.g. {"label": "style", "families": ["style", "style_real"]}. */
  columns: { label: string; families: string[] }[];
  /** Each row is one or more condition names (the same name in several runs is one row). */
  rows: { label: string; conditions: string[] }[];
}

function parseStudyTable(raw: unknown, where: string): StudyTableDefinition {
  const fail = (field: string, message: string): never => {
    throw new Error(`${where}: ${field}: ${message}`);
  };
  if (!raw || typeof raw !== "object" || Array.isArray(raw)) fail("(root)", "expected an object");
  const o = raw as Record<string, unknown>;
  for (const k of Object.keys(o)) if (!["title", "columns", "rows"].includes(k)) fail(k, "unknown field (title, columns, rows)");
  if (o.title !== undefined && typeof o.title !== "string") fail("title", "expected text");
  const list = (field: "columns" | "rows", key: "families" | "conditions") => {
    const v = o[field];
    if (!Array.isArray(v) || !v.length) fail(field, `expected a non-empty list of {label, ${key}}`);
    const labels = new Set<string>();
    return (v as unknown[]).map((e, i) => {
      const x = e as Record<string, unknown>;
      const names = x?.[key];
      if (!x || typeof x !== "object" || typeof x.label !== "string" || !x.label) {
        fail(`${field}[${i}].label`, "expected a non-empty label");
      }
      if (!Array.isArray(names) || !names.length || names.some((n) => typeof n !== "string" || !n)) {
        fail(`${field}[${i}].${key}`, "expected a non-empty list of names");
      }
      for (const k of Object.keys(x)) if (k !== "label" && k !== key) fail(`${field}[${i}].${k}`, `unknown field (label, ${key})`);
      if (labels.has(x.label as string)) fail(`${field}[${i}].label`, `"${printable(x.label as string)}" is used twice`);
      labels.add(x.label as string);
      return { label: x.label as string, names: names as string[] };
    });
  };
  const columns = list("columns", "families").map((c) => ({ label: c.label, families: c.names }));
  const rows = list("rows", "conditions").map((r) => ({ label: r.label, conditions: r.names }));
  for (const [field, entries] of [["columns", columns.flatMap((c) => c.families)], ["rows", rows.flatMap((r) => r.conditions)]] as const) {
    const dup = entries.find((n, i) => entries.indexOf(n) !== i);
    if (dup !== undefined) fail(field, `"${printable(dup)}" is in two ${field}`);
  }
  return { title: o.title as string | undefined, columns, rows };
}

export async function readStudyTable(path: string): Promise<StudyTableDefinition> {
  return parseStudyTable(await readJsonFile<unknown>(path), path);
}

export interface StudyTableResult {
  /** One per judge, rows and columns labelled as the definition says. */
  tables: { base: string; table: PaperTable }[];
  /** Per run: verdicts that fall in no row or no column (left out). */
  leftOut: { run: string; verdicts: number }[];
  html: string;
}

/** The study table of several runs' verdicts (see the header). The same verdict (judge, task, condition, question)
 * in two runs is refused: a run given twice, or two runs of one cell, would count twice. */
export async function studyTable(definition: StudyTableDefinition, runDirs: string[]): Promise<StudyTableResult> {
  if (!runDirs.length) throw new Error("a study table needs at least one run folder");
  const rowOf = new Map(definition.rows.flatMap((r) => r.conditions.map((c) => [c, r.label] as const)));
  const columnOf = new Map(definition.columns.flatMap((c) => c.families.map((f) => [f, c.label] as const)));
  const byJudge = new Map<string, Judgment[]>();
  const seen = new Map<string, string>();
  const leftOut: { run: string; verdicts: number }[] = [];
  for (const dir of runDirs) {
    const run = await readRunFolder(resolve(dir));
    let skipped = 0;
    for (const [name, verdicts] of await readJudgments(run.dir)) {
      for (const v of verdicts) {
        const row = rowOf.get(v.condition), column = columnOf.get(v.family);
        if (row === undefined || column === undefined) {
          skipped++;
          continue;
        }
        const key = JSON.stringify([name, v.task_id, v.condition, v.template]);
        const other = seen.get(key);
        if (other !== undefined) {
          throw new Error(
            `judge ${printable(name)} answered ${printable(v.task_id)} / ${printable(v.condition)} / ${printable(v.template)} in both ` +
              `${printable(other)} and ${printable(run.dir)}; give each run once`,
          );
        }
        seen.set(key, run.dir);
        if (!byJudge.has(name)) byJudge.set(name, []);
        byJudge.get(name)!.push({ ...v, condition: row, family: column });
      }
    }
    leftOut.push({ run: run.dir, verdicts: skipped });
  }
  const tables: { base: string; table: PaperTable }[] = [];
  const parts: string[] = [];
  const catalogue = new Map(Object.entries(BUILTIN_TEMPLATES));
  for (const [name, verdicts] of byJudge) {
    const table = paperTable(name, verdicts, {
      conditions: definition.rows.map((r) => r.label),
      families: definition.columns.map((c) => c.label),
    });
    const base = judgeFileName(name).replace(/\.jsonl$/, "");
    tables.push({ base, table });
    parts.push(
      `<h2>Judge ${esc(name)}</h2>${isStub(verdicts) ? STUB_NOTE : ""}${paperTableHtml(table, `tables/${base}`, (p) => p, catalogue)}`,
    );
  }
  const title = definition.title ?? "Study table";
  const html = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>${esc(title)}</title><style>${STYLE}</style></head><body>
<h1>${esc(title)}</h1>
<p class="meta">Rows are interventions, columns task families; each cell is the pass rate p with its 95% Wilson interval as
p +Δ/−Δ (high: the intervention worked). From ${runDirs.length} run(s): ${
    leftOut.map((l) => `<code>${esc(l.run)}</code>${l.verdicts ? ` (${l.verdicts} verdict(s) in no row or column)` : ""}`).join(", ")
  } · written ${esc(new Date().toISOString())}</p>
${parts.length ? parts.join("\n") : `<p class="meta">No verdicts in the table's rows and columns: judge the runs first.</p>`}
</body></html>
`;
  return { tables, leftOut, html };
}

/** Write a study table's page (`out`, an .html file) and its CSV and LaTeX files in tables/ beside it. */
export async function writeStudyTable(definitionFile: string, runDirs: string[], out: string): Promise<StudyTableResult> {
  const result = await studyTable(await readStudyTable(definitionFile), runDirs);
  await writeTables(tablesDir(resolve(out)), result.tables);
  await writeTextAtomic(resolve(out), result.html);
  return result;
}
