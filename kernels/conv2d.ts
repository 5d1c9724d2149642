// 2-D convolution over channel-major images (f32 [C, H·W], batch 1), declared as an implicit GEMM kernel.
// Covers the convolutions of the FLUX.2 VAE: 3×3 with padding 1, 3×3 stride 2 with the (0,1,0,1) padding of its
// downsampler, 1×1, and 3×3 applied to a nearest ×2 upsampling of the input (fused, nothing stored).

import type { Graph } from "../runtime/graph.ts";
import type { DeviceCapabilities } from "../runtime/device.ts";
import { joinBlocks, LANES, outerProductStep, range } from "./register_tile.ts";
import { ceilDiv, grid1d, type KernelSpec, type Variant } from "../runtime/kernel.ts";

export const conv2dKernel: KernelSpec = {
  name: "conv2d",
  source: new URL("./conv2d.wgsl", import.meta.url),
  bindings: [
    { name: "x", type: "array<f32>", access: "read" },
    { name: "weight", type: "array<u32>", access: "read" },
    { name: "bias", type: "array<u32>", access: "read" },
    { name: "residual", type: "array<f32>", access: "read" },
    { name: "out", type: "array<f32>", access: "read_write" },
  ],
  params: [
    { name: "cin", type: "u32" },
    { name: "cout", type: "u32" },
    { name: "h", type: "u32" },
    { name: "w", type: "u32" },
    { name: "wo", type: "u32" },
    { name: "pixels", type: "u32" },
    { name: "kTotal", type: "u32" },
    { name: "padTop", type: "i32" },
    { name: "padLeft", type: "i32" },
  ],
  expand: (v) => conv2dCodeBlocks(conv2dTileOfVariant(v), v.W_BF16 === true),
};

/** The tile a node's variant was built with. */
function conv2dTileOfVariant(v: Variant): Conv2dTile {
  const tile: Conv2dTile = { tc: Number(v.TC), tp: Number(v.TP), rc: Number(v.RC), rp: Number(v.RP), bk: Number(v.BK) };
  if (v.FORM === "direct") tile.form = "direct";
  return tile;
}

/** Workgroup tile: TC output channels × TP pixels, RC × RP accumulators per thread, K step BK (see conv2d.wgsl).
 * The tiled form runs 256 threads and stages two steps of both tiles (conv2dWorkgroupBytes; the built-in tiles fit
 * 16 KiB). */
export interface Conv2dTile {
  tc: number;
  tp: number;
  rc: number;
  rp: number;
  bk: number;
  /** "tiled" (default): weight and patch tiles staged in workgroup memory between barriers, 256 threads.
   * "direct": no workgroup tiles and no barrier; every thread reads its weights and gathers its pixels straight from
   * the buffers, (tc/rc)·(tp/rp) threads. For software adapters, where every load is a per-lane gather and every
   * barrier a switch between the SIMD batches of a workgroup, staging only adds loads and barriers. */
  form?: Conv2dForm;
}

export type Conv2dForm = "tiled" | "direct";

/** 64 channels × 256 pixels, 4×16 per thread: for spatial (3×3) layers of 128 or more output channels, which carry
 * almost all the work. A K step of 4 keeps the two stages within the 16 KiB every device offers (a step of 8, 20 KiB,
 * is about 10% faster on an H100; a step of 6 timed erratically there). */
export const CONV2D_TILE_SPATIAL: Readonly<Conv2dTile> = { tc: 64, tp: 256, rc: 4, rp: 16, bk: 4 };
/** 128 channels × 128 pixels, 8×8 per thread: 1×1 layers of 128 or more output channels. */
export const CONV2D_TILE_WIDE: Readonly<Conv2dTile> = { tc: 128, tp: 128, rc: 8, rp: 8, bk: 8 };
/** 64 × 64, 4×4 per thread: layers of 33 to 127 output channels. */
export const CONV2D_TILE_DEFAULT: Readonly<Conv2dTile> = { tc: 64, tp: 64, rc: 4, rp: 4, bk: 16 };
/** 16 channels × 256 pixels: few output channels (an RGB output layer wastes less of the tile). */
export const CONV2D_TILE_NARROW: Readonly<Conv2dTile> = { tc: 16, tp: 256, rc: 4, rp: 4, bk: 4 };
/** Software adapters (llvmpipe): the direct form, 64 × 64, 8×8 per thread, 64 threads. With the narrow one below,
 * 1.8 times as fast there as the tiled tiles over the VAE's layers (bench/results/conv2d_llvmpipe.txt; 4×8, 8×4 and
 * 16×8 per thread and steps of 2 or 8 were slower). */
