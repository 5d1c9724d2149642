// Float64 references and audit cases for latent patchify/unpatchify with batch-norm statistics.

import type { AuditCase } from "../audit.ts";
import { patchifyLatents, unpatchifyTokens } from "../latent.ts";
import { elementwiseNode } from "../elementwise.ts";
import { packBf16, roundToBf16 } from "../../weights/dtypes.ts";

export interface LatentStatsValues {
  mean: ArrayLike<number>;
  variance: ArrayLike<number>;
  eps: number;
}

/** x [C' ≥ C, h·w] → tokens [(h/2)·(w/2), 4C], feature c·4 + dy·2 + dx, (v − mean) / sqrt(var + eps). */
export function patchifyReference(
  x: ArrayLike<number>,
  channels: number,
  height: number,
  width: number,
  stats?: LatentStatsValues,
): Float64Array {
  const features = 4 * channels;
  const out = new Float64Array((height / 2) * (width / 2) * features);
  for (let py = 0; py < height / 2; py++) {
    for (let px = 0; px < width / 2; px++) {
      const t = py * (width / 2) + px;
      for (let c = 0; c < channels; c++) {
        for (let dy = 0; dy < 2; dy++) {
          for (let dx = 0; dx < 2; dx++) {
            const f = c * 4 + dy * 2 + dx;
            let v = x[(c * height + 2 * py + dy) * width + 2 * px + dx];
            if (stats) v = (v - stats.mean[f]) / Math.sqrt(stats.variance[f] + stats.eps);
            out[t * features + f] = v;
          }
        }
      }
    }
  }
  return out;
}

/** tokens [(h/2)·(w/2), 4C] → latent [C, h·w], v · sqrt(var + eps) + mean. */
export function unpatchifyReference(
  tokens: ArrayLike<number>,
  channels: number,
  height: number,
  width: number,
  stats?: LatentStatsValues,
): Float64Array {
  const features = 4 * channels;
  const out = new Float64Array(channels * height * width);
  for (let c = 0; c < channels; c++) {
    for (let y = 0; y < height; y++) {
      for (let x = 0; x < width; x++) {
        const f = c * 4 + (y % 2) * 2 + (x % 2);
        const t = Math.floor(y / 2) * (width / 2) + Math.floor(x / 2);
        let v = tokens[t * features + f];
        if (stats) v = v * Math.sqrt(stats.variance[f] + stats.eps) + stats.mean[f];
        out[(c * height + y) * width + x] = v;
      }
    }
  }
  return out;
}

interface CaseSpec {
  op: "patchify" | "unpatchify";
  channels: number;
  height: number;
  width: number;
  /** Extra latent channels the patchify input carries (the log-variance half of the posterior). */
  extraChannels?: number;
  stats?: "bf16" | "f32";
}

function latentCase(c: CaseSpec): AuditCase {
  const f = 4 * c.channels;
  return {
    kernel: `latent_${c.op}`,
    label: `${c.channels} ch ${c.height}×${c.width}${c.extraChannels ? ` of ${c.channels + c.extraChannels}` : ""}${
      c.stats ? ` BN ${c.stats}` : ""
    }`,
    build(g, rng) {
      let stats: LatentStatsValues | undefined;
      const inputs = [];
      let tStats;
      if (c.stats) {
        let mean: Float32Array = rng.normalArray(f, 0.3);
        let variance: Float32Array = rng.normalArray(f, 0.2).map((v) => 0.5 + Math.abs(v));
        if (c.stats === "bf16") {
          mean = roundToBf16(mean);
          variance = roundToBf16(variance);
        }
        const eps = 1e-4;
        stats = { mean, variance, eps: Math.fround(eps) };
        tStats = { mean: g.input("mean", [f], c.stats), variance: g.input("variance", [f], c.stats), eps };
        inputs.push({ name: "mean", data: c.stats === "bf16" ? packBf16(mean) : mean });
        inputs.push({ name: "variance", data: c.stats === "bf16" ? packBf16(variance) : variance });
      }
      const layout = { channels: c.channels, height: c.height, width: c.width, stats: tStats };
      const tokens = (c.height / 2) * (c.width / 2);
      if (c.op === "patchify") {
        const rows = c.channels + (c.extraChannels ?? 0);
        const x = rng.normalArray(rows * c.height * c.width);
        const out = g.state("out", [tokens, f]);
        const y = patchifyLatents(g, "pack", g.input("x", [rows, c.height * c.width]), layout);
        elementwiseNode(g, "copy", { op: "scale", a: y, out, cols: f, alpha: 1 });
        inputs.push({ name: "x", data: x });
        return { inputs, outputs: [{ name: "out", expected: patchifyReference(x, c.channels, c.height, c.width, stats) }] };
      }
      const x = rng.normalArray(tokens * f);
      const out = g.state("out", [c.channels, c.height * c.width]);
      const y = unpatchifyTokens(g, "unpack", g.input("x", [tokens, f]), layout);
      elementwiseNode(g, "copy", { op: "scale", a: y, out, cols: c.height * c.width, alpha: 1 });
      inputs.push({ name: "x", data: x });
      return { inputs, outputs: [{ name: "out", expected: unpatchifyReference(x, c.channels, c.height, c.width, stats) }] };
    },
  };
}

export const latentAuditCases: AuditCase[] = [
  latentCase({ op: "patchify", channels: 5, height: 14, width: 22 }),
  latentCase({ op: "patchify", channels: 7, height: 26, width: 10, extraChannels: 7, stats: "bf16" }),
  latentCase({ op: "patchify", channels: 5, height: 6, width: 18, stats: "f32" }),
  latentCase({ op: "unpatchify", channels: 5, height: 14, width: 22 }),
  latentCase({ op: "unpatchify", channels: 7, height: 26, width: 10, stats: "bf16" }),
  latentCase({ op: "unpatchify", channels: 3, height: 6, width: 18, stats: "f32" }),
];
