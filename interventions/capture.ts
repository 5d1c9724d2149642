// Capture as a graph rewrite: right after the node that produces a tap point, copy the selected rows into a
// state tensor that survives the run. Only those rows ever leave the GPU.

import type { Graph } from "../runtime/graph.ts";
import { copyRows, scatterRows } from "../kernels/rows.ts";

/** Rows of a tap to keep: all of them, a contiguous range, or explicit positions. */
export type RowSelection = { all: true } | { start: number; count: number } | { positions: number[] };

export interface InsertedCapture {
  tap: string;
  /** Name of the state tensor holding the captured rows. */
  tensor: string;
  rows: number;
  cols: number;
}

export function selectionRows(sel: RowSelection, totalRows: number, where: string): { start: number; count: number } | number[] {
  if ("all" in sel) return { start: 0, count: totalRows };
  if ("start" in sel) {
    if (
      !Number.isInteger(sel.start) || !Number.isInteger(sel.count) || sel.start < 0 || sel.count <= 0 || sel.start + sel.count > totalRows
    ) {
      throw new Error(`${where}: rows ${sel.start}..${sel.start + sel.count} are outside 0..${totalRows}`);
    }
    return { start: sel.start, count: sel.count };
  }
  if (!sel.positions.length) throw new Error(`${where}: the row selection is empty`);
  for (const p of sel.positions) {
    if (!Number.isInteger(p) || p < 0 || p >= totalRows) throw new Error(`${where}: row ${p} is outside 0..${totalRows - 1}`);
  }
  return sel.positions;
}

/** Insert a capture of `tap` (rows selected by `sel`) into state tensor `stateName`. */
export function insertCapture(g: Graph, tap: string, sel: RowSelection, stateName: string): InsertedCapture {
  const src = g.tapTensor(tap);
  const [totalRows, cols] = g.shape(src);
  const rows = selectionRows(sel, totalRows, `capture of ${tap}`);
  const producer = g.producerIndex(src);
  if (producer < 0) throw new Error(`capture of ${tap}: no node produces it`);
  const count = Array.isArray(rows) ? rows.length : rows.count;
  const dst = g.state(stateName, [count, cols]);
  g.insertBuilt(producer, () => {
    if (Array.isArray(rows)) {
      const srcIndex = g.constant(`${stateName}.src_index`, [count], "u32", Uint32Array.from(rows));
      const dstIndex = g.constant(`${stateName}.dst_index`, [count], "u32", Uint32Array.from(rows, (_, i) => i));
      scatterRows(g, `capture:${stateName}`, src, dst, { srcIndex, dstIndex, mode: "replace" });
    } else {
      copyRows(g, `capture:${stateName}`, src, dst, { srcRow: rows.start, dstRow: 0, rows: rows.count });
    }
  });
  return { tap, tensor: stateName, rows: count, cols };
}