export const CONV2D_TILE_SOFTWARE: Readonly<Conv2dTile> = { tc: 64, tp: 64, rc: 8, rp: 8, bk: 4, form: "direct" };
/** Software adapters, 32 or fewer output channels: 16 channels × 256 pixels wastes less of the tile (a 64 × 64 tile
 * is twice as slow for 32 channels, four times for 3). */
export const CONV2D_TILE_SOFTWARE_NARROW: Readonly<Conv2dTile> = { tc: 16, tp: 256, rc: 8, rp: 8, bk: 4, form: "direct" };

/** The tiles bench/vae.ts --sweep tries (those over a device's workgroup memory are skipped). */
export const CONV2D_SWEEP_TILES: readonly Readonly<Conv2dTile>[] = [
  CONV2D_TILE_SPATIAL,
  CONV2D_TILE_WIDE,
  { tc: 64, tp: 256, rc: 4, rp: 16, bk: 6 },
  { tc: 64, tp: 256, rc: 4, rp: 16, bk: 8 },
  { tc: 128, tp: 256, rc: 8, rp: 16, bk: 8 },
  CONV2D_TILE_DEFAULT,
  CONV2D_TILE_SOFTWARE,
  CONV2D_TILE_SOFTWARE_NARROW,
];

/** Threads of a tiled workgroup; a direct one has (tc/rc)·(tp/rp), at most as many. */
const THREADS = 256;
const MAX_ACCUMULATORS = 128;
/** The workgroup memory every WebGPU device offers; larger tiles need a device that allows them. */
export const CONV2D_DEFAULT_WORKGROUP_BYTES = 16384;

/** The tile a layer gets on a device (null: any device), from its output channel count and kernel size (kh·kw): the
 * tile tuned for the adapter (`device.tiles.conv2d["k<kernelSize>.c<cout class>"]`) where one fits, else by rule.
 * Software adapters (llvmpipe) take the direct form, by output channels only (a narrow tile for 32 or fewer). */
export function conv2dTileFor(device: DeviceCapabilities | null, cout: number, kernelSize = 9): Conv2dTile {
  const tuned = device?.tiles.conv2d?.[conv2dShapeClass(cout, kernelSize)] as Conv2dTile | undefined;
  if (tuned && conv2dWorkgroupBytes(tuned) <= device!.limits.maxComputeWorkgroupStorageSize) return { ...tuned };
  if (device?.software) return { ...(cout <= 32 ? CONV2D_TILE_SOFTWARE_NARROW : CONV2D_TILE_SOFTWARE) };
  if (cout >= 128) return { ...(kernelSize > 1 ? CONV2D_TILE_SPATIAL : CONV2D_TILE_WIDE) };
  return { ...(cout <= 32 ? CONV2D_TILE_NARROW : CONV2D_TILE_DEFAULT) };
}

/** Layers that share a tile: kernel size and output channels (≤ 32, < 128, or more). */
export function conv2dShapeClass(cout: number, kernelSize: number): string {
  return `k${kernelSize}.c${cout <= 32 ? 32 : cout < 128 ? 127 : "big"}`;
}

export function conv2dTileName(t: Conv2dTile): string {
  return `${t.tc}x${t.tp}x${t.bk}/${t.rc}x${t.rp}${t.form === "direct" ? "direct" : ""}`;
}

export function conv2dThreads(t: Conv2dTile): number {
  return (t.tc / t.rc) * (t.tp / t.rp);
}

/** Workgroup memory of a tile: two stages of the weight and patch tiles, f32; none in the direct form. */
export function conv2dWorkgroupBytes(t: Conv2dTile): number {
  return t.form === "direct" ? 0 : 2 * t.bk * (t.tc + t.tp) * 4;
}

