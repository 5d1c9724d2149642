// Intervention effect statistics: how far an intervention moves a run away from its baseline (the same spec without
// its interventions; for a lens, the target run without the lens patch). Per chosen block and step, the text rows
// (`<block>.txt`) and the image rows (`<block>.img`, split into noise `image` rows and `ref` rows when the run has
// references) of the two runs are compared:
//   relL2     = ‖x_run − x_base‖ / ‖x_base‖ over the group's rows (flattened)
//   cosine    = ⟨x_run, x_base⟩ / (‖x_run‖ ‖x_base‖) over the group's rows (flattened)
//   rowCosine = the mean over the group's rows of each row's cosine
// all accumulated in float64 from the float32 rows; with an attention flow in the spec, the change of its
// mean-over-heads group tables (run − baseline) too. Rows are taken from the conditional forward of a guided run.
//
// Memory and disk: neither run keeps a whole run's rows. The baseline runs first; after each of its chosen steps the
// rows of every chosen block are read back one tap at a time and written to a temporary safetensors file
// (float32; blocks × steps × (text rows + image rows) × hidden × 4 bytes: klein 4B at 1024² with one reference,
// 4 steps, all 25 blocks ≈ 10.7 GB; klein 9B ≈ 18 GB). The intervention run (and the control) then compares each
// step as it comes, reading one baseline tap back at a time: the host holds about two taps at once (8704 × 3072
// floats ≈ 107 MB each for the example), and keeps only the statistics. On the GPU, every chosen block's rows of a
// step sit in capture buffers (the example: 25 × 107 MB ≈ 2.7 GB more than the run itself). The temporary file is
// made in $TMPDIR (or `tempDir`) and removed when the spec's runs end, also when they fail. Choosing fewer blocks or
// steps shrinks all three.
//
// Control (`control: {seed}`): each knockout setting `A->B` becomes `A->text[i,j,…]`, whose query positions are a
// seeded random subset of the run's text[pad] positions of the same size as B in this run (B's size counts the
// positions B resolves to; the keys A, blocks and steps are kept). A setting whose B has more positions than text[pad]
// is refused, and so is one whose draw would cut exactly B's own edges (B = all of text[pad]); a setting that masks
// nothing in this run (an empty group) is kept as it is. The draw is a partial Fisher–Yates shuffle of text[pad]
// (ascending positions) with runtime/random.ts's SplitMix64 seeded with the control's seed, settings drawn in spec
// order from one stream: the same seed gives the same control on the same prompt.

import { printable } from "../runtime/printable.ts";
import { Rng } from "../runtime/random.ts";
import type { Plan } from "../runtime/executor.ts";
import type { Intervention, RunBinding, RunContext, RunLayout } from "../model/run.ts";
import { insertCapture } from "../interventions/capture.ts";
import { resolveBlocks, resolveSteps } from "../interventions/intervention.ts";
import { resolveGroups } from "../interventions/groups.ts";
import { findTap } from "../interventions/patch.ts";
import { parseSetting } from "../interventions/knockout.ts";
import type { AttentionFlowResult, FlowGroup } from "../interventions/attention_flow.ts";
import { SafetensorsFile } from "../weights/safetensors.ts";
import type { EffectsSpec, InterventionSpec, KnockoutSettingSpec, KnockoutSpec } from "./spec.ts";

export const EFFECTS_FORMAT = "kleinscope-effects";

// ---- statistics ----------------------------------------------------------------------------------------------------

/** How far a group's rows of a run are from the baseline's. Null where undefined (relL2 of a zero baseline that
 * the run does not match). */
export interface RowStats {
  relL2: number | null;
  cosine: number;
  rowCosine: number;
}

/** Cosine of two vectors from their dot product and squared norms: 1 when both are zero, 0 when only one is.
 * dot/√(na·nb) rather than dot/(√na·√nb): for equal vectors √(x²) is exactly x, so the cosine is exactly 1. */
function cosineOf(dot: number, na: number, nb: number): number {
  if (na === 0 || nb === 0) return na === nb ? 1 : 0;
  return Math.min(1, Math.max(-1, dot / Math.sqrt(na * nb)));
}

