// Pass rates with 95% Wilson score intervals, and agreement between two judges.
//
// Wilson interval of k passes out of n (p̂ = k/n, z = 1.959964 for 95%):
//   (p̂ + z²/2n ± z·√(p̂(1−p̂)/n + z²/4n²)) / (1 + z²/n)
// It stays inside [0, 1] and is not degenerate at 0/n or n/n, unlike the normal approximation. With n = 0 the rate is
// undefined (NaN) and the interval is the whole [0, 1].
//
// A verdict's pass follows the template's convention (judge_templates.ts): pass = "the intervention worked", with
// "did it keep …" questions inverted. Unparseable and failed verdicts are counted apart and left out of n.

export const Z_95 = 1.959964;

export interface Interval {
  rate: number;
  low: number;
  high: number;
}

export function wilsonInterval(k: number, n: number, z = Z_95): Interval {
  if (!Number.isInteger(k) || !Number.isInteger(n) || k < 0 || n < 0 || k > n) {
    throw new Error(`Wilson interval of ${k}/${n}: need 0 ≤ k ≤ n, whole numbers`);
  }
  if (n === 0) return { rate: NaN, low: 0, high: 1 };
  const p = k / n, z2 = z * z;
  const centre = p + z2 / (2 * n);
  const half = z * Math.sqrt((p * (1 - p)) / n + z2 / (4 * n * n));
  const den = 1 + z2 / n;
  // At k = 0 and k = n the bounds are exactly 0 and 1; rounding must not move them.
  return { rate: p, low: k === 0 ? 0 : Math.max(0, (centre - half) / den), high: k === n ? 1 : Math.min(1, (centre + half) / den) };
}

/** What stats needs of one verdict (a judgments.jsonl line has more). */
export interface VerdictLike {
  task_id: string;
  condition: string;
  family: string;
  template: string;
  /** "yes" / "no", or null when unparseable or failed. */
  answer: "yes" | "no" | null;
  pass: boolean | null;
}

export interface CellStats extends Interval {
  condition: string;
  family: string;
  template: string;
  /** Answered verdicts (the denominator). */
  n: number;
  passes: number;
  yes: number;
  /** Unparseable or failed verdicts, left out of n. */
  excluded: number;
}

/** One row per (condition, family, template), in the order cells first appear. */
export function cellStats(verdicts: VerdictLike[], z = Z_95): CellStats[] {
  const cells = new Map<
    string,
    { condition: string; family: string; template: string; n: number; passes: number; yes: number; excluded: number }
  >();
  for (const v of verdicts) {
    const key = JSON.stringify([v.condition, v.family, v.template]);
    let c = cells.get(key);
    if (!c) cells.set(key, c = { condition: v.condition, family: v.family, template: v.template, n: 0, passes: 0, yes: 0, excluded: 0 });
    if (v.answer === null || v.pass === null) {
      c.excluded++;
      continue;
    }
    c.n++;
    if (v.pass) c.passes++;
    if (v.answer === "yes") c.yes++;
  }
  return [...cells.values()].map((c) => ({ ...c, ...wilsonInterval(c.passes, c.n, z) }));
}

export interface Agreement {
  /** Items both judges answered. */
  n: number;
  /** Counts: both yes, first yes / second no, first no / second yes, both no. */
  table: { yy: number; yn: number; ny: number; nn: number };
  /** Share of items with the same answer. */
  agreement: number;
  /** Cohen's κ = (pₒ − pₑ) / (1 − pₑ); NaN when pₑ = 1 (both judges gave one answer throughout). */
  kappa: number;
}

/** Cohen's κ from a 2 × 2 table. */
export function kappaFromTable(table: Agreement["table"]): Agreement {
  const { yy, yn, ny, nn } = table;
  const n = yy + yn + ny + nn;
  if (n === 0) return { n, table, agreement: NaN, kappa: NaN };
  const po = (yy + nn) / n;
  const firstYes = (yy + yn) / n, secondYes = (yy + ny) / n;
  const pe = firstYes * secondYes + (1 - firstYes) * (1 - secondYes);
  return { n, table, agreement: po, kappa: pe === 1 ? NaN : (po - pe) / (1 - pe) };
}

/** Agreement of two judges on the items (task, condition, template) both answered. */
export function judgeAgreement(first: VerdictLike[], second: VerdictLike[]): Agreement {
  const key = (v: VerdictLike) => JSON.stringify([v.task_id, v.condition, v.template]);
  const answers = new Map<string, "yes" | "no">();
  for (const v of first) if (v.answer) answers.set(key(v), v.answer);
  const table = { yy: 0, yn: 0, ny: 0, nn: 0 };
  for (const v of second) {
    const a = v.answer ? answers.get(key(v)) : undefined;
    if (!a || !v.answer) continue;
    if (a === "yes") v.answer === "yes" ? table.yy++ : table.yn++;
    else v.answer === "yes" ? table.ny++ : table.nn++;
  }
  return kappaFromTable(table);
}

// ---- block sweeps ------------------------------------------------------------------------------------------------

/** A condition's place in a block sweep, read from its `sweep` field in the experiment definition that the run's
 * manifest holds (`manifest.experiment.definition.conditions[i].sweep`). The sweep condition family writes it
 * (experiment.ts); its conditions are named `<family>@<kind>-<L>` (e.g. `ko_ref_text@suffix-12`), but only this
 * metadata is read.
 *   family  the setting swept (e.g. "ko_ref_text"),
 *   kind    how blocks are chosen from L ("suffix", "prefix", "single", "window3", …),
 *   L       the block index, 0 … blocks − 1 (0 … 31 on klein 9B). */
export interface SweepPoint {
  family: string;
  kind: string;
  L: number;
}

/** The sweep metadata of a condition definition, undefined when it has none; malformed metadata is an error naming
 * the condition. */
export function sweepOf(condition: { name: string; sweep?: unknown }): SweepPoint | undefined {
  const s = condition.sweep;
  if (s === undefined || s === null) return undefined;
  const o = s as Record<string, unknown>;
  if (
    typeof s !== "object" || typeof o.family !== "string" || !o.family || typeof o.kind !== "string" || !o.kind ||
    typeof o.L !== "number" || !Number.isInteger(o.L) || o.L < 0
  ) {
    throw new Error(`condition ${condition.name}: "sweep" must be {family, kind, L} with L a whole number ≥ 0, got ${JSON.stringify(s)}`);
  }
  return { family: o.family, kind: o.kind, L: o.L };
}

export interface SweepSeries {
  /** "<family>@<kind>". */
  setting: string;
  /** The task family the rates are over. */
  taskFamily: string;
  template: string;
  /** By L, ascending. */
  points: (CellStats & { L: number })[];
}

/** Pass rates along each sweep: one series per (task family, template, sweep family and kind). */
export function sweepSeries(cells: CellStats[], sweeps: Map<string, SweepPoint>): SweepSeries[] {
  const series = new Map<string, SweepSeries>();
  for (const c of cells) {
    const s = sweeps.get(c.condition);
    if (!s) continue;
    const setting = `${s.family}@${s.kind}`;
    const key = JSON.stringify([c.family, c.template, setting]);
    if (!series.has(key)) series.set(key, { setting, taskFamily: c.family, template: c.template, points: [] });
    series.get(key)!.points.push({ ...c, L: s.L });
  }
  for (const s of series.values()) s.points.sort((a, b) => a.L - b.L);
  return [...series.values()];
}