/** Throws unless the shader can be instantiated with this tile. */
export function validateConv2dTile(t: Conv2dTile, where: string): void {
  const bad = (why: string) => new Error(`${where}: conv2d tile ${JSON.stringify(t)}: ${why}`);
  for (const key of ["tc", "tp", "rc", "rp", "bk"] as const) {
    if (!Number.isInteger(t[key]) || t[key] <= 0) throw bad(`${key} must be a positive integer`);
  }
  if (t.form !== undefined && t.form !== "tiled" && t.form !== "direct") throw bad(`form must be "tiled" or "direct"`);
  if (t.rc % 4 || t.rp % 4 || t.tc % t.rc || t.tp % t.rp) throw bad("rc and rp must be multiples of 4 dividing tc and tp");
  if (t.form === "direct") {
    if (conv2dThreads(t) > THREADS) throw bad(`(tc/rc)·(tp/rp) must be at most ${THREADS} threads`);
  } else {
    if (conv2dThreads(t) !== THREADS) throw bad("(tc/rc)·(tp/rp) must be 256 threads");
    if (THREADS % (t.tp / 4)) throw bad("tp/4 must divide 256 (each thread stages one pixel quad)");
  }
  if (t.rc * t.rp > MAX_ACCUMULATORS) throw bad(`an ${t.rc}×${t.rp} register tile exceeds ${MAX_ACCUMULATORS} accumulators`);
}

// ---- Generated per-thread code --------------------------------------------------------------------------------

type CodeBlocks = Record<"TILED" | "TILES" | "POSITION" | "DECLARE" | "FETCH" | "STORE" | "COMPUTE" | "WRITE", string>;

/** The unrolled blocks of kernels/conv2d.wgsl for one tile and weight dtype (see the comment at the top there). */
export function conv2dCodeBlocks(t: Conv2dTile, bf16Weights: boolean): CodeBlocks {
  return t.form === "direct" ? directFormBlocks(t, bf16Weights) : tiledFormBlocks(t);
}

/** Staging: unit u of the weight tile is channel quad u % (tc/4) at k u / (tc/4), unit u of the patch tile is the
 * thread's pixel quad at k u / (tp/4); round l covers units lid + 256·l. */
function tiledFormBlocks(t: Conv2dTile): CodeBlocks {
  const ntc = t.tc / t.rc, ntp = t.tp / t.rp, rc4 = t.rc / 4, rp4 = t.rp / 4, tc4 = t.tc / 4, tp4 = t.tp / 4;
  const declare: string[] = [], fetch: string[] = [], store: string[] = [];
  const tiles = `var<workgroup> w_tile: array<array<array<array<vec4<f32>, ${ntc}>, ${rc4}>, ${t.bk}>, 2>;
var<workgroup> x_tile: array<array<array<array<vec4<f32>, ${ntp}>, ${rp4}>, ${t.bk}>, 2>;`;
  const position = [
    "  let tp = lid % NTP;",
    "  let tc = lid / NTP;",
    "  // The pixel quad this thread stages (the same at every step).",
    "  let xq = lid % (TP / 4u);",
    "  let sp = tileP + xq * 4u;",
    ...range(4).map((c) => `  let c${c} = corner(sp${c ? ` + ${c}u` : ""});`),
  ];
  declare.push(...accumulators(t));
  const staging = [
    { name: "w", units: tc4 * t.bk, quads: tc4, threads: ntc },
    { name: "x", units: tp4 * t.bk, quads: tp4, threads: ntp },
  ];
  for (const s of staging) {
    for (let l = 0; l * THREADS < s.units; l++) {
      const reg = `${s.name}s${l}`;
      declare.push(`  var ${reg} = vec4<f32>(0.0);`);
      const u = l === 0 ? "lid" : `(lid + ${l * THREADS}u)`;
      const open = (l + 1) * THREADS > s.units ? `if (${u} < ${s.units}u) { ` : "";
      const close = open ? " }" : "";
      if (s.name === "w") {
        const quad = `(${u} % ${s.quads}u)`, kk = `(${u} / ${s.quads}u)`;
        fetch.push(`      ${open}${reg} = read_w(tileC + ${quad} * 4u, k0 + ${kk});${close}`);
        store.push(`      ${open}w_tile[base][${kk}][${quad} / ${s.threads}u][${quad} % ${s.threads}u] = ${reg};${close}`);
      } else {
        // 256 is a multiple of tp/4: the quad is xq (lid % (tp/4)) in every round.
        const kk = l === 0 ? `(lid / ${s.quads}u)` : `(lid / ${s.quads}u + ${(l * THREADS) / s.quads}u)`;
        fetch.push(`      ${open}${reg} = read_x(c0, c1, c2, c3, k0 + ${kk});${close}`);
        store.push(`      ${open}x_tile[base][${kk}][xq / ${s.threads}u][xq % ${s.threads}u] = ${reg};${close}`);
      }
    }
  }
  const compute = outerProductStep({
    k: t.bk,
    rows: t.rc,
    cols: t.rp,
    aTile: "w_tile",
    aPosition: "tc",
    bTile: "x_tile",
    bPosition: "tp",
  });
  return joinBlocks({
    TILED: "true",
    TILES: tiles,
    POSITION: position,
    DECLARE: declare,
    FETCH: fetch,
    STORE: store,
    COMPUTE: compute,
    WRITE: writeLines(t),
  });
}

