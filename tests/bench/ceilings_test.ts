import assert from "node:assert/strict";
import { getGpu } from "../../runtime/device.ts";
import { formatCeilings, runCeilings } from "../../bench/ceilings.ts";
import { runCommand } from "../../bench/common.ts";

const RUN = new URL("../../bench/run.ts", import.meta.url).pathname;

Deno.test("ceilings: every microbenchmark runs through the runtime, checks its result and reports a rate", async () => {
  const gpu = await getGpu();
  const report = await runCeilings(gpu, { small: true, iters: 2 });
  const names = ["f32 FMA", ...(gpu.hasF16 ? ["f16 FMA (packed)"] : []), "workgroup memory", "global memory"];
  assert.deepEqual(report.ceilings.map((c) => c.name), names);
  assert.deepEqual(report.skipped.length, gpu.hasF16 ? 0 : 1);
  for (const c of report.ceilings) {
    assert.ok(c.value > 0 && Number.isFinite(c.value) && c.medianMs > 0, JSON.stringify(c));
    assert.equal(c.unit, c.name.includes("FMA") ? "TFLOP/s" : "GB/s");
  }
  const text = formatCeilings(report);
  for (const name of names) assert.match(text, new RegExp(`^${name.replace(/[()]/g, "\\$&")}\\s+[\\d.e+-]+\\s+(TFLOP/s|GB/s)`, "m"));
});

Deno.test("ceilings: a bad option is refused with exit code 2 before any GPU work", async () => {
  const r = await runCommand(Deno.execPath(), ["run", "-A", RUN, "ceilings", "--iters", "0"]);
  assert.equal(r.code, 2, r.stderr);
  assert.match(r.stderr, /error: --iters "0" is not a positive whole number/);
});
