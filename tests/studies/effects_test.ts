// Intervention effects on the tiny checkpoint: a no-op knockout changes nothing (rel L2 exactly 0, cosines 1); a real
// knockout changes nothing before its first masked block at step 0 and something from there on; the control draws
// the same settings for a seed and others for another; effects.json through the CLI; refusals before GPU work.

import assert from "node:assert/strict";
import { join } from "node:path";
import { Flux2KleinPipeline } from "../../model/pipeline.ts";
import type { RunLayout } from "../../model/run.ts";
import { resolveGroups } from "../../interventions/groups.ts";
import { checkSpec, executeSpec } from "../../studies/execute.ts";
import { controlKnockouts, type EffectRecord, rowStats } from "../../studies/effects.ts";
import { type InterventionSpec, parseSpec, type RunSpec } from "../../studies/spec.ts";
import { effectsFigures, effectsSection, parseEffectsJson } from "../../experiments/effects_plots.ts";

const FIX = new URL("../fixtures/klein-tiny/", import.meta.url).pathname;
const ROOT = new URL("../../", import.meta.url).pathname;
const MODEL = FIX + "model";
const REF0 = FIX + "images/ref0_80x64.png";
const PROMPT = "draw a couch in this color";
const BLOCKS = ["double.0", "double.1", "single.0", "single.1"];

let shared: Flux2KleinPipeline | null = null;
async function pipeline(): Promise<Flux2KleinPipeline> {
  shared ??= await Flux2KleinPipeline.load(MODEL, { keepTextEncoder: true, log: () => {} });
  return shared;
}

// 64 text rows (maxSequenceLength) instead of 512: every group still has tokens, and the runs cost a fraction.
const TEXT_ROWS = 64;
const edit = { model: MODEL, prompt: PROMPT, refs: [REF0], width: 32, height: 48, steps: 2, seed: 5, maxSequenceLength: TEXT_ROWS };

/** Temporary files of the baseline's rows left in `dir`. */
async function leftovers(dir: string): Promise<string[]> {
  return (await Array.fromAsync(Deno.readDir(dir))).map((e) => e.name).filter((n) => n.startsWith("kleinscope-effects-"));
}

const groupsOf = (r: EffectRecord) => [r.text, r.image, ...(r.ref ? [r.ref] : [])];

Deno.test("effects: row statistics in float64 (rel L2, flattened and per-row cosines; zero rows)", () => {
  const base = Float32Array.from([3, 4, 0, 0, 1, 0]);
  const run = Float32Array.from([3, 4, 0, 0, 0, 1]);
  const s = rowStats(run, base, 2, 0, 3);
  assert.equal(s.relL2, Math.sqrt(2) / Math.sqrt(26));
  assert.equal(s.cosine, 25 / 26);
  assert.equal(s.rowCosine, (1 + 1 + 0) / 3, "identical rows 1, two zero rows 1, orthogonal rows 0");
  const same = Float32Array.from({ length: 37 * 5 }, (_, i) => Math.fround(Math.sin(i * 1.7) * 3.1));
  assert.deepEqual(rowStats(same, same.slice(), 5, 0, 37), { relL2: 0, cosine: 1, rowCosine: 1 });
  assert.deepEqual(rowStats(new Float32Array(4), Float32Array.of(0, 0, 0, 1), 2, 0, 2), { relL2: 1, cosine: 0, rowCosine: 0.5 });
  assert.equal(rowStats(Float32Array.of(1, 0), new Float32Array(2), 2, 0, 1).relL2, null);
});

