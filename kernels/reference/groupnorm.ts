// Float64 reference and audit cases for the groupnorm family.

import type { AuditCase } from "../audit.ts";
import { groupNorm } from "../groupnorm.ts";
import { elementwiseNode } from "../elementwise.ts";
import { packBf16, roundToBf16 } from "../../weights/dtypes.ts";
import { sigmoid64 } from "./elementwise.ts";

/** GroupNorm of x [C, hw] with biased variance, eps inside the square root, per-channel affine, optional SiLU. */
export function groupNormReference(
  x: ArrayLike<number>,
  gamma: ArrayLike<number>,
  beta: ArrayLike<number>,
  a: { channels: number; hw: number; groups: number; eps: number; silu?: boolean },
): Float64Array {
  const out = new Float64Array(a.channels * a.hw);
  const size = (a.channels / a.groups) * a.hw;
  for (let g = 0; g < a.groups; g++) {
    const start = g * size;
    let mean = 0;
    for (let i = 0; i < size; i++) mean += x[start + i];
    mean /= size;
    let variance = 0;
    for (let i = 0; i < size; i++) variance += (x[start + i] - mean) ** 2;
    variance /= size;
    const rstd = 1 / Math.sqrt(variance + a.eps);
    for (let i = 0; i < size; i++) {
      const c = Math.floor((start + i) / a.hw);
      const y = (x[start + i] - mean) * rstd * gamma[c] + beta[c];
      out[start + i] = a.silu ? y * sigmoid64(y) : y;
    }
  }
  return out;
}

interface CaseSpec {
  label: string;
  channels: number;
  height: number;
  width: number;
  groups: number;
  eps: number;
  silu?: boolean;
  bf16?: boolean;
  chunkElements?: number;
  /** Offset added to the input, to check that the variance does not lose precision to a large mean. */
  offset?: number;
}

function groupNormCase(c: CaseSpec): AuditCase {
  return {
    kernel: "groupnorm",
    label: c.label,
    build(g, rng) {
      const hw = c.height * c.width;
      const x = rng.normalArray(c.channels * hw, 2).map((v) => v + (c.offset ?? 0));
      let gamma: Float32Array = rng.normalArray(c.channels, 0.2).map((v) => 1 + v);
      let beta: Float32Array = rng.normalArray(c.channels, 0.2);
      if (c.bf16) {
        gamma = roundToBf16(gamma);
        beta = roundToBf16(beta);
      }
      const dtype = c.bf16 ? "bf16" : "f32";
      const tx = g.input("x", [c.channels, hw]);
      const tg = g.input("gamma", [c.channels], dtype);
      const tb = g.input("beta", [c.channels], dtype);
      const out = g.state("out", [c.channels, hw]);
      const y = groupNorm(g, "norm", tx, {
        gamma: tg,
        beta: tb,
        groups: c.groups,
        eps: c.eps,
        silu: c.silu,
        chunkElements: c.chunkElements,
      });
      elementwiseNode(g, "copy", { op: "scale", a: y, out, cols: hw, alpha: 1 });
      const expected = groupNormReference(x, gamma, beta, {
        channels: c.channels,
        hw,
        groups: c.groups,
        eps: Math.fround(c.eps),
        silu: c.silu,
      });
      return {
        inputs: [
          { name: "x", data: x },
          { name: "gamma", data: c.bf16 ? packBf16(gamma) : gamma },
          { name: "beta", data: c.bf16 ? packBf16(beta) : beta },
        ],
        outputs: [{ name: "out", expected }],
      };
    },
  };
}

export const groupNormAuditCases: AuditCase[] = [
  groupNormCase({ label: "7 ch / 7 groups 13×11", channels: 7, height: 13, width: 11, groups: 7, eps: 1e-6 }),
  groupNormCase({
    label: "15 ch / 5 groups 13×11 +SiLU bf16",
    channels: 15,
    height: 13,
    width: 11,
    groups: 5,
    eps: 1e-6,
    silu: true,
    bf16: true,
  }),
  groupNormCase({ label: "32 ch / 8 groups 17×19 chunked", channels: 32, height: 17, width: 19, groups: 8, eps: 1e-6, chunkElements: 300 }),
  groupNormCase({
    label: "12 ch / 3 groups 37×29 chunked +SiLU, mean 30",
    channels: 12,
    height: 37,
    width: 29,
    groups: 3,
    eps: 1e-5,
    silu: true,
    chunkElements: 129,
    offset: 30,
  }),
];
