// Float64 references and audit cases for the elementwise family.

import type { AuditCase } from "../audit.ts";
import { add, axpyInPlace, elementwiseNode, gatedAddInPlace, gatedSum, modulate, mul, silu, swiglu } from "../elementwise.ts";

export function sigmoid64(x: number): number {
  return 1 / (1 + Math.exp(-x));
}

function f64(a: ArrayLike<number>): Float64Array {
  return Float64Array.from(a);
}

const ROWS = 37, COLS = 53;

function binaryCase(
  kernel: string,
  op: (g: Parameters<typeof add>[0], n: string, a: number, b: number) => number,
  f: (x: number, y: number) => number,
): AuditCase {
  return {
    kernel,
    label: `${ROWS}×${COLS}`,
    build(g, rng) {
      const a = rng.normalArray(ROWS * COLS), b = rng.normalArray(ROWS * COLS);
      const ta = g.input("a", [ROWS, COLS]), tb = g.input("b", [ROWS, COLS]);
      const out = g.state("out", [ROWS, COLS]);
      const tmp = op(g, "op", ta, tb);
      elementwiseNode(g, "copy", { op: "scale", a: tmp, out, cols: COLS, alpha: 1 });
      return {
        inputs: [{ name: "a", data: a }, { name: "b", data: b }],
        outputs: [{ name: "out", expected: f64(a).map((x, i) => f(x, b[i])) }],
      };
    },
  };
}

export const elementwiseAuditCases: AuditCase[] = [
  binaryCase("add", add, (x, y) => x + y),
  binaryCase("mul", mul, (x, y) => x * y),
  {
    kernel: "scale",
    label: `${ROWS}×${COLS}`,
    build(g, rng) {
      const a = rng.normalArray(ROWS * COLS);
      const out = g.state("out", [ROWS, COLS]);
      elementwiseNode(g, "op", { op: "scale", a: g.input("a", [ROWS, COLS]), out, cols: COLS, alpha: 0.37 });
      return { inputs: [{ name: "a", data: a }], outputs: [{ name: "out", expected: f64(a).map((x) => x * Math.fround(0.37)) }] };
    },
  },
  {
    kernel: "silu",
    label: `${ROWS}×${COLS}`,
    build(g, rng) {
      const a = rng.normalArray(ROWS * COLS, 3);
      const out = g.state("out", [ROWS, COLS]);
      const tmp = silu(g, "op", g.input("a", [ROWS, COLS]));
      elementwiseNode(g, "copy", { op: "scale", a: tmp, out, cols: COLS, alpha: 1 });
      return { inputs: [{ name: "a", data: a }], outputs: [{ name: "out", expected: f64(a).map((x) => x * sigmoid64(x)) }] };
    },
  },
  {
    kernel: "swiglu",
    label: `${ROWS}×2·${COLS}`,
    build(g, rng) {
      const a = rng.normalArray(ROWS * 2 * COLS, 2);
      const out = g.state("out", [ROWS, COLS]);
      const tmp = swiglu(g, "op", g.input("a", [ROWS, 2 * COLS]));
      elementwiseNode(g, "copy", { op: "scale", a: tmp, out, cols: COLS, alpha: 1 });
      const exp = new Float64Array(ROWS * COLS);
      for (let r = 0; r < ROWS; r++) {
        for (let c = 0; c < COLS; c++) {
          const gt = a[r * 2 * COLS + c], u = a[r * 2 * COLS + COLS + c];
          exp[r * COLS + c] = gt * sigmoid64(gt) * u;
        }
      }
      return { inputs: [{ name: "a", data: a }], outputs: [{ name: "out", expected: exp }] };
    },
  },
  {
    kernel: "modulate",
    label: `${ROWS}×${COLS}`,
    build(g, rng) {
      const x = rng.normalArray(ROWS * COLS), mod = rng.normalArray(3 * COLS, 0.5);
      const out = g.state("out", [ROWS, COLS]);
      const tmp = modulate(g, "op", g.input("x", [ROWS, COLS]), g.input("mod", [3 * COLS]), COLS, 2 * COLS);
      elementwiseNode(g, "copy", { op: "scale", a: tmp, out, cols: COLS, alpha: 1 });
      const exp = f64(x).map((v, i) => (1 + mod[COLS + (i % COLS)]) * v + mod[2 * COLS + (i % COLS)]);
      return { inputs: [{ name: "x", data: x }, { name: "mod", data: mod }], outputs: [{ name: "out", expected: exp }] };
    },
  },
  {
    kernel: "gated_add",
    label: `${ROWS}×${COLS} in place`,
    build(g, rng) {
      const res = rng.normalArray(ROWS * COLS), y = rng.normalArray(ROWS * COLS), mod = rng.normalArray(2 * COLS);
      const out = g.state("out", [ROWS, COLS]);
      gatedAddInPlace(g, "op", out, g.input("y", [ROWS, COLS]), g.input("mod", [2 * COLS]), COLS);
      const exp = f64(res).map((v, i) => v + mod[COLS + (i % COLS)] * y[i]);
      return { inputs: [{ name: "y", data: y }, { name: "mod", data: mod }], outputs: [{ name: "out", expected: exp, initial: res }] };
    },
  },
  {
    kernel: "gated_sum",
    label: `${ROWS}×${COLS}`,
    build(g, rng) {
      const res = rng.normalArray(ROWS * COLS), y = rng.normalArray(ROWS * COLS), mod = rng.normalArray(3 * COLS);
      const out = g.state("out", [ROWS, COLS]);
      const tmp = gatedSum(g, "op", g.input("res", [ROWS, COLS]), g.input("y", [ROWS, COLS]), g.input("mod", [3 * COLS]), 2 * COLS);
      elementwiseNode(g, "copy", { op: "scale", a: tmp, out, cols: COLS, alpha: 1 });
      const exp = f64(res).map((v, i) => v + mod[2 * COLS + (i % COLS)] * y[i]);
      return {
        inputs: [{ name: "res", data: res }, { name: "y", data: y }, { name: "mod", data: mod }],
        outputs: [{ name: "out", expected: exp }],
      };
    },
  },
  {
    kernel: "axpy",
    label: `${ROWS}×${COLS} in place`,
    build(g, rng) {
      const res = rng.normalArray(ROWS * COLS), x = rng.normalArray(ROWS * COLS), coef = rng.normalArray(3);
      const out = g.state("out", [ROWS, COLS]);
      axpyInPlace(g, "op", out, g.input("x", [ROWS, COLS]), g.input("coef", [3]), 2);
      const exp = f64(res).map((v, i) => v + coef[2] * x[i]);
      return { inputs: [{ name: "x", data: x }, { name: "coef", data: coef }], outputs: [{ name: "out", expected: exp, initial: res }] };
    },
  },
];
