// maxSequenceLength (the reference pipeline's max_sequence_length): the prompt padded to fewer or more text rows.
// The text encoder is causal with right padding, so the embeddings at a shorter length must be the first rows of the
// reference's 512-row embeddings: checked against every text_encoder case of the reference data, through the
// pipeline's own encode path. Then the layout and the refusals of the request, the spec, the experiment file and the CLI.

import assert from "node:assert/strict";
import { join } from "node:path";
import { Flux2KleinPipeline, MAX_SEQUENCE_LENGTH } from "../../model/pipeline.ts";
import { loadSuite } from "../../conformance/runner.ts";
import { SafetensorsFile } from "../../weights/safetensors.ts";
import { decodeToF32 } from "../../weights/dtypes.ts";
import { relativeL2 } from "../../kernels/audit.ts";
import { parseSpec } from "../../studies/spec.ts";
import { parseExperiment } from "../../experiments/experiment.ts";

const FIXTURES = new URL("../fixtures/klein-tiny/", import.meta.url).pathname;
const MODEL = join(FIXTURES, "model");
const CLI = new URL("../../cli.ts", import.meta.url).pathname;

async function readCaseTensor(file: string, name: string): Promise<{ data: Float32Array | BigInt64Array; shape: number[] }> {
  const f = await SafetensorsFile.open(join(FIXTURES, file));
  try {
    const info = f.tensors.get(name);
    assert.ok(info, `${file}: no tensor ${name}`);
    const bytes = await f.readBytes(name);
    const data = info.dtype === "I64" ? new BigInt64Array(bytes.slice().buffer) : decodeToF32(bytes, info.dtype);
    return { data, shape: info.shape };
  } finally {
    f.close();
  }
}

Deno.test("a shorter text sequence gives the first rows of the reference's 512-row prompt embeddings", {
  sanitizeResources: false,
}, async () => {
  const suite = await loadSuite(FIXTURES);
  const cases = suite.cases.filter((c) => c.kind === "text_encoder");
  assert.ok(cases.length >= 2);
  const pipe = await Flux2KleinPipeline.load(MODEL, { log: () => {} });
  try {
    for (const length of [40, 64]) {
      for (const c of cases) {
        const prompt = c.prompt as string;
        const realTokens = c.real_tokens as number;
        const [{ embeds, prompt: encoded }] = await pipe.encodePrompts([prompt], length);
        const ids = (await readCaseTensor(c.file, "input_ids")).data as BigInt64Array;
        const want = await readCaseTensor(c.file, "prompt_embeds");
        const width = want.shape[want.shape.length - 1];
        assert.equal(encoded.inputIds.length, length, `${c.name} at ${length}`);
        assert.equal(embeds.length, length * width, `${c.name} at ${length}: [${length}, ${width}] embeddings`);
        assert.deepEqual(Array.from(encoded.inputIds), Array.from(ids.subarray(0, length), Number), `${c.name}: token ids`);
        assert.equal(encoded.realTokens, Math.min(realTokens, length), `${c.name}: real tokens`);
        const rel = relativeL2(embeds, (want.data as Float32Array).subarray(0, length * width));
        assert.ok(rel <= 1e-5, `${c.name} at ${length}: rel L2 ${rel} against the reference's first ${length} rows`);
      }
    }
    // The cache is per prompt and length: the same prompt at 512 is the reference's whole tensor.
    const c = cases[0];
    const [{ embeds }] = await pipe.encodePrompts([c.prompt as string]);
    const want = await readCaseTensor(c.file, "prompt_embeds");
    assert.equal(embeds.length, want.data.length);
    assert.ok(relativeL2(embeds, want.data as Float32Array) <= 1e-5);
  } finally {
    pipe.release();
  }
});

Deno.test("maxSequenceLength sets the text rows of the layout and the padding group; bad values are refused", {
  sanitizeResources: false,
}, async () => {
  const pipe = await Flux2KleinPipeline.load(MODEL, { log: () => {}, deferUpload: true });
  try {
    const run = await pipe.prepare({ prompt: "draw a couch in this color", width: 32, height: 32, steps: 1, maxSequenceLength: 48 });
    assert.equal(run.layout.textRows, 48);
    assert.equal(run.prompt.realTokens, 18);
    assert.equal(run.layout.prompt.pad.length, 48 - 18);
    const plain = await pipe.prepare({ prompt: "draw a couch in this color", width: 32, height: 32, steps: 1 });
    assert.equal(plain.layout.textRows, 512);
    // Shorter than the templated prompt: truncated, with the tokenizer's warning.
    const cut = await pipe.prepare({ prompt: "draw a couch in this color", width: 32, height: 32, steps: 1, maxSequenceLength: 8 });
    assert.equal(cut.layout.textRows, 8);
    assert.equal(cut.prompt.truncated, true);
    for (const bad of [0, -1, 2.5, MAX_SEQUENCE_LENGTH + 1, NaN]) {
      await assert.rejects(
        pipe.prepare({ prompt: "x", width: 32, height: 32, steps: 1, maxSequenceLength: bad }),
        /maxSequenceLength .* must be a whole number of tokens in \[1, 4096\]/,
      );
    }
  } finally {
    pipe.release();
  }
});

Deno.test("maxSequenceLength in a spec and an experiment file is checked and named", () => {
  assert.equal(parseSpec({ model: "m", prompt: "p", maxSequenceLength: 64 }).maxSequenceLength, 64);
  assert.throws(() => parseSpec({ model: "m", prompt: "p", maxSequenceLength: 0 }), /maxSequenceLength/);
  assert.throws(() => parseSpec({ model: "m", prompt: "p", maxSequenceLength: "64" }), /maxSequenceLength/);
  assert.throws(() => parseSpec({ model: "m", prompt: "p", maxSequenceLength: 5000 }), /maxSequenceLength: 5000 is above .* 4096/);
  const exp = { model: "m", tasks: "t.jsonl", output: "o", conditions: [{ name: "baseline" }] };
  assert.equal(parseExperiment({ ...exp, maxSequenceLength: 32 }, "/tmp").maxSequenceLength, 32);
  assert.throws(() => parseExperiment({ ...exp, maxSequenceLength: 1.5 }, "/tmp"), /maxSequenceLength/);
  assert.throws(() => parseExperiment({ ...exp, maxSequenceLength: 9999 }, "/tmp"), /maxSequenceLength/);
});

Deno.test("generate --max-sequence-length: out of range is a usage error before any GPU work", async () => {
  for (const bad of ["0", "abc", "5000"]) {
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", CLI, "generate", "--prompt", "x", "--max-sequence-length", bad, "--out", "/tmp/ks-never-written.png"],
      env: { XDG_RUNTIME_DIR: "/tmp" },
      stdout: "piped",
      stderr: "piped",
    }).output();
    const text = new TextDecoder().decode(out.stderr) + new TextDecoder().decode(out.stdout);
    assert.equal(out.code, 2, text);
    assert.match(text, /--max-sequence-length/);
  }
});
