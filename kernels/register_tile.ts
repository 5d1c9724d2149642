// Pieces of generated WGSL shared by the register-tiled kernels (matmul, conv2d, attention): the per-thread code is
// written unrolled with one named variable per register, because private arrays indexed inside loops end up in the
// GPU's off-chip local memory after translation.

/** Vector lanes by number. */
export const LANES = ["x", "y", "z", "w"] as const;

export function range(n: number): number[] {
  return Array.from({ length: n }, (_, i) => i);
}

/** The generated blocks of a template, each given as its lines, joined into the strings the variant substitutes. */
export function joinBlocks<K extends string>(blocks: Record<K, string | string[]>): Record<K, string> {
  const out = {} as Record<K, string>;
  for (const key of Object.keys(blocks) as K[]) {
    const block = blocks[key];
    out[key] = typeof block === "string" ? block : block.join("\n");
  }
  return out;
}

/** One K step of an outer-product register tile, unrolled over k: for every k, the thread reads rows/4 vec4s of the
 * `a` tile and cols/4 of the `b` tile (each holding four rows or columns at that k, `tile[st][k][register][position]`)
 * and adds their outer product into `acc_i_j` (f32), or with `packedF16` (f16 tiles) the products of columns 2p and
 * 2p + 1 into the packed pair `h_i_p`. */
export function outerProductStep(o: {
  k: number;
  rows: number;
  cols: number;
  aTile: string;
  aPosition: string;
  bTile: string;
  bPosition: string;
  packedF16?: boolean;
}): string[] {
  const lines: string[] = [];
  for (let k = 0; k < o.k; k++) {
    lines.push("      {");
    for (let i = 0; i < o.rows / 4; i++) lines.push(`        let a${i} = ${o.aTile}[st][${k}][${i}][${o.aPosition}];`);
    for (let j = 0; j < o.cols / 4; j++) lines.push(`        let b${j} = ${o.bTile}[st][${k}][${j}][${o.bPosition}];`);
    for (let i = 0; i < o.rows; i++) {
      const a = `a${i >> 2}.${LANES[i & 3]}`;
      if (o.packedF16) {
        for (let p = 0; p < o.cols / 2; p++) {
          lines.push(`        h_${i}_${p} = fma(vec2<f16>(${a}), b${p >> 1}.${p & 1 ? "zw" : "xy"}, h_${i}_${p});`);
        }
      } else {
        for (let j = 0; j < o.cols; j++) lines.push(`        acc_${i}_${j} = fma(${a}, b${j >> 2}.${LANES[j & 3]}, acc_${i}_${j});`);
      }
    }
    lines.push("      }");
  }
  return lines;
}
