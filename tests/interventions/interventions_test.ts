import assert from "node:assert/strict";
import { Flux2KleinPipeline, type GenerateRequest } from "../../model/pipeline.ts";
import { KnockoutIntervention } from "../../interventions/knockout.ts";
import { PatchIntervention } from "../../interventions/patch.ts";
import { CaptureIntervention } from "../../interventions/capture_run.ts";
import { checkSpec, executeSpec } from "../../studies/execute.ts";
import { writeSpecOutputs } from "../../studies/outputs.ts";
import { parseSpec } from "../../studies/spec.ts";

const FIX = new URL("../fixtures/klein-tiny/", import.meta.url).pathname;
const MODEL = FIX + "model";
const REF0 = FIX + "images/ref0_80x64.png";
const REF1 = FIX + "images/ref1_64x80.png";
const PROMPT = "draw a couch in this color";

let shared: Flux2KleinPipeline | null = null;
async function pipeline(): Promise<Flux2KleinPipeline> {
  shared ??= await Flux2KleinPipeline.load(MODEL, { keepTextEncoder: true, log: () => {} });
  return shared;
}

// 64 text rows (maxSequenceLength) instead of 512: every group still has tokens, and the runs cost a fraction.
const TEXT_ROWS = 64;
const edit: GenerateRequest = { prompt: PROMPT, refs: [REF0], width: 32, height: 48, steps: 2, seed: 5, maxSequenceLength: TEXT_ROWS };

function bits(a: Float32Array): Uint32Array {
  return new Uint32Array(a.buffer, a.byteOffset, a.length);
}

Deno.test({
  name: "interventions that change nothing give bit-identical output, and leave no state between runs",
  sanitizeResources: false,
  async fn() {
    const pipe = await pipeline();
    const plain = await pipe.generate(edit);
    // A knockout whose group is empty in this run (no text[content] tokens for an empty prompt is another case).
    const t2iPlain = await pipe.generate({ ...edit, refs: [] });
    const t2iKo = await pipe.generate({ ...edit, refs: [], interventions: [new KnockoutIntervention([{ setting: "ref->text" }])] });
    assert.deepEqual(bits(t2iKo.latents), bits(t2iPlain.latents));
    // Patching a block's text rows with the run's own activations, at every step.
    const cap = new CaptureIntervention([{ tap: "double.1.txt" }]);
    const captured = await pipe.generate({ ...edit, interventions: [cap] });
    assert.deepEqual(bits(captured.latents), bits(plain.latents), "a capture changes nothing");
    const rows = [0, 1].map((s) => cap.results(captured).at("double.1.txt", undefined, s).data);
    const positions = Array.from({ length: TEXT_ROWS }, (_, i) => i);
    const patched = await pipe.generate({ ...edit, interventions: [new PatchIntervention({ tap: "double.1.txt", positions, rows })] });
    assert.deepEqual(bits(patched.latents), bits(plain.latents), "patching a run with its own activations changes nothing");
    // A real knockout changes the result; the plain run afterwards is unchanged.
    const ko = await pipe.generate({ ...edit, interventions: [new KnockoutIntervention([{ setting: "ref->text", blocks: "all" }])] });
    assert.notDeepEqual(bits(ko.latents), bits(plain.latents));
    const again = await pipe.generate(edit);
    assert.deepEqual(bits(again.latents), bits(plain.latents));
    assert.deepEqual(bits(again.image), bits(plain.image));
  },
});

Deno.test({
  name: "knockout at selected steps only differs from the plain run from that step on",
  sanitizeResources: false,
  async fn() {
    const pipe = await pipeline();
    const plain = await pipe.generate({ ...edit, keepStepLatents: true });
    const late = await pipe.generate({
      ...edit,
      keepStepLatents: true,
      interventions: [new KnockoutIntervention([{ setting: "ref->text", steps: [1] }])],
    });
    assert.deepEqual(bits(late.stepLatents[0]), bits(plain.stepLatents[0]));
    assert.notDeepEqual(bits(late.stepLatents[1]), bits(plain.stepLatents[1]));
  },
});

