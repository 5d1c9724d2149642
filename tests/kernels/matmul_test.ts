import assert from "node:assert/strict";
import { describeAdapter, getGpu } from "../../runtime/device.ts";
import { Graph } from "../../runtime/graph.ts";
import { renderKernel } from "../../runtime/kernel.ts";
import { formatAuditTable, runAuditCase } from "../../kernels/audit.ts";
import { matmulAuditCases } from "../../kernels/reference/matmul.ts";
import {
  BUILTIN_MATMUL_TILES,
  DEFAULT_F16_MATMUL_CONFIG,
  DEFAULT_MATMUL_CONFIG,
  FEW_ROWS_MATMUL_CONFIG,
  loadMatmulTuning,
  matmul,
  MATMUL_SWEEP_CONFIGS,
  matmulConfigFor,
  matmulConfigName,
  matmulShapeClass,
  matmulWorkgroupBytes,
  SOFTWARE_FEW_ROWS_MATMUL_CONFIG,
  SOFTWARE_MATMUL_CONFIG,
  validateMatmulConfig,
} from "../../kernels/matmul.ts";

Deno.test("matmul: every audit case matches the float64 reference", async () => {
  const gpu = await getGpu();
  const results = [];
  for (const c of matmulAuditCases) results.push(await runAuditCase(gpu, c));
  console.log(formatAuditTable(results));
  const failed = results.filter((r) => !r.pass);
  assert.equal(failed.length, 0, `failed: ${failed.map((r) => `${r.label} (rel L2 ${r.relL2})`).join("; ")}`);
});

Deno.test("matmul: K of x and of the weight must agree, checked when the graph is built", () => {
  const g = new Graph();
  const x = g.input("x", [4, 8]);
  const w = g.input("w", [5, 9], "bf16");
  assert.throws(() => matmul(g, "proj", x, w), /proj: x x \[4×8\] has K = 8 but weight w \[5×9\] has K = 9/);
  assert.equal(g.nodes.length, 0);
});

Deno.test("matmul: bad operands are refused with the tensor named", () => {
  const g = new Graph();
  const x = g.input("x", [4, 8]);
  const w = g.input("w", [5, 8], "bf16");
  assert.throws(() => matmul(g, "p1", x, w, { bias: g.input("b", [4]) }), /p1: bias b \[4\] must have N = 5 elements/);
  assert.throws(() => matmul(g, "p2", x, w, { out: g.state("o", [4, 6]) }), /p2: out o must be f32 \[4×5\]/);
  assert.throws(() => matmul(g, "p3", x, w, { accumulate: true }), /p3: accumulate needs an out tensor/);
  const square = g.state("square", [4, 8]);
  assert.throws(() => matmul(g, "p6", square, g.input("w8", [8, 8]), { out: square, accumulate: true }), /p6: out square shares memory/);
  assert.throws(() => matmul(g, "p4", g.input("x3", [2, 4, 8]), w), /p4: x x3 must be 2-D/);
  assert.throws(() => matmul(g, "p5", x, w, { config: { bm: 128, bn: 128, bk: 8, tm: 16, tn: 16 } }), /p5: .*threads|p5: .*accumulators/);
  const dot = { bm: 64, bn: 64, bk: 16, tm: 4, tn: 4, form: "dot" as const };
  assert.throws(() => matmul(g, "p7", x, w, { f16: true, config: dot }), /p7: .*f16 multiplication has the outer form only/);
});

Deno.test("matmul: configuration choice — defaults fit 16 KiB, unknown device or class falls back", () => {
  validateMatmulConfig(DEFAULT_MATMUL_CONFIG);
  assert.ok(matmulWorkgroupBytes(DEFAULT_MATMUL_CONFIG) <= 16384);
  assert.ok(matmulWorkgroupBytes(FEW_ROWS_MATMUL_CONFIG) <= 16384);
  assert.equal(matmulShapeClass(2560, 4096, 4096, "bf16"), "bf16.m4096.n4096.k4096");
  assert.equal(matmulShapeClass(1, 18432, 3072, "f32"), "f32.m64.nbig.k4096");
  const unknown = describeAdapter({ description: "no such device", vendor: "0x1234" }, LIMITS_16K);
  assert.deepEqual(matmulConfigFor(unknown, 2560, 4096, 4096, "bf16"), DEFAULT_MATMUL_CONFIG);
  assert.deepEqual(matmulConfigFor(unknown, 1, 4096, 4096, "bf16"), FEW_ROWS_MATMUL_CONFIG);
  assert.deepEqual(matmulConfigFor(null, 2560, 4096, 4096, "bf16", true), DEFAULT_F16_MATMUL_CONFIG);
  // Software adapters take the direct form for f32 multiplication (short tiles for few rows) and keep the K step of 8
  // for f16 (half the unrolled code).
  const cpu = describeAdapter({ description: "llvmpipe (LLVM 15.0.6, 256 bits)", vendor: "65541" }, LIMITS_16K);
  assert.equal(cpu.software, true);
  assert.deepEqual(matmulConfigFor(cpu, 2560, 4096, 4096, "bf16"), SOFTWARE_MATMUL_CONFIG);
  assert.deepEqual(matmulConfigFor(cpu, 1, 4096, 4096, "bf16"), SOFTWARE_FEW_ROWS_MATMUL_CONFIG);
  assert.deepEqual(matmulConfigFor(cpu, 2560, 4096, 4096, "bf16", true), DEFAULT_MATMUL_CONFIG);
  assert.equal(SOFTWARE_MATMUL_CONFIG.form, "direct");
  assert.equal(matmulWorkgroupBytes(SOFTWARE_MATMUL_CONFIG), 0);
});

