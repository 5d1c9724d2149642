// `deno task audit`: the matmul family on this adapter, whose tiles beyond its limits are counted as skipped, apart
// from the cases that passed; an unknown family is refused.

import assert from "node:assert/strict";
import { runCommand } from "../../bench/common.ts";

const CLI = new URL("../../cli.ts", import.meta.url).pathname;

Deno.test("audit: passed, failed and skipped cases are counted apart; an unknown family is refused", async () => {
  const run = await runCommand(Deno.execPath(), ["run", "-A", CLI, "audit", "--only", "matmul"]);
  assert.equal(run.code, 0, run.stderr);
  const lines = run.stdout.trim().split("\n");
  const rows = lines.filter((l) => l.startsWith("matmul "));
  const skipped = rows.filter((l) => / skipped \(/.test(l)).length, ok = rows.filter((l) => / ok\s*$/.test(l)).length;
  assert.equal(skipped + ok, rows.length, "every case passed or was skipped");
  const tail = skipped ? `, ${skipped} skipped (see the table)` : "";
  assert.equal(lines.at(-1), `${ok} passed, 0 failed${tail}`);
  const bad = await runCommand(Deno.execPath(), ["run", "-A", CLI, "audit", "--only", "matmul,nope"]);
  assert.notEqual(bad.code, 0);
  assert.match(bad.stderr, /unknown kernel family "nope"/);
});