/** No tiles: thread (tc, tp) owns the channels and pixels of the tiled form's thread and, per k, gathers its rp/4
 * pixel quads with read_x (the corners of its rp pixels are computed once) and adds their outer product with its
 * channels' weights at k. f32 weights come from read_w; bf16 weights per step and channel as the bk/2 + 1 words that
 * hold W[co, k0 .. k0 + bk − 1] (a row may start mid-word): 3 loads for 4 elements instead of 4, and on llvmpipe,
 * where every load is a loop over the lanes, the layers take about 16% less time. */
function directFormBlocks(t: Conv2dTile, bf16: boolean): CodeBlocks {
  const ntc = t.tc / t.rc, ntp = t.tp / t.rp;
  const position = ["  let tp = lid % NTP;", "  let tc = lid / NTP;"];
  for (let j = 0; j < t.rp / 4; j++) {
    position.push(`  let q${j} = tileP + (${j * ntp}u + tp) * 4u;`);
    for (let c = 0; c < 4; c++) position.push(`  let c${j}_${c} = corner(q${j}${c ? ` + ${c}u` : ""});`);
  }
  const compute: string[] = [];
  if (bf16) {
    for (let r = 0; r < t.rc; r++) {
      const co = `tileC + (${(r >> 2) * ntc}u + tc) * 4u + ${r & 3}u`;
      compute.push(`      let e${r} = min(${co}, params.cout - 1u) * params.kTotal + s * BK;`, `      let odd${r} = (e${r} & 1u) == 1u;`);
      for (let u = 0; u <= t.bk / 2; u++) compute.push(`      let u${r}_${u} = weight[(e${r} >> 1u) + ${u}u];`);
    }
  }
  for (let kk = 0; kk < t.bk; kk++) {
    compute.push("      {", `        let k = s * BK + ${kk}u;`);
    for (let i = 0; i < t.rc / 4; i++) {
      if (bf16) {
        // Element k0 + kk: half kk & 1 of word kk >> 1 from an even start, the next half from an odd one.
        const lanes = range(4).map((c) => {
          const r = 4 * i + c, even = `widen(u${r}_${kk >> 1}, ${kk & 1}u)`, odd = `widen(u${r}_${(kk + 1) >> 1}, ${(kk + 1) & 1}u)`;
          return `select(${even}, ${odd}, odd${r})`;
        });
        compute.push(`        let a${i} = select(vec4<f32>(0.0), vec4<f32>(${lanes.join(", ")}), k < params.kTotal);`);
      } else {
        compute.push(`        let a${i} = read_w(tileC + (${i * ntc}u + tc) * 4u, k);`);
      }
    }
    for (let j = 0; j < t.rp / 4; j++) compute.push(`        let b${j} = read_x(${range(4).map((c) => `c${j}_${c}`).join(", ")}, k);`);
    for (let i = 0; i < t.rc; i++) {
      for (let j = 0; j < t.rp; j++) {
        compute.push(`        acc_${i}_${j} = fma(a${i >> 2}.${LANES[i & 3]}, b${j >> 2}.${LANES[j & 3]}, acc_${i}_${j});`);
      }
    }
    compute.push("      }");
  }
  return joinBlocks({
    TILED: "false",
    TILES: "",
    POSITION: position,
    DECLARE: accumulators(t),
    FETCH: "",
    STORE: "",
    COMPUTE: compute,
    WRITE: writeLines(t),
  });
}

