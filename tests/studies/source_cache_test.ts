// Conditions of one task that patch from the same source run (all, padding only, content only) share that run through
// a SourceRunCache: it runs once, and every condition gets bit for bit the rows and output it gets running its own.

import assert from "node:assert/strict";
import { Flux2KleinPipeline } from "../../model/pipeline.ts";
import { executeSpec } from "../../studies/execute.ts";
import { SourceRunCache } from "../../studies/source_rows.ts";
import { parseSpec } from "../../studies/spec.ts";

const FIX = new URL("../fixtures/klein-tiny/", import.meta.url).pathname;
const MODEL = FIX + "model";
const edit = {
  model: MODEL,
  prompt: "draw a couch in this color",
  refs: [FIX + "images/ref0_80x64.png"],
  width: 32,
  height: 48,
  steps: 2,
  seed: 5,
  maxSequenceLength: 64,
};
const bits = (a: Float32Array) => new Uint32Array(a.slice().buffer);

function patchSpec(mode: string, block = "double.1") {
  return parseSpec({
    ...edit,
    interventions: [{ type: "patch", block, mode, source: { refs: [FIX + "images/ref1_64x80.png"] } }],
  });
}

Deno.test("source runs: the cache keeps the newest runs up to its capacity", () => {
  assert.throws(() => new SourceRunCache(0), /at least one run, got 0/);
  const cache = new SourceRunCache(2);
  const entry = (key: string) => ({ key, result: {} as never, textRows: new Map() });
  cache.put(entry("a"));
  cache.put(entry("b"));
  cache.put(entry("a"));
  cache.put(entry("c"));
  assert.equal(cache.get("b"), undefined, "b was the oldest once a was put again");
  assert.ok(cache.get("a") && cache.get("c"));
  cache.clear();
  assert.equal(cache.get("a"), undefined);
});

Deno.test({
  name: "source runs: patches of one source share its run through the cache, with the rows and output of their own runs",
  sanitizeResources: false,
  async fn() {
    const pipe = await Flux2KleinPipeline.load(MODEL, { keepTextEncoder: true, log: () => {} });
    try {
      const modes = ["padding_only", "content_only", "all"];
      const own = [];
      for (const mode of modes.slice(0, 2)) own.push(await executeSpec(pipe, patchSpec(mode)));
      assert.notDeepEqual(bits(own[0].result.latents), bits(own[1].result.latents), "the two groups patch differently");

      const cache = new SourceRunCache();
      const log: string[] = [];
      const shared = [];
      for (const mode of modes) {
        shared.push(await executeSpec(pipe, patchSpec(mode), (l) => log.push(l), { sourceCache: cache }));
      }
      assert.deepEqual([cache.executed, cache.reused], [1, 2]);
      assert.equal(log.filter((l) => l.includes("reused")).length, 2);
      for (const [i, run] of own.entries()) {
        assert.deepEqual(bits(shared[i].result.latents), bits(run.result.latents), `${modes[i]}: output`);
        assert.deepEqual(bits(shared[i].source!.latents), bits(run.source!.latents), `${modes[i]}: source run`);
      }
      assert.equal(shared[2].source, shared[0].source, "one source result serves every condition");

      // Another tap runs its own source (and becomes the cached one).
      await executeSpec(pipe, patchSpec("all", "single.0"), () => {}, { sourceCache: cache });
      assert.deepEqual([cache.executed, cache.reused], [2, 2]);
    } finally {
      pipe.release();
    }
  },
});
