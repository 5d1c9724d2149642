// Captures that stream: each step's rows are read back behind the next step and, with a captures file, written as
// they arrive, under a host-memory budget. Checked on the tiny checkpoint against captures kept in memory.

import assert from "node:assert/strict";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { Flux2KleinPipeline } from "../../model/pipeline.ts";
import { CaptureIntervention, ReadbacksInFlight } from "../../interventions/capture_run.ts";
import { captureLayout } from "../../interventions/capture_file.ts";
import { executeSpec } from "../../studies/execute.ts";
import { writeSpecOutputs } from "../../studies/outputs.ts";
import { parseSpec, type RunSpec } from "../../studies/spec.ts";
import { encodeSafetensors } from "../../weights/safetensors_writer.ts";
import { SafetensorsFile } from "../../weights/safetensors.ts";
import { Graph } from "../../runtime/graph.ts";
import { Plan } from "../../runtime/executor.ts";
import { getGpu, openGpu } from "../../runtime/device.ts";
import { Rng } from "../../runtime/random.ts";

const FIX = new URL("../fixtures/klein-tiny/", import.meta.url).pathname;
const MODEL = FIX + "model";
const REF0 = FIX + "images/ref0_80x64.png";
const CLI = fileURLToPath(new URL("../../cli.ts", import.meta.url));
const MiB = 2 ** 20;

let shared: Flux2KleinPipeline | null = null;
async function pipeline(): Promise<Flux2KleinPipeline> {
  shared ??= await Flux2KleinPipeline.load(MODEL, { keepTextEncoder: true, log: () => {} });
  return shared;
}

const bits = (a: Float32Array) => new Uint32Array(a.buffer, a.byteOffset, a.length);

/** Captures of several kinds: whole taps, token groups of a stream, a view of a single block, some steps only. */
const CAPTURES: RunSpec["captures"] = [
  { tap: "double.1.txt" },
  { tap: "double.0.txt", group: "text[content]" },
  { tap: "double.1.img", group: "ref", steps: [0, 2] },
  { tap: "single.0.img", group: "image", steps: "1" },
  { tap: "single.0" },
];
const SPEC: RunSpec = {
  model: MODEL,
  prompt: "draw a couch in this color",
  refs: [REF0],
  width: 32,
  height: 48,
  steps: 3,
  seed: 9,
  maxSequenceLength: 64,
};

Deno.test({
  name: "streamed captures equal the ones kept in memory bit for bit, and so does their file",
  sanitizeResources: false,
  async fn() {
    const pipe = await pipeline();
    const dirA = await Deno.makeTempDir(), dirB = await Deno.makeTempDir();
    try {
      const spec = parseSpec({ ...SPEC, captures: CAPTURES });
      const kept = await executeSpec(pipe, spec);
      const streamedFile = join(dirB, "captures.safetensors");
      const streamed = await executeSpec(pipe, spec, undefined, { captureFile: streamedFile });
      assert.deepEqual(bits(streamed.result.latents), bits(kept.result.latents), "streaming changes nothing in the run");
      assert.equal(kept.captures!.file, undefined);
      assert.equal(streamed.captures!.file, streamedFile);
      let compared = 0;
      for (const t of kept.captures!.tensors) {
        const s = streamed.captures!.get(t.tap, t.group, t.forward);
        assert.deepEqual([...s.steps.keys()], [...t.steps.keys()], `${t.tap}[${t.group}]: the same steps`);
        for (const [step, data] of t.steps) {
          assert.ok(data.some((v) => v !== 0), "captured rows are not all zero");
          assert.deepEqual(bits(streamed.captures!.at(t.tap, t.group, step).data), bits(data), `${t.tap}[${t.group}] step ${step}`);
          compared++;
        }
      }
      assert.equal(compared, 3 + 3 + 2 + 1 + 3);
      assert.throws(() => streamed.captures!.get("double.1.txt").steps.set(0, new Float32Array()), /read-only/);
      // writeSpecOutputs keeps the streamed file (already in the folder) and writes the same index.
      await writeSpecOutputs(dirA, kept);
      await writeSpecOutputs(dirB, streamed);
      const [a, b] = [await Deno.readFile(join(dirA, "captures.safetensors")), await Deno.readFile(streamedFile)];
      assert.equal(b.byteLength, a.byteLength);
      assert.ok(a.every((x, i) => x === b[i]), "the streamed file is byte for byte the one written from memory");
      assert.equal(await Deno.readTextFile(join(dirB, "captures.json")), await Deno.readTextFile(join(dirA, "captures.json")));
      // It passes the strict safetensors reader, and every tensor reads back as captured.
      const f = await SafetensorsFile.open(streamedFile);
      try {
        assert.equal(f.tensors.size, compared);
        assert.deepEqual(bits(await f.readF32("double.1.txt[all]@step2")), bits(kept.captures!.at("double.1.txt", undefined, 2).data));
      } finally {
        f.close();
      }
      assert.deepEqual((await Array.fromAsync(Deno.readDir(dirB))).map((e) => e.name).filter((n) => n.endsWith(".tmp")), []);
    } finally {
      await Deno.remove(dirA, { recursive: true });
      await Deno.remove(dirB, { recursive: true });
    }
  },
});