function accumulators(t: Conv2dTile): string[] {
  return range(t.rc).flatMap((i) => range(t.rp).map((j) => `  var acc_${i}_${j} = 0.0;`));
}

/** Thread (tc, tp) writes channels 4·(i·NTC + tc) + r and pixels 4·(j·NTP + tp) + c, in both forms. */
function writeLines(t: Conv2dTile): string[] {
  const ntc = t.tc / t.rc, ntp = t.tp / t.rp;
  const write: string[] = [];
  for (let i = 0; i < t.rc; i++) {
    const co = `co_${i}`;
    write.push(`  let ${co} = tileC + (${(i >> 2) * ntc}u + tc) * 4u + ${i & 3}u;`);
    write.push(`  let bias_${i} = load_bias(min(${co}, params.cout - 1u));`);
    for (let j = 0; j < t.rp; j++) {
      write.push(`  write_out(${co}, tileP + (${(j >> 2) * ntp}u + tp) * 4u + ${j & 3}u, bias_${i}, acc_${i}_${j});`);
    }
  }
  return write;
}

/** Padding in pixels: [top, bottom, left, right]. */
export type Padding = [number, number, number, number];

/** The padding FLUX.2's Downsample2D applies before its stride-2, unpadded 3×3 convolution. */
export const DOWNSAMPLE_PADDING: Padding = [0, 1, 0, 1];

export interface Conv2dOptions {
  /** Weight [Cout, Cin, kh, kw], bf16 or f32. */
  weight: number;
  /** Bias [Cout], bf16 or f32. */
  bias: number;
  /** Spatial size of the input `x` ([Cin, height·width]). */
  height: number;
  width: number;
  stride?: 1 | 2;
  /** Default: (k−1)/2 on every side (1 for 3×3, 0 for 1×1). */
  padding?: Padding;
  /** Convolve a nearest ×2 upsampling of the input (2·height × 2·width) instead of the input. */
  upsample?: boolean;
  /** Added to the result (same shape as the output), e.g. a ResNet block's skip path. */
  residual?: number;
  /** Workgroup tile; default: conv2dTileFor(device, Cout, kh·kw) for the device the plan is compiled on. */
  tile?: Conv2dTile;
}

export interface Conv2dShape {
  cin: number;
  cout: number;
  kh: number;
  kw: number;
  outHeight: number;
  outWidth: number;
}

/** Checks the operands and derives the output size; throws naming the node on any mismatch. */
export function conv2dShape(g: Graph, name: string, x: number, o: Conv2dOptions): Conv2dShape {
  const ws = g.shape(o.weight);
  if (ws.length !== 4) throw new Error(`${name}: conv weight must be [Cout, Cin, kh, kw], got [${ws.join("×")}]`);
  const [cout, cin, kh, kw] = ws;
  const xs = g.shape(x);
  if (xs.length !== 2 || xs[0] !== cin || xs[1] !== o.height * o.width) {
    throw new Error(
      `${name}: input must be [${cin}, ${o.height}·${o.width}] for a weight with ${cin} input channels, got [${xs.join("×")}]`,
    );
  }
  const bs = g.shape(o.bias);
  if (bs.length !== 1 || bs[0] !== cout) throw new Error(`${name}: bias must be [${cout}], got [${bs.join("×")}]`);
  const stride = o.stride ?? 1;
  const [top, bottom, left, right] = o.padding ?? [(kh - 1) / 2, (kh - 1) / 2, (kw - 1) / 2, (kw - 1) / 2];
  if (![top, bottom, left, right].every((p) => Number.isInteger(p) && p >= 0)) {
    throw new Error(`${name}: padding must be non-negative integers, got ${[top, bottom, left, right].join(",")}`);
  }
  const vh = o.upsample ? 2 * o.height : o.height;
  const vw = o.upsample ? 2 * o.width : o.width;
  const outHeight = Math.floor((vh + top + bottom - kh) / stride) + 1;
  const outWidth = Math.floor((vw + left + right - kw) / stride) + 1;
  if (outHeight <= 0 || outWidth <= 0) throw new Error(`${name}: a ${kh}×${kw} kernel does not fit a ${vh}×${vw} input`);
  return { cin, cout, kh, kw, outHeight, outWidth };
}

