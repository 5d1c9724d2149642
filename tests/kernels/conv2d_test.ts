import assert from "node:assert/strict";
import { describeAdapter, getGpu, type GpuContext } from "../../runtime/device.ts";
import { renderKernel } from "../../runtime/kernel.ts";
import { runAuditCase } from "../../kernels/audit.ts";
import { conv2dAuditCases } from "../../kernels/reference/conv2d.ts";
import { Graph } from "../../runtime/graph.ts";
import {
  conv2d,
  CONV2D_SWEEP_TILES,
  CONV2D_TILE_DEFAULT,
  CONV2D_TILE_NARROW,
  CONV2D_TILE_SOFTWARE,
  CONV2D_TILE_SOFTWARE_NARROW,
  CONV2D_TILE_SPATIAL,
  CONV2D_TILE_WIDE,
  conv2dShapeClass,
  type Conv2dTile,
  conv2dTileFor,
  conv2dTileName,
  conv2dWorkgroupBytes,
  DOWNSAMPLE_PADDING,
  validateConv2dTile,
} from "../../kernels/conv2d.ts";

for (const c of conv2dAuditCases) {
  Deno.test(`conv2d audit: ${c.label}`, async () => {
    const r = await runAuditCase(await getGpu(), c);
    assert.ok(r.pass, `${c.label}: rel L2 ${r.relL2} > ${r.tolerance} (max |Δ| ${r.maxAbs})`);
  });
}

/** Direct tiles of odd shapes: a K step of 3 or 5 (bf16 steps that start mid-word, a partial last step), several
 * threads along the channels, workgroups of 8 and 18 threads. */
const ODD_DIRECT_TILES: Conv2dTile[] = [
  { tc: 8, tp: 32, rc: 4, rp: 8, bk: 3, form: "direct" },
  { tc: 12, tp: 24, rc: 4, rp: 4, bk: 5, form: "direct" },
];

/** The device with `tile` entered as its tuned tile for every layer class, which conv2dTileFor takes before any rule:
 * every audit case that names no tile of its own then runs on that tile, whatever the adapter. */
function withConv2dTile(gpu: GpuContext, tile: Conv2dTile): GpuContext {
  const conv2d: Record<string, Conv2dTile> = {};
  for (const k of [1, 9]) for (const cout of [1, 64, 128]) conv2d[conv2dShapeClass(cout, k)] = tile;
  return { ...gpu, caps: { ...gpu.caps, tiles: { ...gpu.caps.tiles, conv2d } } };
}

// Both forms on every adapter: software adapters would otherwise audit only the direct tiles, GPUs only the tiled ones.
const BUILTIN_TILES = [CONV2D_TILE_SPATIAL, CONV2D_TILE_WIDE, CONV2D_TILE_DEFAULT, CONV2D_TILE_NARROW];
for (const tile of [...BUILTIN_TILES, CONV2D_TILE_SOFTWARE, CONV2D_TILE_SOFTWARE_NARROW, ...ODD_DIRECT_TILES]) {
  const name = conv2dTileName(tile);
  Deno.test(`conv2d audit: every case on tile ${name}`, async () => {
    const gpu = await getGpu();
    if (conv2dWorkgroupBytes(tile) > gpu.limits.maxComputeWorkgroupStorageSize) return;
    const forced = withConv2dTile(gpu, tile);
    const failed: string[] = [];
    for (const c of conv2dAuditCases) {
      const r = await runAuditCase(forced, c);
      if (!r.pass) failed.push(`${c.label} (rel L2 ${r.relL2})`);
    }
    assert.deepEqual(failed, [], `${name}: ${failed.join("; ")}`);
  });
}

const LIMITS_16K = { maxComputeWorkgroupStorageSize: 16384, maxComputeInvocationsPerWorkgroup: 256, maxStorageBufferBindingSize: 1 << 30 };

Deno.test("conv2d: software adapters get the direct tiles, other devices the tiled ones", () => {
  const cpu = describeAdapter({ description: "llvmpipe (LLVM 15.0.6, 256 bits)", vendor: "65541" }, LIMITS_16K);
  assert.equal(cpu.software, true);
  for (const k of [1, 9]) {
    assert.deepEqual(conv2dTileFor(cpu, 3, k), CONV2D_TILE_SOFTWARE_NARROW);
    assert.deepEqual(conv2dTileFor(cpu, 32, k), CONV2D_TILE_SOFTWARE_NARROW);
    assert.deepEqual(conv2dTileFor(cpu, 64, k), CONV2D_TILE_SOFTWARE);
    assert.deepEqual(conv2dTileFor(cpu, 512, k), CONV2D_TILE_SOFTWARE);
  }
  for (const tile of [CONV2D_TILE_SOFTWARE, CONV2D_TILE_SOFTWARE_NARROW]) {
    assert.equal(tile.form, "direct");
    assert.equal(conv2dWorkgroupBytes(tile), 0);
    assert.ok(CONV2D_SWEEP_TILES.includes(tile), `${conv2dTileName(tile)} is swept and audited`);
  }
  const gpu = describeAdapter({ description: "NVIDIA H200", vendor: "4318" }, LIMITS_16K);
  assert.deepEqual(conv2dTileFor(gpu, 512, 9), CONV2D_TILE_SPATIAL);
  assert.deepEqual(conv2dTileFor(gpu, 512, 1), CONV2D_TILE_WIDE);
  assert.deepEqual(conv2dTileFor(gpu, 64, 9), CONV2D_TILE_DEFAULT);
  assert.deepEqual(conv2dTileFor(gpu, 3, 9), CONV2D_TILE_NARROW);
  assert.deepEqual(conv2dTileFor(null, 512, 9), CONV2D_TILE_SPATIAL);
  // A tuned tile still comes first on a software adapter.
  const tuned = { ...cpu, tiles: { conv2d: { [conv2dShapeClass(64, 9)]: CONV2D_TILE_DEFAULT } } };
  assert.deepEqual(conv2dTileFor(tuned, 64, 9), CONV2D_TILE_DEFAULT);
  assert.equal(conv2dTileName(CONV2D_TILE_SOFTWARE), "64x64x4/8x8direct");
});