/** Statistics of rows [rowStart, rowEnd) of `run` against the same rows of `base` ([rows, cols] row-major). */
export function rowStats(run: Float32Array, base: Float32Array, cols: number, rowStart: number, rowEnd: number): RowStats {
  if (run.length !== base.length) throw new Error(`effects: compared rows differ in size (${run.length} vs ${base.length} values)`);
  let diff = 0, dot = 0, na = 0, nb = 0, rowCos = 0;
  for (let r = rowStart; r < rowEnd; r++) {
    let rd = 0, ra = 0, rb = 0;
    for (let i = r * cols, end = i + cols; i < end; i++) {
      const a = run[i], b = base[i], d = a - b;
      diff += d * d;
      rd += a * b;
      ra += a * a;
      rb += b * b;
    }
    dot += rd;
    na += ra;
    nb += rb;
    rowCos += cosineOf(rd, ra, rb);
  }
  const rows = rowEnd - rowStart;
  return {
    relL2: nb > 0 ? Math.sqrt(diff) / Math.sqrt(nb) : diff === 0 ? 0 : null,
    cosine: cosineOf(dot, na, nb),
    rowCosine: rows ? rowCos / rows : 1,
  };
}

// ---- the probe: rows of every chosen block, handed over step by step -----------------------------------------------

/** One tap the probe reads: a block's text rows ("txt") or image rows ("img"). */
export interface ProbeTap {
  block: string;
  blockIndex: number;
  stream: "txt" | "img";
  tap: string;
  rows: number;
  cols: number;
}

/** Where a probe's rows go, one tap at a time, as the run goes. */
export interface ProbeSink {
  /** Called once, before the run's first rows, with every tap and the chosen steps (ascending). */
  begin(taps: readonly ProbeTap[], steps: readonly number[], layout: RunLayout): Promise<void>;
  rows(tap: ProbeTap, step: number, data: Float32Array): Promise<void>;
}

let probeCounter = 0;

/** Captures `<block>.txt` and `<block>.img` (every row, conditional forward) of the chosen blocks and hands them to a
 * sink after each chosen step; nothing is kept here. */
export class EffectsProbe implements Intervention {
  readonly label = "effects probe";

  constructor(readonly request: EffectsSpec, private readonly sink: ProbeSink) {}

  bind(ctx: RunContext): RunBinding {
    const blocks = resolveBlocks(this.request.blocks ?? "all", ctx.blocks, "effects.blocks");
    const chosen = resolveSteps(this.request.steps, ctx.steps, "effects.steps");
    const steps = [...chosen].sort((a, b) => a - b);
    const taps: ProbeTap[] = blocks.flatMap((b) =>
      (["txt", "img"] as const).map((stream) => {
        const info = findTap(ctx, `${ctx.blocks[b]}.${stream}`, "effects");
        return { block: ctx.blocks[b], blockIndex: b, stream, tap: info.name, rows: info.rows, cols: info.cols };
      })
    );
    const sink = this.sink, layout = ctx.layout;
    const id = probeCounter++;
    const states: string[] = [];
    let begun = false;
    return {
      rewrite(g, forwards) {
        const scope = forwards.find((f) => f.forward === "cond")!.scope;
        taps.forEach((t, i) => states[i] = insertCapture(g, scope + t.tap, { all: true }, `effects${id}.${i}/${t.tap}`).tensor);
      },
      async afterStep(plan: Plan, step: number) {
        if (!begun) {
          begun = true;
          await sink.begin(taps, steps, layout);
        }
        if (!chosen.has(step)) return;
        for (const [i, t] of taps.entries()) await sink.rows(t, step, await plan.read(states[i]));
      },
    };
  }
}

function tensorName(t: ProbeTap, step: number): string {
  return `${t.tap}@step${step}`;
}

/** The row groups compared: text rows of `.txt`; noise rows, then reference rows, of `.img`. */
export interface EffectGroup {
  name: "text" | "image" | "ref";
  stream: "txt" | "img";
  rowStart: number;
  rowEnd: number;
}