/** Adds the convolution node writing into an existing tensor `out` ([Cout, outHeight·outWidth]). */
export function conv2dNode(g: Graph, name: string, x: number, out: number, o: Conv2dOptions): Conv2dShape {
  const s = conv2dShape(g, name, x, o);
  const pixels = s.outHeight * s.outWidth;
  const os = g.shape(out);
  if (os.length !== 2 || os[0] !== s.cout || os[1] !== pixels) {
    throw new Error(`${name}: output must be [${s.cout}, ${pixels}], got [${os.join("×")}]`);
  }
  if (o.residual !== undefined) {
    const rs = g.shape(o.residual);
    if (rs.length !== 2 || rs[0] !== s.cout || rs[1] !== pixels) {
      throw new Error(`${name}: residual must be [${s.cout}, ${pixels}], got [${rs.join("×")}]`);
    }
  }
  const [top, , left] = o.padding ?? [(s.kh - 1) / 2, 0, (s.kw - 1) / 2, 0];
  const tileChoice = (device: DeviceCapabilities | null) => {
    const tile = o.tile ?? conv2dTileFor(device, s.cout, s.kh * s.kw);
    validateConv2dTile(tile, name);
    const [gx, gy] = grid1d(ceilDiv(pixels, tile.tp));
    return {
      variant: { TC: tile.tc, TP: tile.tp, RC: tile.rc, RP: tile.rp, BK: tile.bk, FORM: tile.form ?? "tiled" },
      workgroups: [gx, gy, ceilDiv(s.cout, tile.tc)] as [number, number, number],
    };
  };
  const initial = tileChoice(null);
  const kTotal = s.cin * s.kh * s.kw;
  g.add({
    name,
    kernel: conv2dKernel,
    variant: {
      ...initial.variant,
      KH: s.kh,
      KW: s.kw,
      STRIDE: o.stride ?? 1,
      UPSAMPLE: !!o.upsample,
      W_BF16: weightIsBf16(g, name, o.weight),
      B_BF16: weightIsBf16(g, name, o.bias),
      RESIDUAL: o.residual !== undefined,
    },
    bindings: { x, weight: o.weight, bias: o.bias, residual: o.residual ?? x, out },
    params: { cin: s.cin, cout: s.cout, h: o.height, w: o.width, wo: s.outWidth, pixels, kTotal, padTop: top, padLeft: left },
    workgroups: initial.workgroups,
    flops: 2 * s.cout * pixels * kTotal,
    chooseTiles: o.tile ? undefined : tileChoice,
  });
  return s;
}

/** y = conv(x, weight) + bias (+ residual); returns the output tensor [Cout, outHeight·outWidth]. */
export function conv2d(g: Graph, name: string, x: number, o: Conv2dOptions): number {
  const s = conv2dShape(g, name, x, o);
  const out = g.activation(name, [s.cout, s.outHeight * s.outWidth]);
  conv2dNode(g, name, x, out, o);
  return out;
}

/** Whether a weight operand is bf16 (packed pairs) or f32; other types are refused. */
export function weightIsBf16(g: Graph, name: string, id: number): boolean {
  const t = g.get(id);
  if (t.dtype === "bf16") return true;
  if (t.dtype === "f32") return false;
  throw new Error(`${name}: operand ${t.name} must be bf16 or f32, got ${t.dtype}`);
}
