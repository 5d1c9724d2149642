import assert from "node:assert/strict";
import { join } from "node:path";
import { Flux2KleinPipeline, type GenerateRequest, type GenerateResult } from "../../model/pipeline.ts";
import { sequenceLength } from "../../model/run.ts";
import { AttentionFlowIntervention, type AttentionFlowResult } from "../../interventions/attention_flow.ts";
import { CaptureIntervention } from "../../interventions/capture_run.ts";
import { KnockoutIntervention } from "../../interventions/knockout.ts";
import { resolveGroups } from "../../interventions/groups.ts";
import { groupMaskBits } from "../../kernels/attention.ts";
import { flowGroupIds } from "../../kernels/attention_flow.ts";
import { attentionFlowReference } from "../../kernels/reference/attention_flow.ts";
import { checkSpec } from "../../studies/execute.ts";
import { parseSpec } from "../../studies/spec.ts";
import { SafetensorsFile } from "../../weights/safetensors.ts";

const FIX = new URL("../fixtures/klein-tiny/", import.meta.url).pathname;
const ROOT = new URL("../../", import.meta.url).pathname;
const MODEL = FIX + "model";
const REF0 = FIX + "images/ref0_80x64.png";
const PROMPT = "draw a couch in this color";
const HEADS = 2, HEAD_DIM = 128;

let shared: Flux2KleinPipeline | null = null;
async function pipeline(): Promise<Flux2KleinPipeline> {
  shared ??= await Flux2KleinPipeline.load(MODEL, { keepTextEncoder: true, log: () => {} });
  return shared;
}

const edit: GenerateRequest = { prompt: PROMPT, refs: [REF0], width: 32, height: 48, steps: 2, seed: 5, maxSequenceLength: 64 };

function relL2(got: ArrayLike<number>, want: ArrayLike<number>): number {
  let num = 0, den = 0;
  for (let i = 0; i < want.length; i++) {
    num += (got[i] - want[i]) ** 2;
    den += want[i] ** 2;
  }
  return Math.sqrt(num / den);
}

/** Every non-empty query group's row of every slice sums to 1 (the key groups cover the sequence). */
function assertRowsSumToOne(flow: AttentionFlowResult, label: string): number {
  assert.equal(flow.uncoveredKeys, 0, `${label}: key groups should cover the sequence`);
  const gq = flow.queryGroups.length, gk = flow.keyGroups.length;
  let rows = 0;
  for (const t of flow.tables) {
    assert.equal(t.mass.length, (flow.heads.length + 1) * gq * gk);
    for (let h = 0; h <= flow.heads.length; h++) {
      for (let a = 0; a < gq; a++) {
        const row = t.mass.subarray((h * gq + a) * gk, (h * gq + a + 1) * gk);
        const sum = row.reduce((x, y) => x + y, 0);
        assert.ok(
          Math.abs(sum - 1) <= 1e-5,
          `${label}: ${t.block} step ${t.step} slice ${h} group ${flow.queryGroups[a].name} sums to ${sum}`,
        );
        assert.ok(row.every((x) => x >= 0));
        rows++;
      }
    }
  }
  return rows;
}

/** The flow of `block` at `step` computed in float64 from the captured q and k of that block, under `rules`. */
function referenceFlow(
  run: GenerateResult,
  cap: CaptureIntervention,
  block: string,
  step: number,
  groups: { query: string[]; key: string[]; token?: string },
  rules: { queries: number[]; keys: number[] }[] = [],
  forward: "cond" | "uncond" = "cond",
) {
  const layout = run.layout, S = sequenceLength(layout);
  const set = cap.results(run);
  const q = set.at(`${block}.attn.q`, undefined, step, forward), k = set.at(`${block}.attn.k`, undefined, step, forward);
  assert.equal(q.rows, S);
  const lists = (names: string[]) => names.map((g) => resolveGroups(layout, g)).filter((l) => l.length);
  const queryLists = lists(groups.query), keyLists = lists(groups.key);
  return attentionFlowReference(q.data, k.data, {
    sq: S,
    sk: S,
    heads: HEADS,
    kvHeads: HEADS,
    headDim: HEAD_DIM,
    bits: rules.length ? groupMaskBits(S, S, rules) : undefined,
    queryGroups: flowGroupIds(S, queryLists),
    keyGroups: flowGroupIds(S, keyLists),
    queryGroupCount: queryLists.length,
    keyGroupCount: keyLists.length,
    tokenGroup: groups.token === undefined ? undefined : groups.query.filter((g) => resolveGroups(layout, g).length).indexOf(groups.token),
  });
}

const DEFAULT_GROUPS = ["text[content]", "text[scaffold]", "text[pad]", "image", "ref[0]"];

