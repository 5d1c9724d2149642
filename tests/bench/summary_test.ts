import assert from "node:assert/strict";
import { join } from "node:path";
import {
  formatSummary,
  modelLabel,
  parseSummaryArgs,
  peakFor,
  probeTorch,
  SMALL_MODEL,
  type SummaryOptions,
  type SummaryReport,
  summaryShapes,
  transformerMatmuls,
  UsageError,
} from "../../bench/summary.ts";
import { knockoutLayout } from "../../bench/attention_timing.ts";
import { pythonThat, runCommand } from "../../bench/common.ts";

const RUN = new URL("../../bench/run.ts", import.meta.url).pathname;

const PYTHON = await pythonThat("import json");
const TORCH_PYTHON = await pythonThat("import torch, numpy");

/** A Python that cannot import torch whatever is installed: `python3 -S` (no site-packages) behind a script. */
async function pythonWithoutTorch(dir: string): Promise<string> {
  const path = join(dir, "python3-without-site");
  await Deno.writeTextFile(path, `#!/bin/sh\nexec ${PYTHON} -S "$@"\n`);
  await Deno.chmod(path, 0o755);
  return path;
}

function options(args: string[]): SummaryOptions {
  const o = parseSummaryArgs(args);
  assert.notEqual(o, "help");
  return o as SummaryOptions;
}

Deno.test("summary: klein-9B shapes at the benchmark resolutions", () => {
  assert.deepEqual(transformerMatmuls(4096, 12288).map((m) => [m.k, m.n]), [
    [4096, 12288],
    [4096, 24576],
    [12288, 4096],
    [4096, 36864],
    [16384, 4096],
  ]);
  assert.equal(summaryShapes({ size: 512, refs: 1, small: false }).m, 2560);
  const big = summaryShapes({ size: 1024, refs: 1, small: false });
  assert.deepEqual([big.m, big.attention.seq, big.attention.heads, big.attention.headDim], [8704, 8704, 32, 128]);
  const small = summaryShapes({ size: 64, refs: 1, small: true });
  assert.ok(small.m <= 256 && small.matmuls.every((m) => m.k <= 512 && m.n <= 1152));
  assert.deepEqual(knockoutLayout(2560), { text: 512, ref: 640 });
  assert.equal(modelLabel("/tmp/kleinscope-random-klein-9b"), "klein-9b");
  assert.equal(modelLabel(join(SMALL_MODEL, "transformer")), "klein-tiny");
});

Deno.test("summary: argument defaults and refusals", () => {
  const d = options([]);
  assert.deepEqual([d.size, d.refs, d.random, d.model, d.iters, d.forwardIters, d.f16, d.torch, d.pipeline], [
    512,
    1,
    "klein-9b",
    undefined,
    10,
    3,
    true,
    true,
    false,
  ]);
  const s = options(["--small", "--no-torch", "--no-f16", "--peak-tflops", "1.5,3", "--json", "/tmp/x.json"]);
  assert.deepEqual([s.size, s.model, s.random, s.iters, s.forwardIters, s.f16, s.torch, s.json], [
    64,
    SMALL_MODEL,
    undefined,
    3,
    1,
    false,
    false,
    "/tmp/x.json",
  ]);
  assert.deepEqual(s.peak, { f32: 1.5, f16: 3 });
  assert.deepEqual(d.forwardSizes, [512]);
  assert.deepEqual(options(["--size", "1024", "--forward-sizes", "512, 1024"]).forwardSizes, [1024, 512]);
  assert.equal(options(["--size", "1024", "--random", "klein-4b"]).random, "klein-4b");
  assert.equal(parseSummaryArgs(["--help"]), "help");
  const refuses = (args: string[], message: RegExp) =>
    assert.throws(() => parseSummaryArgs(args), (e) => e instanceof UsageError && message.test(e.message));
  refuses(["--size", "100"], /--size 100 must be a multiple of 16/);
  refuses(["--size", "big"], /--size: "big" is not an integer/);
  refuses(["--iters", "0"], /--iters: "0" is not an integer ≥ 1/);
  refuses(["--forward-sizes", "512,500"], /--forward-sizes: 500 must be a multiple of 16/);
  refuses(["--forward-sizes", "x"], /--forward-sizes: "x" is not an integer/);
  refuses(["--random", "klein-12b"], /--random: "klein-12b" is not one of/);
  refuses(["--model", "m", "--random", "tiny"], /at most one of --model/);
  refuses(["--peak-tflops", "fast"], /--peak-tflops: "fast"/);
  refuses(["--peak-tflops", "1,2,3"], /--peak-tflops/);
  refuses(["--pipeline-model", "m"], /--pipeline-model is used with --pipeline/);
  refuses(["--bogus"], /bogus/);
});

