// The study's results tables: rows are interventions (conditions), columns are task families, each cell the pass rate
// with its 95% Wilson interval written as p +Δ/−Δ (Δ up to the upper bound, down to the lower one). A pass means
// "the intervention worked" — questions of polarity "keep" are already inverted in the verdicts — so high is always
// the intervention's effect. Unparseable and failed verdicts are left out of every n and counted per table.
//
// One table per judge, written as HTML (in the report), CSV (the layout as shown, plus n per cell), a long CSV with
// the numbers, and LaTeX (booktabs; p^{+Δ}_{−Δ}).

import { join } from "node:path";
import { writeTextAtomic } from "./files.ts";
import { type CellStats, cellStats, type VerdictLike } from "./stats.ts";

export interface TableRow {
  label: string;
  condition: string;
  /** Set when the condition's cells use more than one question in some family, so each gets its own row. */
  template?: string;
  /** One per column; undefined where the condition has no verdicts for the family. */
  cells: (CellStats | undefined)[];
}

export interface PaperTable {
  judge: string;
  /** Task families. */
  columns: string[];
  rows: TableRow[];
  /** Verdicts left out (unparseable or failed). */
  excluded: number;
}

export interface TableOptions {
  /** Row order (default: first appearance). Conditions not listed come after. */
  conditions?: string[];
  /** Column order (default: sorted). */
  families?: string[];
  /** Conditions left out (e.g. the points of a block sweep, plotted instead). */
  skip?: Set<string>;
}

export function paperTable(judge: string, verdicts: (VerdictLike & { status?: string })[], options: TableOptions = {}): PaperTable {
  const kept = verdicts.filter((v) => !options.skip?.has(v.condition));
  const cells = cellStats(kept);
  const columns = options.families?.filter((f) => cells.some((c) => c.family === f)) ??
    [...new Set(cells.map((c) => c.family))].sort();
  for (const c of cells) if (!columns.includes(c.family)) columns.push(c.family);
  const order = [...(options.conditions ?? []), ...cells.map((c) => c.condition)];
  const conditions = [...new Set(order)].filter((name) => cells.some((c) => c.condition === name));
  const rows: TableRow[] = [];
  for (const condition of conditions) {
    const own = cells.filter((c) => c.condition === condition);
    const split = columns.some((f) => own.filter((c) => c.family === f).length > 1);
    if (!split) {
      rows.push({ label: condition, condition, cells: columns.map((f) => own.find((c) => c.family === f)) });
      continue;
    }
    for (const template of [...new Set(own.map((c) => c.template))]) {
      rows.push({
        label: `${condition} · ${template}`,
        condition,
        template,
        cells: columns.map((f) => own.find((c) => c.family === f && c.template === template)),
      });
    }
  }
  return { judge, columns, rows, excluded: kept.filter((v) => v.answer === null || v.pass === null).length };
}

/** "0.62 +0.08/−0.09"; "–" for an empty cell. */
export function formatCell(c: CellStats | undefined, digits = 2): string {
  if (!c || c.n === 0) return "–";
  return `${c.rate.toFixed(digits)} +${(c.high - c.rate).toFixed(digits)}/−${(c.rate - c.low).toFixed(digits)}`;
}

function csvField(v: string | number): string {
  const s = String(v);
  return /[",\n\r]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
}

const csvLine = (fields: (string | number)[]) => fields.map(csvField).join(",") + "\n";

/** The table as shown: a column per family (p +Δ/−Δ) followed by its n. */
export function tableCsv(t: PaperTable): string {
  let out = csvLine(["intervention", ...t.columns.flatMap((f) => [f, `${f} n`])]);
  for (const r of t.rows) out += csvLine([r.label, ...r.cells.flatMap((c) => [formatCell(c), c ? c.n : 0])]);
  return out;
}

/** One line per cell with the numbers. */
export function tableCellsCsv(t: PaperTable): string {
  let out = csvLine(["judge", "condition", "template", "family", "n", "passes", "excluded", "rate", "low", "high"]);
  for (const r of t.rows) {
    for (const c of r.cells) {
      if (!c) continue;
      out += csvLine([
        t.judge,
        c.condition,
        c.template,
        c.family,
        c.n,
        c.passes,
        c.excluded,
        ...[c.rate, c.low, c.high].map((v) => Number.isFinite(v) ? v.toFixed(6) : ""),
      ]);
    }
  }
  return out;
}

const TEX_ESCAPES: Record<string, string> = {
  "\\": "\\textbackslash{}",
  "&": "\\&",
  "%": "\\%",
  "$": "\\$",
  "#": "\\#",
  "_": "\\_",
  "{": "\\{",
  "}": "\\}",
  "~": "\\textasciitilde{}",
  "^": "\\textasciicircum{}",
};

export const texEscape = (s: string) => s.replace(/[\\&%$#_{}~^]/g, (c) => TEX_ESCAPES[c]);

/** A booktabs tabular; cells as $p^{+Δ}_{-Δ}$. */
export function tableLatex(t: PaperTable, digits = 2): string {
  const cell = (c: CellStats | undefined) =>
    !c || c.n === 0 ? "--" : `$${c.rate.toFixed(digits)}^{+${(c.high - c.rate).toFixed(digits)}}_{-${(c.rate - c.low).toFixed(digits)}}$`;
  const lines = [
    `% Pass rates ("the intervention worked") with 95% Wilson intervals; judge ${texEscape(t.judge)}; ${t.excluded} verdict(s) excluded.`,
    `\\begin{tabular}{l${"c".repeat(t.columns.length)}}`,
    "\\toprule",
    `Intervention & ${t.columns.map(texEscape).join(" & ")} \\\\`,
    "\\midrule",
    ...t.rows.map((r) => `${texEscape(r.label)} & ${r.cells.map(cell).join(" & ")} \\\\`),
    "\\bottomrule",
    "\\end{tabular}",
  ];
  return lines.join("\n") + "\n";
}

/** The files of a judge's table, by base name (no extension). */
export function tableFiles(base: string): { csv: string; cells: string; tex: string } {
  return { csv: `${base}.csv`, cells: `${base}_cells.csv`, tex: `${base}.tex` };
}

/** Write every table's CSV, cells CSV and LaTeX into `dir`; returns the paths. */
export async function writeTables(dir: string, tables: { base: string; table: PaperTable }[]): Promise<string[]> {
  const written: string[] = [];
  for (const { base, table } of tables) {
    const f = tableFiles(base);
    for (const [name, text] of [[f.csv, tableCsv(table)], [f.cells, tableCellsCsv(table)], [f.tex, tableLatex(table)]]) {
      await writeTextAtomic(join(dir, name), text);
      written.push(join(dir, name));
    }
  }
  return written;
}
