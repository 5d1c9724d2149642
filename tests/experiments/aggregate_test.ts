// Aggregation of attention flow and effects over the tasks of a cell (condition × task family): means and 95%
// intervals checked against values computed here from the hand-made files (Student t quantiles from published
// tables), tasks with other groups left out and counted, undefined relL2 values left out of n, cells kept apart, and
// the JSON and CSV files read back.

import assert from "node:assert/strict";
import { join } from "node:path";
import {
  AGGREGATE_FILES,
  aggregateAttentionFlow,
  aggregateEffects,
  type TaskOutput,
  writeAggregates,
} from "../../experiments/aggregate.ts";
import { parseAttentionFlowJson } from "../../experiments/flow_plots.ts";
import { parseEffectsJson } from "../../experiments/effects_plots.ts";
import { meanInterval, studentTCdf, studentTQuantile, Z_95 } from "../../experiments/stats.ts";
import type { AttentionFlowJson } from "../../interventions/attention_flow.ts";
import type { EffectsJson } from "../../studies/effects.ts";

/** 0.975 quantiles of Student t (published tables, e.g. NIST/SEMATECH e-Handbook 1.3.6.7.2). */
const T_975: Record<number, number> = {
  1: 12.7062047,
  2: 4.30265273,
  3: 3.18244631,
  4: 2.77644511,
  9: 2.26215716,
  19: 2.09302405,
  28: 2.04840714,
};

const close = (a: number, b: number, tol: number, what: string) => assert.ok(Math.abs(a - b) <= tol, `${what}: ${a} vs ${b}`);

/** Mean and 95% interval of n < 30 values, computed directly: mean ± t(n − 1)·s/√n. */
function expected(values: number[]): { mean: number; low: number; high: number } {
  const n = values.length, mean = values.reduce((a, b) => a + b, 0) / n;
  const s = Math.sqrt(values.reduce((a, v) => a + (v - mean) ** 2, 0) / (n - 1));
  const half = (T_975[n - 1] * s) / Math.sqrt(n);
  return { mean, low: mean - half, high: mean + half };
}

Deno.test("Student t quantiles and mean intervals: published values, t below 30 tasks, normal from 30, none for one", () => {
  for (const [df, q] of Object.entries(T_975)) close(studentTQuantile(0.975, Number(df)), q, 5e-8, `t(0.975, ${df})`);
  close(studentTCdf(0, 7), 0.5, 1e-15, "cdf at 0");
  close(studentTCdf(-2.26215716, 9), 0.025, 1e-8, "lower tail");
  // Cauchy (df = 1): P(T ≤ 1) = 3/4 exactly.
  close(studentTCdf(1, 1), 0.75, 1e-13, "Cauchy");
  assert.throws(() => studentTQuantile(0.975, 0), /whole df ≥ 1/);

  const three = meanInterval([0.2, 0.5, 0.35]);
  const e = expected([0.2, 0.5, 0.35]);
  assert.equal(three.method, "student-t");
  close(three.mean, e.mean, 1e-15, "mean");
  close(three.low, e.low, 1e-8, "low");
  close(three.high, e.high, 1e-8, "high");

  // 29 values: still t (28 degrees of freedom); 30 values: normal.
  const values = Array.from({ length: 30 }, (_, i) => Math.sin(i * 1.7) * 0.3 + 0.5);
  const t29 = meanInterval(values.slice(0, 29));
  assert.equal(t29.method, "student-t");
  close(t29.high - t29.mean, (T_975[28] * t29.sd) / Math.sqrt(29), 1e-8, "t half-width at n = 29");
  const z30 = meanInterval(values);
  assert.equal(z30.method, "normal");
  close(z30.high - z30.mean, (Z_95 * z30.sd) / Math.sqrt(30), 1e-15, "normal half-width at n = 30");

  const one = meanInterval([0.4, null, NaN]);
  assert.deepEqual([one.n, one.mean, one.method, Number.isNaN(one.low), Number.isNaN(one.high)], [1, 0.4, "none", true, true]);
  assert.equal(meanInterval([]).n, 0);
  assert.ok(Number.isNaN(meanInterval([]).mean));
});

const GROUPS = ["text", "image", "ref[0]"];

/** A hand-made attention_flow.json: 2 kept heads + the mean slice; blocks double.0 (0) and single.1 (6) at steps 0
 * and 3; the mean slice of task k at (block b, step s) is row a = softmax-like numbers depending on k, b, s. */
