// Float64 references and audit cases for the row/column movement family.

import type { AuditCase } from "../audit.ts";
import type { Rng } from "../../runtime/random.ts";
import { concatRows, copyCols, copyRows, gatherRows, scatterRows, sliceCols, sliceRows } from "../rows.ts";

/** A copy of `values` as float64. */
function f64(values: ArrayLike<number>): Float64Array {
  return Float64Array.from(values);
}

/** dst with rows dstIndex[i] replaced by (or increased by alpha times) rows srcIndex[i] of src; entries whose
 * index lies outside its matrix are skipped. */
export function scatterRows64(
  src: ArrayLike<number>,
  dst: ArrayLike<number>,
  cols: number,
  srcIndex: ArrayLike<number>,
  dstIndex: ArrayLike<number>,
  mode: "replace" | "add",
  alpha = 1,
): Float64Array {
  const out = f64(dst);
  const srcRows = src.length / cols, dstRows = dst.length / cols;
  for (let i = 0; i < srcIndex.length; i++) {
    const s = srcIndex[i], d = dstIndex[i];
    if (s >= srcRows || d >= dstRows) continue;
    for (let c = 0; c < cols; c++) {
      out[d * cols + c] = mode === "replace" ? src[s * cols + c] : out[d * cols + c] + alpha * src[s * cols + c];
    }
  }
  return out;
}

/** Rows index[i] of src (an index past the end reads the last row). */
export function gatherRows64(src: ArrayLike<number>, cols: number, index: ArrayLike<number>): Float64Array {
  const rows = src.length / cols;
  const out = new Float64Array(index.length * cols);
  for (let i = 0; i < index.length; i++) {
    const s = Math.min(index[i], rows - 1);
    for (let c = 0; c < cols; c++) out[i * cols + c] = src[s * cols + c];
  }
  return out;
}

/** Columns colStart .. colStart + count − 1 of a [rows, cols] matrix. */
export function sliceCols64(x: ArrayLike<number>, cols: number, colStart: number, count: number): Float64Array {
  const rows = x.length / cols;
  const out = new Float64Array(rows * count);
  for (let r = 0; r < rows; r++) for (let c = 0; c < count; c++) out[r * count + c] = x[r * cols + colStart + c];
  return out;
}

function copyRowsCase(cols: number): AuditCase {
  const srcRows = 53, dstRows = 41, srcRow = 7, dstRow = 3, rows = 29;
  return {
    kernel: "copy_rows",
    label: `${rows} of ${srcRows}×${cols} → ${dstRows}×${cols}`,
    build(g, rng) {
      const src = rng.normalArray(srcRows * cols), dst = rng.normalArray(dstRows * cols);
      copyRows(g, "op", g.input("src", [srcRows, cols]), g.state("out", [dstRows, cols]), { srcRow, dstRow, rows });
      const expected = f64(dst);
      expected.set(src.subarray(srcRow * cols, (srcRow + rows) * cols), dstRow * cols);
      return { inputs: [{ name: "src", data: src }], outputs: [{ name: "out", expected, initial: dst }] };
    },
  };
}

function concatRowsCase(cols: number): AuditCase {
  const heights = [13, 29, 5];
  const total = heights.reduce((a, b) => a + b, 0);
  return {
    kernel: "concat_rows",
    label: `${heights.join("+")} × ${cols}`,
    build(g, rng) {
      const parts = heights.map((h) => rng.normalArray(h * cols));
      const joined = concatRows(g, "op", heights.map((h, i) => g.input(`part${i}`, [h, cols])));
      copyRows(g, "copy", joined, g.state("out", [total, cols]), { srcRow: 0, dstRow: 0, rows: total });
      const expected = new Float64Array(total * cols);
      let at = 0;
      for (const p of parts) {
        expected.set(p, at);
        at += p.length;
      }
      return { inputs: parts.map((data, i) => ({ name: `part${i}`, data })), outputs: [{ name: "out", expected }] };
    },
  };
}

function sliceRowsCase(): AuditCase {
  const rows = 300, cols = 37, start = 129, count = 53;
  return {
    kernel: "slice_rows",
    label: `${start}+${count} of ${rows}×${cols}`,
    build(g, rng) {
      const x = rng.normalArray(rows * cols);
      const part = sliceRows(g, "op", g.input("x", [rows, cols]), start, count);
      copyRows(g, "copy", part, g.state("out", [count, cols]), { srcRow: 0, dstRow: 0, rows: count });
      return {
        inputs: [{ name: "x", data: x }],
        outputs: [{ name: "out", expected: f64(x.subarray(start * cols, (start + count) * cols)) }],
      };
    },
  };
}

