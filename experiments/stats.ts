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

// ---- means over tasks --------------------------------------------------------------------------------------------

/** How a mean's 95% interval was made: Student t with n − 1 degrees of freedom (n < 30), the normal approximation
 * (n ≥ 30), or none (n ≤ 1: one value has no spread). */
export type MeanIntervalMethod = "student-t" | "normal" | "none";

/** Below this many values the interval uses Student t; from it on, the normal quantile z = 1.959964. */
export const STUDENT_T_BELOW = 30;

export const MEAN_INTERVAL_RULE = `95% interval for the mean over tasks: mean ± q·s/√n with s the sample standard deviation; ` +
  `q the 0.975 quantile of Student t with n − 1 degrees of freedom for n < ${STUDENT_T_BELOW}, of the normal (${Z_95}) for ` +
  `n ≥ ${STUDENT_T_BELOW}; no interval for n = 1`;

export interface MeanInterval {
  /** Values averaged (NaN and null values are not counted). */
  n: number;
  /** NaN when n = 0. */
  mean: number;
  /** Sample standard deviation (n − 1 in the denominator); NaN when n < 2. */
  sd: number;
  /** NaN when n < 2. */
  low: number;
  high: number;
  method: MeanIntervalMethod;
}

/** ln Γ(x) for x > 0 (Lanczos, g = 7, 9 terms; relative error below 1e-14). */
function lnGamma(x: number): number {
  const c = [
    0.99999999999980993,
    676.5203681218851,
    -1259.1392167224028,
    771.32342877765313,
    -176.61502916214059,
    12.507343278686905,
    -0.13857109526572012,
    9.9843695780195716e-6,
    1.5056327351493116e-7,
  ];
  if (x < 0.5) return Math.log(Math.PI / Math.abs(Math.sin(Math.PI * x))) - lnGamma(1 - x);
  x -= 1;
  let a = c[0];
  const t = x + 7.5;
  for (let i = 1; i < 9; i++) a += c[i] / (x + i);
  return 0.5 * Math.log(2 * Math.PI) + (x + 0.5) * Math.log(t) - t + Math.log(a);
}

/** Continued fraction of the regularized incomplete beta function (modified Lentz). */
function betaFraction(a: number, b: number, x: number): number {
  const tiny = 1e-300;
  let c = 1, d = 1 - ((a + b) * x) / (a + 1);
  if (Math.abs(d) < tiny) d = tiny;
  d = 1 / d;
  let h = d;
  for (let m = 1; m <= 500; m++) {
    const m2 = 2 * m;
    let aa = (m * (b - m) * x) / ((a + m2 - 1) * (a + m2));
    d = 1 + aa * d;
    if (Math.abs(d) < tiny) d = tiny;
    c = 1 + aa / c;
    if (Math.abs(c) < tiny) c = tiny;
    d = 1 / d;
    h *= d * c;
    aa = (-(a + m) * (a + b + m) * x) / ((a + m2) * (a + m2 + 1));
    d = 1 + aa * d;
    if (Math.abs(d) < tiny) d = tiny;
    c = 1 + aa / c;
    if (Math.abs(c) < tiny) c = tiny;
    d = 1 / d;
    const del = d * c;
    h *= del;
    if (Math.abs(del - 1) < 1e-15) break;
  }
  return h;
}

/** The regularized incomplete beta function I_x(a, b). */
function incompleteBeta(x: number, a: number, b: number): number {
  if (x <= 0) return 0;
  if (x >= 1) return 1;
  const front = Math.exp(lnGamma(a + b) - lnGamma(a) - lnGamma(b) + a * Math.log(x) + b * Math.log(1 - x));
  // The fraction converges fast for x < (a + 1)/(a + b + 2); otherwise use the symmetry I_x(a, b) = 1 − I_{1−x}(b, a).
  return x < (a + 1) / (a + b + 2) ? (front * betaFraction(a, b, x)) / a : 1 - (front * betaFraction(b, a, 1 - x)) / b;
}

/** P(T ≤ t) for Student's t with `df` degrees of freedom. */
export function studentTCdf(t: number, df: number): number {
  const tail = 0.5 * incompleteBeta(df / (df + t * t), df / 2, 0.5);
  return t >= 0 ? 1 - tail : tail;
}

const tQuantiles = new Map<string, number>();

/** The p quantile (0.5 < p < 1) of Student's t with `df` ≥ 1 degrees of freedom, by bisection on the CDF. */
export function studentTQuantile(p: number, df: number): number {
  if (!(p > 0.5 && p < 1) || !Number.isInteger(df) || df < 1) {
    throw new Error(`Student t quantile: need 0.5 < p < 1 and whole df ≥ 1, got p = ${p}, df = ${df}`);
  }
  const key = `${p}/${df}`;
  const known = tQuantiles.get(key);
  if (known !== undefined) return known;
  let lo = 0, hi = 1;
  while (studentTCdf(hi, df) < p) lo = hi, hi *= 2;
  for (let i = 0; i < 200 && hi - lo > 1e-13 * hi; i++) {
    const mid = (lo + hi) / 2;
    if (studentTCdf(mid, df) < p) lo = mid;
    else hi = mid;
  }
  const q = (lo + hi) / 2;
  tQuantiles.set(key, q);
  return q;
}

/** The mean of `values` with its 95% interval (MEAN_INTERVAL_RULE); null and non-finite values are left out. */
export function meanInterval(values: readonly (number | null)[]): MeanInterval {
  const v = values.filter((x): x is number => x !== null && Number.isFinite(x));
  const n = v.length;
  if (n === 0) return { n, mean: NaN, sd: NaN, low: NaN, high: NaN, method: "none" };
  const mean = v.reduce((a, b) => a + b, 0) / n;
  if (n === 1) return { n, mean, sd: NaN, low: NaN, high: NaN, method: "none" };
  const sd = Math.sqrt(v.reduce((a, x) => a + (x - mean) ** 2, 0) / (n - 1));
  const method: MeanIntervalMethod = n < STUDENT_T_BELOW ? "student-t" : "normal";
  const q = method === "student-t" ? studentTQuantile(0.975, n - 1) : Z_95;
  const half = (q * sd) / Math.sqrt(n);
  return { n, mean, sd, low: mean - half, high: mean + half, method };
}

/** Which interval a mean of n values gets, in words (for figure captions). */
export function meanIntervalMethodText(n: number): string {
  if (n <= 1) return "no interval (one task)";
  return n < STUDENT_T_BELOW ? `Student t with ${n - 1} degree${n === 2 ? "" : "s"} of freedom` : `normal (z = ${Z_95})`;
}
