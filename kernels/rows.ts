// Moving rows and columns of f32 matrices [rows, cols]: copies of row ranges, concatenation, slices, column
// placement, and the index-driven scatter (activation patching) and gather (capture) primitives.
// Every operation is a rectangular block copy or an indexed row copy; both run on vec4 when all widths and
// offsets are multiples of 4.

import type { Graph } from "../runtime/graph.ts";
import { ceilDiv, grid1d, type KernelSpec } from "../runtime/kernel.ts";
import { shapeString } from "../runtime/tensor.ts";

function blockKernel(element: string): KernelSpec {
  return {
    name: element === "f32" ? "rows_block" : "rows_block_vec4",
    source: new URL("./rows.wgsl", import.meta.url),
    bindings: [
      { name: "src", type: `array<${element}>`, access: "read" },
      { name: "dst", type: `array<${element}>`, access: "read_write" },
    ],
    params: [
      { name: "count", type: "u32" },
      { name: "cols", type: "u32" },
      { name: "srcStride", type: "u32" },
      { name: "srcOffset", type: "u32" },
      { name: "dstStride", type: "u32" },
      { name: "dstOffset", type: "u32" },
    ],
  };
}

function indexKernel(element: string): KernelSpec {
  return {
    name: element === "f32" ? "rows_index" : "rows_index_vec4",
    source: new URL("./rows.wgsl", import.meta.url),
    bindings: [
      { name: "src", type: `array<${element}>`, access: "read" },
      { name: "dst", type: `array<${element}>`, access: "read_write" },
      { name: "srcIndex", type: "array<u32>", access: "read" },
      { name: "dstIndex", type: "array<u32>", access: "read" },
    ],
    params: [
      { name: "count", type: "u32" },
      { name: "cols", type: "u32" },
      { name: "srcRows", type: "u32" },
      { name: "dstRows", type: "u32" },
      { name: "alpha", type: "f32" },
    ],
  };
}

export const rowsBlockKernel = blockKernel("f32");
export const rowsBlockVec4Kernel = blockKernel("vec4<f32>");
export const rowsIndexKernel = indexKernel("f32");
export const rowsIndexVec4Kernel = indexKernel("vec4<f32>");

const BLOCK_BODY = "dst[params.dstOffset + r * params.dstStride + c] = src[params.srcOffset + r * params.srcStride + c];";

const INDEX_BODIES = {
  replace: "let sr = srcIndex[r]; let dr = dstIndex[r];" +
    " if (sr < params.srcRows && dr < params.dstRows) { dst[dr * params.cols + c] = src[sr * params.cols + c]; }",
  add: "let sr = srcIndex[r]; let dr = dstIndex[r];" +
    " if (sr < params.srcRows && dr < params.dstRows) { let d = dr * params.cols + c; dst[d] = dst[d] + params.alpha * src[sr * params.cols + c]; }",
  gather: "let sr = min(srcIndex[r], params.srcRows - 1u); dst[i] = src[sr * params.cols + c];",
};

/** [rows, cols] of a 2-D f32 tensor; `what` names the operand in errors. */
function matrix(g: Graph, where: string, what: string, id: number): [number, number] {
  const t = g.get(id);
  if (t.dtype !== "f32") throw new Error(`${where}: ${what} ${t.name} must be f32, got ${t.dtype}`);
  if (t.shape.length !== 2) throw new Error(`${where}: ${what} ${t.name} must be a matrix [rows, cols], got ${shapeString(t.shape)}`);
  return [t.shape[0], t.shape[1]];
}

function requireDistinct(g: Graph, where: string, src: number, dst: number): void {
  if (g.rootOf(src) === g.rootOf(dst)) {
    throw new Error(`${where}: source ${g.get(src).name} and destination ${g.get(dst).name} share memory; copy through a separate tensor`);
  }
}

function requireRange(where: string, what: string, start: number, count: number, limit: number): void {
  if (!Number.isInteger(start) || !Number.isInteger(count) || start < 0 || count <= 0 || start + count > limit) {
    throw new Error(`${where}: ${what} ${start}..${start + count - 1} is outside 0..${limit - 1}`);
  }
}

interface Block {
  src: number;
  dst: number;
  rows: number;
  /** Block width in elements. */
  cols: number;
  srcStride: number;
  srcOffset: number;
  dstStride: number;
  dstOffset: number;
}

