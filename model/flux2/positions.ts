// Position ids of the four RoPE axes (T, H, W, L) for every row of the transformer's sequence:
// text token i → (0, 0, 0, i); noise token at (h, w) → (0, h, w, 0); token (h, w) of reference k → (10·(k+1), h, w, 0).

export interface Grid {
  /** Latent rows (image height / 16). */
  h: number;
  /** Latent columns (image width / 16). */
  w: number;
}

export function textIds(textRows: number): Float64Array {
  const ids = new Float64Array(textRows * 4);
  for (let i = 0; i < textRows; i++) ids[i * 4 + 3] = i;
  return ids;
}

export function gridIds(grid: Grid, t: number): Float64Array {
  const ids = new Float64Array(grid.h * grid.w * 4);
  let p = 0;
  for (let y = 0; y < grid.h; y++) {
    for (let x = 0; x < grid.w; x++, p++) {
      ids[p * 4] = t;
      ids[p * 4 + 1] = y;
      ids[p * 4 + 2] = x;
    }
  }
  return ids;
}

/** Ids of [noise ; reference 0 ; reference 1 ; …]. */
export function imageIds(noise: Grid, refs: Grid[]): Float64Array {
  const parts = [gridIds(noise, 0), ...refs.map((g, k) => gridIds(g, 10 * (k + 1)))];
  const out = new Float64Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

export function concatIds(a: Float64Array, b: Float64Array): Float64Array {
  const out = new Float64Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}
