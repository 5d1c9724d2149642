// `deno task report <run-dir> [--out report.html]`: one self-contained HTML page of a run's results.

import { parseArgs } from "node:util";
import { tablesDir, writeReport, writeStudyTable } from "../experiments/report.ts";
import { integerOption, parseOrUsageError, UsageError, withUsageErrors } from "./common.ts";

const HELP = `usage: deno task report <run-dir> [--out FILE.html] [--thumb PX] [--strip-thumb PX] [--baseline NAME]
       deno task report --table TABLE.json <run-dir>… --out FILE.html

Writes one HTML page (default <run-dir>/report.html) and, beside it, tables/<judge>.csv, <judge>_cells.csv and
<judge>.tex for every judge that ran (deno task experiment judge):
  - the study's table per judge: rows = interventions, columns = task families, cells = pass rate with its 95%
    Wilson interval as p +Δ/−Δ (a pass = the intervention worked; "did it keep" questions inverted; unparseable and
    failed verdicts left out of n and counted);
  - block sweeps (conditions with "sweep" metadata): pass rate against L, a line per setting with its Wilson band
    (SVG), and per-task image strips over L (thumbnails of --strip-thumb px, default 72);
  - every cell in detail, judge agreement (raw and Cohen's κ), local metrics per cell, and an image grid per task
    with metrics, verdicts and the judge's reasons beside each image, filterable by family and condition.
Images are inline PNG thumbnails (longest side --thumb, default 160 px), so the page stands alone; each links to
its full-size file relative to the page.

--table: one table per judge over several runs (the study's layout, e.g. experiments/paper/table.json: rows name
conditions, columns pool task families), written to --out with tables/<judge>.csv, _cells.csv and .tex beside it.`;

export function main(args: string[]): Promise<number> {
  return withUsageErrors("report", async () => {
    const { values, positionals } = parseOrUsageError(() =>
      parseArgs({
        args,
        allowPositionals: true,
        options: {
          out: { type: "string" },
          thumb: { type: "string" },
          "strip-thumb": { type: "string" },
          baseline: { type: "string" },
          table: { type: "string" },
          help: { type: "boolean", short: "h" },
        },
      })
    );
    if (values.help) {
      console.log(HELP);
      return 0;
    }
    if (values.table !== undefined) {
      if (!positionals.length) throw new UsageError("--table: give the run folders");
      if (!values.out) throw new UsageError("--table: --out FILE.html is required");
      const r = await writeStudyTable(values.table, positionals, values.out);
      console.log(`wrote ${values.out} (${r.tables.length} judge table(s) in ${tablesDir(values.out)})`);
      return 0;
    }
    if (positionals.length !== 1) throw new UsageError("give one run folder");
    const path = await writeReport(positionals[0], {
      out: values.out,
      thumb: integerOption("thumb", values.thumb, 16),
      stripThumb: integerOption("strip-thumb", values["strip-thumb"], 8),
      baseline: values.baseline,
    });
    console.log(`wrote ${path} (tables in ${tablesDir(path)})`);
    return 0;
  });
}