Deno.test("matmul: the direct form stages nothing and holds no barrier once its constants are folded", async () => {
  for (
    const config of [SOFTWARE_MATMUL_CONFIG, SOFTWARE_FEW_ROWS_MATMUL_CONFIG, {
      bm: 12,
      bn: 20,
      bk: 8,
      tm: 3,
      tn: 5,
      form: "direct" as const,
    }]
  ) {
    const g = new Graph();
    matmul(g, "proj", g.input("x", [70, 64]), g.input("w", [50, 64], "bf16"), { config });
    const code = await renderKernel(g.nodes[0].kernel, g.nodes[0].variant);
    const name = matmulConfigName(config);
    assert.match(name, /direct$/);
    assert.doesNotMatch(code, /var<workgroup>/, `${name}: a workgroup array`);
    assert.match(code, /const TILED: bool = false;/, name);
    // The only barrier is the one under TILED, which the compiler removes.
    assert.equal(code.match(/workgroupBarrier\(\)/g)?.length, 1, name);
    assert.match(code, /if \(TILED\) \{\s*workgroupBarrier\(\);/, name);
  }
  const g = new Graph();
  matmul(g, "proj", g.input("x", [70, 64]), g.input("w", [50, 64], "bf16"), { config: DEFAULT_MATMUL_CONFIG });
  assert.match(await renderKernel(g.nodes[0].kernel, g.nodes[0].variant), /const TILED: bool = true;/);
  assert.throws(() => validateMatmulConfig({ ...SOFTWARE_MATMUL_CONFIG }, "p", true), /p: .*f16 multiplication has the outer form only/);
});

Deno.test("matmul: warps along the thread grid (warpCols) are named and checked", () => {
  assert.equal(matmulConfigName({ ...DEFAULT_MATMUL_CONFIG, warpCols: 8 }), "128x128x8/8x8w8");
  validateMatmulConfig({ ...DEFAULT_MATMUL_CONFIG, warpCols: 4 });
  // 3, 64 or half a thread along a row of a warp are no warp shape.
  for (const warpCols of [3, 64, 0.5]) {
    assert.throws(() => validateMatmulConfig({ ...DEFAULT_MATMUL_CONFIG, warpCols }, "p"), /p: .*warpCols must be a power of two/);
  }
  // 4 × 16 per thread on a 64 × 64 tile: 4 thread columns cannot hold a warp 8 wide.
  assert.throws(
    () => validateMatmulConfig({ bm: 64, bn: 64, bk: 8, tm: 4, tn: 16, warpCols: 8 }, "p"),
    /dividing 32 and the 4 thread columns/,
  );
});

const LIMITS_16K = { maxComputeWorkgroupStorageSize: 16384, maxComputeInvocationsPerWorkgroup: 256, maxStorageBufferBindingSize: 1 << 30 };

Deno.test("matmul: tiles follow the device — tuned entry, then the device class's built-in entry, each only where it fits", () => {
  // Any NVIDIA datacenter part gets the H100 winners, not only the adapter they were measured on.
  const h200 = describeAdapter({ description: "NVIDIA H200", vendor: "4318" }, { ...LIMITS_16K, maxComputeWorkgroupStorageSize: 49152 });
  assert.equal(h200.deviceClass, "nvidia-datacenter");
  const key = "bf16.m4096.n4096.k4096";
  assert.deepEqual(matmulConfigFor(h200, 2560, 4096, 4096, "bf16"), BUILTIN_MATMUL_TILES["nvidia-datacenter"][key]);
  const tuned = { bm: 64, bn: 64, bk: 16, tm: 4, tn: 4 };
  const big = { bm: 128, bn: 128, bk: 16, tm: 8, tn: 8 };
  const device = { ...describeAdapter({ description: "test adapter", vendor: "0x1234" }, LIMITS_16K) };
  device.tiles = { matmul: { "bf16.m1024.n1024.k1024": tuned, "f32.m1024.n1024.k1024": big } };
  // The node holds the portable tiles until a plan is compiled for a device, which then swaps in its own.
  const g = new Graph();
  matmul(g, "proj", g.input("x", [300, 512]), g.input("w", [700, 512], "bf16"));
  assert.deepEqual([g.nodes[0].variant.BM, g.nodes[0].variant.BN, g.nodes[0].variant.BK], [128, 128, 8]);
  g.chooseTiles(device);
  assert.deepEqual([g.nodes[0].variant.BM, g.nodes[0].variant.BN, g.nodes[0].variant.BK], [64, 64, 16]);
  assert.deepEqual(g.nodes[0].workgroups, [5 * 11, 1, 1]);
  // 32 KiB of workgroup memory does not fit a 16 KiB device: the default is used instead.
  assert.deepEqual(matmulConfigFor(device, 300, 700, 512, "f32"), DEFAULT_MATMUL_CONFIG);
  // Nor do 512 threads fit a device that allows 256, though their 8 KiB would; a device that allows 1024 takes them.
  const wide = { bm: 128, bn: 128, bk: 4, tm: 4, tn: 8 };
  device.tiles = { matmul: { "bf16.m1024.n1024.k1024": wide } };
  assert.deepEqual(matmulConfigFor(device, 300, 700, 512, "bf16"), DEFAULT_MATMUL_CONFIG);
  const roomy = { ...device, limits: { ...device.limits, maxComputeInvocationsPerWorkgroup: 1024 } };
  assert.deepEqual(matmulConfigFor(roomy, 300, 700, 512, "bf16"), wide);
  device.tiles = { matmul: { "bf16.m1024.n1024.k1024": tuned, "f32.m1024.n1024.k1024": big } };
  // An explicit configuration is never replaced; one the device cannot run is refused by name when a plan is made.
  const fixed = new Graph();
  matmul(fixed, "proj", fixed.input("x", [300, 512]), fixed.input("w", [700, 512], "bf16"), { config: { ...tuned, bk: 8 } });
  fixed.chooseTiles(device);
  assert.equal(fixed.nodes[0].variant.BK, 8);
  const tooBig = new Graph();
  matmul(tooBig, "proj", tooBig.input("x", [300, 512]), tooBig.input("w", [700, 512], "bf16"), { config: big });
  assert.throws(
    () => tooBig.chooseTiles(device),
    /proj: tile configuration 128x128x16\/8x8 needs 256 threads and 32768 B .* allows 256 and 16384 B/,
  );
  const path = Deno.makeTempFileSync({ suffix: ".json" });
  try {
    Deno.writeTextFileSync(path, JSON.stringify({ "nvidia": { "bf16.m64.n64.k64": { bm: 12, bn: 64, bk: 8, tm: 8, tn: 8 } } }));
    assert.throws(() => loadMatmulTuning(new URL(`file://${path}`)), /bf16\.m64\.n64\.k64.*bm must be a multiple of tm/);
    assert.deepEqual(loadMatmulTuning(new URL("file:///nonexistent/matmul_tuned.json")), {});
  } finally {
    Deno.removeSync(path);
  }
});

Deno.test("matmul: generated shaders keep every per-thread value in a named register (no private arrays)", async () => {
  const configs = [...MATMUL_SWEEP_CONFIGS, { bm: 24, bn: 20, bk: 4, tm: 3, tn: 5, form: "dot" as const }];
  for (const config of configs) {
    for (const k of [64, 66]) {
      const g = new Graph();
      matmul(g, "proj", g.input("x", [70, k]), g.input("w", [50, k], "bf16"), { bias: g.input("b", [50]), config });
      const code = await renderKernel(g.nodes[0].kernel, g.nodes[0].variant);
      const name = `${matmulConfigName(config)}, K ${k}`;
      assert.ok(!code.includes("{{"), `${name}: a placeholder was left`);
      for (const line of code.split("\n").filter((l) => l.includes("array<"))) {
        assert.match(line, /var<(workgroup|storage, read(_write)?)>/, `${name}: a non-shared array: ${line.trim()}`);
      }
      // A lane of a vector is only ever named, never indexed.
      assert.doesNotMatch(code, /\]\[[a-z_]+ & 3u\]|\.(x|y|z|w)\[/, `${name}: a dynamic vector lane`);
    }
  }
});