Deno.test({
  name: "effects: a knockout whose group is empty changes nothing (rel L2 exactly 0, cosines 1) and the temporary rows are removed",
  sanitizeResources: false,
  async fn() {
    const pipe = await pipeline();
    const tmp = await Deno.makeTempDir({ prefix: "kleinscope-effects-test-" });
    try {
      // The empty prompt has no text[content]: the setting masks nothing, so the run is its baseline.
      const spec = parseSpec({
        ...edit,
        prompt: "",
        interventions: [{ type: "knockout", setting: "text[content]->image" }],
        effects: true,
      });
      const run = await executeSpec(pipe, spec, () => {}, { tempDir: tmp });
      const fx = run.effects!;
      assert.ok(run.warnings.some((w) => /group text\[content\] is empty in this run/.test(w)), run.warnings.join("; "));
      assert.deepEqual(fx.blocks, BLOCKS);
      assert.deepEqual(fx.steps, [0, 1]);
      const layout = run.result.layout;
      assert.deepEqual(fx.groups, [
        { name: "text", tap: "txt", rows: TEXT_ROWS },
        { name: "image", tap: "img", rows: layout.noiseRows },
        { name: "ref", tap: "img", rows: layout.refRows[0] },
      ]);
      assert.equal(
        fx.baselineBytes,
        2 * 4 * (TEXT_ROWS + layout.noiseRows + layout.refRows[0]) * 256 * 4,
        "steps × blocks × rows × hidden × 4",
      );
      assert.equal(fx.intervention.records.length, 4 * 2);
      for (const r of fx.intervention.records) {
        for (const g of groupsOf(r)) assert.deepEqual(g, { relL2: 0, cosine: 1, rowCosine: 1 }, `${r.block} step ${r.step}`);
      }
      assert.deepEqual(fx.intervention.final, { latents: { relL2: 0, cosine: 1, rowCosine: 1 }, imageMeanAbsDiff255: 0 });
      assert.equal(fx.control, null);
      assert.deepEqual(await leftovers(tmp), []);
    } finally {
      await Deno.remove(tmp, { recursive: true });
    }
  },
});

Deno.test({
  name:
    "effects: a knockout changes nothing before its first masked block at step 0; the flow change is run − baseline; the control's own run",
  sanitizeResources: false,
  async fn() {
    const pipe = await pipeline();
    const spec = parseSpec({
      ...edit,
      interventions: [{ type: "knockout", setting: "ref->text[content]", blocks: "1..4" }],
      attentionFlow: { blocks: "double.0,double.1" },
      effects: true,
      control: { seed: 11 },
    });
    const run = await executeSpec(pipe, spec);
    const fx = run.effects!;
    const at = (records: EffectRecord[], block: string, step: number) => records.find((r) => r.block === block && r.step === step)!;
    const rec = fx.intervention.records;
    for (const g of groupsOf(at(rec, "double.0", 0))) assert.deepEqual(g, { relL2: 0, cosine: 1, rowCosine: 1 }, "before the mask");
    const first = at(rec, "double.1", 0);
    assert.ok(first.text.relL2! > 1e-4 && first.text.cosine < 1, `double.1 text rows change: ${JSON.stringify(first.text)}`);
    // In a double block the image stream's queries are not masked and the text keys it reads come from the block's
    // input, so its rows are unchanged at the first masked block, and changed from the next block on.
    assert.deepEqual(first.image, { relL2: 0, cosine: 1, rowCosine: 1 });
    for (const block of ["single.0", "single.1"]) {
      for (const g of groupsOf(at(rec, block, 0))) assert.ok(g.relL2! > 1e-6, `${block} step 0: ${JSON.stringify(g)}`);
    }
    assert.ok(at(rec, "double.0", 1).image.relL2! > 1e-6, "at step 1 the latents differ, so every block does");
    assert.ok(fx.intervention.final.latents.relL2! > 0 && fx.intervention.final.imageMeanAbsDiff255 > 0);

    // Attention flow: the baseline's and the run's mean tables, and their difference.
    const flow = fx.intervention.attentionFlow!;
    assert.deepEqual(flow.tables.map((t) => `${t.block}@${t.step}`), ["double.0@0", "double.0@1", "double.1@0", "double.1@1"]);
    const q = flow.queryGroups.findIndex((g) => g.name === "text[content]"), k = flow.keyGroups.findIndex((g) => g.name === "ref[0]");
    const d0 = flow.tables[0], d1 = flow.tables[2];
    assert.ok(d0.delta.flat().every((v) => v === 0), "no change before the mask");
    assert.equal(d1.run[q][k], 0, "the cut edges carry nothing in the run");
    assert.ok(d1.baseline[q][k] > 1e-3, "and something in the baseline");
    assert.equal(d1.delta[q][k], -d1.baseline[q][k]);
    const mean = run.attentionFlow!.matrix(run.attentionFlow!.at("double.1", 0));
    assert.deepEqual(d1.run, mean, "the run's table is the written flow's");

    // The control: text[content]'s size, drawn from text[pad], same keys and blocks; its own run and effects.
    const layout = run.result.layout;
    const c = fx.control!;
    assert.equal(c.seed, 11);
    assert.equal(c.settings.length, 1);
    const s = c.settings[0];
    const content = resolveGroups(layout, "text[content]"), pad = new Set(layout.prompt.pad);
    assert.equal(s.original, "ref->text[content]");
    assert.equal(s.queries, content.length);
    assert.equal(s.pool, pad.size);
    assert.equal(s.blocks, "1..4");
    const drawn = resolveGroups(layout, s.setting.split("->")[1]);
    assert.equal(drawn.length, content.length);
    assert.ok(drawn.every((p) => pad.has(p)), "control queries come from text[pad]");
    assert.deepEqual(c.interventions, [{ type: "knockout", settings: [{ setting: s.setting, blocks: "1..4", steps: undefined }] }]);
    assert.deepEqual(controlKnockouts(spec.interventions!, layout, 11).settings, c.settings, "reproducible for a seed");
    assert.notEqual(controlKnockouts(spec.interventions!, layout, 12).settings[0].setting, s.setting, "another seed, another draw");
    for (const g of groupsOf(at(c.records, "double.0", 0))) assert.deepEqual(g, { relL2: 0, cosine: 1, rowCosine: 1 });
    assert.ok(at(c.records, "double.1", 0).text.relL2! > 1e-4, "the control cuts edges too");
    assert.notDeepEqual(at(c.records, "single.0", 0), at(rec, "single.0", 0), "other edges, other effects");
    const controlFlow = c.attentionFlow!.tables.find((t) => t.block === "double.1" && t.step === 0)!;
    assert.ok(controlFlow.run[q][k] > 0, "the control leaves text[content] reading the reference");
    assert.deepEqual(controlFlow.baseline, d1.baseline, "both against the same baseline");
    assert.ok(run.control && run.baseline);
  },
});