Deno.test("summary: % of peak comes from known adapters or --peak-tflops, else n/a", () => {
  assert.deepEqual(peakFor("NVIDIA H100 80GB HBM3"), { f32: 66.9, f16: 133.8 });
  assert.deepEqual(peakFor("llvmpipe (LLVM 15.0.6, 256 bits)"), {});
  assert.deepEqual(peakFor("llvmpipe", { f32: 0.5 }), { f32: 0.5, f16: undefined });
  const report: SummaryReport = {
    device: "llvmpipe",
    date: "2026-01-01T00:00:00.000Z",
    ran: ["PyTorch: n/a (PyTorch is not installed for python3)"],
    peak: {},
    torch: { available: false, reason: "PyTorch is not installed for python3" },
    shapes: summaryShapes({ size: 64, refs: 1, small: true }),
    matmul: [],
    attention: [],
    torchMatmul: [],
    torchAttention: [],
    forwards: [],
    rows: [
      { item: "matmul x", kleinscopeMs: 2, tflops: 0.01, note: "" },
      { item: "pipeline step 1/1", kleinscopeMs: 700, note: "", noBaseline: true },
    ],
    failures: [],
  };
  const lines = formatSummary(report).split("\n");
  assert.match(lines[0], /FMA peak unknown.*% of peak n\/a/);
  assert.match(lines[1], /measured ceilings: n\/a/);
  assert.match(lines.find((l) => l.startsWith("matmul x"))!, /^matmul x\s+2\.00\s+0\.0100\s+n\/a\s+n\/a\s+n\/a\s+n\/a$/);
  // With measured ceilings, a kernel reads as a share of them too.
  const ceilings = {
    device: "llvmpipe",
    skipped: [],
    ceilings: [{ name: "f32 FMA" as const, value: 0.02, unit: "TFLOP/s" as const, medianMs: 1, timedBy: "timestamps" as const }],
  };
  const withCeilings = formatSummary({
    ...report,
    ceilings,
    rows: [{ item: "matmul x", kleinscopeMs: 2, tflops: 0.01, percentOfCeiling: 50, note: "" }],
  }).split("\n");
  assert.match(withCeilings[1], /measured ceilings: f32 FMA 0\.02000 TFLOP\/s/);
  assert.match(withCeilings.find((l) => l.startsWith("matmul x"))!, /^matmul x\s+2\.00\s+0\.0100\s+n\/a\s+50\.0%\s+n\/a\s+n\/a$/);
  assert.match(lines.find((l) => l.startsWith("pipeline step"))!, /^pipeline step 1\/1\s+700\.0$/);
});

