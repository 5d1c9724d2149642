// Every case of the reference data, through the same runner as `deno task conformance`.

import assert from "node:assert/strict";
import { runConformance } from "../../conformance/runner.ts";
import { conformanceKinds } from "../../conformance/kinds.ts";
import { releaseShared } from "../../conformance/models.ts";

const FIXTURES = new URL("../fixtures/klein-tiny", import.meta.url).pathname;

Deno.test({
  name: "every reference case passes within the reference's tolerances (no kind skipped)",
  sanitizeResources: false,
  async fn() {
    const lines: string[] = [];
    const s = await runConformance(FIXTURES, await conformanceKinds(), { log: (l) => lines.push(l) });
    await releaseShared();
    console.log(lines.join("\n"));
    assert.equal(s.failed, 0, "failed cases");
    assert.equal(s.skipped, 0, `skipped kinds: ${s.skippedKinds.join(", ")}`);
    assert.equal(s.passed, 36);
  },
});
