import assert from "node:assert/strict";
import { runConformance } from "../../conformance/runner.ts";
import { scheduleKind } from "../../conformance/schedule.ts";
import { empiricalMu, flowSchedule } from "../../model/sampler.ts";

const FIXTURES = new URL("../fixtures/klein-tiny", import.meta.url).pathname;

Deno.test("every schedule case of the reference passes", async () => {
  const s = await runConformance(FIXTURES, [scheduleKind], { only: ["schedule"] });
  assert.equal(s.failed, 0, s.results.filter((r) => r.verdict === "fail").map((r) => `${r.name}: ${r.notes.join("; ")}`).join("\n"));
  assert.ok(s.passed >= 8, `only ${s.passed} schedule cases ran`);
});

Deno.test("μ switches to the linear branch above 4300 noise tokens", () => {
  assert.ok(Math.abs(empiricalMu(4301, 4) - (0.00016927 * 4301 + 0.45666666)) < 1e-12);
  assert.notEqual(empiricalMu(4300, 4), 0.00016927 * 4300 + 0.45666666);
});

Deno.test("schedule ends at zero, decreases, and timesteps are 1000·σ", () => {
  const s = flowSchedule(4, 1024);
  assert.equal(s.sigmas.length, 5);
  assert.equal(s.sigmas[4], 0);
  for (let i = 1; i < 5; i++) assert.ok(s.sigmas[i] < s.sigmas[i - 1]);
  s.timesteps.forEach((t, i) => assert.equal(t, Math.fround(s.sigmas[i] * 1000)));
});

Deno.test("schedule refuses bad step counts", () => {
  assert.throws(() => flowSchedule(0, 10), /steps must be a positive integer/);
  assert.throws(() => flowSchedule(2.5, 10), /steps must be a positive integer/);
});

Deno.test("a case whose expected tensor is wrong fails with a note", async () => {
  const wrong = {
    ...scheduleKind,
    run: async (ctx: Parameters<typeof scheduleKind.run>[0]) => {
      const out = await scheduleKind.run(ctx);
      (out.sigmas as Float64Array)[1] += 1e-3;
      return out;
    },
  };
  const s = await runConformance(FIXTURES, [wrong], { cases: ["schedule_4steps_1024tok"] });
  assert.equal(s.failed, 1);
  assert.match(s.results[0].notes.join(" "), /sigmas: rel L2/);
});