Deno.test("effects: the control's rule on a layout (seeded subsets of text[pad], refusals)", () => {
  const layout: RunLayout = {
    textRows: 512,
    noiseRows: 6,
    refRows: [20],
    prompt: {
      content: [30, 31, 32, 33, 34],
      scaffold: [0, 1, 2, 3, 35, 36],
      pad: Array.from({ length: 40 }, (_, i) => 37 + i),
      padding: [0, 1, 2, 3, 35, 36, ...Array.from({ length: 40 }, (_, i) => 37 + i)],
    },
  };
  const ko: InterventionSpec[] = [{
    type: "knockout",
    settings: [{ setting: "ref->text[content]" }, { setting: "image+ref->text[1..3]", steps: "0" }],
  }];
  const a = controlKnockouts(ko, layout, 7), b = controlKnockouts(ko, layout, 7), other = controlKnockouts(ko, layout, 8);
  assert.deepEqual(a, b);
  assert.notDeepEqual(a.settings.map((s) => s.setting), other.settings.map((s) => s.setting));
  const sizes = a.settings.map((s) => resolveGroups(layout, s.setting.split("->")[1]));
  assert.deepEqual(sizes.map((s) => s.length), [5, 2]);
  assert.ok(sizes.flat().every((p) => p >= 37 && p < 77));
  assert.ok(a.settings[1].setting.startsWith("image+ref->text["));
  assert.equal(a.interventions[0].settings![1].steps, "0");
  // An empty group masks nothing, and is kept.
  const empty = controlKnockouts([{ type: "knockout", setting: "text[content]->image" }], {
    ...layout,
    prompt: { ...layout.prompt, content: [] },
  }, 1);
  assert.equal(empty.settings[0].setting, "text[content]->image");
  assert.equal(empty.settings[0].queries, 0);
  assert.throws(
    () => controlKnockouts([{ type: "knockout", setting: "ref->text[padding]" }], layout, 1),
    /control: knockout ref->text\[padding\]: its query group text\[padding\] has 46 positions in this run and text\[pad\] only 40/,
  );
  assert.throws(
    () => controlKnockouts([{ type: "knockout", setting: "ref->text[pad]" }], layout, 1),
    /its query group text\[pad\] is all of text\[pad\] \(40 positions\), so a control .* would cut the same edges/,
  );
  assert.throws(
    () => controlKnockouts([{ type: "patch", block: "double.1", source: {} }], layout, 1),
    /control: replaces knockout settings, and interventions\[0\] is a patch/,
  );
});