function flowFile(k: number, keyGroups = GROUPS): AttentionFlowJson {
  const meanSlice = (blockIndex: number, step: number) =>
    GROUPS.map((_, a) => {
      const raw = keyGroups.map((_, b) => 1 + ((k * 7 + a * 3 + b * 5 + blockIndex + step * 2) % 11));
      const sum = raw.reduce((x, y) => x + y, 0);
      return raw.map((v) => v / sum);
    });
  const table = (block: string, blockIndex: number, step: number) => {
    const mean = meanSlice(blockIndex, step);
    // Per-head slices differ from the mean slice, so reading the wrong slice would show.
    const head = (h: number) => mean.map((row) => row.map((v, b) => (b === 0 ? v + 0.1 * (h + 1) : v)));
    return { block, blockIndex, step, mass: [head(0), head(1), mean], tokens: null };
  };
  const json: AttentionFlowJson = {
    format: "kleinscope-attention-flow",
    version: 1,
    forward: "cond",
    totalHeads: 4,
    heads: [0, 2],
    sequenceLength: 60 + k,
    uncoveredKeys: 0,
    // Token counts differ between tasks (prompts differ); only the names must agree.
    queryGroups: GROUPS.map((name, i) => ({ name, tokens: 10 + i + k })),
    keyGroups: keyGroups.map((name, i) => ({ name, tokens: 10 + i + k })),
    tokenGroup: null,
    tables: [table("double.0", 0, 0), table("double.0", 0, 3), table("single.1", 6, 0), table("single.1", 6, 3)],
  };
  return parseAttentionFlowJson(JSON.stringify(json), `task ${k}`);
}

const flowOutput = (task: number, family: string, json: AttentionFlowJson, condition = "ko"): TaskOutput<AttentionFlowJson> => ({
  task_id: `t${task}`,
  family,
  condition,
  json,
});

Deno.test("attention flow aggregate: per block, step and group pair the mean over tasks with its t interval; other groups left out", () => {
  const files = [0, 1, 2].map((k) => flowFile(k));
  const odd = flowFile(3, ["text", "image", "ref[0]+ref[1]"]);
  const outputs = [
    flowOutput(0, "color", files[0]),
    flowOutput(1, "color", files[1]),
    flowOutput(9, "color", odd),
    flowOutput(2, "color", files[2]),
    // Another family and another condition: cells of their own.
    flowOutput(5, "style", flowFile(5)),
    flowOutput(6, "color", flowFile(6), "baseline"),
  ];
  const cells = aggregateAttentionFlow(outputs, ["baseline", "ko"]);
  assert.deepEqual(cells.map((c) => `${c.condition}/${c.family}`), ["baseline/color", "ko/color", "ko/style"]);
  const cell = cells[1];
  assert.deepEqual(cell.tasks, ["t0", "t1", "t2"]);
  assert.equal(cell.leftOut.length, 1);
  assert.equal(cell.leftOut[0].task_id, "t9");
  assert.match(cell.leftOut[0].reason, /ref\[0\]\+ref\[1\]/);
  assert.deepEqual(cell.queryGroups, GROUPS);
  assert.deepEqual(cell.keyGroups, GROUPS);
  assert.deepEqual(cell.tables.map((t) => `${t.block}@${t.step}`), ["double.0@0", "double.0@3", "single.1@0", "single.1@3"]);
  assert.deepEqual(cell.referenceKeys, ["ref[0]"]);
  let checked = 0;
  for (const t of cell.tables) {
    for (let a = 0; a < 3; a++) {
      for (let b = 0; b < 3; b++) {
        // The mean-over-heads slice is the last one of each file.
        const values = files.map((f) => f.tables.find((x) => x.block === t.block && x.step === t.step)!.mass[2][a][b]);
        const e = expected(values), m = t.mass[a][b];
        assert.equal(m.n, 3);
        assert.equal(m.method, "student-t");
        close(m.mean, e.mean, 1e-15, `${t.block}@${t.step} [${a}][${b}] mean`);
        close(m.low, e.low, 1e-8, `${t.block}@${t.step} [${a}][${b}] low`);
        close(m.high, e.high, 1e-8, `${t.block}@${t.step} [${a}][${b}] high`);
        checked++;
      }
      // Mass to the reference: the ref[0] column, its interval from the tasks' own values.
      const r = cell.toReference.find((x) => x.block === t.block && x.step === t.step)!.mass[a];
      const e = expected(files.map((f) => f.tables.find((x) => x.block === t.block && x.step === t.step)!.mass[2][a][2]));
      close(r.mean, e.mean, 1e-15, "to reference mean");
      close(r.high, e.high, 1e-8, "to reference high");
    }
  }
  assert.equal(checked, 4 * 9);
  // A cell of one task: the mean is the task's, with no interval.
  const single = cells[2].tables[0].mass[1][1];
  assert.deepEqual([single.n, single.mean, single.method], [1, flowFile(5).tables[0].mass[2][1][1], "none"]);

  // A tie goes to the first task's groups.
  const tie = aggregateAttentionFlow([flowOutput(3, "x", odd), flowOutput(4, "x", flowFile(4))]);
  assert.deepEqual([tie[0].tasks, tie[0].leftOut.map((l) => l.task_id)], [["t3"], ["t4"]]);
  // Every reference key group counts: the mass to the reference is the sum of both columns, task by task.
  const split = [0, 1].map((k) => flowFile(k, ["ref[1]", "image", "ref[0]"]));
  const [both] = aggregateAttentionFlow(split.map((f, k) => flowOutput(k, "x", f)));
  assert.deepEqual(both.referenceKeys, ["ref[1]", "ref[0]"]);
  const sums = split.map((f) => f.tables[1].mass[2][0][0] + f.tables[1].mass[2][0][2]);
  close(both.toReference[1].mass[0].mean, (sums[0] + sums[1]) / 2, 1e-15, "summed reference mass");
  close(
    both.toReference[1].mass[0].high - both.toReference[1].mass[0].mean,
    (T_975[1] * Math.abs(sums[0] - sums[1])) / 2,
    1e-7,
    "sum's interval",
  );
});

