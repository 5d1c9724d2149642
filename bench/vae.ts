// VAE throughput: the conv2d kernel at the shapes of a FLUX.2 VAE encode and decode, and optionally whole encode and
// decode graphs with random weights.
//
//   deno run -A bench/vae.ts [--small] [--iters n] [--sweep] [--tile 128x128x8/8x8[direct]] [--compare path/to/conv2d.wgsl]
//                            [--vae] [--size 1024]
//
// Each convolution shape is one plan that repeats the node `iters` times back to back (bf16 weights, random data);
// after a warm-up run and a check of sampled outputs against float64 sums, one plan.profile() times every node
// with timestamp queries and the median is reported (without timestamps: the wall clock of a run, shared out).
// --sweep also times the other tiles of CONV2D_SWEEP_TILES that fit the device's workgroup memory; --tile times one
// given tile instead of the default. --compare times another conv2d shader with the same bindings, parameters and
// variant values (e.g. an earlier version of kernels/conv2d.wgsl) on the same shapes.
// --vae builds the encoder and the decoder at --size × --size with random weights (no checkpoint needed), runs each
// once, profiles one run and prints its time and the time per kernel family.
// --small: smaller images and channel counts, for software adapters.

import { resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { type GpuContext, openGpu } from "../runtime/device.ts";
import { Graph } from "../runtime/graph.ts";
import { Plan, type WeightSource } from "../runtime/executor.ts";
import type { KernelSpec } from "../runtime/kernel.ts";
import type { TensorSpec } from "../runtime/tensor.ts";
import {
  CONV2D_SWEEP_TILES,
  CONV2D_TILE_DEFAULT,
  CONV2D_TILE_NARROW,
  CONV2D_TILE_WIDE,
  conv2dKernel,
  conv2dNode,
  type Conv2dTile,
  conv2dTileFor,
  conv2dTileName,
  conv2dWorkgroupBytes,
  DOWNSAMPLE_PADDING,
  type Padding,
  validateConv2dTile,
} from "../kernels/conv2d.ts";
import { packBf16 } from "../weights/dtypes.ts";
import { parseVaeConfig, type VaeConfig } from "../model/vae/config.ts";
import { vaeTensorShapes } from "../model/vae/weights.ts";
import { buildEncoder } from "../model/vae/encoder.ts";
import { buildDecoder } from "../model/vae/decoder.ts";
import { fillUniform, median, parseBenchArgs } from "./common.ts";

export const USAGE =
  `usage: deno task bench vae [--small] [--iters n] [--sweep] [--tile 128x128x8/8x8[direct]] [--compare path/to/conv2d.wgsl]
         [--vae] [--size 1024] [--no-conv]
The conv2d kernel at the VAE's shapes (--sweep: every tile that fits), and with --vae a whole encode and decode with
random weights; --small: smaller images and channel counts, for software adapters.`;

interface ConvShape {
  label: string;
  cin: number;
  cout: number;
  /** Input size (square). */
  size: number;
  k: number;
  stride?: 1 | 2;
  padding?: Padding;
  upsample?: boolean;
}

/** The convolutions of a 1024² FLUX.2 VAE encode and decode (block_out_channels 128, 256, 512, 512). */
function vaeShapes(scale: number, chan: number): ConvShape[] {
  const s = (n: number) => Math.max(8, n / scale);
  const c = (n: number) => Math.max(4, n / chan);
  return [
    { label: "enc conv_in", cin: 3, cout: c(128), size: s(1024), k: 3 },
    { label: "3×3", cin: c(128), cout: c(128), size: s(1024), k: 3 },
    { label: "down s2", cin: c(128), cout: c(128), size: s(1024), k: 3, stride: 2, padding: DOWNSAMPLE_PADDING },
    { label: "3×3", cin: c(128), cout: c(256), size: s(512), k: 3 },
    { label: "3×3", cin: c(256), cout: c(256), size: s(512), k: 3 },
    { label: "1×1 shortcut", cin: c(128), cout: c(256), size: s(512), k: 1 },
    { label: "down s2", cin: c(256), cout: c(256), size: s(512), k: 3, stride: 2, padding: DOWNSAMPLE_PADDING },
    { label: "3×3", cin: c(512), cout: c(512), size: s(256), k: 3 },
    { label: "3×3", cin: c(512), cout: c(512), size: s(128), k: 3 },
    { label: "enc conv_out", cin: c(512), cout: 64, size: s(128), k: 3 },
    { label: "3×3 on up×2", cin: c(512), cout: c(512), size: s(128), k: 3, upsample: true },
    { label: "3×3 on up×2", cin: c(512), cout: c(512), size: s(256), k: 3, upsample: true },
    { label: "3×3 on up×2", cin: c(256), cout: c(256), size: s(512), k: 3, upsample: true },
    { label: "3×3", cin: c(256), cout: c(128), size: s(1024), k: 3 },
    { label: "1×1 shortcut", cin: c(256), cout: c(128), size: s(1024), k: 1 },
    { label: "dec conv_out", cin: c(128), cout: 3, size: s(1024), k: 3 },
  ];
}

function shapeName(c: ConvShape): string {
  const out = c.upsample ? 2 * c.size : c.stride === 2 ? c.size / 2 : c.size;
  return `${c.label} ${c.cin}→${c.cout} ${c.size}²${out !== c.size ? `→${out}²` : ""}`;
}

/** Uniform values in [−scale, scale). */
function randomArray(n: number, seed: number, scale = 1): Float32Array {
  return fillUniform(n, seed).map((v) => v * scale);
}

function bf16Round(a: Float32Array): Float32Array {
  const u = new Uint32Array(a.buffer.slice(0));
  for (let i = 0; i < u.length; i++) u[i] = (u[i] + 0x7fff + ((u[i] >>> 16) & 1)) & 0xffff0000;
  return new Float32Array(u.buffer);
}

interface Operands {
  x: Float32Array;
  w: Float32Array;
  b: Float32Array;
}

function operands(c: ConvShape): Operands {
  const fanIn = c.cin * c.k * c.k;
  return {
    x: randomArray(c.cin * c.size * c.size, 1),
    w: bf16Round(randomArray(c.cout * fanIn, 2, Math.sqrt(3 / fanIn))),
    b: bf16Round(randomArray(c.cout, 3, 0.1)),
  };
}

/** Largest relative error of sampled outputs against float64 sums (relative to Σ|terms|). */
async function checkSamples(plan: Plan, c: ConvShape, ops: Operands, outSize: number): Promise<number> {
  const [top, , left] = c.padding ?? [(c.k - 1) / 2, 0, (c.k - 1) / 2, 0];
  const vs = c.upsample ? 2 * c.size : c.size;
  const stride = c.stride ?? 1;
  let worst = 0;
  for (let t = 0; t < 3; t++) {
    const co = Math.floor(((2 * t + 1) / 6) * c.cout);
    const row = await plan.readRows("out", co, 1);
    for (const [oy, ox] of [[0, 0], [outSize - 1, outSize - 1], [outSize >> 1, (outSize >> 1) + 1], [1, outSize - 2]]) {
      let want = ops.b[co], scale = Math.abs(ops.b[co]);
      for (let ci = 0; ci < c.cin; ci++) {
        for (let dy = 0; dy < c.k; dy++) {
          for (let dx = 0; dx < c.k; dx++) {
            const vy = oy * stride + dy - top, vx = ox * stride + dx - left;
            if (vy < 0 || vx < 0 || vy >= vs || vx >= vs) continue;
            const iy = c.upsample ? vy >> 1 : vy, ix = c.upsample ? vx >> 1 : vx;
            const p = ops.w[((co * c.cin + ci) * c.k + dy) * c.k + dx] * ops.x[(ci * c.size + iy) * c.size + ix];
            want += p;
            scale += Math.abs(p);
          }
        }
      }
      worst = Math.max(worst, Math.abs(row[oy * outSize + ox] - want) / scale);
    }
  }
  return worst;
}

interface Timing {
  ms: number;
  tflops: number;
  error: number;
}

async function timeConv(
  gpu: GpuContext,
  c: ConvShape,
  ops: Operands,
  tile: Conv2dTile | undefined,
  iters: number,
  kernel?: KernelSpec,
): Promise<Timing> {
  const g = new Graph();
  const x = g.input("x", [c.cin, c.size * c.size]);
  const w = g.input("w", [c.cout, c.cin, c.k, c.k], "bf16");
  const b = g.input("b", [c.cout], "bf16");
  const outSize = c.upsample ? 2 * c.size : c.stride === 2 ? c.size / 2 : c.size;
  const out = g.state("out", [c.cout, outSize * outSize]);
  for (let i = 0; i < iters; i++) {
    conv2dNode(g, `conv.${i}`, x, out, {
      weight: w,
      bias: b,
      height: c.size,
      width: c.size,
      stride: c.stride,
      padding: c.padding,
      upsample: c.upsample,
      tile,
    });
    if (kernel) g.nodes[g.nodes.length - 1].kernel = kernel;
  }
  const flops = g.nodes[0].flops ?? 0;
  const plan = await Plan.compile(gpu, g, null, { label: `bench:vae-conv` });
  try {
    plan.write("x", ops.x);
    plan.write("w", packBf16(ops.w));
    plan.write("b", packBf16(ops.b));
    await plan.run();
    const error = await checkSamples(plan, c, ops, outSize);
    let ms: number;
    if (gpu.hasTimestamps) {
      ms = median((await plan.profile()).map((p) => p.ms));
    } else {
      const t0 = performance.now();
      await plan.run();
      ms = (performance.now() - t0) / iters;
    }
    return { ms, tflops: flops / (ms * 1e-3) / 1e12, error };
  } finally {
    plan.destroy();
  }
}

/** The tiles the --compare shader gets: those of the earlier kernel (K steps of at least 256/tc). */
function compareTile(cout: number): Conv2dTile {
  return cout >= 128 ? { ...CONV2D_TILE_WIDE } : cout <= 32 ? { ...CONV2D_TILE_NARROW, bk: 16 } : { ...CONV2D_TILE_DEFAULT };
}

function parseTile(text: string): Conv2dTile {
  const m = /^(\d+)x(\d+)x(\d+)\/(\d+)x(\d+)(direct)?$/.exec(text.trim());
  if (!m) throw new Error(`--tile: "${text}" is not TCxTPxBK/RCxRP[direct], e.g. 128x128x8/8x8 or 64x64x4/8x8direct`);
  const [tc, tp, bk, rc, rp] = m.slice(1, 6).map(Number);
  const t: Conv2dTile = { tc, tp, bk, rc, rp, ...(m[6] ? { form: "direct" as const } : {}) };
  validateConv2dTile(t, "--tile");
  return t;
}

function fmtTflops(v: number): string {
  return v >= 100 ? v.toFixed(1) : v.toPrecision(3);
}

function table(head: string[], rows: string[][]): string {
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (r: string[]) => r.map((c, i) => c.padEnd(widths[i])).join("  ");
  return [line(head), line(widths.map((w) => "-".repeat(w))), ...rows.map(line)].join("\n");
}

// ---- Whole VAE with random weights ---------------------------------------------------------------------------

/** The flux2 preset of bench/make_random_checkpoint.py (diffusers' AutoencoderKLFlux2 config). */
function vaeConfig(small: boolean): VaeConfig {
  return parseVaeConfig({
    in_channels: 3,
    out_channels: 3,
    block_out_channels: small ? [32, 64, 128, 128] : [128, 256, 512, 512],
    latent_channels: 32,
    layers_per_block: 2,
    norm_num_groups: small ? 8 : 32,
    batch_norm_eps: 0.0001,
    mid_block_add_attention: true,
    use_quant_conv: true,
    use_post_quant_conv: true,
    patch_size: [2, 2],
  }, "bench/vae.ts");
}

/** Weights made up on first use: matrices uniform with variance 1/fan_in, norm scales near 1, variances 1. */
class RandomWeights implements WeightSource {
  private readonly buffers = new Map<string, GPUBuffer>();
  constructor(private readonly gpu: GpuContext) {}

  bufferFor(name: string, spec: TensorSpec): { buffer: GPUBuffer; offset: number } {
    let buffer = this.buffers.get(name);
    if (!buffer) {
      const n = spec.shape.reduce((a, b) => a * b, 1);
      const fanIn = spec.shape.slice(1).reduce((a, b) => a * b, 1);
      let v = randomArray(n, this.buffers.size + 7, spec.shape.length > 1 ? Math.sqrt(3 / fanIn) : 0.05);
      if (spec.shape.length === 1 && (/norm.*\.weight$/.test(name) || name.endsWith("running_var"))) v = v.map((a) => 1 + a);
      const data = spec.dtype === "bf16" ? packBf16(v) : v;
      buffer = this.gpu.device.createBuffer({
        size: Math.max(16, Math.ceil(data.byteLength / 16) * 16),
        usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST,
      });
      this.gpu.device.queue.writeBuffer(buffer, 0, new Uint8Array(data.buffer as ArrayBuffer, data.byteOffset, data.byteLength));
      this.buffers.set(name, buffer);
    }
    return { buffer, offset: 0 };
  }

  release(): void {
    for (const b of this.buffers.values()) b.destroy();
  }
}

async function timeWholeVae(gpu: GpuContext, size: number, small: boolean): Promise<void> {
  const cfg = vaeConfig(small);
  const weights = new Map<string, { shape: number[]; dtype: "bf16" }>();
  for (const part of ["encoder", "decoder"] as const) {
    for (const [name, shape] of vaeTensorShapes(cfg, part)) weights.set(name, { shape, dtype: "bf16" });
  }
  const source = new RandomWeights(gpu);
  try {
    for (const direction of ["encode", "decode"] as const) {
      const g = new Graph();
      const ctx = { g, cfg, weights };
      const lat = size / cfg.scaleFactor;
      const count = direction === "encode" ? cfg.inChannels * size * size : cfg.latentChannels * lat * lat;
      if (direction === "encode") {
        const pixels = g.input("pixels", [cfg.inChannels, size * size]);
        buildEncoder(ctx, { id: pixels, height: size, width: size });
      } else {
        const latent = g.input("latent", [cfg.latentChannels, lat * lat]);
        buildDecoder(ctx, { id: latent, height: lat, width: lat });
      }
      const plan = await Plan.compile(gpu, g, source, { label: `bench:vae-${direction}` });
      try {
        const input = direction === "encode" ? "pixels" : "latent";
        plan.write(input, randomArray(count, 11));
        await plan.run();
        const t0 = performance.now();
        await plan.run();
        const wall = performance.now() - t0;
        console.log(`\nVAE ${direction} ${size}×${size}: ${wall.toFixed(1)} ms wall clock (${g.nodes.length} nodes)`);
        if (!gpu.hasTimestamps) continue;
        const prof = await plan.profile();
        const families = new Map<string, { ms: number; flops: number; nodes: number }>();
        for (const p of prof) {
          const f = families.get(p.kernel) ?? { ms: 0, flops: 0, nodes: 0 };
          f.ms += p.ms;
          f.flops += p.flops ?? 0;
          f.nodes++;
          families.set(p.kernel, f);
        }
        const total = prof.reduce((a, p) => a + p.ms, 0);
        const rows = [...families].sort((a, b) => b[1].ms - a[1].ms).map(([k, f]) => [
          k,
          String(f.nodes),
          f.ms.toFixed(2),
          `${((100 * f.ms) / total).toFixed(1)}%`,
          f.flops ? fmtTflops(f.flops / (f.ms * 1e-3) / 1e12) : "",
        ]);
        console.log(`sum of node times ${total.toFixed(2)} ms`);
        console.log(table(["kernel", "nodes", "ms", "share", "TFLOP/s"], rows));
        const slow = [...prof].sort((a, b) => b.ms - a.ms).slice(0, 8);
        console.log("slowest nodes: " + slow.map((p) => `${p.name} ${p.ms.toFixed(2)} ms`).join(", "));
      } finally {
        plan.destroy();
      }
    }
  } finally {
    source.release();
  }
}

async function main() {
  const parsed = parseBenchArgs(Deno.args, {
    small: { type: "boolean", default: false },
    iters: { type: "string" },
    sweep: { type: "boolean", default: false },
    tile: { type: "string" },
    compare: { type: "string" },
    vae: { type: "boolean", default: false },
    size: { type: "string" },
    "no-conv": { type: "boolean", default: false },
  }, USAGE);
  if (parsed === "help") return;
  const values = parsed;
  const small = values.small!;
  const iters = Number(values.iters ?? (small ? 2 : 10));
  if (!Number.isInteger(iters) || iters < 1) throw new Error(`--iters: "${values.iters}" is not a positive integer`);
  const gpu = await openGpu();
  const limit = gpu.limits.maxComputeWorkgroupStorageSize;
  console.log(`device: ${gpu.adapterDescription} (workgroup memory ${limit} B, timestamps: ${gpu.hasTimestamps ? "yes" : "no"})`);
  const compare: KernelSpec | undefined = values.compare
    ? { ...conv2dKernel, name: "conv2d.compare", source: pathToFileURL(resolve(values.compare)) }
    : undefined;
  const fixed = values.tile ? parseTile(values.tile) : undefined;

  if (!values["no-conv"]) {
    const rows: string[][] = [];
    for (const c of vaeShapes(small ? 16 : 1, small ? 4 : 1)) {
      const ops = operands(c);
      const tiles: (Conv2dTile | undefined)[] = [fixed];
      if (values.sweep) {
        const def = fixed ?? conv2dTileFor(gpu.caps, c.cout, c.k * c.k);
        for (const t of CONV2D_SWEEP_TILES) {
          if (conv2dTileName(t) !== conv2dTileName(def) && conv2dWorkgroupBytes(t) <= limit) tiles.push({ ...t });
        }
      }
      const runs: { name: string; tile?: Conv2dTile; kernel?: KernelSpec }[] = tiles.map((t) => ({ name: "", tile: t }));
      if (compare) runs.push({ name: "compare", tile: compareTile(c.cout), kernel: compare });
      for (const r of runs) {
        const tile = r.tile ?? conv2dTileFor(gpu.caps, c.cout, c.k * c.k);
        const t = await timeConv(gpu, c, ops, r.tile, iters, r.kernel);
        const bad = !(t.error < 1e-4);
        rows.push([
          shapeName(c),
          r.name || conv2dTileName(tile),
          t.ms.toFixed(3),
          fmtTflops(t.tflops),
          t.error.toExponential(1) + (bad ? " WRONG" : ""),
        ]);
        console.log(rows.at(-1)!.join("  "));
      }
    }
    console.log(`\n${table(["conv", "kernel/tile", "median ms", "TFLOP/s", "rel err"], rows)}`);
  }
  if (values.vae) await timeWholeVae(gpu, Number(values.size ?? (small ? 128 : 1024)), small);
}

if (import.meta.main) await main();
