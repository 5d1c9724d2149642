// The transformer's sinusoidal timestep features, reproducing diffusers' get_timestep_embedding numerics: it works
// in float32 even inside a float64 model (frequencies, the product t·f and sin/cos are float32), so each of those
// steps is rounded to float32 here. Computed on the CPU: WGSL's sin/cos are too coarse for arguments near 1000.

const f = Math.fround;

/** Features for timestep t (= σ·1000): [cos(t·f_i) …, sin(t·f_i) …], f_i = exp(−ln(10000)·i/half). */
export function timestepFeatures(t: number, channels: number, maxPeriod = 10000): Float32Array {
  if (channels % 2) throw new Error(`timestep features need an even channel count, got ${channels}`);
  const half = channels / 2;
  const out = new Float32Array(channels);
  const negLog = f(-Math.log(maxPeriod));
  const tf = f(t);
  for (let i = 0; i < half; i++) {
    const exponent = f(f(negLog * i) / half);
    const arg = f(tf * f(Math.exp(exponent)));
    out[i] = Math.cos(arg);
    out[half + i] = Math.sin(arg);
  }
  return out;
}