function effectGroups(layout: RunLayout): EffectGroup[] {
  const refs = layout.refRows.reduce((a, b) => a + b, 0);
  const groups: EffectGroup[] = [
    { name: "text", stream: "txt", rowStart: 0, rowEnd: layout.textRows },
    { name: "image", stream: "img", rowStart: 0, rowEnd: layout.noiseRows },
  ];
  if (refs) groups.push({ name: "ref", stream: "img", rowStart: layout.noiseRows, rowEnd: layout.noiseRows + refs });
  return groups;
}

// ---- the baseline's rows on disk ------------------------------------------------------------------------------------

/** The baseline run's rows, written step by step to a temporary safetensors file and read back one tap at a time. */
export class BaselineRows implements ProbeSink {
  private path: string | null = null;
  private writer: Deno.FsFile | null = null;
  private reader: SafetensorsFile | null = null;
  private offsets = new Map<string, { offset: number; bytes: number }>();
  private dataStart = 0;
  taps: readonly ProbeTap[] = [];
  steps: readonly number[] = [];
  layout: RunLayout | null = null;
  /** Bytes of rows in the file. */
  bytes = 0;
  /** Where the file's place and size are announced before it is written. */
  log: (line: string) => void = () => {};

  constructor(private readonly tempDir?: string) {}

  async begin(taps: readonly ProbeTap[], steps: readonly number[], layout: RunLayout): Promise<void> {
    if (this.path) throw new Error("effects: the baseline's rows were already recorded");
    this.taps = taps;
    this.steps = steps;
    this.layout = layout;
    // Step-major, in the order the run hands the rows over, so the file is written front to back.
    const header: Record<string, unknown> = { __metadata__: { format: "kleinscope-effects-baseline" } };
    let offset = 0;
    for (const step of steps) {
      for (const t of taps) {
        const bytes = t.rows * t.cols * 4;
        header[tensorName(t, step)] = { dtype: "F32", shape: [t.rows, t.cols], data_offsets: [offset, offset + bytes] };
        this.offsets.set(tensorName(t, step), { offset, bytes });
        offset += bytes;
      }
    }
    this.bytes = offset;
    let json = new TextEncoder().encode(JSON.stringify(header));
    const padded = new Uint8Array(Math.ceil(json.byteLength / 8) * 8).fill(0x20);
    padded.set(json);
    json = padded;
    const prefix = new Uint8Array(8 + json.byteLength);
    new DataView(prefix.buffer).setBigUint64(0, BigInt(json.byteLength), true);
    prefix.set(json, 8);
    this.dataStart = prefix.byteLength;
    this.path = await Deno.makeTempFile({ dir: this.tempDir, prefix: "kleinscope-effects-baseline-", suffix: ".safetensors" });
    this.log(
      `effects: the baseline's rows of ${taps.length / 2} block(s) × ${steps.length} step(s) go to ${this.path} ` +
        `(${(offset / 2 ** 20).toFixed(1)} MiB)`,
    );
    this.writer = await Deno.open(this.path, { write: true });
    await writeAll(this.writer, prefix, 0, this.path);
  }

  async rows(tap: ProbeTap, step: number, data: Float32Array): Promise<void> {
    const at = this.offsets.get(tensorName(tap, step));
    if (!this.writer || !at) throw new Error(`effects: no place for the baseline's ${tensorName(tap, step)}`);
    if (data.byteLength !== at.bytes) throw new Error(`effects: ${tensorName(tap, step)} holds ${data.byteLength} bytes, not ${at.bytes}`);
    await writeAll(this.writer, new Uint8Array(data.buffer, data.byteOffset, data.byteLength), this.dataStart + at.offset, this.path!);
  }

  /** Close the file for writing and open it for reading (after the baseline run). */
  async finish(): Promise<void> {
    if (!this.writer) throw new Error("effects: the baseline run recorded no rows");
    this.writer.close();
    this.writer = null;
    this.reader = await SafetensorsFile.open(this.path!);
  }

  /** The baseline's rows of `tap` at `step`. */
  async read(tap: ProbeTap, step: number): Promise<Float32Array> {
    if (!this.reader) throw new Error("effects: the baseline's rows are not finished");
    return await this.reader.readF32(tensorName(tap, step));
  }

