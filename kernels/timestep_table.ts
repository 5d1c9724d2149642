// Sinusoidal timestep embedding (diffusers' get_timestep_embedding), computed on the CPU: its arguments reach
// ~1000 radians (FLUX.2 passes t = σ·1000), where WGSL's sin/cos are far too coarse.
//
// diffusers evaluates it in FLOAT32 whatever the model's dtype: the exponent comes from a float32 arange, exp is
// float32, the timesteps are cast with .float(), and sin/cos run on the float32 product; a float64 model only
// widens the result. At t ≈ 1000 that float32 product is off by up to ~3e-5 rad from the exact angle, so the
// default "float32" arithmetic rounds (Math.fround) after every step diffusers rounds, to reproduce the
// reference's numbers; "float64" gives the exact embedding of the same formula.

export interface TimestepEmbeddingOptions {
  /** Output [cos …, sin …] instead of [sin …, cos …] (FLUX.2: true). */
  flipSinToCos?: boolean;
  /** Frequencies are exp(−ln(maxPeriod)·i / (half − downscaleFreqShift)) (FLUX.2: 0). */
  downscaleFreqShift?: number;
  maxPeriod?: number;
  /** "float32": the arithmetic of diffusers (default); "float64": the exact values of the formula. */
  arithmetic?: "float32" | "float64";
}

/** The embedding of one timestep t, dim channels: half = ⌊dim/2⌋, f_i = exp(−ln(maxPeriod)·i / (half − shift)),
 * [sin(t·f_i) …, cos(t·f_i) …], flipped to [cos …, sin …] by flipSinToCos, an odd dim padded with one zero. */
export function timestepEmbedding(t: number, dim = 256, options: TimestepEmbeddingOptions = {}): Float32Array {
  const { flipSinToCos = true, downscaleFreqShift = 0, maxPeriod = 10000, arithmetic = "float32" } = options;
  if (!Number.isFinite(t)) throw new Error(`timestepEmbedding: timestep must be finite, got ${t}`);
  if (!Number.isInteger(dim) || dim < 2) throw new Error(`timestepEmbedding: dim must be an integer ≥ 2, got ${dim}`);
  if (!(maxPeriod > 0)) throw new Error(`timestepEmbedding: maxPeriod must be positive, got ${maxPeriod}`);
  const half = Math.floor(dim / 2);
  if (half - downscaleFreqShift === 0) {
    throw new Error(`timestepEmbedding: downscaleFreqShift ${downscaleFreqShift} leaves no frequency spacing for ${half} frequencies`);
  }
  if (arithmetic !== "float32" && arithmetic !== "float64") throw new Error(`timestepEmbedding: unknown arithmetic "${arithmetic}"`);
  const round = arithmetic === "float32" ? Math.fround : (x: number) => x;
  const negLog = round(-Math.log(maxPeriod));
  const divisor = round(half - downscaleFreqShift);
  const time = round(t);
  const out = new Float32Array(dim);
  const [sinAt, cosAt] = flipSinToCos ? [half, 0] : [0, half];
  for (let i = 0; i < half; i++) {
    const exponent = round(round(negLog * i) / divisor);
    const angle = round(time * round(Math.exp(exponent)));
    out[sinAt + i] = Math.sin(angle);
    out[cosAt + i] = Math.cos(angle);
  }
  return out;
}
