import assert from "node:assert/strict";
import { describeAdapter, getGpu, type GpuContext } from "../../runtime/device.ts";
import { Graph } from "../../runtime/graph.ts";
import { Plan } from "../../runtime/executor.ts";
import { applyDeviceTuning, tuningCacheFile, type TuningProblem } from "../../kernels/tuning.ts";
import { matmul, matmulShapeClass } from "../../kernels/matmul.ts";
import { softwareAttentionConfig } from "../../kernels/attention.ts";

/** The machine's adapter under another name: an adapter no table knows, as on a new GPU. */
async function unknownAdapter(description = "Example GPU 9000 (test)"): Promise<GpuContext> {
  const gpu = await getGpu();
  return { ...gpu, caps: describeAdapter({ description, vendor: "0x1234", device: "77" }, gpu.caps.limits, gpu.caps.features) };
}

// Tiny shapes and two candidates each, so that the whole tuning takes a few seconds on a software adapter.
const PROBLEMS: TuningProblem[] = [
  { kernel: "matmul", m: 40, n: 48, k: 36, candidates: [{ bm: 32, bn: 32, bk: 8, tm: 4, tn: 4 }] },
  { kernel: "attention", seq: 33, heads: 1, headDim: 16, candidates: [softwareAttentionConfig(16)] },
];
const MATMUL_KEY = matmulShapeClass(40, 48, 36, "bf16");