Deno.test({
  name: "bad specs are refused before any GPU work, naming what and where",
  sanitizeResources: false,
  async fn() {
    const pipe = await pipeline();
    // Any GPU work would go through execute(); make it fail loudly.
    const original = pipe.execute.bind(pipe);
    pipe.execute = () => Promise.reject(new Error("GPU work started"));
    try {
      const base = { model: MODEL, prompt: PROMPT, refs: [REF0], steps: 2 };
      const refuse = async (extra: Record<string, unknown>, pattern: RegExp) => {
        await assert.rejects(() => checkSpec(pipe, parseSpec({ ...base, ...extra })), pattern);
      };
      await refuse({ captures: [{ tap: "double.7.txt" }] }, /unknown tap point "double\.7\.txt"/);
      await refuse({ interventions: [{ type: "knockout", setting: "ref->text[middle]" }] }, /text\[middle\]/);
      await refuse({ interventions: [{ type: "knockout", setting: "ref->text", blocks: [4] }] }, /block 4 is out of range/);
      await refuse({ interventions: [{ type: "knockout", setting: "text+image+ref->text" }] }, /no key left to attend to/);
      // Each setting alone leaves keys; together they leave the text queries none: the union is refused, naming both.
      await refuse(
        { interventions: [{ type: "knockout", setting: "text+image->text" }, { type: "knockout", setting: "ref->text", blocks: [1] }] },
        /knockout text\+image->text @ all; knockout ref->text @ 1: at double\.1, step 0, .* no key left/,
      );
      assert.throws(
        () => parseSpec({ ...base, interventions: [{ type: "knockout", settings: [{ setting: "ref->text" }, { setting: "oops" }] }] }),
        /spec\.interventions\[0\]\.settings\[1\]\.setting: "oops" must look like "A->B"/,
      );
      await refuse({ interventions: [{ type: "lens", block: "single.0", mode: "diagonal", group: "text[nothing]" }] }, /text\[nothing\]/);
      await refuse({ interventions: [{ type: "knockout", setting: "ref->text", steps: [2] }] }, /step 2 is beyond this run's 2 steps/);
      await refuse(
        {
          interventions: [{
            type: "patch",
            block: "double.1",
            mode: "content_only",
            source: { prompt: "a much longer instruction than the target has" },
          }],
        },
        /row counts must match/,
      );
      await refuse({ interventions: [{ type: "patch", tap: "single.9", source: {} }] }, /unknown tap point "single\.9"/);
      assert.throws(
        () => parseSpec({ ...base, interventions: [{ type: "knockout", setting: "ref->text", blocks: { a: 1 } }] }),
        /spec\.interventions\[0\]\.blocks/,
      );
      assert.throws(() => parseSpec({ ...base, width: 70 }), /spec\.width: 70 is not a multiple of 16/);
      assert.throws(() => parseSpec({ ...base, colour: 1 }), /spec\.colour: unknown field/);
      assert.throws(() => parseSpec({ prompt: PROMPT }), /spec\.model: is required/);
    } finally {
      pipe.execute = original;
    }
  },
});

Deno.test({
  name: "patch rows with a different row count than the patched group are refused",
  sanitizeResources: false,
  async fn() {
    const pipe = await pipeline();
    const wrong = new PatchIntervention({ tap: "double.0.txt", positions: [1, 2, 3], rows: new Float32Array(2 * 256) });
    await assert.rejects(() => pipe.generate({ ...edit, refs: [REF1], interventions: [wrong] }), /row counts must match/);
  },
});

Deno.test({
  name: "two knockouts on one block cut the union of their edges, exactly as one knockout with both settings",
  sanitizeResources: false,
  async fn() {
    const pipe = await pipeline();
    const both = await pipe.generate({
      ...edit,
      interventions: [new KnockoutIntervention([{ setting: "ref->image", blocks: [1] }, { setting: "image->ref", blocks: [1] }])],
    });
    const two = await pipe.generate({
      ...edit,
      interventions: [
        new KnockoutIntervention([{ setting: "ref->image", blocks: [1] }]),
        new KnockoutIntervention([{ setting: "image->ref", blocks: [1] }]),
      ],
    });
    const last = await pipe.generate({ ...edit, interventions: [new KnockoutIntervention([{ setting: "image->ref", blocks: [1] }])] });
    assert.deepEqual(bits(two.latents), bits(both.latents));
    assert.notDeepEqual(bits(two.latents), bits(last.latents), "the second knockout does not replace the first");
  },
});

Deno.test({
  name: "a guided run applies a knockout to both forwards: it differs from the guided run without it",
  sanitizeResources: false,
  async fn() {
    const pipe = await pipeline();
    const guided: GenerateRequest = { ...edit, guidance: 4, distilled: false };
    const plain = await pipe.generate(guided);
    const ko = await pipe.generate({ ...guided, interventions: [new KnockoutIntervention([{ setting: "ref->text" }])] });
    assert.notDeepEqual(bits(ko.latents), bits(plain.latents));
    // Captures name their forward; the unconditional one exists only in a guided run.
    const cap = new CaptureIntervention([{ tap: "double.0.txt" }, { tap: "double.0.txt", forward: "uncond" }]);
    const run = await pipe.generate({ ...guided, steps: 1, interventions: [cap] });
    const [c, u] = [cap.results(run).at("double.0.txt", undefined, 0), cap.results(run).at("double.0.txt", undefined, 0, "uncond")];
    assert.notDeepEqual(bits(c.data), bits(u.data), "the two forwards see different prompts");
    await assert.rejects(
      () => pipe.generate({ ...edit, interventions: [new CaptureIntervention([{ tap: "double.0.txt", forward: "uncond" }])] }),
      /only in a guided run/,
    );
  },
});

Deno.test({
  name: "taps come from the model's graph: image-stream and single-block views are captured by token group",
  sanitizeResources: false,
  async fn() {
    const pipe = await pipeline();
    const cap = new CaptureIntervention([
      { tap: "double.1.img", group: "ref" },
      { tap: "double.1.img" },
      { tap: "single.0", steps: [0] },
      { tap: "single.0.img", group: "image", steps: [0] },
      { tap: "single.0.txt", group: "text[content]", steps: [0] },
    ]);
    const run = await pipe.generate({ ...edit, interventions: [cap] });
    const got = cap.results(run);
    const { textRows, noiseRows } = run.layout;
    const whole = got.at("double.1.img", undefined, 1);
    const refRows = got.at("double.1.img", "ref", 1);
    assert.equal(refRows.rows, run.layout.refRows[0]);
    assert.deepEqual(
      bits(refRows.data),
      bits(whole.data.subarray(noiseRows * whole.cols)),
      "group ref = the image tap's rows after the noise",
    );
    const stream = got.at("single.0", undefined, 0);
    const image = got.at("single.0.img", "image", 0);
    assert.deepEqual(bits(image.data), bits(stream.data.subarray(textRows * stream.cols, (textRows + noiseRows) * stream.cols)));
    const content = got.at("single.0.txt", "text[content]", 0);
    const first = run.layout.prompt.content[0];
    assert.deepEqual(
      bits(content.data.subarray(0, stream.cols)),
      bits(stream.data.subarray(first * stream.cols, (first + 1) * stream.cols)),
    );
    assert.throws(() => got.get("double.0.txt"), /no capture of double\.0\.txt\[all\]/);
    await assert.rejects(
      () => pipe.prepare({ ...edit, interventions: [new CaptureIntervention([{ tap: "double.1.txt", group: "image" }])] }),
      /sequence position \d+ is outside tap double\.1\.txt/,
    );
  },
});

Deno.test({
  name: "a prepared run is a value executed once",
  sanitizeResources: false,
  async fn() {
    const pipe = await pipeline();
    const run = await pipe.prepare({ ...edit, steps: 1 });
    await pipe.execute(run);
    await assert.rejects(() => pipe.execute(run), /already executed/);
  },
});

Deno.test({
  name: "the lens's token subset is resolved on the source prompt: content_only differs from the unconditional run",
  sanitizeResources: false,
  async fn() {
    const pipe = await pipeline();
    const spec = parseSpec({
      model: MODEL,
      prompt: PROMPT,
      refs: [REF0],
      width: 32,
      height: 48,
      seed: 3,
      interventions: [{ type: "lens", block: "single.0", mode: "diagonal", group: "content_only" }],
    });
    const lens = await executeSpec(pipe, spec);
    assert.deepEqual(lens.warnings, [], "nothing is a no-op");
    // The target alone: the empty prompt at the source seed + 1 (the default offset), one step.
    const unconditional = await pipe.generate({ prompt: "", width: 32, height: 48, steps: 1, seed: 4 });
    assert.notDeepEqual(bits(lens.result.latents), bits(unconditional.latents));
  },
});

Deno.test({
  name: "warnings reach the result and run.json",
  sanitizeResources: false,
  async fn() {
    const pipe = await pipeline();
    const spec = parseSpec({
      model: MODEL,
      prompt: PROMPT,
      width: 32,
      height: 32,
      steps: 1,
      interventions: [{ type: "knockout", setting: "ref->text" }],
    });
    const run = await executeSpec(pipe, spec);
    assert.equal(run.warnings.length, 1);
    assert.match(run.warnings[0], /knockout ref->text: group ref is empty in this run; this setting masks nothing/);
    assert.deepEqual(run.result.warnings, run.warnings);
    const dir = await Deno.makeTempDir();
    try {
      await writeSpecOutputs(dir, run);
      const written = JSON.parse(await Deno.readTextFile(`${dir}/run.json`));
      assert.deepEqual(written.warnings, run.warnings);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "release the shared pipeline",
  sanitizeResources: false,
  fn() {
    shared?.release();
    shared = null;
  },
});