Deno.test({
  name:
    "attention flow: tables sum to 1 per query group and equal the float64 softmax of the captured q and k, with and without a knockout",
  sanitizeResources: false,
  async fn() {
    const pipe = await pipeline();
    const captureTaps = ["double.1", "single.0"].flatMap((b) => [`${b}.attn.q`, `${b}.attn.k`]).map((tap) => ({ tap, steps: "1" }));
    // A knockout of pad and scaffold queries on ref keys, and of text[content] queries on image keys, in every block.
    const settings = [{ setting: "ref->text[padding]" }, { setting: "image->text[content]" }];
    for (const knockout of [false, true]) {
      const label = knockout ? "with knockout" : "plain";
      const flow = new AttentionFlowIntervention({ tokenGroup: "text[content]" });
      // Groups that do not cover the keys, one head kept, one block and step.
      const partial = new AttentionFlowIntervention({
        blocks: "single.0",
        steps: [1],
        queryGroups: ["text", "image+ref"],
        keyGroups: ["text[content]", "ref"],
        heads: [1],
      });
      const cap = new CaptureIntervention(captureTaps);
      const interventions = [flow, partial, cap, ...(knockout ? [new KnockoutIntervention(settings)] : [])];
      const run = await pipe.generate({ ...edit, interventions });
      const S = sequenceLength(run.layout);
      const result = flow.results(run);
      assert.deepEqual(result.queryGroups.map((g) => g.name), DEFAULT_GROUPS);
      assert.deepEqual(result.queryGroups.map((g) => g.tokens), DEFAULT_GROUPS.map((g) => resolveGroups(run.layout, g).length));
      assert.deepEqual(result.heads, [0, 1]);
      assert.equal(result.tables.length, 4 * 2, "every block at both steps");
      assert.ok(assertRowsSumToOne(result, label) >= 8 * 3 * 5);

      const rules = knockout
        ? [
          { queries: resolveGroups(run.layout, "text[padding]"), keys: resolveGroups(run.layout, "ref") },
          { queries: resolveGroups(run.layout, "text[content]"), keys: resolveGroups(run.layout, "image") },
        ]
        : [];
      for (const block of ["double.1", "single.0"]) {
        const table = result.at(block, 1);
        const want = referenceFlow(run, cap, block, 1, { query: DEFAULT_GROUPS, key: DEFAULT_GROUPS, token: "text[content]" }, rules);
        const err = relL2(table.mass, want.mass);
        assert.ok(err <= 1e-5, `${label}: ${block} group masses vs float64: rel L2 ${err}`);
        const tokenErr = relL2(table.tokens!, want.tokens!);
        assert.ok(tokenErr <= 1e-5, `${label}: ${block} per-key masses vs float64: rel L2 ${tokenErr}`);
        assert.equal(table.tokens!.length, (HEADS + 1) * S);
        // What the knockout cuts receives nothing; without it, the same edges carry mass.
        const mean = result.matrix(table);
        const [pad, content, image, ref] = ["text[pad]", "text[content]", "image", "ref[0]"].map((g) => DEFAULT_GROUPS.indexOf(g));
        if (knockout) {
          assert.equal(mean[pad][ref], 0);
          assert.equal(mean[content][image], 0);
        } else {
          assert.ok(mean[pad][ref] > 1e-3 && mean[content][image] > 1e-3, `${label}: ${block} edges carry mass`);
        }
      }

      // The partial flow: head 1 and the mean over both heads, keys outside its key groups uncounted.
      const p = partial.results(run);
      assert.equal(p.tables.length, 1);
      assert.deepEqual(p.heads, [1]);
      assert.equal(p.uncoveredKeys, S - resolveGroups(run.layout, "text[content]").length - resolveGroups(run.layout, "ref").length);
      const want = referenceFlow(run, cap, "single.0", 1, { query: ["text", "image+ref"], key: ["text[content]", "ref"] }, rules);
      const gq = 2, gk = 2;
      const head1AndMean = Float64Array.from([...want.mass.subarray(gq * gk, 2 * gq * gk), ...want.mass.subarray(2 * gq * gk)]);
      const err = relL2(p.at("single.0", 1).mass, head1AndMean);
      assert.ok(err <= 1e-5, `${label}: partial flow vs float64: rel L2 ${err}`);
      const sums = p.matrix(p.at("single.0", 1), 1).map((row) => row[0] + row[1]);
      assert.ok(sums.every((s) => s < 1 - 1e-3), "rows of key groups that do not cover the keys sum to less than 1");
      assert.throws(() => p.matrix(p.at("single.0", 1), 0), /head 0 was not kept \(kept: 1\)/);
      assert.throws(() => p.at("single.1", 1), /no attention flow of block single.1 at step 1/);
    }
  },
});

