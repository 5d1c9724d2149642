// `deno task report <run-dir> [--out report.html]`: one self-contained HTML page of a run's results.

import { parseArgs } from "node:util";
import { writeReport } from "../experiments/report.ts";
import { integerOption, parseOrUsageError, UsageError, withUsageErrors } from "./common.ts";

const HELP = `usage: deno task report <run-dir> [--out FILE.html] [--thumb PX] [--baseline NAME]

Writes one HTML page (default <run-dir>/report.html): pass rates with 95% Wilson intervals per condition × family ×
question for every judge that ran (deno task experiment judge), judge agreement (raw and Cohen's κ), local metrics
per cell, and an image grid per task (references, then every condition) with metrics and verdicts beside each
image, filterable by family and condition. Images are inline PNG thumbnails (longest side --thumb, default 160 px),
so the page stands alone; each links to its full-size file relative to the page.`;

export function main(args: string[]): Promise<number> {
  return withUsageErrors("report", async () => {
    const { values, positionals } = parseOrUsageError(() =>
      parseArgs({
        args,
        allowPositionals: true,
        options: {
          out: { type: "string" },
          thumb: { type: "string" },
          baseline: { type: "string" },
          help: { type: "boolean", short: "h" },
        },
      })
    );
    if (values.help) {
      console.log(HELP);
      return 0;
    }
    if (positionals.length !== 1) throw new UsageError("give one run folder");
    const path = await writeReport(positionals[0], {
      out: values.out,
      thumb: integerOption("thumb", values.thumb, 16),
      baseline: values.baseline,
    });
    console.log(`wrote ${path}`);
    return 0;
  });
}