  /** Close and remove the temporary file (safe to call more than once, and after a failure). */
  async dispose(): Promise<void> {
    this.writer?.close();
    this.writer = null;
    this.reader?.close();
    this.reader = null;
    if (this.path) await Deno.remove(this.path).catch(() => {});
    this.path = null;
  }
}

async function writeAll(file: Deno.FsFile, bytes: Uint8Array, position: number, path: string): Promise<void> {
  try {
    await file.seek(position, Deno.SeekMode.Start);
    for (let done = 0; done < bytes.byteLength;) done += await file.write(bytes.subarray(done));
  } catch (e) {
    throw new Error(`effects: cannot write the baseline's rows to ${path}: ${(e as Error).message}`);
  }
}

// ---- comparing a run with the baseline, step by step ----------------------------------------------------------------

/** The statistics of one block at one step, by group. */
export interface EffectRecord {
  block: string;
  blockIndex: number;
  step: number;
  text: RowStats;
  image: RowStats;
  /** Present when the run has references. */
  ref?: RowStats;
}

/** Compares each of a run's taps, as it comes, with the baseline's from disk; keeps only the statistics. */
export class EffectsComparer implements ProbeSink {
  readonly records: EffectRecord[] = [];
  private groups: EffectGroup[] = [];

  constructor(private readonly baseline: BaselineRows, private readonly label: string) {}

  begin(taps: readonly ProbeTap[], steps: readonly number[], layout: RunLayout): Promise<void> {
    const key = (ts: readonly ProbeTap[], ss: readonly number[]) => JSON.stringify([ts.map((t) => [t.tap, t.rows, t.cols]), ss]);
    if (key(taps, steps) !== key(this.baseline.taps, this.baseline.steps)) {
      throw new Error(`effects: the ${this.label} run's blocks, steps or row counts differ from the baseline run's`);
    }
    this.groups = effectGroups(layout);
    return Promise.resolve();
  }

  async rows(tap: ProbeTap, step: number, data: Float32Array): Promise<void> {
    const base = await this.baseline.read(tap, step);
    let record = this.records.find((r) => r.blockIndex === tap.blockIndex && r.step === step);
    if (!record) {
      record = { block: tap.block, blockIndex: tap.blockIndex, step } as EffectRecord;
      this.records.push(record);
    }
    for (const g of this.groups) {
      if (g.stream === tap.stream) record[g.name] = rowStats(data, base, tap.cols, g.rowStart, g.rowEnd);
    }
  }

  /** In block order, then step order. */
  sorted(): EffectRecord[] {
    return [...this.records].sort((a, b) => a.blockIndex - b.blockIndex || a.step - b.step);
  }
}

// ---- attention-flow change -----------------------------------------------------------------------------------------

export interface FlowChangeTable {
  block: string;
  blockIndex: number;
  step: number;
  /** Mean over heads, [query groups][key groups]: the run's, the baseline's, and run − baseline. */
  run: number[][];
  baseline: number[][];
  delta: number[][];
}

export interface FlowChange {
  forward: "cond" | "uncond";
  queryGroups: FlowGroup[];
  keyGroups: FlowGroup[];
  tables: FlowChangeTable[];
}

/** The change of the mean-over-heads group tables from the baseline's flow to a run's (same request, same layout). */
export function flowChange(run: AttentionFlowResult, baseline: AttentionFlowResult): FlowChange {
  const names = (r: AttentionFlowResult) => JSON.stringify([r.queryGroups, r.keyGroups]);
  if (names(run) !== names(baseline)) throw new Error("effects: the attention flows of the run and its baseline have different groups");
  return {
    forward: run.forward,
    queryGroups: run.queryGroups.map((g) => ({ ...g })),
    keyGroups: run.keyGroups.map((g) => ({ ...g })),
    tables: run.tables.map((t) => {
      const m = run.matrix(t), b = baseline.matrix(baseline.at(t.blockIndex, t.step));
      return {
        block: t.block,
        blockIndex: t.blockIndex,
        step: t.step,
        run: m,
        baseline: b,
        delta: m.map((row, a) => row.map((v, k) => v - b[a][k])),
      };
    }),
  };
}

// ---- the control ---------------------------------------------------------------------------------------------------