/** A hand-made effects.json of task k: intervention and (optionally) control records for blocks double.0, double.1
 * at steps 0 and 2, groups text, image and (with refs) ref; relL2 null for task 1's image group at double.1 step 2. */
function effectsFile(k: number, options: { refs?: boolean; control?: boolean } = {}): EffectsJson {
  const groups = options.refs === false ? ["text", "image"] : ["text", "image", "ref"];
  const stats = (run: number, g: number, blockIndex: number, step: number) => {
    const relL2 = k === 1 && run === 0 && g === 1 && blockIndex === 1 && step === 2
      ? null
      : 0.05 * (1 + g) + 0.03 * blockIndex + 0.01 * step + 0.02 * ((k * 5 + g + run * 3) % 4);
    return { relL2, cosine: 1 - 0.01 * (1 + g + k + run + blockIndex), rowCosine: 0.9 };
  };
  const records = (run: number) =>
    [["double.0", 0], ["double.1", 1]].flatMap(([block, blockIndex]) =>
      [0, 2].map((step) => ({
        block,
        blockIndex,
        step,
        ...Object.fromEntries(groups.map((g, gi) => [g, stats(run, gi, blockIndex as number, step)])),
      }))
    );
  const runJson = (run: number) => ({
    interventions: [],
    records: records(run),
    final: { latents: { relL2: 0.3, cosine: 0.95, rowCosine: 0.94 }, imageMeanAbsDiff255: 12 },
    attentionFlow: null,
    warnings: [],
  });
  const json = {
    format: "kleinscope-effects",
    version: 1,
    forward: "cond",
    baseline: { image: "baseline.png", description: "the spec without its interventions", warnings: [] },
    blocks: ["double.0", "double.1"],
    steps: [0, 2],
    groups: groups.map((name) => ({ name, tap: name === "text" ? "txt" : "img", rows: 10 })),
    statistics: { relL2: "", cosine: "", rowCosine: "" },
    baselineBytes: 0,
    intervention: { ...runJson(0), image: "image.png" },
    control: options.control === false ? null : { ...runJson(1), image: "control.png", seed: 7, rule: "rule", settings: [] },
  };
  return parseEffectsJson(JSON.stringify(json), `effects ${k}`);
}

Deno.test("effects aggregate: relL2 and cosine per run, block, step and group with t intervals; undefined relL2 and other groups left out", () => {
  const files = [0, 1, 2].map((k) => effectsFile(k, { control: k !== 2 }));
  const outputs: TaskOutput<EffectsJson>[] = [
    ...files.map((json, k) => ({ task_id: `t${k}`, family: "color", condition: "ko", json })),
    { task_id: "no_refs", family: "color", condition: "ko", json: effectsFile(3, { refs: false }) },
  ];
  const [cell] = aggregateEffects(outputs, ["ko"]);
  assert.deepEqual(cell.tasks, ["t0", "t1", "t2"]);
  assert.deepEqual(cell.leftOut.map((l) => l.task_id), ["no_refs"]);
  assert.match(cell.leftOut[0].reason, /\[text, image\] instead of \[text, image, ref\]/);
  assert.deepEqual(cell.groups, ["text", "image", "ref"]);
  assert.equal(cell.controlTasks, 2);
  // 2 runs × 2 blocks × 2 steps × 3 groups.
  assert.equal(cell.points.length, 24);
  for (const p of cell.points) {
    const present = files.filter((f) => p.run === "intervention" || f.control);
    const recs = present.map((f) =>
      (p.run === "intervention" ? f.intervention : f.control!).records.find((r) => r.blockIndex === p.blockIndex && r.step === p.step)!
    );
    const of = (r: (typeof recs)[number]) => r[p.group as "text" | "image" | "ref"]!;
    const rel = recs.map((r) => of(r).relL2).filter((v): v is number => v !== null);
    const undef = recs.length - rel.length;
    assert.equal(p.relL2Undefined, undef, `${p.run} ${p.block}@${p.step} ${p.group}`);
    assert.equal(p.relL2.n, rel.length);
    assert.equal(p.cosine.n, recs.length);
    if (rel.length >= 2) {
      const e = expected(rel);
      close(p.relL2.mean, e.mean, 1e-15, "relL2 mean");
      close(p.relL2.low, e.low, 1e-8, "relL2 low");
      close(p.relL2.high, e.high, 1e-8, "relL2 high");
    }
    const c = expected(recs.map((r) => of(r).cosine));
    close(p.cosine.mean, c.mean, 1e-15, "cosine mean");
    close(p.cosine.high, c.high, 1e-8, "cosine high");
  }
  const gap = cell.points.find((p) => p.run === "intervention" && p.block === "double.1" && p.step === 2 && p.group === "image")!;
  assert.deepEqual([gap.relL2Undefined, gap.relL2.n, gap.cosine.n], [1, 2, 3]);
  const control = cell.points.find((p) => p.run === "control")!;
  assert.equal(control.cosine.n, 2, "the control averages over the tasks that have one");
});

