// Wilson intervals against values computed another way (the roots of the score-test quadratic) and against published
// ones; per-cell pass rates; Cohen's κ on known tables; block-sweep metadata and series.

import assert from "node:assert/strict";
import {
  cellStats,
  judgeAgreement,
  kappaFromTable,
  sweepOf,
  type SweepPoint,
  sweepSeries,
  type VerdictLike,
  wilsonInterval,
  Z_95,
} from "../../experiments/stats.ts";

/** The Wilson interval as the set of p with (p̂ − p)² ≤ z²·p(1 − p)/n: the roots of
 * (1 + z²/n)·p² − (2p̂ + z²/n)·p + p̂² = 0. */
function wilsonByQuadratic(k: number, n: number, z: number): [number, number] {
  const ph = k / n, a = 1 + (z * z) / n, b = -(2 * ph + (z * z) / n), c = ph * ph;
  const disc = Math.sqrt(b * b - 4 * a * c);
  return [(-b - disc) / (2 * a), (-b + disc) / (2 * a)];
}

Deno.test("Wilson interval: closed form equals the score-test roots on 0/n, n/n and k/n", () => {
  for (const [k, n] of [[0, 1], [0, 10], [10, 10], [1, 1], [3, 10], [7, 13], [50, 100], [1, 2875], [2874, 2875]]) {
    const w = wilsonInterval(k, n);
    const [lo, hi] = wilsonByQuadratic(k, n, Z_95);
    assert.ok(Math.abs(w.low - Math.max(0, lo)) < 1e-12, `${k}/${n} low ${w.low} vs ${lo}`);
    assert.ok(Math.abs(w.high - Math.min(1, hi)) < 1e-12, `${k}/${n} high ${w.high} vs ${hi}`);
    assert.equal(w.rate, k / n);
    assert.ok(w.low <= w.rate && w.rate <= w.high);
  }
  // 0/n starts at 0 and n/n ends at 1 (not degenerate as the normal approximation would be).
  assert.equal(wilsonInterval(0, 10).low, 0);
  assert.ok(Math.abs(wilsonInterval(0, 10).high - 0.27753) < 1e-5);
  assert.ok(Math.abs(wilsonInterval(10, 10).low - 0.72247) < 1e-5);
  assert.equal(wilsonInterval(10, 10).high, 1);
  // Published example: 5/10 → [0.2366, 0.7634].
  assert.ok(Math.abs(wilsonInterval(5, 10).low - 0.23659) < 1e-5);
  assert.ok(Math.abs(wilsonInterval(5, 10).high - 0.76341) < 1e-5);
  const none = wilsonInterval(0, 0);
  assert.ok(Number.isNaN(none.rate));
  assert.deepEqual([none.low, none.high], [0, 1]);
  assert.throws(() => wilsonInterval(3, 2), /need 0 ≤ k ≤ n/);
  assert.throws(() => wilsonInterval(1.5, 2), /whole numbers/);
});

function v(task: string, condition: string, answer: "yes" | "no" | null, invert = false, family = "color", template = "q"): VerdictLike {
  return { task_id: task, condition, family, template, answer, pass: answer === null ? null : (answer === "yes") !== invert };
}

Deno.test("cells: pass follows the template's polarity; unparseable and failed verdicts are left out of n", () => {
  const verdicts = [
    v("a", "baseline", "yes", true),
    v("b", "baseline", "yes", true),
    v("c", "baseline", "no", true),
    v("d", "baseline", null, true),
    v("a", "ko", "no", true),
    v("b", "ko", "no", true),
    v("c", "ko", null, true),
    v("a", "ko", "yes", false, "style", "lost_style"),
  ];
  const cells = cellStats(verdicts);
  assert.equal(cells.length, 3);
  const base = cells.find((c) => c.condition === "baseline")!;
  assert.deepEqual([base.n, base.passes, base.yes, base.excluded], [3, 1, 2, 1]);
  assert.deepEqual([base.low, base.high], [wilsonInterval(1, 3).low, wilsonInterval(1, 3).high]);
  const ko = cells.find((c) => c.condition === "ko" && c.family === "color")!;
  assert.deepEqual([ko.n, ko.passes, ko.rate, ko.excluded], [2, 2, 1, 1]);
  const style = cells.find((c) => c.family === "style")!;
  assert.deepEqual([style.template, style.n, style.passes], ["lost_style", 1, 1]);
});

