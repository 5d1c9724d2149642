// `deno task tune [--budget SECONDS] [--cache-dir DIR]`: tune the kernel tiles for this machine's adapter again and
// rewrite its cache file (the same tuning that runs by itself the first time an adapter is used).

import { parseArgs } from "node:util";
import { getGpu } from "../runtime/device.ts";
import { printable } from "../runtime/printable.ts";
import { applyDeviceTuning, DEFAULT_TUNING_BUDGET_MS, tuningCacheFile, userCacheDir } from "../kernels/tuning.ts";
import { displayPath, numberOption, parseOrUsageError, UsageError, withUsageErrors } from "./common.ts";

const HELP = `usage: deno task tune [--budget SECONDS] [--cache-dir DIR]

Times the candidate tiles of matmul and attention on the shapes FLUX.2 klein spends its time in, checks every
candidate's output against a float64 reference on sampled rows, and writes the fastest per shape class to this
adapter's cache file (one per adapter and driver, in $XDG_CACHE_HOME/kleinscope or ~/.cache/kleinscope). Every
command uses that file from then on. The same tuning runs by itself the first time an adapter is used (unless
KLEINSCOPE_NO_TUNE=1); this command runs it again, e.g. after a driver update changed nothing in the name.
Software adapters (llvmpipe) are not tuned: their tiles follow a rule.

  --budget SECONDS   stop starting new measurements after this long (default ${DEFAULT_TUNING_BUDGET_MS / 1000})
  --cache-dir DIR    folder of the cache files (default ${displayPath(safeCacheDir())})
  -h, --help         this text

example: deno task tune --budget 300`;

function safeCacheDir(): string {
  try {
    return userCacheDir();
  } catch {
    return "$XDG_CACHE_HOME/kleinscope";
  }
}

export async function main(args: string[]): Promise<number> {
  return await withUsageErrors("tune", async () => {
    const { values, positionals } = parseOrUsageError(() =>
      parseArgs({
        args,
        strict: true,
        allowPositionals: true,
        options: { budget: { type: "string" }, "cache-dir": { type: "string" }, help: { type: "boolean", short: "h" } },
      })
    );
    if (values.help) {
      console.log(HELP);
      return 0;
    }
    if (positionals.length) throw new UsageError(`unexpected argument "${printable(positionals[0])}"`);
    const budget = numberOption("budget", values.budget);
    if (budget !== undefined && !(budget > 0)) throw new UsageError(`--budget must be a positive number of seconds, got ${values.budget}`);
    const gpu = await getGpu();
    console.log(
      `adapter: ${printable(gpu.caps.description)} (${gpu.caps.deviceClass}${gpu.caps.driver ? `, driver ${gpu.caps.driver}` : ""})`,
    );
    if (gpu.caps.software) {
      console.log("a software adapter: its tiles follow a rule (small tiles that compile quickly); nothing to tune");
      return 0;
    }
    const cacheDir = values["cache-dir"];
    const outcome = await applyDeviceTuning(gpu, {
      mode: "force",
      cacheDir,
      budgetMs: budget === undefined ? undefined : budget * 1000,
      log: (line) => console.log(line),
    });
    const failed = outcome.measurements.filter((m) => m.ms === null);
    if (failed.length) console.log(`${failed.length} candidate(s) failed their check or did not run (listed above)`);
    console.log(`tiles: ${JSON.stringify(outcome.tiles)}`);
    console.log(`cache file: ${displayPath(outcome.file ?? tuningCacheFile(gpu.caps, cacheDir))}`);
    return 0;
  });
}