/** One knockout setting of the spec and the control setting that replaces it in the control run. */
export interface ControlSetting {
  /** Index of the knockout entry in the spec's interventions. */
  intervention: number;
  original: string;
  setting: string;
  blocks?: KnockoutSettingSpec["blocks"];
  steps?: KnockoutSettingSpec["steps"];
  /** Query positions of the original setting in this run (0: it masks nothing here, and is kept as it is). */
  queries: number;
  /** text[pad] positions of this run (the pool the control's queries are drawn from). */
  pool: number;
}

export const CONTROL_RULE = "each knockout setting A->B becomes A->text[i,j,…]: B's query positions are replaced by a seeded random " +
  "subset of this run's text[pad] of the same size (partial Fisher–Yates over ascending text[pad] positions with SplitMix64 seeded by " +
  "the control's seed, settings drawn in spec order); keys, blocks and steps are kept; a setting that masks nothing in this run is kept";

/** The control's knockouts for a run's layout: every knockout entry of `interventions` with its settings replaced by
 * the rule above. Refused (naming the setting) when a query group is larger than text[pad], or when the draw would cut
 * the original's own edges. */
export function controlKnockouts(
  interventions: readonly InterventionSpec[],
  layout: RunLayout,
  seed: number,
): { interventions: KnockoutSpec[]; settings: ControlSetting[] } {
  const rng = new Rng(seed);
  const pool = [...layout.prompt.pad].sort((a, b) => a - b);
  const settings: ControlSetting[] = [];
  const replaced = interventions.map((iv, i) => {
    if (iv.type !== "knockout") throw new Error(`control: replaces knockout settings, and interventions[${i}] is a ${iv.type}`);
    const k = iv;
    const list = k.settings ?? [{ setting: k.setting!, blocks: k.blocks, steps: k.steps }];
    return {
      type: "knockout" as const,
      settings: list.map((s) => {
        const { sources, destinations } = parseSetting(s.setting);
        const where = `control: knockout ${printable(s.setting)}`;
        const queries = resolveGroups(layout, destinations);
        const keys = resolveGroups(layout, sources);
        let setting = s.setting;
        if (queries.length && keys.length) {
          if (queries.length > pool.length) {
            throw new Error(
              `${where}: its query group ${printable(destinations)} has ${queries.length} positions in this run and text[pad] only ` +
                `${pool.length}, so no control of the same size can be drawn from text[pad]`,
            );
          }
          const draw = [...pool];
          for (let j = 0; j < queries.length; j++) {
            const pick = j + rng.int(draw.length - j);
            [draw[j], draw[pick]] = [draw[pick], draw[j]];
          }
          const chosen = draw.slice(0, queries.length).sort((a, b) => a - b);
          if (chosen.every((p, j) => p === queries[j])) {
            throw new Error(
              `${where}: its query group ${printable(destinations)} is all of text[pad] (${pool.length} positions), so a control ` +
                `of the same size drawn from text[pad] would cut the same edges`,
            );
          }
          setting = `${sources}->text[${chosen.join(",")}]`;
        }
        settings.push({
          intervention: i,
          original: s.setting,
          setting,
          blocks: s.blocks,
          steps: s.steps,
          queries: keys.length ? queries.length : 0,
          pool: pool.length,
        });
        return { setting, blocks: s.blocks, steps: s.steps };
      }),
    };
  });
  return { interventions: replaced, settings };
}

// ---- what a spec's effects hold, and effects.json ------------------------------------------------------------------

/** The effects of one run (the intervention run, or the control) against the baseline. */
export interface RunEffects {
  /** The run's interventions, as in the spec (for the control: with its settings). */
  interventions: readonly unknown[];
  records: EffectRecord[];
  /** The final latents (noise rows) and the decoded image against the baseline's. */
  final: { latents: RowStats; imageMeanAbsDiff255: number };
  attentionFlow: FlowChange | null;
  warnings: string[];
}