/** The rendered shader of one convolution node on `tile`, with every feature: stride 2 with asymmetric padding,
 * or a fused up×2 input, and a residual. */
async function renderConv2d(tile: Conv2dTile, o: { bf16: boolean; stride2?: boolean; upsample?: boolean }): Promise<string> {
  const g = new Graph();
  const dtype = o.bf16 ? "bf16" : "f32";
  const size = o.upsample ? 26 : o.stride2 ? 6 : 13;
  conv2d(g, "conv", g.input("x", [5, 13 * 13]), {
    weight: g.input("w", [7, 5, 3, 3], dtype),
    bias: g.input("b", [7], dtype),
    height: 13,
    width: 13,
    stride: o.stride2 ? 2 : 1,
    padding: o.stride2 ? DOWNSAMPLE_PADDING : undefined,
    upsample: o.upsample,
    residual: g.input("r", [7, size * size]),
    tile,
  });
  return await renderKernel(g.nodes[0].kernel, g.nodes[0].variant);
}

Deno.test("conv2d: the direct form stages nothing and holds no barrier once its constants are folded", async () => {
  for (const tile of [CONV2D_TILE_SOFTWARE, CONV2D_TILE_SOFTWARE_NARROW, ...ODD_DIRECT_TILES]) {
    for (const o of [{ bf16: true }, { bf16: false, stride2: true }, { bf16: true, upsample: true }]) {
      const code = await renderConv2d(tile, o);
      const name = `${conv2dTileName(tile)} ${JSON.stringify(o)}`;
      assert.ok(!code.includes("{{"), `${name}: a placeholder was left`);
      assert.doesNotMatch(code, /var<workgroup>/, `${name}: a workgroup array`);
      assert.match(code, /const TILED: bool = false;/, name);
      // The only barrier is the one under TILED, which the compiler removes.
      assert.equal(code.match(/workgroupBarrier\(\)/g)?.length, 1, name);
      assert.match(code, /if \(TILED\) \{\s*workgroupBarrier\(\);\s*\}/, name);
      // bf16 weights are read a step's words at a time; f32 weights through read_w.
      assert.equal(/u0_0 = weight\[/.test(code), o.bf16, `${name}: weight reads`);
    }
  }
  for (const tile of BUILTIN_TILES) {
    const code = await renderConv2d(tile, { bf16: true });
    const name = conv2dTileName(tile);
    assert.match(code, /const TILED: bool = true;/, name);
    assert.match(code, /var<workgroup> w_tile/, name);
    assert.equal(code.match(/step_barrier\(\);/g)?.length, 2, name);
  }
});

Deno.test("conv2d: tiles are checked — 256 threads for the tiled form, at most 256 for the direct one", () => {
  validateConv2dTile(CONV2D_TILE_SOFTWARE, "t");
  for (const tile of ODD_DIRECT_TILES) validateConv2dTile(tile, "t");
  // 64 threads: a direct tile, never a tiled one.
  assert.throws(() => validateConv2dTile({ ...CONV2D_TILE_SOFTWARE, form: "tiled" }, "t"), /t: conv2d tile .* must be 256 threads/);
  assert.throws(
    () => validateConv2dTile({ tc: 64, tp: 512, rc: 4, rp: 4, bk: 4, form: "direct" }, "t"),
    /t: conv2d tile .* at most 256 threads/,
  );
  assert.throws(() => validateConv2dTile({ ...CONV2D_TILE_SOFTWARE, form: "outer" as "tiled" }, "t"), /form must be "tiled" or "direct"/);
});

Deno.test("conv2d refuses mismatched operands with the node name", () => {
  const g = new Graph();
  const x = g.input("x", [5, 13 * 11]);
  const w = g.input("w", [7, 4, 3, 3]);
  const b = g.input("b", [7]);
  assert.throws(() => conv2d(g, "enc.conv_in", x, { weight: w, bias: b, height: 13, width: 11 }), /enc\.conv_in: input must be \[4/);
  const w2 = g.input("w2", [7, 5, 3, 3]);
  const bad = g.input("bad", [6]);
  assert.throws(() => conv2d(g, "enc.conv1", x, { weight: w2, bias: bad, height: 13, width: 11 }), /enc\.conv1: bias must be \[7\]/);
  const wi = g.input("wi", [7, 5, 3, 3], "i32");
  assert.throws(() => conv2d(g, "enc.conv2", x, { weight: wi, bias: b, height: 13, width: 11 }), /must be bf16 or f32/);
  const tile = { tc: 64, tp: 64, rc: 8, rp: 4, bk: 16 };
  assert.throws(
    () => conv2d(g, "enc.conv3", x, { weight: w2, bias: b, height: 13, width: 11, tile }),
    /enc\.conv3: conv2d tile .* must be 256 threads/,
  );
});