/** One dispatch copying a rectangular block (all sizes in f32 elements). */
function blockNode(g: Graph, name: string, b: Block): void {
  const vec = [b.cols, b.srcStride, b.srcOffset, b.dstStride, b.dstOffset].every((v) => v % 4 === 0);
  const unit = vec ? 4 : 1;
  const cols = b.cols / unit;
  const count = b.rows * cols;
  g.add({
    name,
    kernel: vec ? rowsBlockVec4Kernel : rowsBlockKernel,
    variant: { BODY: BLOCK_BODY },
    bindings: { src: b.src, dst: b.dst },
    params: {
      count,
      cols,
      srcStride: b.srcStride / unit,
      srcOffset: b.srcOffset / unit,
      dstStride: b.dstStride / unit,
      dstOffset: b.dstOffset / unit,
    },
    workgroups: grid1d(ceilDiv(count, 256)),
  });
}

/** In place: dst[dstRow + i, :] = src[srcRow + i, :] for i < rows (same width). Returns dst. */
export function copyRows(
  g: Graph,
  name: string,
  src: number,
  dst: number,
  range: { srcRow: number; dstRow: number; rows: number },
): number {
  const [srcRows, cols] = matrix(g, name, "source", src);
  const [dstRows, dstCols] = matrix(g, name, "destination", dst);
  if (cols !== dstCols) throw new Error(`${name}: source has ${cols} columns but destination has ${dstCols}`);
  requireRange(name, "source rows", range.srcRow, range.rows, srcRows);
  requireRange(name, "destination rows", range.dstRow, range.rows, dstRows);
  requireDistinct(g, name, src, dst);
  blockNode(g, name, {
    src,
    dst,
    rows: range.rows,
    cols,
    srcStride: cols,
    srcOffset: range.srcRow * cols,
    dstStride: cols,
    dstOffset: range.dstRow * cols,
  });
  return dst;
}

/** Stack matrices of equal width along rows: [Σ rows_i, C]. One dispatch per part, named `${name}.${i}`. */
export function concatRows(g: Graph, name: string, parts: number[]): number {
  if (!parts.length) throw new Error(`${name}: nothing to concatenate`);
  const shapes = parts.map((p, i) => matrix(g, name, `part ${i}`, p));
  const cols = shapes[0][1];
  shapes.forEach(([, c], i) => {
    if (c !== cols) throw new Error(`${name}: part ${i} has ${c} columns, part 0 has ${cols}`);
  });
  const out = g.activation(name, [shapes.reduce((a, [r]) => a + r, 0), cols]);
  let row = 0;
  parts.forEach((p, i) => {
    copyRows(g, `${name}.${i}`, p, out, { srcRow: 0, dstRow: row, rows: shapes[i][0] });
    row += shapes[i][0];
  });
  return out;
}

/** Rows start .. start + count − 1 of x, as a new [count, C] tensor. */
export function sliceRows(g: Graph, name: string, x: number, start: number, count: number): number {
  const [rows, cols] = matrix(g, name, "input", x);
  requireRange(name, "rows", start, count, rows);
  const out = g.activation(name, [count, cols]);
  return copyRows(g, name, x, out, { srcRow: start, dstRow: 0, rows: count });
}

/** Columns colStart .. colStart + colCount − 1 of x [S, C], as a new [S, colCount] tensor (e.g. q, k, v and the
 * MLP input out of a fused projection). */
export function sliceCols(g: Graph, name: string, x: number, colStart: number, colCount: number): number {
  const [rows, cols] = matrix(g, name, "input", x);
  requireRange(name, "columns", colStart, colCount, cols);
  const out = g.activation(name, [rows, colCount]);
  blockNode(g, name, { src: x, dst: out, rows, cols: colCount, srcStride: cols, srcOffset: colStart, dstStride: colCount, dstOffset: 0 });
  return out;
}

/** In place: write src [S, c] into columns dstCol .. dstCol + c − 1 of dst [S, C] (builds [S, D + F]
 * concatenations). Returns dst. */