Deno.test("summary: a Python without PyTorch, or no Python at all, is reported, not fatal", async () => {
  const missing = await probeTorch("/nonexistent/python3");
  assert.equal(missing.available, false);
  assert.match(missing.reason!, /cannot run/);
  if (PYTHON === null) return;
  const dir = await Deno.makeTempDir({ prefix: "kleinscope-summary-test-" });
  try {
    const info = await probeTorch(await pythonWithoutTorch(dir));
    assert.equal(info.available, false);
    assert.match(info.reason!, /PyTorch is not installed for .*python3-without-site/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("summary: bad arguments are refused with a message and exit code 2, before any GPU work", async () => {
  for (
    const [args, message] of [[["--size", "100"], /error: --size 100 must be a multiple of 16/], [
      ["--frobnicate"],
      /error: .*frobnicate/,
    ]] as const
  ) {
    const r = await runCommand(Deno.execPath(), ["run", "-A", RUN, "summary", ...args]);
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, message);
    assert.match(r.stderr, /usage: deno task bench summary/);
  }
  const r = await runCommand(Deno.execPath(), ["run", "-A", RUN, "summary", "--model", "/nonexistent/model", "--no-torch"]);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /error: --model \/nonexistent\/model: no such file or folder/);
});

/** `deno task bench summary --small` with `python`: its report (--json) and printed table, checked for every row. */
async function smallRun(python: string, withTorch: boolean): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "kleinscope-summary-test-" });
  try {
    const json = join(dir, "summary.json");
    // Without PyTorch: a second forward side too (--forward-sizes), its own row after the first, and no f16 rows
    // (--no-f16; the run with PyTorch has them), which on the software adapter are the slow half of the run.
    const sides = withTorch ? [] : ["--forward-sizes", "32", "--no-f16"];
    const r = await runCommand(Deno.execPath(), ["run", "-A", RUN, "summary", "--small", ...sides, "--python", python, "--json", json]);
    assert.equal(r.code, 0, r.stdout + r.stderr);
    const report: SummaryReport = JSON.parse(await Deno.readTextFile(json));
    assert.deepEqual(report.failures, []);
    assert.equal(report.torch.available, withTorch);
    const f16 = report.matmul.some((m) => m.mode === "f16");
    const modes = f16 ? ["f32", "f16"] : ["f32"];
    const expected = [
      ...report.shapes.matmuls.flatMap((m) => modes.map((mode) => `matmul ${m.name} ${report.shapes.m}×${m.k}×${m.n} ${mode}`)),
      "attention 2×128 S=256 plain",
      "attention 2×128 S=256 ref->text",
      ...modes.map((mode) => `forward klein-tiny 64²+1 ref S=544 ${mode}`),
      ...(withTorch ? [] : modes.map((mode) => `forward klein-tiny 32²+1 ref S=520 ${mode}`)),
    ];
    assert.deepEqual(report.forwards.map((f) => f.size), withTorch ? [64] : [64, 32]);
    assert.deepEqual(report.forward, report.forwards[0]);
    // The measured ceilings head the table, then every kernel, each also as a share of its ceiling.
    const ceilingNames = ["f32 FMA", ...(report.ceilings!.skipped.length ? [] : ["f16 FMA (packed)"]), "workgroup memory", "global memory"];
    assert.deepEqual(report.ceilings!.ceilings.map((c) => c.name), ceilingNames);
    for (const c of report.ceilings!.ceilings) assert.ok(c.value > 0 && Number.isFinite(c.value), JSON.stringify(c));
    const ceilingRows = report.rows.filter((row) => row.item.startsWith("ceiling "));
    assert.deepEqual(ceilingRows.map((row) => row.item), ceilingNames.map((n) => `ceiling ${n}`));
    const kernelRows = report.rows.filter((row) => !row.item.startsWith("ceiling "));
    assert.deepEqual(kernelRows.map((row) => row.item), expected);
    for (const row of kernelRows) assert.ok(row.percentOfCeiling! > 0, `${row.item}: % of ceiling ${row.percentOfCeiling}`);
    for (const row of kernelRows) {
      assert.ok(row.kleinscopeMs! > 0 && row.tflops! > 0 && row.peakBytes! > 0, JSON.stringify(row));
      if (withTorch) assert.ok(row.torchFp32Ms! > 0 && row.torchBf16Ms! > 0, JSON.stringify(row));
      else assert.ok(row.torchFp32Ms === undefined && row.torchBf16Ms === undefined, JSON.stringify(row));
    }

    const out = r.stdout;
    assert.match(out, /^device: .*$/m);
    assert.match(out, /^date: \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d/m);
    assert.match(out, /^ran: matmul: 5 shapes at M = 256/m);
    assert.match(
      out,
      /^item\s+kleinscope ms\s+TFLOP\/s\s+% of peak\s+% of ceiling\s+PyTorch fp32 ms\s+PyTorch bf16 ms\s+peak mem\s+note$/m,
    );
    assert.match(out, /^measured ceilings: f32 FMA [\d.]+ TFLOP\/s, .*global memory [\d.]+ GB\/s$/m);
    for (const item of expected) {
      const line = out.split("\n").find((l) => l.startsWith(item + " "));
      assert.ok(line, `no table row for ${item}`);
      const cells = line.slice(item.length).trim().split(/\s{2,}/);
      assert.ok(Number(cells[0]) > 0 && Number(cells[1]) > 0, line);
      assert.match(cells[3], /^[\d.]+%$/, line);
      if (withTorch) assert.ok(Number(cells[4]) > 0 && Number(cells[5]) > 0, line);
      else assert.deepEqual(cells.slice(4, 6), ["n/a", "n/a"], line);
    }
    return out;
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test({
  name: "summary --small: one table with every row, kleinscope and PyTorch side by side",
  ignore: TORCH_PYTHON === null,
  async fn() {
    const out = await smallRun(TORCH_PYTHON!, true);
    assert.match(out, /^ran: PyTorch .* torch_baseline\.py \(matmul, attention\) and torch_flux2\.py \(forward\)/m);
  },
});

Deno.test({
  name: "summary --small without PyTorch: the PyTorch columns say n/a and a line says why",
  ignore: PYTHON === null,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "kleinscope-summary-test-" });
    try {
      const out = await smallRun(await pythonWithoutTorch(dir), false);
      assert.match(out, /^ran: PyTorch: n\/a \(PyTorch is not installed for .*python3-without-site\)$/m);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