Deno.test({
  name: "attention flow: in a guided run each forward's flow matches its own q and k (cond by default)",
  sanitizeResources: false,
  async fn() {
    const pipe = await pipeline();
    const cond = new AttentionFlowIntervention({ blocks: "single.1" });
    const uncond = new AttentionFlowIntervention({ blocks: "single.1", forward: "uncond" });
    const cap = new CaptureIntervention(
      ["cond", "uncond"].flatMap((forward) =>
        ["q", "k"].map((x) => ({ tap: `single.1.attn.${x}`, forward: forward as "cond" | "uncond" }))
      ),
    );
    const run = await pipe.generate({ ...edit, steps: 1, distilled: false, guidance: 4, interventions: [cond, uncond, cap] });
    const groups = { query: DEFAULT_GROUPS, key: DEFAULT_GROUPS };
    const masses = [];
    for (const [flow, forward] of [[cond, "cond"], [uncond, "uncond"]] as const) {
      const result = flow.results(run);
      assert.equal(result.forward, forward);
      assertRowsSumToOne(result, forward);
      const got = result.at("single.1", 0).mass;
      const err = relL2(got, referenceFlow(run, cap, "single.1", 0, groups, [], forward).mass);
      assert.ok(err <= 1e-5, `${forward}: rel L2 ${err}`);
      masses.push(got);
    }
    assert.ok(relL2(masses[0], masses[1]) > 1e-3, "the two forwards attend differently");
  },
});