Deno.test("agreement: raw agreement and Cohen's κ on known tables", () => {
  // 50 items: 20 yes/yes, 5 yes/no, 10 no/yes, 15 no/no → pₒ = 0.7, pₑ = 0.5, κ = 0.4.
  const k = kappaFromTable({ yy: 20, yn: 5, ny: 10, nn: 15 });
  assert.equal(k.n, 50);
  assert.ok(Math.abs(k.agreement - 0.7) < 1e-12);
  assert.ok(Math.abs(k.kappa - 0.4) < 1e-12);
  // Perfect agreement: κ = 1; systematic disagreement on a balanced table: κ = −1.
  assert.equal(kappaFromTable({ yy: 7, yn: 0, ny: 0, nn: 3 }).kappa, 1);
  assert.equal(kappaFromTable({ yy: 0, yn: 5, ny: 5, nn: 0 }).kappa, -1);
  // 45/15/25/15 (another textbook table): pₒ = 0.6, pₑ = 0.54, κ ≈ 0.1304.
  assert.ok(Math.abs(kappaFromTable({ yy: 45, yn: 15, ny: 25, nn: 15 }).kappa - 0.06 / 0.46) < 1e-12);
  // One answer throughout from both: pₑ = 1, κ undefined.
  assert.ok(Number.isNaN(kappaFromTable({ yy: 4, yn: 0, ny: 0, nn: 0 }).kappa));

  // From verdict lists: items matched by (task, condition, template); unanswered ones are left out.
  const first = [v("a", "x", "yes"), v("b", "x", "yes"), v("c", "x", "no"), v("d", "x", "no"), v("e", "x", null)];
  const second = [v("a", "x", "yes"), v("b", "x", "no"), v("c", "x", "no"), v("d", "x", "no"), v("e", "x", "yes"), v("f", "x", "yes")];
  const a = judgeAgreement(first, second);
  assert.deepEqual(a.table, { yy: 1, yn: 1, ny: 0, nn: 2 });
  assert.equal(a.n, 4);
  assert.equal(a.agreement, 0.75);
  assert.ok(Math.abs(a.kappa - 0.5) < 1e-12); // pₑ = ½·¼ + ½·¾ = ½
});

Deno.test("block sweeps: condition metadata read and checked; series per task family, question and setting, by L", () => {
  assert.deepEqual(sweepOf({ name: "ko@suffix:3", sweep: { family: "ko", kind: "suffix", L: 3 } }), { family: "ko", kind: "suffix", L: 3 });
  assert.equal(sweepOf({ name: "baseline" }), undefined);
  for (
    const bad of [{ family: "ko", kind: "suffix", L: -1 }, { family: "ko", kind: "", L: 1 }, { family: "ko", kind: "s", L: 1.5 }, "ko@s:1"]
  ) {
    assert.throws(() => sweepOf({ name: "x", sweep: bad }), /condition x: "sweep" must be \{family, kind, L\}/);
  }
  const sweeps = new Map<string, SweepPoint>();
  for (const L of [0, 1, 2, 10]) sweeps.set(`ko@suffix:${L}`, { family: "ko", kind: "suffix", L });
  for (const L of [0, 1]) sweeps.set(`ko@prefix:${L}`, { family: "ko", kind: "prefix", L });
  // Verdicts given out of order, with a plain condition and an unanswered one mixed in.
  const verdicts = [
    v("a", "ko@suffix:10", "yes"),
    v("a", "ko@suffix:0", "yes"),
    v("b", "ko@suffix:0", "no"),
    v("a", "ko@suffix:2", null),
    v("a", "ko@suffix:1", "no"),
    v("a", "ko@prefix:1", "yes"),
    v("a", "ko@prefix:0", "yes"),
    v("a", "baseline", "yes"),
    v("a", "ko@suffix:0", "yes", false, "style"),
  ];
  const series = sweepSeries(cellStats(verdicts), sweeps);
  assert.deepEqual(series.map((s) => [s.taskFamily, s.setting, s.points.map((p) => p.L)]), [
    ["color", "ko@suffix", [0, 1, 2, 10]],
    ["color", "ko@prefix", [0, 1]],
    ["style", "ko@suffix", [0]],
  ]);
  const s0 = series[0].points;
  assert.deepEqual(s0.map((p) => [p.n, p.passes]), [[2, 1], [1, 0], [0, 0], [1, 1]]);
  assert.deepEqual([s0[0].low, s0[0].high], [wilsonInterval(1, 2).low, wilsonInterval(1, 2).high]);
  assert.equal(s0[2].excluded, 1);
});
