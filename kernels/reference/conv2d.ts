// Float64 reference and audit cases for the conv2d family.

import type { AuditCase } from "../audit.ts";
import {
  CONV2D_DEFAULT_WORKGROUP_BYTES,
  CONV2D_SWEEP_TILES,
  CONV2D_TILE_DEFAULT,
  CONV2D_TILE_NARROW,
  CONV2D_TILE_SPATIAL,
  CONV2D_TILE_WIDE,
  conv2dNode,
  type Conv2dTile,
  conv2dTileName,
  conv2dWorkgroupBytes,
  DOWNSAMPLE_PADDING,
  type Padding,
} from "../conv2d.ts";
import type { Graph } from "../../runtime/graph.ts";
import type { Rng } from "../../runtime/random.ts";
import { packBf16, roundToBf16 } from "../../weights/dtypes.ts";

export interface Conv2dReferenceArgs {
  cin: number;
  cout: number;
  height: number;
  width: number;
  kh: number;
  kw: number;
  stride: number;
  padding: Padding;
  upsample?: boolean;
  residual?: ArrayLike<number>;
}

/** out[co, oy, ox] = bias[co] + Σ weight[co, ci, dy, dx] · x[ci, oy·s + dy − top, ox·s + dx − left] (+ residual). */
export function conv2dReference(
  x: ArrayLike<number>,
  weight: ArrayLike<number>,
  bias: ArrayLike<number>,
  a: Conv2dReferenceArgs,
): { out: Float64Array; outHeight: number; outWidth: number } {
  const [top, bottom, left, right] = a.padding;
  const vh = a.upsample ? 2 * a.height : a.height;
  const vw = a.upsample ? 2 * a.width : a.width;
  const outHeight = Math.floor((vh + top + bottom - a.kh) / a.stride) + 1;
  const outWidth = Math.floor((vw + left + right - a.kw) / a.stride) + 1;
  const out = new Float64Array(a.cout * outHeight * outWidth);
  for (let co = 0; co < a.cout; co++) {
    for (let oy = 0; oy < outHeight; oy++) {
      for (let ox = 0; ox < outWidth; ox++) {
        let s = bias[co];
        for (let ci = 0; ci < a.cin; ci++) {
          for (let dy = 0; dy < a.kh; dy++) {
            const vy = oy * a.stride + dy - top;
            if (vy < 0 || vy >= vh) continue;
            const iy = a.upsample ? vy >> 1 : vy;
            for (let dx = 0; dx < a.kw; dx++) {
              const vx = ox * a.stride + dx - left;
              if (vx < 0 || vx >= vw) continue;
              const ix = a.upsample ? vx >> 1 : vx;
              s += weight[((co * a.cin + ci) * a.kh + dy) * a.kw + dx] * x[(ci * a.height + iy) * a.width + ix];
            }
          }
        }
        const o = (co * outHeight + oy) * outWidth + ox;
        out[o] = s + (a.residual ? a.residual[o] : 0);
      }
    }
  }
  return { out, outHeight, outWidth };
}

interface CaseSpec {
  label: string;
  cin: number;
  cout: number;
  height: number;
  width: number;
  k: number;
  stride?: 1 | 2;
  padding?: Padding;
  upsample?: boolean;
  residual?: boolean;
  bf16?: boolean;
  /** Force a tile instead of the one chosen from the channel count. */
  tile?: Conv2dTile;
}

function conv2dCase(c: CaseSpec): AuditCase {
  return {
    kernel: "conv2d",
    label: c.label,
    build(g: Graph, rng: Rng) {
      const pad = (c.k - 1) / 2;
      const padding = c.padding ?? [pad, pad, pad, pad];
      const stride = c.stride ?? 1;
      const x = rng.normalArray(c.cin * c.height * c.width);
      const fanIn = c.cin * c.k * c.k;
      let w = rng.normalArray(c.cout * fanIn, 1 / Math.sqrt(fanIn));
      let b = rng.normalArray(c.cout, 0.1);
      if (c.bf16) {
        w = roundToBf16(w);
        b = roundToBf16(b);
      }
      const ref = conv2dReference(x, w, b, {
        cin: c.cin,
        cout: c.cout,
        height: c.height,
        width: c.width,
        kh: c.k,
        kw: c.k,
        stride,
        padding,
        upsample: c.upsample,
        residual: undefined,
      });
      const pixels = ref.outHeight * ref.outWidth;
      const residual = c.residual ? rng.normalArray(c.cout * pixels) : undefined;
      if (residual) ref.out.forEach((v, i) => (ref.out[i] = v + residual[i]));
      const dtype = c.bf16 ? "bf16" : "f32";
      const tx = g.input("x", [c.cin, c.height * c.width]);
      const tw = g.input("weight", [c.cout, c.cin, c.k, c.k], dtype);
      const tb = g.input("bias", [c.cout], dtype);
      const tr = residual ? g.input("residual", [c.cout, pixels]) : undefined;
      const out = g.state("out", [c.cout, pixels]);
      conv2dNode(g, "conv", tx, out, {
        weight: tw,
        bias: tb,
        height: c.height,
        width: c.width,
        stride,
        padding,
        upsample: c.upsample,
        residual: tr,
        tile: c.tile,
      });
      const inputs = [
        { name: "x", data: x },
        { name: "weight", data: c.bf16 ? packBf16(w) : w },
        { name: "bias", data: c.bf16 ? packBf16(b) : b },
      ];
      if (residual) inputs.push({ name: "residual", data: residual });
      return { inputs, outputs: [{ name: "out", expected: ref.out }] };
    },
  };
}

