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

/** Throws unless warpCols threads along a row of a gridCols × gridRows thread grid make whole 32-thread warps. */
export function checkWarpCols(warpCols: number, gridCols: number, gridRows: number, name: string): void {
  const rows = 32 / warpCols;
  if (![1, 2, 4, 8, 16, 32].includes(warpCols) || gridCols % warpCols !== 0 || gridRows % rows !== 0) {
    throw new Error(
      `${name}: warpCols must be a power of two dividing 32 and the ${gridCols} thread columns, with 32/warpCols dividing the ${gridRows} thread rows; got ${warpCols}`,
    );
  }
}

/** WGSL lines that set tx and ty (the thread's column and row in a thread grid `cols` wide) from lid: row-major, or
 * in blocks of warpCols × 32/warpCols threads, one 32-thread warp each. Per k, a thread reads the tile vec4 of its row
 * and of its column, so a warp reads as many distinct vec4s as it spans rows plus columns: 8 × 4 threads read 12,
 * where a warp along 16-thread rows reads 18, and fewer distinct vec4s take fewer workgroup-memory transactions. */
export function threadPositionLines(warpCols: number | undefined, cols: string): string {
  if (!warpCols) return `  let tx = lid % ${cols};\n  let ty = lid / ${cols};`;
  const rows = 32 / warpCols, warpsPerRow = `(${cols} / ${warpCols}u)`;
  return `  let tx = lid % ${warpCols}u + ${warpCols}u * ((lid / 32u) % ${warpsPerRow});
  let ty = (lid / ${warpCols}u) % ${rows}u + ${rows}u * (lid / 32u / ${warpsPerRow});`;
}
