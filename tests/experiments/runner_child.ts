// A runner process for the kill and concurrency tests: runs an experiment with the synthetic executor, printing
// every log line to stderr. `deno run -A runner_child.ts <experiment.json> [--shard k/n] [--pause-ms N]`.
// Exit codes as `deno task experiment`: 0 done, 1 failed tasks or an error (one line on stderr).

import { parseArgs } from "node:util";
import { readExperiment } from "../../experiments/experiment.ts";
import { parseShard, runExperiment } from "../../experiments/runner.ts";
import { syntheticExecutor } from "./synthetic_executor.ts";

const { values, positionals } = parseArgs({
  args: Deno.args,
  allowPositionals: true,
  options: { shard: { type: "string" }, "pause-ms": { type: "string" } },
});
try {
  const s = await runExperiment(await readExperiment(positionals[0]), {
    shard: values.shard ? parseShard(values.shard) : undefined,
    executor: syntheticExecutor({ pauseMs: Number(values["pause-ms"] ?? 0) }),
    log: (l) => console.error(l),
  });
  console.error(`done: ${s.ranNow} run now, ${s.alreadyComplete} already complete, ${s.failed.length} failed`);
  Deno.exit(s.failed.length ? 1 : 0);
} catch (e) {
  console.error(`error: ${(e as Error).message}`);
  Deno.exit(1);
}
