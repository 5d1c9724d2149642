// Float64 reference and audit cases for nearest ×2 upsampling.

import type { AuditCase } from "../audit.ts";
import { upsampleNearest2x } from "../upsample.ts";
import { elementwiseNode } from "../elementwise.ts";

export function upsampleNearest2xReference(x: ArrayLike<number>, channels: number, height: number, width: number): Float64Array {
  const out = new Float64Array(channels * 4 * height * width);
  for (let c = 0; c < channels; c++) {
    for (let oy = 0; oy < 2 * height; oy++) {
      for (let ox = 0; ox < 2 * width; ox++) {
        out[(c * 2 * height + oy) * 2 * width + ox] = x[(c * height + (oy >> 1)) * width + (ox >> 1)];
      }
    }
  }
  return out;
}

function upsampleCase(channels: number, height: number, width: number): AuditCase {
  return {
    kernel: "upsample_nearest2x",
    label: `${channels} ch ${height}×${width}`,
    build(g, rng) {
      const x = rng.normalArray(channels * height * width);
      const out = g.state("out", [channels, 4 * height * width]);
      const y = upsampleNearest2x(g, "up", g.input("x", [channels, height * width]), height, width);
      elementwiseNode(g, "copy", { op: "scale", a: y, out, cols: 4 * height * width, alpha: 1 });
      return {
        inputs: [{ name: "x", data: x }],
        outputs: [{ name: "out", expected: upsampleNearest2xReference(x, channels, height, width) }],
      };
    },
  };
}

export const upsampleAuditCases: AuditCase[] = [upsampleCase(5, 13, 11), upsampleCase(7, 1, 37)];