Deno.test({
  name: "a budget of one step's rows suffices: each step's rows are written while the next computes, one step on the host",
  sanitizeResources: false,
  async fn() {
    const pipe = await pipeline();
    const dir = await Deno.makeTempDir();
    try {
      const requests = [{ tap: "double.1.txt" }, { tap: "single.0" }];
      const kept = new CaptureIntervention(requests);
      const plain = await pipe.generate({ ...SPEC, interventions: [kept] });
      const perStep = kept.results(plain).stats.bytes / 3;
      const tight = new CaptureIntervention(requests, { budgetMB: (perStep + 16) / MiB, file: join(dir, "c.safetensors") });
      const run = await pipe.generate({ ...SPEC, interventions: [tight] });
      const stats = tight.results(run).stats;
      assert.equal(stats.bytes, 3 * perStep);
      assert.ok(stats.peakHostBytes <= stats.budgetBytes, `peak ${stats.peakHostBytes} ≤ budget ${stats.budgetBytes}`);
      assert.equal(stats.peakHostBytes, perStep, "one step in flight at a time");
      for (const r of requests) {
        for (const s of [0, 1, 2]) {
          assert.deepEqual(bits(tight.results(run).at(r.tap, undefined, s).data), bits(kept.results(plain).at(r.tap, undefined, s).data));
        }
      }
      // Step s's rows are written while step s + 1 computes, before step s + 1's readback: one step on the host, whatever
      // the budget.
      const roomy = new CaptureIntervention(requests, { file: join(dir, "d.safetensors") });
      const st = roomy.results(await pipe.generate({ ...SPEC, interventions: [roomy] })).stats;
      assert.equal(st.peakHostBytes, perStep, "one step on the host");
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "a budget too small is refused before any GPU work, naming the sizes and the option",
  sanitizeResources: false,
  async fn() {
    const pipe = await pipeline();
    const original = pipe.execute.bind(pipe);
    pipe.execute = () => Promise.reject(new Error("GPU work started"));
    const dir = await Deno.makeTempDir();
    try {
      // double.1.txt at one step: the text rows × the tiny model's width, 4 bytes each.
      const stepMiB = (SPEC.maxSequenceLength! * pipe.transformer.config.hidden * 4) / MiB;
      const file = join(dir, "captures.safetensors");
      // Streamed: one step's rows alone exceed the budget.
      await assert.rejects(
        () =>
          pipe.prepare({ ...SPEC, interventions: [new CaptureIntervention([{ tap: "double.1.txt" }], { budgetMB: stepMiB / 2, file })] }),
        /step 0's captured rows alone take 0\.\d\d MiB, more than the capture budget \(captureBudget in a spec, --capture-budget on the command line\) of 0\.\d\d MiB/,
      );
      // In memory: the whole capture (3 steps) must fit; streamed, the same budget is enough.
      const budgetMB = stepMiB * 2;
      await assert.rejects(
        () => pipe.prepare({ ...SPEC, interventions: [new CaptureIntervention([{ tap: "double.1.txt" }], { budgetMB })] }),
        /the captured rows take .* MiB \(1 capture\(s\) over 3 step\(s\)\), more than the capture budget .* write the run to an output folder/,
      );
      await pipe.prepare({ ...SPEC, interventions: [new CaptureIntervention([{ tap: "double.1.txt" }], { budgetMB, file })] });
      // Through a spec, with its captureBudget.
      const spec = parseSpec({ ...SPEC, captures: [{ tap: "double.1.txt" }], captureBudget: stepMiB / 2 });
      await assert.rejects(() => executeSpec(pipe, spec, undefined, { captureFile: file }), /step 0's captured rows alone/);
      await assert.rejects(() => executeSpec(pipe, spec), /the captured rows take/);
      assert.deepEqual(await Array.fromAsync(Deno.readDir(dir)), [], "nothing was written");
      await assert.rejects(
        () =>
          pipe.prepare({ ...SPEC, interventions: [new CaptureIntervention([{ tap: "double.1.txt" }], { file: join(dir, "no", "c.st") })] }),
        /the captures file .*c\.st needs the folder .*no, which does not exist/,
      );
      assert.throws(() => parseSpec({ ...SPEC, captureBudget: 0 }), /spec\.captureBudget: expected a number of MiB above 0, got 0/);
      assert.throws(() => parseSpec({ ...SPEC, captureBudget: "64" }), /spec\.captureBudget: expected a number/);
      assert.throws(() => new CaptureIntervention([{ tap: "double.1.txt" }], { budgetMB: -1 }), /budget must be a number of MiB above 0/);
    } finally {
      pipe.execute = original;
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "a captures file that cannot be written fails the run, naming the file, and leaves nothing behind",
  sanitizeResources: false,
  async fn() {
    const pipe = await pipeline();
    const dir = await Deno.makeTempDir();
    const folder = join(dir, "gone");
    await Deno.mkdir(folder);
    try {
      const cap = new CaptureIntervention([{ tap: "double.1.txt" }], { file: join(folder, "captures.safetensors") });
      const run = await pipe.prepare({ ...SPEC, interventions: [cap] });
      await Deno.remove(folder);
      await assert.rejects(() => pipe.execute(run), /cannot write captures file .*gone\/captures\.safetensors: /);
      assert.deepEqual(await Array.fromAsync(Deno.readDir(dir)), []);
      // The pipeline is fine afterwards.
      const again = new CaptureIntervention([{ tap: "double.1.txt" }], { file: join(dir, "captures.safetensors") });
      const ok = await pipe.generate({ ...SPEC, interventions: [again] });
      assert.equal(again.results(ok).get("double.1.txt").steps.size, 3);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "deno task capture --out streams into the output folder; --capture-budget reaches the spec",
  sanitizeResources: false,
  async fn() {
    const dir = await Deno.makeTempDir();
    try {
      const args = ["capture", "--prompt", SPEC.prompt, "--ref", REF0, "--width", "32", "--height", "48", "--steps", "2"];
      const cli = (...more: string[]) => new Deno.Command(Deno.execPath(), { args: ["run", "-A", CLI, ...args, ...more] }).output();
      const printed = await cli("--capture", "double.1.txt", "--capture-budget", "0.5", "--print-spec");
      assert.equal(printed.code, 0, new TextDecoder().decode(printed.stderr));
      assert.equal(JSON.parse(new TextDecoder().decode(printed.stdout)).captureBudget, 0.5);
      const bad = await cli("--capture", "double.1.txt", "--capture-budget", "lots", "--print-spec");
      assert.equal(bad.code, 2);
      assert.match(new TextDecoder().decode(bad.stderr), /--capture-budget "lots" is not a number/);
      const out = join(dir, "run");
      const r = await cli("--capture", "double.1.txt", "--capture", "single.0@text[content]", "--capture-budget", "1", "--out", out);
      assert.equal(r.code, 0, new TextDecoder().decode(r.stderr));
      const pipe = await pipeline();
      const cap = new CaptureIntervention([{ tap: "double.1.txt" }, { tap: "single.0", group: "text[content]" }]);
      const run = await pipe.generate({
        prompt: SPEC.prompt,
        refs: [REF0],
        width: 32,
        height: 48,
        steps: 2,
        seed: 0,
        interventions: [cap],
      });
      const f = await SafetensorsFile.open(join(out, "captures.safetensors"));
      try {
        for (const step of [0, 1]) {
          assert.deepEqual(
            bits(await f.readF32(`double.1.txt[all]@step${step}`)),
            bits(cap.results(run).at("double.1.txt", undefined, step).data),
          );
          assert.deepEqual(
            bits(await f.readF32(`single.0[text[content]]@step${step}`)),
            bits(cap.results(run).at("single.0", "text[content]", step).data),
          );
        }
      } finally {
        f.close();
      }
      const index = JSON.parse(await Deno.readTextFile(join(out, "captures.json")));
      assert.deepEqual(index.tensors.map((t: { name: string }) => t.name), [
        "double.1.txt[all]@step0",
        "double.1.txt[all]@step1",
        "single.0[text[content]]@step0",
        "single.0[text[content]]@step1",
      ]);
      assert.equal(JSON.parse(await Deno.readTextFile(join(out, "spec.json"))).captureBudget, 1);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test("the captures file's header is the one the safetensors writer writes, for awkward shapes", () => {
  const rng = new Rng(3);
  for (let trial = 0; trial < 20; trial++) {
    const shapes = Array.from({ length: 1 + Math.floor(rng.uniform() * 4) }, (_, i) => ({
      tap: `double.${i}.txt`,
      group: i % 2 ? "text[content]" : "all",
      forward: (i % 3 === 2 ? "uncond" : "cond") as "cond" | "uncond",
      positions: null,
      rows: Math.floor(rng.uniform() * 7),
      cols: 1 + Math.floor(rng.uniform() * 9),
      steps: [2, 0, 5].slice(0, 1 + Math.floor(rng.uniform() * 3)),
    }));
    const layout = captureLayout(shapes);
    const tensors: Record<string, { dtype: "F32"; shape: number[]; data: Float32Array }> = {};
    const file = new Uint8Array(layout.fileBytes);
    file.set(layout.header);
    for (const e of layout.entries) {
      const data = Float32Array.from({ length: e.bytes / 4 }, () => rng.uniform() - 0.5);
      tensors[e.name] = { dtype: "F32", shape: e.shape, data };
      file.set(new Uint8Array(data.buffer), e.fileOffset);
    }
    const want = encodeSafetensors(tensors, { format: "kleinscope-captures" });
    assert.deepEqual(file, want, `trial ${trial}`);
    assert.equal(
      layout.entries.length,
      shapes.reduce((a, c) => a + (c.rows ? c.steps.length : 0), 0),
      "captures without rows are left out",
    );
  }
});

Deno.test("readbacks in flight: host bytes until each settles (kept ones for good), the peak, the first failure thrown by drain", async () => {
  const q = new ReadbacksInFlight();
  let finishFirst!: () => void;
  q.track(60, new Promise<void>((r) => (finishFirst = r)));
  q.track(40, Promise.resolve(), true); // kept in memory: stays accounted
  let drained = false;
  const draining = q.drain().then(() => (drained = true));
  await new Promise((r) => setTimeout(r, 20));
  assert.equal(drained, false, "drain waits for the unsettled readback");
  assert.equal(q.hostBytes, 100);
  finishFirst();
  await draining;
  assert.equal(q.hostBytes, 40);
  assert.equal(q.peakHostBytes, 100);
  q.track(10, Promise.reject(new Error("disk full")));
  q.track(5, Promise.resolve());
  await assert.rejects(() => q.drain(), /disk full/);
  assert.equal(q.hostBytes, 40, "failed and finished readbacks release their bytes");
  await assert.rejects(() => q.drain(), /disk full/, "the failure stays");
});

Deno.test("readAsync: each call has its own staging buffer, so a later write never reaches an earlier readback", async () => {
  const gpu = await getGpu();
  const g = new Graph();
  g.state("s", [37, 3]);
  g.state("u", [5], "u32");
  const plan = await Plan.compile(gpu, g, null, { label: "test" });
  try {
    const rng = new Rng(8);
    const values = [0, 1, 2].map(() => Float32Array.from({ length: 111 }, () => rng.uniform() * 2 - 1));
    const readbacks = values.map((v) => {
      plan.write("s", v);
      return plan.readAsync(["s", "s"]);
    });
    for (const [i, rb] of readbacks.entries()) {
      await rb.mapped;
      const views = rb.views();
      assert.equal(rb.bytes, 2 * 111 * 4);
      assert.deepEqual(bits(views[0]), bits(values[i]));
      assert.deepEqual(bits(views[1]), bits(values[i]));
      rb.release();
      rb.release();
      assert.throws(() => rb.views(), /released/);
    }
    const dropped = plan.readAsync(["s"]);
    assert.throws(() => dropped.views(), /not mapped yet/);
    assert.throws(() => plan.readAsync(["nope"]), /no tensor named nope/);
    assert.throws(() => plan.readAsync(["u"]), /reads f32 tensors; u is u32/);
    plan.destroy();
    await assert.rejects(() => dropped.mapped, /freed with its plan before it arrived/);
    assert.throws(() => dropped.views(), /released/);
  } finally {
    plan.destroy();
  }
});

Deno.test("readAsync: a released staging buffer is reused by the next readback of its size, which sees only its own data", async () => {
  const gpu = await getGpu();
  const g = new Graph();
  g.state("s", [29, 7]);
  const plan = await Plan.compile(gpu, g, null, { label: "test" });
  try {
    const rng = new Rng(21);
    const fresh = () => Float32Array.from({ length: 29 * 7 }, () => rng.uniform() * 2 - 1);
    const v0 = fresh(), v1 = fresh(), v2 = fresh();
    plan.write("s", v0);
    const rb0 = plan.readAsync(["s"]);
    await rb0.mapped;
    assert.deepEqual(bits(rb0.views()[0]), bits(v0));
    rb0.release();
    assert.equal(plan.stagingAllocations, 1);
    // Reused: the same buffer, unmapped and copied into again.
    plan.write("s", v1);
    const rb1 = plan.readAsync(["s"]);
    assert.equal(plan.stagingAllocations, 1);
    await rb1.mapped;
    // In use (mapped, not released): the next readback needs a buffer of its own, and the first keeps its data.
    plan.write("s", v2);
    const rb2 = plan.readAsync(["s"]);
    assert.equal(plan.stagingAllocations, 2);
    await rb2.mapped;
    assert.deepEqual(bits(rb1.views()[0]), bits(v1));
    assert.deepEqual(bits(rb2.views()[0]), bits(v2));
    rb1.release();
    rb2.release();
    // A readback released before its mapping arrived is not reused (its buffer is freed), and later ones still work.
    const pending = plan.readAsync(["s"]);
    pending.release();
    await assert.rejects(() => pending.mapped, /released before it arrived|destroyed|aborted|unmapped/i);
    plan.write("s", v0);
    const rb3 = plan.readAsync(["s"]);
    await rb3.mapped;
    assert.deepEqual(bits(rb3.views()[0]), bits(v0));
    rb3.release();
  } finally {
    plan.destroy();
  }
});

Deno.test("readAsync: a readback larger than the device's largest buffer is split over several staging buffers", async () => {
  const gpu = await openGpu({ maxBufferSize: 1 });
  try {
    const limit = gpu.device.limits.maxBufferSize;
    if (limit > 512 << 20) {
      console.log(`skipped: this adapter's device keeps a largest buffer of ${limit} bytes`);
      return;
    }
    // Three copies of a tensor of 40% of the limit: two staging buffers (80% and 40%).
    const rows = Math.floor((limit * 0.4) / 4 / 1024);
    const g = new Graph();
    g.state("big", [rows, 1024]);
    const plan = await Plan.compile(gpu, g, null, { label: "split" });
    try {
      const rng = new Rng(12);
      const data = new Float32Array(rows * 1024);
      for (let i = 0; i < data.length; i += 4099) data[i] = rng.uniform() - 0.5;
      data[data.length - 1] = 0.25;
      plan.write("big", data);
      const rb = plan.readAsync(["big", "big", "big"]);
      assert.ok(rb.bytes > limit, `${rb.bytes} bytes read back, more than one buffer of ${limit}`);
      await rb.mapped;
      for (const v of rb.views()) {
        assert.equal(v.length, data.length);
        for (let i = 0; i < data.length; i += 4099) assert.equal(v[i], data[i]);
        assert.equal(v[v.length - 1], 0.25);
      }
      rb.release();
    } finally {
      plan.destroy();
    }
  } finally {
    gpu.device.destroy();
  }
});

Deno.test({
  name: "release the shared pipeline",
  sanitizeResources: false,
  fn() {
    shared?.release();
    shared = null;
  },
});