export function copyCols(g: Graph, name: string, src: number, dst: number, placement: { dstCol: number }): number {
  const [rows, cols] = matrix(g, name, "source", src);
  const [dstRows, dstCols] = matrix(g, name, "destination", dst);
  if (rows !== dstRows) throw new Error(`${name}: source has ${rows} rows but destination has ${dstRows}`);
  requireRange(name, "destination columns", placement.dstCol, cols, dstCols);
  requireDistinct(g, name, src, dst);
  blockNode(g, name, { src, dst, rows, cols, srcStride: cols, srcOffset: 0, dstStride: dstCols, dstOffset: placement.dstCol });
  return dst;
}

function indexVector(g: Graph, where: string, what: string, id: number): number {
  const t = g.get(id);
  if (t.dtype !== "u32" || t.shape.length !== 1) {
    throw new Error(`${where}: ${what} ${t.name} must be a u32 vector [count], got ${t.dtype} ${shapeString(t.shape)}`);
  }
  return t.shape[0];
}

interface IndexArgs {
  body: keyof typeof INDEX_BODIES;
  src: number;
  dst: number;
  srcIndex: number;
  dstIndex: number;
  count: number;
  cols: number;
  srcRows: number;
  dstRows: number;
  alpha: number;
}

function indexNode(g: Graph, name: string, a: IndexArgs): void {
  const vec = a.cols % 4 === 0;
  const cols = vec ? a.cols / 4 : a.cols;
  const count = a.count * cols;
  g.add({
    name,
    kernel: vec ? rowsIndexVec4Kernel : rowsIndexKernel,
    variant: { BODY: INDEX_BODIES[a.body] },
    bindings: { src: a.src, dst: a.dst, srcIndex: a.srcIndex, dstIndex: a.dstIndex },
    params: { count, cols, srcRows: a.srcRows, dstRows: a.dstRows, alpha: a.alpha },
    workgroups: grid1d(ceilDiv(count, 256)),
  });
}

export interface ScatterOptions {
  /** u32 [count]: rows of src to read. */
  srcIndex: number;
  /** u32 [count]: rows of dst to write; entries must be distinct (two threads would race on one row). */
  dstIndex: number;
  mode: "replace" | "add";
  /** Factor on src in "add" mode (default 1). */
  alpha?: number;
}

/** In place, for i < count: dst[dstIndex[i], :] = src[srcIndex[i], :] ("replace") or
 * dst[dstIndex[i], :] += alpha · src[srcIndex[i], :] ("add"). The index tensors are inputs or state, so one plan
 * serves any selection of rows; an index outside its tensor skips that entry (callers validate indices).
 * This is the activation-patching primitive. Returns dst. */
export function scatterRows(g: Graph, name: string, src: number, dst: number, options: ScatterOptions): number {
  const [srcRows, cols] = matrix(g, name, "source", src);
  const [dstRows, dstCols] = matrix(g, name, "destination", dst);
  if (cols !== dstCols) throw new Error(`${name}: source has ${cols} columns but destination has ${dstCols}`);
  const count = indexVector(g, name, "source index", options.srcIndex);
  const dstCount = indexVector(g, name, "destination index", options.dstIndex);
  if (count !== dstCount) throw new Error(`${name}: ${count} source indices but ${dstCount} destination indices`);
  if (options.mode !== "replace" && options.mode !== "add") throw new Error(`${name}: unknown scatter mode "${options.mode}"`);
  if (options.alpha !== undefined && options.mode !== "add") throw new Error(`${name}: alpha applies to the "add" mode only`);
  const alpha = options.alpha ?? 1;
  if (!Number.isFinite(alpha)) throw new Error(`${name}: alpha must be finite, got ${alpha}`);
  requireDistinct(g, name, src, dst);
  indexNode(g, name, {
    body: options.mode,
    src,
    dst,
    srcIndex: options.srcIndex,
    dstIndex: options.dstIndex,
    count,
    cols,
    srcRows,
    dstRows,
    alpha,
  });
  return dst;
}

/** out[i, :] = src[index[i], :] for a u32 index vector [count]: the capture primitive. An index past the end
 * reads the last row (callers validate indices). */
export function gatherRows(g: Graph, name: string, src: number, index: number): number {
  const [srcRows, cols] = matrix(g, name, "source", src);
  const count = indexVector(g, name, "index", index);
  const out = g.activation(name, [count, cols]);
  indexNode(g, name, { body: "gather", src, dst: out, srcIndex: index, dstIndex: index, count, cols, srcRows, dstRows: count, alpha: 1 });
  return out;
}