function sliceColsCase(rows: number, cols: number, colStart: number, count: number): AuditCase {
  return {
    kernel: "slice_cols",
    label: `${rows}×${cols} cols ${colStart}+${count}`,
    build(g, rng) {
      const x = rng.normalArray(rows * cols);
      const part = sliceCols(g, "op", g.input("x", [rows, cols]), colStart, count);
      copyRows(g, "copy", part, g.state("out", [rows, count]), { srcRow: 0, dstRow: 0, rows });
      return { inputs: [{ name: "x", data: x }], outputs: [{ name: "out", expected: sliceCols64(x, cols, colStart, count) }] };
    },
  };
}

function copyColsCase(rows: number, srcCols: number, dstCols: number, dstCol: number): AuditCase {
  return {
    kernel: "copy_cols",
    label: `${rows}×${srcCols} → cols ${dstCol}.. of ${rows}×${dstCols}`,
    build(g, rng) {
      const src = rng.normalArray(rows * srcCols), dst = rng.normalArray(rows * dstCols);
      copyCols(g, "op", g.input("src", [rows, srcCols]), g.state("out", [rows, dstCols]), { dstCol });
      const expected = f64(dst);
      for (let r = 0; r < rows; r++) for (let c = 0; c < srcCols; c++) expected[r * dstCols + dstCol + c] = src[r * srcCols + c];
      return { inputs: [{ name: "src", data: src }], outputs: [{ name: "out", expected, initial: dst }] };
    },
  };
}

/** Distinct destination rows, any source rows, with one out-of-range entry of each kind at the end. */
function indices(rng: Rng, count: number, srcRows: number, dstRows: number): { src: Uint32Array; dst: Uint32Array } {
  const order = Array.from({ length: dstRows }, (_, i) => i);
  for (let i = dstRows - 1; i > 0; i--) {
    const j = rng.int(i + 1);
    [order[i], order[j]] = [order[j], order[i]];
  }
  const src = new Uint32Array(count + 2), dst = new Uint32Array(count + 2);
  for (let i = 0; i < count; i++) {
    src[i] = rng.int(srcRows);
    dst[i] = order[i];
  }
  src.set([srcRows + 3, 0], count);
  dst.set([order[count], dstRows], count);
  return { src, dst };
}

function scatterCase(mode: "replace" | "add", cols: number, alpha?: number): AuditCase {
  const srcRows = 53, dstRows = 41, count = 17;
  return {
    kernel: `scatter_rows_${mode}`,
    label: `${count} rows of ${srcRows}×${cols} → ${dstRows}×${cols}${alpha === undefined ? "" : ` α=${alpha}`}`,
    build(g, rng) {
      const src = rng.normalArray(srcRows * cols), dst = rng.normalArray(dstRows * cols);
      const idx = indices(rng, count, srcRows, dstRows);
      scatterRows(g, "op", g.input("src", [srcRows, cols]), g.state("out", [dstRows, cols]), {
        srcIndex: g.input("srcIndex", [idx.src.length], "u32"),
        dstIndex: g.input("dstIndex", [idx.dst.length], "u32"),
        mode,
        alpha,
      });
      const expected = scatterRows64(src, dst, cols, idx.src, idx.dst, mode, Math.fround(alpha ?? 1));
      return {
        inputs: [{ name: "src", data: src }, { name: "srcIndex", data: idx.src }, { name: "dstIndex", data: idx.dst }],
        outputs: [{ name: "out", expected, initial: dst }],
      };
    },
  };
}

function gatherCase(cols: number): AuditCase {
  const srcRows = 53, count = 23;
  return {
    kernel: "gather_rows",
    label: `${count} of ${srcRows}×${cols}`,
    build(g, rng) {
      const src = rng.normalArray(srcRows * cols);
      const index = Uint32Array.from({ length: count }, (_, i) => (i === count - 1 ? srcRows + 10 : rng.int(srcRows)));
      const picked = gatherRows(g, "op", g.input("src", [srcRows, cols]), g.input("index", [count], "u32"));
      copyRows(g, "copy", picked, g.state("out", [count, cols]), { srcRow: 0, dstRow: 0, rows: count });
      return {
        inputs: [{ name: "src", data: src }, { name: "index", data: index }],
        outputs: [{ name: "out", expected: gatherRows64(src, cols, index) }],
      };
    },
  };
}

export const rowsAuditCases: AuditCase[] = [
  copyRowsCase(37),
  copyRowsCase(132),
  concatRowsCase(37),
  concatRowsCase(300),
  sliceRowsCase(),
  sliceColsCase(37, 129, 5, 37),
  sliceColsCase(29, 640, 256, 128),
  copyColsCase(37, 53, 129, 11),
  copyColsCase(29, 64, 200, 72),
  scatterCase("replace", 37),
  scatterCase("replace", 128),
  scatterCase("add", 37, 0.37),
  scatterCase("add", 300, -1.5),
  gatherCase(129),
  gatherCase(64),
];
