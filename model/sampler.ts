// FLUX.2 klein's flow-matching schedule and Euler sampler, reproducing diffusers' FlowMatchEulerDiscreteScheduler
// with dynamic (exponential) shifting and the empirical μ of the klein pipeline. The scheduler works in float32,
// so every intermediate is rounded to float32 here as well.

import { Rng } from "../runtime/random.ts";

const f = Math.fround;

/** μ as a function of the number of noise tokens and steps (diffusers' compute_empirical_mu). */
export function empiricalMu(imageSeqLen: number, steps: number): number {
  const a1 = 8.73809524e-05, b1 = 1.89833333;
  const a2 = 0.00016927, b2 = 0.45666666;
  if (imageSeqLen > 4300) return a2 * imageSeqLen + b2;
  const m200 = a2 * imageSeqLen + b2;
  const m10 = a1 * imageSeqLen + b1;
  const a = (m200 - m10) / 190.0;
  const b = m200 - 200.0 * a;
  return a * steps + b;
}

export interface Schedule {
  mu: number;
  /** steps + 1 values, the last one 0 (float32 values). */
  sigmas: number[];
  /** steps values, 1000·σ (float32 values); the transformer's timestep input. */
  timesteps: number[];
}

/** Shifted sigmas for `steps` Euler steps over `imageSeqLen` noise tokens. */
export function flowSchedule(steps: number, imageSeqLen: number, muOverride?: number): Schedule {
  if (!Number.isInteger(steps) || steps < 1) throw new Error(`steps must be a positive integer, got ${steps}`);
  if (!Number.isInteger(imageSeqLen) || imageSeqLen < 1) {
    throw new Error(`image sequence length must be a positive integer, got ${imageSeqLen}`);
  }
  const mu = muOverride ?? empiricalMu(imageSeqLen, steps);
  const expMu = Math.exp(mu);
  const sigmas: number[] = [];
  for (let i = 0; i < steps; i++) {
    // np.linspace(1, 1/steps, steps), then cast to float32 by the scheduler.
    const lin = steps === 1 ? 1 : 1 + (i * (1 / steps - 1)) / (steps - 1);
    const t = f(lin);
    // time_shift (exponential): e^μ / (e^μ + (1/t − 1)), evaluated on a float32 array.
    const inv = f(f(1 / t) - 1);
    sigmas.push(f(f(expMu) / f(f(expMu) + inv)));
  }
  const timesteps = sigmas.map((s) => f(s * 1000));
  sigmas.push(0);
  return { mu, sigmas, timesteps };
}

/** Seeded Gaussian initial latents, packed as tokens [h·w, channels] (the documented generator of runtime/random.ts). */
export function seededNoise(seed: number, tokens: number, channels: number): Float32Array {
  return new Rng(seed).normalArray(tokens * channels);
}

/** [C, h, w] channel-major latents → packed tokens [h·w, C] (diffusers' _pack_latents). */
export function packLatents(chw: Float32Array, channels: number, h: number, w: number): Float32Array {
  if (chw.length !== channels * h * w) throw new Error(`latents hold ${chw.length} values, expected ${channels}×${h}×${w}`);
  const out = new Float32Array(chw.length);
  for (let c = 0; c < channels; c++) {
    for (let p = 0; p < h * w; p++) out[p * channels + c] = chw[c * h * w + p];
  }
  return out;
}

/** Inverse of packLatents. */
export function unpackLatents(tokens: Float32Array, channels: number, h: number, w: number): Float32Array {
  const out = new Float32Array(tokens.length);
  for (let c = 0; c < channels; c++) {
    for (let p = 0; p < h * w; p++) out[c * h * w + p] = tokens[p * channels + c];
  }
  return out;
}