Deno.test("aggregate files: JSON with the interval rule (undefined numbers as null) and long-form CSV rows", async () => {
  const dir = await Deno.makeTempDir({ prefix: "ks-aggregate-" });
  try {
    const flow = aggregateAttentionFlow(
      [0, 1, 2].map((k) => flowOutput(k, "color", flowFile(k))).concat(flowOutput(7, "solo", flowFile(7))),
    );
    const effects = aggregateEffects([0, 1].map((k) => ({ task_id: `t${k}`, family: "color", condition: "ko", json: effectsFile(k) })));
    const written = await writeAggregates(dir, flow, effects);
    assert.deepEqual(written.map((p) => p.split("/").pop()), Object.values(AGGREGATE_FILES));

    const fj = JSON.parse(await Deno.readTextFile(join(dir, AGGREGATE_FILES.flowJson)));
    assert.equal(fj.format, "kleinscope-aggregate");
    assert.match(fj.interval, /Student t with n − 1 degrees of freedom for n < 30/);
    assert.equal(fj.cells.length, 2);
    assert.equal(fj.cells[1].tables[0].mass[0][0].low, null, "one task: no interval, written as null");
    close(fj.cells[0].tables[0].mass[0][1].mean, flow[0].tables[0].mass[0][1].mean, 0, "JSON mean");

    const csv = (await Deno.readTextFile(join(dir, AGGREGATE_FILES.flowCsv))).trim().split("\n").map((l) => l.split(","));
    assert.deepEqual(csv[0], [
      "condition",
      "family",
      "measure",
      "block",
      "block_index",
      "step",
      "query_group",
      "key_group",
      "n",
      "mean",
      "sd",
      "low",
      "high",
      "interval",
    ]);
    // Per cell: 4 tables × 9 pairs of "mass" and 4 tables × 3 query groups of "to_reference".
    assert.equal(csv.length - 1, 2 * (4 * 9 + 4 * 3));
    const row = csv.find((r) =>
      r[0] === "ko" && r[1] === "color" && r[2] === "mass" && r[3] === "single.1" && r[5] === "3" && r[6] === "image" && r[7] === "ref[0]"
    )!;
    const m = flow[0].tables.find((t) => t.block === "single.1" && t.step === 3)!.mass[1][2];
    assert.deepEqual(row.slice(8).map((v, i) => (i === 5 ? v : Number(v))), [3, m.mean, m.sd, m.low, m.high, "student-t"]);
    const solo = csv.find((r) => r[1] === "solo" && r[2] === "to_reference")!;
    assert.deepEqual([solo[7], solo[8], solo[11], solo[12], solo[13]], ["ref[0]", "1", "", "", "none"]);

    const ecsv = (await Deno.readTextFile(join(dir, AGGREGATE_FILES.effectsCsv))).trim().split("\n");
    assert.equal(ecsv[0], "condition,family,run,block,block_index,step,group,statistic,n,mean,sd,low,high,interval,undefined");
    assert.equal(ecsv.length - 1, 2 * effects[0].points.length);
    const ej = JSON.parse(await Deno.readTextFile(join(dir, AGGREGATE_FILES.effectsJson)));
    assert.equal(ej.kind, "effects");
    assert.equal(ej.cells[0].points.length, 24);

    // Nothing to aggregate: no files.
    const empty = await Deno.makeTempDir({ dir });
    assert.deepEqual(await writeAggregates(empty, [], []), []);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
