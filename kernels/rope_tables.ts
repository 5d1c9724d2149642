// RoPE cos/sin tables, computed on the CPU with the same arithmetic as the reference implementations and
// uploaded as f32 inputs. The angles reach hundreds of radians, where WGSL's sin/cos (about 2^-11 absolute
// accuracy) would be far outside the 1e-5 relative tolerance, so they are never evaluated on the GPU.

export interface RopeTables {
  /** [S, pairs] row-major: cos of the angle of pair j at position s. */
  cos: Float32Array;
  /** [S, pairs] row-major. */
  sin: Float32Array;
}

/** FLUX.2's 4-axis RoPE (diffusers Flux2PosEmbed, get_1d_rotary_pos_embed with use_real and
 * repeat_interleave_real, freqs_dtype float64): for axis a of dimension d, pair j < d/2 has frequency
 * 1 / theta^(2j/d) and angle ids[s, a] · frequency, all in float64; the reference then rounds cos and sin to
 * float32, as these tables do. Pairs run over the axes in order (axis 0's d/2 pairs first), so pair p rotates
 * elements (2p, 2p+1) of each head: use the "interleaved" layout.
 * @param ids position ids [S, axesDims.length] row-major (FLUX.2: (t, h, w, l) per token). */
export function fluxRopeTables(ids: Float64Array, S: number, axesDims: number[] = [32, 32, 32, 32], theta = 2000): RopeTables {
  if (!Number.isInteger(S) || S <= 0) throw new Error(`fluxRopeTables: sequence length must be a positive integer, got ${S}`);
  const axes = axesDims.length;
  if (ids.length !== S * axes) {
    throw new Error(`fluxRopeTables: ids must be [${S}, ${axes}] (${S * axes} values), got ${ids.length} values`);
  }
  for (const d of axesDims) {
    if (!Number.isInteger(d) || d <= 0 || d % 2) {
      throw new Error(`fluxRopeTables: axis dimensions must be positive even integers, got ${axesDims}`);
    }
  }
  const frequencies = axesDims.map((d) => {
    const f = new Float64Array(d / 2);
    for (let j = 0; j < d / 2; j++) f[j] = 1 / theta ** ((2 * j) / d);
    return f;
  });
  const pairs = axesDims.reduce((a, d) => a + d / 2, 0);
  const cos = new Float32Array(S * pairs), sin = new Float32Array(S * pairs);
  for (let s = 0; s < S; s++) {
    let p = s * pairs;
    for (let a = 0; a < axes; a++) {
      // The reference converts ids to float32 before the float64 outer product.
      const position = Math.fround(ids[s * axes + a]);
      for (const f of frequencies[a]) {
        const angle = position * f;
        cos[p] = Math.cos(angle);
        sin[p] = Math.sin(angle);
        p++;
      }
    }
  }
  return { cos, sin };
}

/** Qwen3's RoPE (transformers Qwen3RotaryEmbedding, default rope type) for positions 0..S-1, pairs (i, i + D/2):
 * use the "rotate_half" layout. transformers computes these tables in FLOAT32 even for a float64 model:
 * inv_freq = 1 / theta^(arange(0, D, 2) / D) is created in float32 (a float64 model only widens the stored
 * values), and forward() casts inv_freq and the positions with .float() and evaluates freqs = inv_freq · position,
 * cos and sin inside an autocast-disabled float32 region. Each of those float32 operations is reproduced here by
 * rounding (Math.fround) after it; the angle's float32 error (up to ~3e-5 rad at position 511) is part of the
 * reference's result, so computing it in float64 would not match the reference. */
export function qwenRopeTables(S: number, headDim: number, theta = 1e6): RopeTables {
  if (!Number.isInteger(S) || S <= 0) throw new Error(`qwenRopeTables: sequence length must be a positive integer, got ${S}`);
  if (!Number.isInteger(headDim) || headDim <= 0 || headDim % 2) {
    throw new Error(`qwenRopeTables: head dimension must be a positive even integer, got ${headDim}`);
  }
  const pairs = headDim / 2;
  const f = Math.fround;
  const invFreq = new Float64Array(pairs);
  for (let j = 0; j < pairs; j++) {
    const exponent = f((2 * j) / headDim);
    invFreq[j] = f(1 / f(f(theta) ** exponent));
  }
  const cos = new Float32Array(S * pairs), sin = new Float32Array(S * pairs);
  for (let s = 0; s < S; s++) {
    const position = f(s);
    for (let j = 0; j < pairs; j++) {
      const angle = f(invFreq[j] * position);
      cos[s * pairs + j] = Math.cos(angle);
      sin[s * pairs + j] = Math.sin(angle);
    }
  }
  return { cos, sin };
}