Deno.test({
  name: "effects: bad effects and control fields are refused by field, and a control that cannot be drawn before any GPU work",
  sanitizeResources: false,
  async fn() {
    const ko = [{ type: "knockout", setting: "ref->text" }];
    assert.throws(() => parseSpec({ ...edit, effects: true }), /spec\.effects: compares an intervention run with its baseline/);
    assert.throws(() => parseSpec({ ...edit, interventions: ko, effects: 3 }), /spec\.effects: expected true or \{"blocks": …/);
    assert.throws(() => parseSpec({ ...edit, interventions: ko, effects: { block: "all" } }), /spec\.effects\.block: unknown field/);
    assert.throws(() => parseSpec({ ...edit, interventions: ko, control: { seed: 1 } }), /spec\.control: needs "effects"/);
    assert.throws(() => parseSpec({ ...edit, interventions: ko, effects: true, control: {} }), /spec\.control\.seed: is required/);
    assert.throws(
      () => parseSpec({ ...edit, interventions: ko, effects: true, control: { seed: -1 } }),
      /spec\.control\.seed: expected an integer ≥ 0/,
    );
    const patch = { type: "patch", block: "double.1", source: { seed: 1 } };
    assert.throws(
      () => parseSpec({ ...edit, interventions: [patch], effects: true, control: { seed: 1 } }),
      /spec\.control: .*interventions\[0\] is a patch/,
    );
    assert.equal(parseSpec({ ...edit, interventions: ko, effects: false }).effects, undefined);

    const pipe = await pipeline();
    const original = pipe.execute.bind(pipe);
    pipe.execute = () => Promise.reject(new Error("GPU work started"));
    try {
      const check = (extra: Partial<RunSpec>) => checkSpec(pipe, parseSpec({ ...edit, interventions: ko, effects: true, ...extra }));
      await assert.rejects(() => check({ control: { seed: 1 } }), /control: knockout ref->text: its query group text has 64 positions/);
      await assert.rejects(() => check({ effects: { blocks: "double.7" } }), /effects\.blocks: unknown block "double\.7"/);
      await assert.rejects(() => check({ effects: { steps: "2" } }), /effects\.steps: step 2 is beyond this run's 2 steps/);
    } finally {
      pipe.execute = original;
    }
  },
});

async function cli(args: string[], env: Record<string, string>): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command(Deno.execPath(), { args: ["run", "-A", join(ROOT, "cli.ts"), ...args], cwd: ROOT, env }).output();
  const decode = (b: Uint8Array) => new TextDecoder().decode(b);
  return { code: out.code, stdout: decode(out.stdout), stderr: decode(out.stderr) };
}

Deno.test({
  name: "deno task knockout --effects --control SEED writes effects.json (intervention and control), baseline.png and control.png",
  sanitizeResources: false,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "kleinscope-effects-cli-" });
    const tmp = join(dir, "tmp");
    await Deno.mkdir(tmp);
    try {
      const common = [
        ...["--model", MODEL, "--prompt", PROMPT, "--ref", REF0],
        ...["--width", "32", "--height", "32", "--steps", "1", "--max-sequence-length", String(TEXT_ROWS)],
      ];
      const printed = await cli(["knockout", ...common, "--setting", "ref->text[content]", "--control", "4", "--print-spec"], {});
      assert.equal(printed.code, 0, printed.stderr);
      const printedSpec = JSON.parse(printed.stdout);
      assert.deepEqual([printedSpec.effects, printedSpec.control], [true, { seed: 4 }]);
      const misuse = await cli(["capture", ...common, "--capture", "double.0.txt", "--effects"], {});
      assert.equal(misuse.code, 2, misuse.stderr);
      assert.match(misuse.stderr.trim(), /^error: --effects compares an intervention run with its baseline/);

      const out = join(dir, "ko");
      const r = await cli([
        "knockout",
        ...common,
        "--setting",
        "ref->text[content]",
        "--blocks",
        "single",
        "--effects",
        "--control",
        "4",
        "--out",
        out,
      ], {
        TMPDIR: tmp,
      });
      assert.equal(r.code, 0, r.stderr);
      for (const f of ["image.png", "baseline.png", "control.png", "effects.json", "spec.json", "run.json"]) await Deno.stat(join(out, f));
      assert.deepEqual(await leftovers(tmp), [], "the baseline's temporary rows are removed");
      const json = parseEffectsJson(await Deno.readTextFile(join(out, "effects.json")));
      assert.equal(json.format, "kleinscope-effects");
      assert.deepEqual(json.blocks, BLOCKS);
      assert.deepEqual(json.steps, [0]);
      assert.deepEqual(json.groups.map((g) => [g.name, g.tap]), [["text", "txt"], ["image", "img"], ["ref", "img"]]);
      assert.equal(json.baseline.image, "baseline.png");
      assert.equal(json.intervention.image, "image.png");
      assert.deepEqual(json.intervention.interventions, [{
        type: "knockout",
        settings: [{ setting: "ref->text[content]", blocks: "single" }],
      }]);
      assert.equal(json.intervention.records.length, 4);
      assert.equal(json.intervention.attentionFlow, null);
      for (const run of [json.intervention, json.control!]) {
        for (const block of ["double.0", "double.1"]) {
          const rec = run.records.find((x) => x.block === block)!;
          for (const g of groupsOf(rec)) assert.deepEqual(g, { relL2: 0, cosine: 1, rowCosine: 1 }, `${block} is before the mask`);
        }
        assert.ok(run.records.find((x) => x.block === "single.0")!.text.relL2! > 0);
      }
      assert.equal(json.control!.image, "control.png");
      assert.equal(json.control!.seed, 4);
      assert.match(json.control!.rule, /seeded random subset of this run's text\[pad\] of the same size/);
      assert.match(json.control!.settings[0].setting, /^ref->text\[\d+(,\d+)*\]$/);
      const spec = parseSpec(JSON.parse(await Deno.readTextFile(join(out, "spec.json"))));
      assert.deepEqual([spec.effects, spec.control], [true, { seed: 4 }]);

      // The figures read the file back.
      const figures = effectsFigures(json);
      assert.deepEqual(figures.vsBlock.map((f) => f.stat), ["relL2", "rowCosine"]);
      assert.equal(figures.maps.length, 2 * 3);
      assert.equal(figures.flow.length, 0);
      const line = figures.vsBlock[0].svg;
      assert.match(line, /data-run="control" data-group="text"/);
      assert.match(line, /data-block="double\.0" data-value="0"/);
      assert.match(effectsSection(json), /Control \(seed 4\)/);
      assert.throws(() => parseEffectsJson(JSON.stringify({ ...json, version: 2 })), /effects\.json: version: expected 1, got 2/);
      const broken = structuredClone(json);
      (broken.intervention.records[1] as unknown as Record<string, unknown>).text = { relL2: "x" };
      assert.throws(
        () => parseEffectsJson(JSON.stringify(broken)),
        /intervention\.records\[1\]\.text: expected \{relL2, cosine, rowCosine\}/,
      );
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "deno task attention-flow --effects records the flow change; --effects without a --setting is a usage mistake",
  sanitizeResources: false,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "kleinscope-effects-flow-" });
    try {
      const common = [
        "attention-flow",
        "--model",
        MODEL,
        "--prompt",
        PROMPT,
        "--ref",
        REF0,
        "--width",
        "32",
        "--height",
        "32",
        "--steps",
        "1",
      ];
      const misuse = await cli([...common, "--effects", "--out", join(dir, "bad")], {});
      assert.equal(misuse.code, 2, misuse.stderr);
      assert.match(misuse.stderr.trim(), /^error: --effects measures a knockout against its baseline; give a --setting "A->B"/);
      const out = join(dir, "flow");
      const args = [
        ...common,
        "--blocks",
        "double.1",
        "--setting",
        "ref->text[pad]",
        "--knockout-blocks",
        "double.1",
        "--effects",
        "--out",
        out,
      ];
      const r = await cli(args, {});
      assert.equal(r.code, 0, r.stderr);
      const json = parseEffectsJson(await Deno.readTextFile(join(out, "effects.json")));
      assert.equal(json.control, null);
      const flow = json.intervention.attentionFlow!;
      assert.deepEqual(flow.tables.map((t) => t.block), ["double.1"]);
      const t = flow.tables[0];
      const pad = flow.queryGroups.findIndex((g) => g.name === "text[pad]"), ref = flow.keyGroups.findIndex((g) => g.name === "ref[0]");
      assert.equal(t.run[pad][ref], 0);
      assert.ok(t.delta[pad][ref] < -1e-3, "the cut mass is gone against the baseline");
      // The written flow is the intervention run's.
      const written = JSON.parse(await Deno.readTextFile(join(out, "attention_flow.json")));
      assert.deepEqual(t.run.flat().map(Math.fround), written.tables[0].mass[2].flat().map(Math.fround));
      const svg = effectsFigures(json).flow[0].svg;
      assert.match(svg, /data-query="text\[pad\]" data-key="ref\[0\]" data-delta="-/);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
