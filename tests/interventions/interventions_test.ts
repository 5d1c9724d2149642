import assert from "node:assert/strict";
import { Flux2KleinPipeline, type GenerateRequest } from "../../model/pipeline.ts";
import { KnockoutIntervention } from "../../interventions/knockout.ts";
import { PatchIntervention } from "../../interventions/patch.ts";
import { CaptureIntervention } from "../../interventions/capture_run.ts";
import { checkSpec } from "../../studies/execute.ts";
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

const edit: GenerateRequest = { prompt: PROMPT, refs: [REF0], width: 32, height: 48, steps: 2, seed: 5 };

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
    const rows = [0, 1].map((s) => cap.captured.get("double.1.txt")!.steps.get(s)!);
    const positions = Array.from({ length: 512 }, (_, i) => i);
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
    // Any GPU work would go through generate(); make it fail loudly.
    const original = pipe.generate.bind(pipe);
    pipe.generate = () => Promise.reject(new Error("GPU work started"));
    try {
      const base = { model: MODEL, prompt: PROMPT, refs: [REF0], steps: 2 };
      const refuse = async (extra: Record<string, unknown>, pattern: RegExp) => {
        await assert.rejects(() => checkSpec(pipe, parseSpec({ ...base, ...extra })), pattern);
      };
      await refuse({ captures: [{ tap: "double.7.txt" }] }, /unknown tap point "double\.7\.txt"/);
      await refuse({ interventions: [{ type: "knockout", setting: "ref->text[middle]" }] }, /text\[middle\]/);
      await refuse({ interventions: [{ type: "knockout", setting: "ref->text", blocks: [4] }] }, /block 4 is out of range/);
      await refuse({ interventions: [{ type: "knockout", setting: "text+image+ref->text" }] }, /no key left to attend to/);
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
        /counts must be equal/,
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
      pipe.generate = original;
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
  name: "release the shared pipeline",
  sanitizeResources: false,
  fn() {
    shared?.release();
    shared = null;
  },
});