Deno.test({
  name: "attention flow: bad groups, blocks, heads and forwards are refused before any GPU work; empty groups are dropped with a warning",
  sanitizeResources: false,
  async fn() {
    const pipe = await pipeline();
    const original = pipe.execute.bind(pipe);
    pipe.execute = () => Promise.reject(new Error("GPU work started"));
    try {
      const base = { model: MODEL, prompt: PROMPT, refs: [REF0], steps: 2 };
      const refuse = async (attentionFlow: Record<string, unknown>, pattern: RegExp) => {
        await assert.rejects(() => checkSpec(pipe, parseSpec({ ...base, attentionFlow })), pattern);
      };
      await refuse({ queryGroups: ["text[bogus]"] }, /group "text\[bogus\]": expected text\[content/);
      await refuse({ keyGroups: ["image", "ref[1]"] }, /ref\[1\] does not exist/);
      await refuse({ blocks: "double.5" }, /attention flow @ double.5: unknown block "double.5"/);
      await refuse({ steps: "2" }, /step 2 is beyond this run's 2 steps/);
      await refuse({ queryGroups: ["text", "text[content]"] }, /query groups text and text\[content\] overlap \(sequence position \d+\)/);
      await refuse({ keyGroups: ["image", "image"] }, /key group image is given twice/);
      await refuse({ tokenGroup: "text" }, /tokenGroup text is not one of the query groups \(text\[content\], text\[scaffold\]/);
      await refuse({ heads: [0, 2] }, /head 2 does not exist \(this model has 2 heads: 0..1\)/);
      await refuse({ forward: "uncond" }, /forward "uncond" exists only in a guided run/);
      await refuse({ queryGroups: Array.from({ length: 17 }, (_, i) => `text[${i}]`) }, /17 non-empty query groups; at most 16 per side/);
      assert.throws(() => parseSpec({ ...base, attentionFlow: { heads: [-1] } }), /spec\.attentionFlow\.heads: expected a non-empty list/);
      assert.throws(() => parseSpec({ ...base, attentionFlow: { groups: [] } }), /spec\.attentionFlow\.groups: unknown field/);
      assert.throws(
        () => parseSpec({ ...base, attentionFlow: { keyGroups: [] } }),
        /spec\.attentionFlow\.keyGroups: expected a non-empty list/,
      );
      assert.throws(
        () => parseSpec({ ...base, interventions: [{ type: "lens", block: "single.0", mode: "diagonal" }], attentionFlow: {} }),
        /spec\.attentionFlow: is not supported in a lens run/,
      );
      // Text-to-image: ref is empty, so it is dropped (and the token group with it) with a warning.
      const flow = new AttentionFlowIntervention({ queryGroups: ["text", "ref", "image"], keyGroups: ["ref"], tokenGroup: "ref" });
      const t2i = await pipe.prepare({ ...edit, refs: [], interventions: [flow] });
      assert.ok(t2i.warnings.some((w) => /query group ref is empty in this run; dropped/.test(w)), t2i.warnings.join("; "));
      assert.ok(t2i.warnings.some((w) => /every key group is empty in this run; nothing is measured/.test(w)), t2i.warnings.join("; "));
      assert.throws(() => new AttentionFlowIntervention({ heads: [1, 1] }), /heads lists a head twice/);
    } finally {
      pipe.execute = original;
    }
  },
});

async function cli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command(Deno.execPath(), { args: ["run", "-A", join(ROOT, "cli.ts"), "attention-flow", ...args], cwd: ROOT })
    .output();
  const decode = (b: Uint8Array) => new TextDecoder().decode(b);
  return { code: out.code, stdout: decode(out.stdout), stderr: decode(out.stderr) };
}

Deno.test({
  name: "attention flow runs only at its chosen steps: step 1 alone equals step 1 of an every-step flow, and the image is untouched",
  sanitizeResources: false,
  async fn() {
    const pipe = await pipeline();
    const every = new AttentionFlowIntervention({ blocks: "double.1,single.1" });
    const late = new AttentionFlowIntervention({ blocks: "double.1,single.1", steps: [1] });
    const a = await pipe.generate({ ...edit, interventions: [every] });
    const b = await pipe.generate({ ...edit, interventions: [late] });
    const plain = await pipe.generate(edit);
    assert.deepEqual(b.latents, plain.latents, "a flow changes nothing in the run");
    assert.deepEqual(b.latents, a.latents);
    const lateTables = late.results(b).tables;
    assert.deepEqual(lateTables.map((t) => `${t.block}@${t.step}`), ["double.1@1", "single.1@1"]);
    for (const t of lateTables) assert.deepEqual(t.mass, every.results(a).at(t.block, 1).mass);
  },
});

Deno.test({
  name:
    "deno task attention-flow writes attention_flow.json and .safetensors through the spec path; bad groups and blocks are one-line errors",
  sanitizeResources: false,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "kleinscope-flow-" });
    try {
      const common = [
        ...["--model", MODEL, "--prompt", PROMPT, "--ref", REF0],
        ...["--width", "32", "--height", "48", "--steps", "1", "--max-sequence-length", "64"],
      ];
      for (
        const [bad, pattern] of [
          [["--query-groups", "text[content],text[bogus]"], /^error: attention flow @ all: query groups: group "text\[bogus\]": expected/],
          [["--blocks", "double.3"], /^error: attention flow @ double\.3: unknown block "double\.3"/],
          [
            ["--setting", "ref->text[pad]", "--knockout-blocks", "single.9"],
            /^error: knockout ref->text\[pad\]: unknown block "single\.9"/,
          ],
          [["--heads", "x"], /^error: --heads "x" is not a whole number/],
        ] as const
      ) {
        const r = await cli([...common, ...bad, "--out", join(dir, "bad")]);
        assert.equal(r.code, bad[0] === "--heads" ? 2 : 1, r.stderr);
        // Refused before the weights go to the GPU: one line, nothing else on stderr.
        assert.equal(r.stderr.trim().split("\n").length, 1, r.stderr);
        assert.match(r.stderr.trim(), pattern);
        await assert.rejects(() => Deno.stat(join(dir, "bad")), Deno.errors.NotFound);
      }

      const out = join(dir, "flow");
      const args = [...common, "--blocks", "single.1", "--token-group", "text[content]", "--setting", "ref->text[pad]", "--out", out];
      const r = await cli(args);
      assert.equal(r.code, 0, r.stderr);
      for (const f of ["image.png", "spec.json", "run.json", "attention_flow.json", "attention_flow.safetensors"]) {
        await Deno.stat(join(out, f));
      }
      const json = JSON.parse(await Deno.readTextFile(join(out, "attention_flow.json")));
      assert.equal(json.format, "kleinscope-attention-flow");
      assert.deepEqual(json.queryGroups.map((g: { name: string }) => g.name), DEFAULT_GROUPS);
      assert.deepEqual(json.heads, [0, 1]);
      assert.equal(json.tables.length, 1);
      const table = json.tables[0];
      assert.equal(table.block, "single.1");
      assert.equal(table.step, 0);
      assert.equal(table.mass.length, HEADS + 1);
      const mean: number[][] = table.mass[HEADS];
      for (const row of mean) assert.ok(Math.abs(row.reduce((a, b) => a + b, 0) - 1) <= 1e-5);
      assert.equal(mean[DEFAULT_GROUPS.indexOf("text[pad]")][DEFAULT_GROUPS.indexOf("ref[0]")], 0, "the knockout's mask is seen");
      assert.equal(table.tokens, "tokens/single.1@step0");
      const st = await SafetensorsFile.open(join(out, "attention_flow.safetensors"));
      try {
        assert.deepEqual(st.names().sort(), ["mass/single.1@step0", "tokens/single.1@step0"]);
        const mass = await st.readF32("mass/single.1@step0");
        assert.deepEqual(
          Array.from(mass),
          table.mass.flat(2).map(Math.fround),
          "the JSON and the safetensors hold the same float32 values",
        );
      } finally {
        st.close();
      }
      const spec = parseSpec(JSON.parse(await Deno.readTextFile(join(out, "spec.json"))));
      assert.deepEqual(spec.attentionFlow, { ...spec.attentionFlow, blocks: "single.1", tokenGroup: "text[content]" });
      assert.equal(spec.interventions?.[0].type, "knockout");
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
