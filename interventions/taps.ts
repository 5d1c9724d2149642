// Which tap holds a block's text rows, and helpers to move row subsets between host arrays.

/** Tap whose rows 0..textRows-1 are block `block`'s text-token outputs. */
export function textTapOfBlock(block: string): string {
  if (block.startsWith("double.")) return `${block}.txt`;
  if (block.startsWith("single.")) return block;
  throw new Error(`"${block}" is not a block name (double.N or single.N)`);
}

/** Rows `positions` of a row-major host array with `cols` columns. */
export function takeRows(data: Float32Array, cols: number, positions: readonly number[]): Float32Array {
  const out = new Float32Array(positions.length * cols);
  positions.forEach((p, i) => {
    if ((p + 1) * cols > data.length) throw new Error(`row ${p} is outside the ${data.length / cols} rows given`);
    out.set(data.subarray(p * cols, (p + 1) * cols), i * cols);
  });
  return out;
}

/** Every tap point of the transformer graph, for checking a spec before anything runs. */
export function knownTaps(blocks: readonly string[]): string[] {
  const taps = ["x_embedder", "context_embedder", "temb", "output"];
  for (const b of blocks) {
    if (b.startsWith("double.")) taps.push(`${b}.txt`, `${b}.img`);
    else taps.push(b);
    for (const p of ["q", "k", "v", "out"]) taps.push(`${b}.attn.${p}`);
  }
  return taps;
}

export function checkTap(tap: string, blocks: readonly string[], where: string): void {
  const taps = knownTaps(blocks);
  if (!taps.includes(tap)) {
    throw new Error(
      `${where}: unknown tap point "${tap}" (e.g. ${blocks[0]}.txt, ${blocks[blocks.length - 1]}, context_embedder, ${blocks[0]}.attn.q)`,
    );
  }
}
