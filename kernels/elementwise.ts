// Elementwise operations over f32 activations, one WGSL family with the operation as variant.

import type { Graph } from "../runtime/graph.ts";
import { ceilDiv, grid1d, type KernelSpec } from "../runtime/kernel.ts";

export const elementwiseKernel: KernelSpec = {
  name: "elementwise",
  source: new URL("./elementwise.wgsl", import.meta.url),
  bindings: [
    { name: "a", type: "array<f32>", access: "read" },
    { name: "b", type: "array<f32>", access: "read" },
    { name: "base", type: "array<f32>", access: "read" },
    { name: "out", type: "array<f32>", access: "read_write" },
  ],
  params: [
    { name: "count", type: "u32" },
    { name: "cols", type: "u32" },
    { name: "alpha", type: "f32" },
    { name: "off0", type: "u32" },
    { name: "off1", type: "u32" },
  ],
};

const BODIES: Record<string, string> = {
  add: "out[i] = a[i] + b[i];",
  mul: "out[i] = a[i] * b[i];",
  scale: "out[i] = a[i] * params.alpha;",
  silu: "let x = a[i]; out[i] = x * sigmoid(x);",
  swiglu: "let g = a[r * 2u * params.cols + c]; let u = a[r * 2u * params.cols + params.cols + c]; out[i] = g * sigmoid(g) * u;",
  modulate: "out[i] = (1.0 + b[params.off0 + c]) * a[i] + b[params.off1 + c];",
  gated_add: "out[i] = out[i] + b[params.off0 + c] * a[i];",
  axpy: "out[i] = out[i] + b[params.off0] * a[i];",
  gated_sum: "out[i] = base[i] + b[params.off0 + c] * a[i];",
};

export type ElementwiseOp = keyof typeof BODIES;

interface ElementwiseArgs {
  op: ElementwiseOp;
  a: number;
  b?: number;
  c?: number;
  out: number;
  cols: number;
  alpha?: number;
  off0?: number;
  off1?: number;
}

export function elementwiseNode(g: Graph, name: string, args: ElementwiseArgs): void {
  const count = g.elementCount(args.out);
  g.add({
    name,
    kernel: elementwiseKernel,
    variant: { BODY: BODIES[args.op] },
    bindings: { a: args.a, b: args.b ?? args.a, base: args.c ?? args.a, out: args.out },
    params: { count, cols: args.cols, alpha: args.alpha ?? 1, off0: args.off0 ?? 0, off1: args.off1 ?? 0 },
    workgroups: grid1d(ceilDiv(count, 256)),
  });
}

function cols(g: Graph, id: number): number {
  const s = g.shape(id);
  return s[s.length - 1];
}

export function add(g: Graph, name: string, a: number, b: number): number {
  const out = g.activation(name, g.shape(a));
  elementwiseNode(g, name, { op: "add", a, b, out, cols: cols(g, a) });
  return out;
}

export function mul(g: Graph, name: string, a: number, b: number): number {
  const out = g.activation(name, g.shape(a));
  elementwiseNode(g, name, { op: "mul", a, b, out, cols: cols(g, a) });
  return out;
}

export function scale(g: Graph, name: string, a: number, alpha: number): number {
  const out = g.activation(name, g.shape(a));
  elementwiseNode(g, name, { op: "scale", a, out, cols: cols(g, a), alpha });
  return out;
}

export function silu(g: Graph, name: string, a: number): number {
  const out = g.activation(name, g.shape(a));
  elementwiseNode(g, name, { op: "silu", a, out, cols: cols(g, a) });
  return out;
}

/** [rows, 2·c] → [rows, c]: silu(first half) · second half. */
export function swiglu(g: Graph, name: string, a: number): number {
  const [rows, twice] = g.shape(a);
  if (twice % 2) throw new Error(`${name}: swiglu needs an even number of columns, got ${twice}`);
  const out = g.activation(name, [rows, twice / 2]);
  elementwiseNode(g, name, { op: "swiglu", a, out, cols: twice / 2 });
  return out;
}

/** (1 + mod[scaleOffset + c]) · x + mod[shiftOffset + c], modulation vector broadcast over rows. */
export function modulate(g: Graph, name: string, x: number, mod: number, scaleOffset: number, shiftOffset: number): number {
  const out = g.activation(name, g.shape(x));
  elementwiseNode(g, name, { op: "modulate", a: x, b: mod, out, cols: cols(g, x), off0: scaleOffset, off1: shiftOffset });
  return out;
}

/** out += coefficient[index] · x, in place; the coefficient lives in a tensor so it can change between runs
 * without rebuilding the plan (the Euler step's dt). */
export function axpyInPlace(g: Graph, name: string, out: number, x: number, coefficient: number, index = 0): number {
  elementwiseNode(g, name, { op: "axpy", a: x, b: coefficient, out, cols: cols(g, out), off0: index });
  return out;
}

/** residual + mod[gateOffset + c] · y, into a new tensor (keeps every block output a distinct tensor). */
export function gatedSum(g: Graph, name: string, residual: number, y: number, mod: number, gateOffset: number): number {
  const out = g.activation(name, g.shape(residual));
  elementwiseNode(g, name, { op: "gated_sum", a: y, b: mod, c: residual, out, cols: cols(g, residual), off0: gateOffset });
  return out;
}

/** residual += mod[gateOffset + c] · y, in place. */
export function gatedAddInPlace(g: Graph, name: string, residual: number, y: number, mod: number, gateOffset: number): number {
  elementwiseNode(g, name, { op: "gated_add", a: y, b: mod, out: residual, cols: cols(g, residual), off0: gateOffset });
  return residual;
}