export interface EffectsResult {
  blocks: string[];
  steps: number[];
  groups: { name: string; tap: "txt" | "img"; rows: number }[];
  /** Bytes of baseline rows the comparison wrote to (and read from) its temporary file. */
  baselineBytes: number;
  /** What the baseline is, in words. */
  baselineDescription: string;
  baselineWarnings: string[];
  intervention: RunEffects;
  control: (RunEffects & { seed: number; settings: ControlSetting[] }) | null;
}

/** The run's final state against the baseline's: latents statistics and the mean absolute pixel difference (of 255). */
export function finalEffects(
  run: { latents: Float32Array; image: Float32Array },
  base: { latents: Float32Array; image: Float32Array },
  channels: number,
): RunEffects["final"] {
  if (run.image.length !== base.image.length) throw new Error("effects: the run's image and the baseline's differ in size");
  let sum = 0;
  for (let i = 0; i < run.image.length; i++) sum += Math.abs(run.image[i] - base.image[i]);
  return {
    latents: rowStats(run.latents, base.latents, channels, 0, run.latents.length / channels),
    imageMeanAbsDiff255: (sum / run.image.length) * 255,
  };
}

/** Summary of what the baseline recorded: blocks, steps and the compared groups with their row counts. */
export function effectsLayout(baseline: BaselineRows): Pick<EffectsResult, "blocks" | "steps" | "groups" | "baselineBytes"> {
  if (!baseline.layout) throw new Error("effects: the baseline run recorded no rows");
  return {
    blocks: [...new Set(baseline.taps.map((t) => t.block))],
    steps: [...baseline.steps],
    groups: effectGroups(baseline.layout).map((g) => ({ name: g.name, tap: g.stream, rows: g.rowEnd - g.rowStart })),
    baselineBytes: baseline.bytes,
  };
}

export interface EffectsJson {
  format: typeof EFFECTS_FORMAT;
  version: 1;
  /** The forward the rows come from ("cond"; the only one of an unguided run). */
  forward: "cond";
  /** What the rows are compared with. */
  baseline: { image: "baseline.png"; description: string; warnings: string[] };
  blocks: string[];
  steps: number[];
  /** The compared row groups: "text" (rows of <block>.txt), "image" (noise rows of <block>.img), "ref" (reference rows
   * of <block>.img, with references). */
  groups: { name: string; tap: "txt" | "img"; rows: number }[];
  statistics: { relL2: string; cosine: string; rowCosine: string };
  baselineBytes: number;
  intervention: RunEffectsJson & { image: "image.png" };
  control: (RunEffectsJson & { image: "control.png"; seed: number; rule: string; settings: ControlSetting[] }) | null;
}

export interface RunEffectsJson {
  interventions: unknown[];
  /** Per block (block order) and step: statistics of each group. */
  records: EffectRecord[];
  final: RunEffects["final"];
  /** With an attention flow in the spec: the mean-over-heads tables of the run and the baseline, and their difference. */
  attentionFlow: FlowChange | null;
  warnings: string[];
}

function runJson(e: RunEffects): RunEffectsJson {
  return {
    interventions: [...e.interventions],
    records: e.records,
    final: e.final,
    attentionFlow: e.attentionFlow,
    warnings: e.warnings,
  };
}

/** The JSON document of a spec's effects (effects.json). Numbers are float64 as computed (JSON's shortest form). */
export function effectsJson(r: EffectsResult): EffectsJson {
  return {
    format: EFFECTS_FORMAT,
    version: 1,
    forward: "cond",
    baseline: { image: "baseline.png", description: r.baselineDescription, warnings: r.baselineWarnings },
    blocks: r.blocks,
    steps: r.steps,
    groups: r.groups,
    statistics: {
      relL2: "‖x_run − x_base‖ / ‖x_base‖ over the group's rows, flattened (null when the baseline's rows are all zero)",
      cosine: "⟨x_run, x_base⟩ / (‖x_run‖ ‖x_base‖) over the group's rows, flattened",
      rowCosine: "mean over the group's rows of each row's cosine (1 for two zero rows, 0 for one)",
    },
    baselineBytes: r.baselineBytes,
    intervention: { ...runJson(r.intervention), image: "image.png" },
    control: r.control
      ? { ...runJson(r.control), image: "control.png", seed: r.control.seed, rule: CONTROL_RULE, settings: r.control.settings }
      : null,
  };
}
