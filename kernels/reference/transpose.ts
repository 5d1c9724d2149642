// Float64 reference and audit cases for the transpose family.

import type { AuditCase } from "../audit.ts";
import { transposeNode } from "../transpose.ts";

export function transposeReference(x: ArrayLike<number>, rows: number, cols: number, residual?: ArrayLike<number>): Float64Array {
  const out = new Float64Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) out[c * rows + r] = x[r * cols + c] + (residual ? residual[c * rows + r] : 0);
  }
  return out;
}

function transposeCase(rows: number, cols: number, withResidual: boolean): AuditCase {
  return {
    kernel: "transpose",
    label: `${rows}×${cols}${withResidual ? " +residual" : ""}`,
    build(g, rng) {
      const x = rng.normalArray(rows * cols);
      const residual = withResidual ? rng.normalArray(rows * cols) : undefined;
      const out = g.state("out", [cols, rows]);
      transposeNode(g, "t", g.input("x", [rows, cols]), out, residual ? g.input("residual", [cols, rows]) : undefined);
      const inputs = [{ name: "x", data: x }];
      if (residual) inputs.push({ name: "residual", data: residual });
      return { inputs, outputs: [{ name: "out", expected: transposeReference(x, rows, cols, residual) }] };
    },
  };
}

export const transposeAuditCases: AuditCase[] = [
  transposeCase(37, 53, false),
  transposeCase(7, 143, false),
  transposeCase(129, 5, true),
  transposeCase(300, 33, true),
];
