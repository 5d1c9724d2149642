import assert from "node:assert/strict";
import { join } from "node:path";
import { getGpu } from "../../runtime/device.ts";
import type { NodeTiming } from "../../runtime/executor.ts";
import { forwardWithCaptures } from "../../conformance/dit_forward.ts";
import { flux2GraphWeights } from "../../model/flux2/weights.ts";
import { parseFlux2Config } from "../../model/flux2/config.ts";
import { qwen3GraphWeights } from "../../model/qwen3/weights.ts";
import { parseQwen3Config } from "../../model/qwen3/config.ts";
import { vaeTensorShapes } from "../../model/vae/weights.ts";
import { parseVaeConfig } from "../../model/vae/config.ts";
import {
  benchForward,
  ditBenchInputs,
  ditSequence,
  kernelFamilyTable,
  loadTransformer,
  parseDitBenchArgs,
  runDitBench,
  topNodesTable,
} from "../../bench/dit.ts";
import { formatTable, median, pythonThat, runCommand, seededNormals } from "../../bench/common.ts";
import { relativeL2 } from "../../kernels/audit.ts";

const FIX = new URL("../fixtures/klein-tiny/", import.meta.url).pathname;
const TRANSFORMER = join(FIX, "model/transformer");
const CHECKPOINT_SCRIPT = new URL("../../bench/make_random_checkpoint.py", import.meta.url).pathname;
const TORCH_SCRIPT = new URL("../../bench/torch_flux2.py", import.meta.url).pathname;

const PYTHON = await pythonThat("import json");
const TORCH_PYTHON = await pythonThat("import torch, numpy");

Deno.test("sequence lengths of the benchmark resolutions", () => {
  assert.equal(ditSequence(512, 1).rows, 2560);
  assert.equal(ditSequence(1024, 1).rows, 8704);
  assert.equal(ditSequence(1024, 0).rows, 4608);
  const s = ditSequence(64, 2);
  assert.deepEqual([s.textRows, s.imageRows, s.refs.length], [512, 48, 2]);
});

Deno.test("argument parsing refuses what it cannot run", () => {
  const o = parseDitBenchArgs(["--model", "m", "--size", "1024", "--refs", "0", "--iters", "3", "--compare"]);
  assert.deepEqual([o.model, o.size, o.refs, o.iters, o.compare, o.f16], ["m", 1024, 0, 3, true, false]);
  assert.throws(() => parseDitBenchArgs([]), /exactly one of --model/);
  assert.throws(() => parseDitBenchArgs(["--model", "m", "--random", "klein-9b"]), /exactly one of --model/);
  assert.throws(() => parseDitBenchArgs(["--random", "klein-12b"]), /--random: "klein-12b"/);
  assert.throws(() => parseDitBenchArgs(["--model", "m", "--size", "100"]), /multiple of 16/);
  assert.throws(() => parseDitBenchArgs(["--model", "m", "--iters", "0"]), /--iters/);
});