Deno.test("tuning: an unknown adapter is tuned once, the cache is reused, a corrupt cache is ignored with a warning and rewritten", async () => {
  const dir = await Deno.makeTempDir({ prefix: "kleinscope-tiles-" });
  try {
    // First use: tuned, with progress lines, every candidate measured (and checked), the winners written.
    const first = await unknownAdapter();
    const lines: string[] = [];
    const tuned = await applyDeviceTuning(first, { cacheDir: dir, problems: PROBLEMS, log: (l) => lines.push(l) });
    assert.equal(tuned.source, "tuned");
    assert.equal(tuned.file, tuningCacheFile(first.caps, dir));
    assert.ok(lines.some((l) => l.includes(`[1/4, `) && l.includes(`matmul ${MATMUL_KEY} `)), lines.join("\n"));
    assert.equal(tuned.measurements.length, 4);
    for (const m of tuned.measurements) assert.ok(m.ms !== null && m.ms > 0, `${m.kernel} ${m.config}: ${m.error}`);
    const written = JSON.parse(await Deno.readTextFile(tuned.file!));
    assert.equal(written.adapter.description, "Example GPU 9000 (test)");
    assert.equal(written.complete, true);
    assert.ok(written.tiles.matmul[MATMUL_KEY], "a matmul winner");
    assert.ok(written.tiles.attention["16"], "an attention winner");
    assert.deepEqual(first.caps.tiles, written.tiles);
    assert.deepEqual((await Array.fromAsync(Deno.readDir(dir))).map((e) => e.name), [tuned.file!.split("/").at(-1)], "no temporary left");

    // The tiles reach the kernels when a plan is compiled for this device.
    const g = new Graph();
    matmul(g, "proj", g.input("x", [40, 36]), g.input("w", [48, 36], "bf16"));
    (await Plan.compile(first, g, null)).destroy();
    assert.equal(g.nodes[0].variant.BM, written.tiles.matmul[MATMUL_KEY].bm);
    assert.equal(g.nodes[0].variant.BK, written.tiles.matmul[MATMUL_KEY].bk);

    // Second use (a new process would see the same file): the cache, no tuning.
    const second = await unknownAdapter();
    const again: string[] = [];
    const cached = await applyDeviceTuning(second, { cacheDir: dir, problems: PROBLEMS, log: (l) => again.push(l) });
    assert.equal(cached.source, "cache");
    assert.deepEqual(again, []);
    assert.deepEqual(second.caps.tiles, written.tiles);

    // A corrupt file: a warning, a new tuning, the file rewritten whole.
    await Deno.writeTextFile(tuned.file!, '{"format": "kleinscope-tiles", "version": 1, "tiles": {');
    const third = await unknownAdapter();
    const warned: string[] = [];
    const retuned = await applyDeviceTuning(third, { cacheDir: dir, problems: PROBLEMS, log: (l) => warned.push(l) });
    assert.match(warned[0], /^warning: ignoring the tile cache .*: not valid JSON .*it will be written again$/);
    assert.equal(retuned.source, "tuned");
    assert.ok(JSON.parse(await Deno.readTextFile(tuned.file!)).tiles.matmul[MATMUL_KEY]);

    // A valid file whose entry no kernel accepts is corrupt too.
    const bad = { ...written, tiles: { matmul: { [MATMUL_KEY]: { bm: 12, bn: 64, bk: 8, tm: 8, tn: 8 } } } };
    await Deno.writeTextFile(tuned.file!, JSON.stringify(bad));
    const fourth = await unknownAdapter();
    const warned4: string[] = [];
    assert.equal((await applyDeviceTuning(fourth, { cacheDir: dir, problems: PROBLEMS, log: (l) => warned4.push(l) })).source, "tuned");
    assert.match(warned4[0], /warning: ignoring the tile cache .*bm must be a multiple of tm/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("tuning: KLEINSCOPE_NO_TUNE=1 and software adapters skip it and write nothing; files are per adapter and driver", async () => {
  const dir = await Deno.makeTempDir({ prefix: "kleinscope-tiles-" });
  const saved = Deno.env.get("KLEINSCOPE_NO_TUNE");
  try {
    Deno.env.set("KLEINSCOPE_NO_TUNE", "1");
    const lines: string[] = [];
    const skipped = await applyDeviceTuning(await unknownAdapter(), { cacheDir: dir, problems: PROBLEMS, log: (l) => lines.push(l) });
    assert.equal(skipped.source, "skipped");
    assert.match(lines.join("\n"), /tile tuning skipped \(KLEINSCOPE_NO_TUNE=1\)/);
    Deno.env.delete("KLEINSCOPE_NO_TUNE");
    const gpu = await getGpu();
    if (gpu.caps.software) {
      const quiet: string[] = [];
      assert.equal((await applyDeviceTuning(gpu, { cacheDir: dir, problems: PROBLEMS, log: (l) => quiet.push(l) })).source, "rules");
      assert.deepEqual(quiet, []);
    }
    assert.deepEqual(await Array.fromAsync(Deno.readDir(dir)), []);
    const a = (await unknownAdapter()).caps;
    assert.notEqual(tuningCacheFile(a, dir), tuningCacheFile({ ...a, driver: "550.54.15" }, dir));
    assert.match(tuningCacheFile({ ...a, driver: "550.54.15" }, dir), /example-gpu-9000-test--550\.54\.15--[0-9a-f]{8}\.json$/);
  } finally {
    if (saved === undefined) Deno.env.delete("KLEINSCOPE_NO_TUNE");
    else Deno.env.set("KLEINSCOPE_NO_TUNE", saved);
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("tuning: an adapter of a device class with built-in tiles (an H200) is not tuned on first use; `tune` still can", async () => {
  const dir = await Deno.makeTempDir({ prefix: "kleinscope-tiles-" });
  try {
    const h200 = await unknownAdapter("NVIDIA H200");
    h200.caps = describeAdapter({ description: "NVIDIA H200", vendor: "0x10de", device: "2335" }, h200.caps.limits, h200.caps.features);
    assert.equal(h200.caps.deviceClass, "nvidia-datacenter");
    const lines: string[] = [];
    const outcome = await applyDeviceTuning(h200, { cacheDir: dir, problems: PROBLEMS, log: (l) => lines.push(l) });
    assert.equal(outcome.source, "builtin");
    assert.deepEqual(lines, []);
    assert.deepEqual(await Array.fromAsync(Deno.readDir(dir)), [], "nothing tuned, nothing written");
    const forced = await applyDeviceTuning(h200, { cacheDir: dir, problems: PROBLEMS, mode: "force", log: () => {} });
    assert.equal(forced.source, "tuned");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
