// Float64 reference and audit cases for the embedding lookup.

import type { AuditCase } from "../audit.ts";
import { embedding } from "../embedding.ts";
import { copyRows } from "../rows.ts";
import { packBf16, roundToBf16 } from "../../weights/dtypes.ts";

/** Rows ids[s] of a [V, dim] table; an id past the end reads the last row. */
export function embedding64(table: ArrayLike<number>, dim: number, ids: ArrayLike<number>): Float64Array {
  const vocab = table.length / dim;
  const out = new Float64Array(ids.length * dim);
  for (let s = 0; s < ids.length; s++) {
    const row = Math.min(ids[s], vocab - 1);
    for (let d = 0; d < dim; d++) out[s * dim + d] = table[row * dim + d];
  }
  return out;
}

function embeddingCase(vocab: number, dim: number, seq: number, dtype: "bf16" | "f32"): AuditCase {
  return {
    kernel: "embedding",
    label: `${seq} ids into ${vocab}×${dim} ${dtype}`,
    build(g, rng) {
      const values = rng.normalArray(vocab * dim, 0.5);
      const tableValues = dtype === "bf16" ? roundToBf16(values) : values;
      // Both ends of the table, an out-of-range id (reads the last row), and random ids.
      const ids = Uint32Array.from({ length: seq }, (_, s) => (s === 0 ? 0 : s === 1 ? vocab - 1 : s === 2 ? vocab + 5 : rng.int(vocab)));
      const looked = embedding(g, "op", g.input("table", [vocab, dim], dtype), g.input("ids", [seq], "u32"));
      copyRows(g, "copy", looked, g.state("out", [seq, dim]), { srcRow: 0, dstRow: 0, rows: seq });
      return {
        inputs: [{ name: "table", data: dtype === "bf16" ? packBf16(values) : values }, { name: "ids", data: ids }],
        outputs: [{ name: "out", expected: embedding64(tableValues, dim, ids) }],
      };
    },
  };
}

export const embeddingAuditCases: AuditCase[] = [
  embeddingCase(300, 37, 53, "bf16"),
  embeddingCase(129, 64, 37, "f32"),
  embeddingCase(1001, 130, 29, "bf16"),
];