export const conv2dAuditCases: AuditCase[] = [
  conv2dCase({ label: "3×3 5→7 13×11", cin: 5, cout: 7, height: 13, width: 11, k: 3 }),
  conv2dCase({ label: "3×3 37→70 9×15 bf16", cin: 37, cout: 70, height: 9, width: 15, k: 3, bf16: true }),
  conv2dCase({ label: "3×3 3→16 17×23 bf16", cin: 3, cout: 16, height: 17, width: 23, k: 3, bf16: true }),
  conv2dCase({
    label: "3×3 s2 pad(0,1,0,1) 7→5 13×11",
    cin: 7,
    cout: 5,
    height: 13,
    width: 11,
    k: 3,
    stride: 2,
    padding: DOWNSAMPLE_PADDING,
  }),
  conv2dCase({
    label: "3×3 s2 pad(0,1,0,1) 16→16 14×10 bf16",
    cin: 16,
    cout: 16,
    height: 14,
    width: 10,
    k: 3,
    stride: 2,
    padding: DOWNSAMPLE_PADDING,
    bf16: true,
  }),
  conv2dCase({ label: "1×1 37→13 13×11", cin: 37, cout: 13, height: 13, width: 11, k: 1 }),
  conv2dCase({ label: "1×1 7→5 13×11 +residual bf16", cin: 7, cout: 5, height: 13, width: 11, k: 1, residual: true, bf16: true }),
  conv2dCase({ label: "3×3 5→7 13×11 +residual", cin: 5, cout: 7, height: 13, width: 11, k: 3, residual: true }),
  conv2dCase({ label: "3×3 on up×2 5→7 7×5→14×10", cin: 5, cout: 7, height: 7, width: 5, k: 3, upsample: true }),
  conv2dCase({ label: "3×3 on up×2 9→66 6×11 bf16", cin: 9, cout: 66, height: 6, width: 11, k: 3, upsample: true, bf16: true }),
  conv2dCase({
    label: "3×3 5→130 13×11 +residual (wide tile)",
    cin: 5,
    cout: 130,
    height: 13,
    width: 11,
    k: 3,
    residual: true,
    tile: CONV2D_TILE_WIDE,
  }),
  conv2dCase({
    label: "3×3 s2 pad(0,1,0,1) 3→7 13×11 (wide tile)",
    cin: 3,
    cout: 7,
    height: 13,
    width: 11,
    k: 3,
    stride: 2,
    padding: DOWNSAMPLE_PADDING,
    tile: CONV2D_TILE_WIDE,
  }),
  conv2dCase({
    label: "3×3 on up×2 7→129 5×7 bf16 (wide tile)",
    cin: 7,
    cout: 129,
    height: 5,
    width: 7,
    k: 3,
    upsample: true,
    bf16: true,
    tile: CONV2D_TILE_WIDE,
  }),
  // The spatial tile (the default of 3×3 layers with 128 or more channels): partial channel and pixel tiles, and a
  // K that leaves the last step of 4 partly empty.
  conv2dCase({ label: "3×3 37→133 19×17 bf16 (spatial tile)", cin: 37, cout: 133, height: 19, width: 17, k: 3, bf16: true }),
  conv2dCase({
    label: "3×3 s2 pad(0,1,0,1) 11→70 23×21 +residual (spatial tile)",
    cin: 11,
    cout: 70,
    height: 23,
    width: 21,
    k: 3,
    stride: 2,
    padding: DOWNSAMPLE_PADDING,
    residual: true,
    tile: CONV2D_TILE_SPATIAL,
  }),
  // Explicit tiles: a software adapter's rule would pick the small ones for these layers.
  conv2dCase({
    label: "3×3 on up×2 13→130 9×13 (spatial tile)",
    cin: 13,
    cout: 130,
    height: 9,
    width: 13,
    k: 3,
    upsample: true,
    tile: CONV2D_TILE_SPATIAL,
  }),
  conv2dCase({
    label: "1×1 33→131 17×19 bf16 (wide tile)",
    cin: 33,
    cout: 131,
    height: 17,
    width: 19,
    k: 1,
    bf16: true,
    tile: CONV2D_TILE_WIDE,
  }),
  // The other tiles bench/vae.ts sweeps that every device can run.
  ...CONV2D_SWEEP_TILES.filter((t) =>
    t !== CONV2D_TILE_SPATIAL && t !== CONV2D_TILE_WIDE && t !== CONV2D_TILE_DEFAULT &&
    conv2dWorkgroupBytes(t) <= CONV2D_DEFAULT_WORKGROUP_BYTES
  ).map((tile) =>
    conv2dCase({
      label: `3×3 21→150 13×27 bf16 (tile ${conv2dTileName(tile)})`,
      cin: 21,
      cout: 150,
      height: 13,
      width: 27,
      k: 3,
      bf16: true,
      tile,
    })
  ),
  conv2dCase({ label: "3×3 16→3 17×23 bf16 (narrow tile)", cin: 16, cout: 3, height: 17, width: 23, k: 3, bf16: true }),
  conv2dCase({
    label: "1×1 13→37 13×11 +residual (narrow tile)",
    cin: 13,
    cout: 37,
    height: 13,
    width: 11,
    k: 1,
    residual: true,
    tile: CONV2D_TILE_NARROW,
  }),
  conv2dCase({ label: "3×3 5→7 13×11 (default tile)", cin: 5, cout: 7, height: 13, width: 11, k: 3, tile: CONV2D_TILE_DEFAULT }),
];