Deno.test("--f16 times a second forward multiplying in f16, close to the f32 one but not equal", async () => {
  const opts = parseDitBenchArgs(["--model", TRANSFORMER, "--size", "64", "--iters", "1", "--f16"]);
  const lines: string[] = [];
  const report = await runDitBench(opts, (s) => lines.push(s)).catch((e) => {
    if (/offers no shader-f16/.test(e.message)) return null;
    throw e;
  });
  if (!report) return console.log("skipped: this adapter has no shader-f16");
  const f16 = report.forwardF16!;
  assert.ok(f16.medianMs > 0);
  assert.ok(f16.errorVsF32 > 1e-6 && f16.errorVsF32 < 1e-2, `f16 vs f32: ${f16.errorVsF32}`);
  assert.match(lines.join("\n"), /kleinscope --f16 \(WebGPU, .*\(vs kleinscope f32\)/);
});

Deno.test("helpers: median, relative L2, seeded normals, tables", () => {
  assert.equal(median([3, 1, 2]), 2);
  assert.equal(median([4, 1, 3, 2]), 2.5);
  assert.equal(relativeL2([1, 2, 2], [1, 2, 2]), 0);
  assert.ok(Math.abs(relativeL2([0, 0, 3], [0, 0, 2]) - 0.5) < 1e-15);
  assert.equal(relativeL2([0, NaN], [1, 1]), Infinity);
  assert.throws(() => relativeL2([1, 2], [1, 2, 3]), /2 values against 3/);
  const a = seededNormals(100001, 7), b = seededNormals(100001, 7), c = seededNormals(100001, 8);
  assert.deepEqual(a, b);
  assert.notDeepEqual(a, c);
  const mean = a.reduce((s, v) => s + v, 0) / a.length;
  const variance = a.reduce((s, v) => s + (v - mean) ** 2, 0) / a.length;
  assert.ok(Math.abs(mean) < 0.02 && Math.abs(variance - 1) < 0.02, `mean ${mean}, variance ${variance}`);
  assert.equal(formatTable(["a", "bb"], [["xyz", "1"]]), "a    bb\n---  --\nxyz  1");
  const timings: NodeTiming[] = [
    { name: "double.0.img_qkv", kernel: "matmul", ms: 3, flops: 6e9 },
    { name: "double.0.attn", kernel: "attention", ms: 2, flops: 1e9 },
    { name: "double.0.img", kernel: "elementwise", ms: 1 },
    { name: "single.0.out", kernel: "matmul", ms: 1, flops: 2e9 },
  ];
  const families = kernelFamilyTable(timings).split("\n");
  assert.match(families[2], /^matmul\s+2\s+4\.00\s+57\.1%\s+8\.0\s+2\.00$/);
  assert.match(families.at(-1)!, /^total\s+4\s+7\.00\s+100%$/);
  assert.match(topNodesTable(timings, 2).split("\n")[2], /^double\.0\.img_qkv\s+matmul\s+3\.000\s+42\.9%\s+2\.00$/);
  assert.equal(topNodesTable(timings, 2).split("\n").length, 4);
});

Deno.test("the benchmark runs end to end on the fixture transformer (64², one reference, one iteration)", async () => {
  const lines: string[] = [];
  const report = await runDitBench(
    parseDitBenchArgs(["--model", join(FIX, "model"), "--size", "64", "--iters", "1"]),
    (s) => lines.push(s),
  );
  assert.equal(report.modelDir, TRANSFORMER);
  assert.equal(report.seq.rows, 512 + 2 * 16);
  assert.equal(report.forward.output.length, 32 * report.config.outChannels);
  assert.ok(report.forward.output.every(Number.isFinite), "output is finite");
  assert.ok(report.forward.output.some((v) => v !== 0), "output is not all zeros");
  assert.equal(report.forward.samplesMs.length, 1);
  assert.ok(report.forward.medianMs > 0 && report.forward.flops > 0);
  assert.equal(report.peakBytes, report.load.bytes + report.forward.planBytes);
  assert.equal(report.torch, undefined);
  const text = lines.join("\n");
  assert.match(text, /transformer forward, 64² \+ 1 ref \(S = 544\), median of 1/);
  assert.match(text, /kleinscope \(WebGPU/);
  if (report.forward.profile) {
    assert.equal(report.forward.profile.length, report.forward.dispatches);
    assert.match(text, /per kernel family/);
  }
});

Deno.test("the benchmarked forward is the conformance forward", async () => {
  const gpu = await getGpu();
  const { transformer } = await loadTransformer(gpu, TRANSFORMER);
  try {
    // A short text (64 rows keep the image rows' byte offset 256-aligned) keeps this quick on a software adapter.
    const inputs = ditBenchInputs(transformer.config, ditSequence(32, 1, 64), 5);
    const bench = await benchForward(gpu, transformer, inputs, 1, { profile: false });
    assert.equal(bench.profile, null);
    const conformance = await forwardWithCaptures(transformer, {
      x: inputs.x,
      ctx: inputs.ctx,
      ids: inputs.ids,
      timestep: inputs.sigma * 1000,
    });
    assert.deepEqual(new Uint32Array(bench.output.buffer), new Uint32Array(conformance.output.buffer));
  } finally {
    transformer.release();
  }
});

Deno.test({
  name: "random checkpoint layouts are the ones the loaders expect (transformer, Qwen3 text encoder, VAE)",
  ignore: PYTHON === null,
  async fn() {
    const list = async (kind: string, preset: string) => {
      const r = await runCommand(PYTHON!, [CHECKPOINT_SCRIPT, "--kind", kind, "--preset", preset, "--list"]);
      assert.equal(r.code, 0, r.stderr);
      return JSON.parse(r.stdout) as { config: unknown; tensors: Record<string, number[]> };
    };
    for (
      const [preset, blocks, heads, joint] of [["klein-4b", [5, 20], 24, 7680], ["klein-9b", [8, 24], 32, 12288], [
        "tiny",
        [2, 2],
        2,
        96,
      ]] as const
    ) {
      const { config, tensors } = await list("transformer", preset);
      const cfg = parseFlux2Config(config, preset);
      assert.deepEqual([cfg.numDoubleBlocks, cfg.numSingleBlocks, cfg.heads, cfg.headDim, cfg.jointAttentionDim], [
        ...blocks,
        heads,
        128,
        joint,
      ]);
      assert.deepEqual(tensors, Object.fromEntries(flux2GraphWeights(cfg, "diffusers").expected), preset);
    }
    for (const preset of ["qwen3-8b", "qwen3-4b", "tiny"]) {
      const { config, tensors } = await list("text_encoder", preset);
      const cfg = parseQwen3Config(config, preset);
      assert.equal(cfg.numLayers, 27);
      const expected = Object.fromEntries(qwen3GraphWeights(cfg).expected);
      assert.deepEqual(tensors, { ...expected, "model.norm.weight": [cfg.hiddenSize] }, preset);
    }
    for (const preset of ["flux2", "tiny"]) {
      const { config, tensors } = await list("vae", preset);
      const cfg = parseVaeConfig(config, preset);
      const expected = Object.fromEntries([...vaeTensorShapes(cfg, "encoder"), ...vaeTensorShapes(cfg, "decoder")]);
      assert.deepEqual(tensors, { ...expected, "bn.num_batches_tracked": [] }, preset);
    }
    const eightB = await list("text_encoder", "qwen3-8b");
    assert.deepEqual(eightB.tensors["model.embed_tokens.weight"], [151936, 4096]);
  },
});

Deno.test({
  name: "PyTorch baseline: the fixture's dit_forward case, and --compare on a random tiny checkpoint",
  ignore: TORCH_PYTHON === null,
  async fn() {
    const golden = await runCommand(TORCH_PYTHON!, [TORCH_SCRIPT, "--check-golden", FIX]);
    assert.equal(golden.code, 0, golden.stdout + golden.stderr);
    const result = JSON.parse(golden.stdout.split("\n").find((l) => l.startsWith("RESULT "))!.slice(7));
    assert.ok(result.rel_l2 < 2e-6, `golden relative L2 ${result.rel_l2}`);

    const dir = await Deno.makeTempDir({ prefix: "kleinscope-random-" });
    try {
      const out = join(dir, "transformer");
      const made = await runCommand(TORCH_PYTHON!, [
        CHECKPOINT_SCRIPT,
        "--kind",
        "transformer",
        "--preset",
        "tiny",
        "--out",
        out,
        "--shard-gb",
        "0.004",
      ]);
      assert.equal(made.code, 0, made.stderr);
      const index = JSON.parse(await Deno.readTextFile(join(out, "diffusion_pytorch_model.safetensors.index.json")));
      assert.ok(new Set(Object.values(index.weight_map)).size > 1, "the tiny transformer is split over several shards");
      const report = await runDitBench(
        parseDitBenchArgs(["--model", out, "--size", "32", "--refs", "1", "--iters", "1", "--compare", "--python", TORCH_PYTHON!]),
        () => {},
      );
      assert.ok(report.torch, "the comparison ran");
      assert.deepEqual(report.torch.failures, []);
      assert.ok(report.torch.errorFp32! < 1e-5, `kleinscope vs PyTorch fp32: ${report.torch.errorFp32}`);
      assert.ok(
        report.torch.errorBf16VsFp32! > 1e-4 && report.torch.errorBf16VsFp32! < 0.05,
        `bf16 vs fp32: ${report.torch.errorBf16VsFp32}`,
      );
      assert.ok(report.torch.fp32!.medianMs > 0 && report.torch.bf16!.medianMs > 0);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
