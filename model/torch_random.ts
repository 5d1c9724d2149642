// The initial noise of a diffusers pipeline run with a CPU generator, drawn without PyTorch:
// `torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed), dtype=dtype)`, value for value.
//
// What PyTorch's CPU generator does (ATen: CPUGeneratorImpl, MT19937RNGEngine.h, DistributionsHelper.h,
// TransformationHelper.h, native/cpu/DistributionTemplates.h):
// - The engine is the standard 32-bit Mersenne Twister, its state initialised from the low 32 bits of the seed
//   (a seed ≥ 2³² draws what its low 32 bits draw). `random()` is one output; `random64()` is two, the first one
//   the high half.
// - A uniform in [0, 1) keeps the low `digits` bits of one draw and scales them by 2^-digits: 24 bits (one draw) for
//   float32, 8 bits (one draw) for bfloat16, 53 bits of random64() (two draws) for float64.
// - randn on a contiguous tensor of at least 16 values first fills every element with a uniform, then applies
//   Box–Muller to blocks of 16 — element j and j + 8 of a block (j < 8) become r·cos θ and r·sin θ with
//   r = √(−2 ln(1 − u_j)), θ = 2π·u_{j+8}. When the count is not a multiple of 16, 16 fresh uniforms are drawn into
//   the last 16 positions (overwriting values the last whole block already produced) and transformed the same way.
//   The arithmetic is done in the tensor's own type: float32 in float32; bfloat16 rounds to bfloat16 after every
//   operation (each math function returns bfloat16); float64 in float64.
// - float32 has a second path, taken when ATen runs its AVX2 kernels (ATEN_CPU_CAPABILITY=avx2, or a CPU without
//   AVX-512): ln, sin and cos come from the Cephes-style polynomials of avx_mathfun.h, evaluated in float32, with the
//   multiply–adds the compiler fused into FMAs (which ones was measured against torch: see cephesLogF32 and
//   cephesSinCosF32). `float32Path: "avx2"` reproduces it; "scalar" is the plain kernels' path (the C library's
//   logf/cosf/sinf, which are not always correctly rounded: a few values differ from torch's in the last bit or
//   two). ATen's AVX-512 kernels vectorise the scalar path with less accurate functions: not reproduced.
// - Fewer than 16 values: each comes from normal_distribution<double> — two random64() uniforms u1, u2,
//   r = √(−2 ln(1 − u2)), θ = 2π·u1, r·cos θ returned and r·sin θ kept for the next value — rounded to the type.
//
// The tests compare with values that torch itself produced (tests/fixtures/protocol/torch_randn.py writes them):
// bit-identical for bfloat16, the AVX2 float32 path and fewer than 16 values; the scalar float32 path and float64
// may differ in the last bit or two where the C library's and V8's log/sin/cos round differently.
//
// The bfloat16 path is that of PyTorch up to at least 2.9: later releases (pytorch#179834) compute bfloat16 noise
// in float32 and round once; regenerate the fixture with such a torch before relying on it there.
//
// diffusers' Flux2KleinPipeline draws latents of shape [1, 128, H/16, W/16] in the dtype of its prompt embeddings
// (the pipeline's torch_dtype: bfloat16 in the published study) and packs them to tokens [(H/16)·(W/16), 128].

import { packLatents } from "./sampler.ts";

export type TorchNoiseDtype = "float32" | "bfloat16" | "float64";
export type TorchFloat32Path = "scalar" | "avx2";

/** PyTorch's at::mt19937 (the standard MT19937 with 32-bit output), seeded from the low 32 bits of the seed. */
export class TorchMt19937 {
  private readonly state = new Uint32Array(624);
  private index = 624;

  constructor(seed: number | bigint) {
    const s = typeof seed === "bigint" ? seed : BigInt(seed);
    if (s < 0n || s >= 1n << 64n) throw new Error(`torch seed ${seed} must be in [0, 2^64)`);
    const st = this.state;
    st[0] = Number(s & 0xffffffffn);
    for (let j = 1; j < 624; j++) {
      const prev = st[j - 1] ^ (st[j - 1] >>> 30);
      st[j] = (Math.imul(1812433253, prev) + j) >>> 0;
    }
  }

  private twist(): void {
    const st = this.state;
    for (let i = 0; i < 624; i++) {
      const y = (st[i] & 0x80000000) | (st[(i + 1) % 624] & 0x7fffffff);
      st[i] = st[(i + 397) % 624] ^ (y >>> 1) ^ (y & 1 ? 0x9908b0df : 0);
    }
    this.index = 0;
  }

  /** One 32-bit output (torch's `random()`). */
  next32(): number {
    if (this.index >= 624) this.twist();
    let y = this.state[this.index++];
    y ^= y >>> 11;
    y ^= (y << 7) & 0x9d2c5680;
    y ^= (y << 15) & 0xefc60000;
    y ^= y >>> 18;
    return y >>> 0;
  }

  /** Uniform in [0, 1) from random64() (53 bits: the low 21 bits of the first draw, then all of the second). */
  uniform53(): number {
    const hi = this.next32(), lo = this.next32();
    return ((hi & 0x1fffff) * 4294967296 + lo) / 9007199254740992;
  }
}

// ---- rounding helpers --------------------------------------------------------------------------------------------

const f32 = Math.fround;
const scratchF32 = new Float32Array(1);
const scratchU32 = new Uint32Array(scratchF32.buffer);

/** Round a float32 value to bfloat16 (nearest, ties to even; NaN stays NaN), returned as a number. */
export function roundBf16(x: number): number {
  scratchF32[0] = x;
  const u = scratchU32[0];
  if ((u & 0x7fffffff) > 0x7f800000) return NaN;
  scratchU32[0] = ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) << 16;
  return scratchF32[0];
}

/** float64 → float32 → bfloat16, as a C++ conversion of a double to c10::BFloat16 does. */
const bf = (x: number) => roundBf16(f32(x));

/** The float32 next to x (a float32 value) in the direction of `towards`. */
function nextF32(x: number, towards: number): number {
  if (x === 0) return towards > 0 ? 1.401298464324817e-45 : -1.401298464324817e-45;
  scratchF32[0] = x;
  scratchU32[0] += (towards > x) === (x > 0) ? 1 : -1;
  return scratchF32[0];
}

/** fma(a, b, c) in float32, correctly rounded: a·b is exact in float64 (two 24-bit significands); the float64 sum
 * s = a·b + c carries an error e (TwoSum), which decides the rounding only when s lies exactly halfway between two
 * float32 values. */
function fmaF32(a: number, b: number, c: number): number {
  const p = a * b, s = p + c;
  const r = f32(s);
  if (r === s) return r;
  const bb = s - p;
  const e = (p - (s - bb)) + (c - bb);
  if (e === 0) return r;
  const other = nextF32(r, s);
  if (Math.abs(s - r) !== Math.abs(other - s)) return r;
  return (e > 0) === (other > r) ? other : r;
}

const TWO_PI = 2 * Math.PI;
/** 2π rounded to float32 (the AVX2 path's constant). */
const TWO_PI_F32 = f32(TWO_PI);

// ---- avx_mathfun.h: Cephes-style float32 ln and sincos, one lane -------------------------------------------------

const LOG_P = [
  7.0376836292e-2,
  -1.1514610310e-1,
  1.1676998740e-1,
  -1.2420140846e-1,
  1.4249322787e-1,
  -1.6668057665e-1,
  2.0000714765e-1,
  -2.4999993993e-1,
  3.3333331174e-1,
].map(f32);
const LOG_Q1 = f32(-2.12194440e-4), LOG_Q2 = f32(0.693359375), SQRTHF = f32(0.707106781186547524);
const MIN_NORM_POS = 1.1754943508222875e-38;

/** log256_ps for one positive float32 lane (the normal sampler only passes u in (0, 1]), with the compiled kernel's
 * fusions: the Horner steps, y·z + e·q1 (fusing y·z), −z·0.5 + y and e·q2 + x. */
function cephesLogF32(x: number): number {
  if (x <= 0) return NaN;
  x = Math.max(x, MIN_NORM_POS);
  scratchF32[0] = x;
  const bits = scratchU32[0];
  let e = f32(((bits >>> 23) - 0x7f) + 1);
  scratchU32[0] = (bits & ~0x7f800000) | 0x3f000000; // mantissa with the exponent of 0.5
  x = scratchF32[0];
  const small = x < SQRTHF;
  const tmp = small ? x : 0;
  x = f32(x - 1);
  if (small) e = f32(e - 1);
  x = f32(x + tmp);
  const z = f32(x * x);
  let y = LOG_P[0];
  for (let i = 1; i < LOG_P.length; i++) y = fmaF32(y, x, LOG_P[i]);
  y = f32(y * x);
  y = fmaF32(y, z, f32(e * LOG_Q1));
  y = fmaF32(-z, 0.5, y);
  x = f32(x + y);
  return fmaF32(e, LOG_Q2, x);
}

const DP1 = f32(-0.78515625), DP2 = f32(-2.4187564849853515625e-4), DP3 = f32(-3.77489497744594108e-8);
const SIN_P = [-1.9515295891e-4, 8.3321608736e-3, -1.6666654611e-1].map(f32);
const COS_P = [2.443315711809948e-5, -1.388731625493765e-3, 4.166664568298827e-2].map(f32);
const FOPI = f32(1.27323954473516);

/** sincos256_ps for one float32 lane, with the compiled kernel's fusions: the range reduction, the Horner steps,
 * c·z − z·0.5 (fusing c·z) and s·x + x. */
function cephesSinCosF32(x: number): { sin: number; cos: number } {
  const negative = x < 0 || Object.is(x, -0);
  x = Math.abs(x);
  let j = Math.trunc(f32(x * FOPI)) | 0;
  j = (j + 1) & ~1;
  const y = f32(j);
  const sinSwap = (j & 4) !== 0;
  const polyIsCos = (j & 2) === 0; // mask set: the sine takes the sine polynomial, the cosine the cosine one
  const cosNegative = ((~(j - 2)) & 4) !== 0;
  x = fmaF32(y, DP1, x);
  x = fmaF32(y, DP2, x);
  x = fmaF32(y, DP3, x);
  const z = f32(x * x);
  let c = COS_P[0];
  c = fmaF32(c, z, COS_P[1]);
  c = fmaF32(c, z, COS_P[2]);
  c = f32(c * z);
  c = fmaF32(c, z, -f32(z * 0.5));
  c = f32(c + 1);
  let s = SIN_P[0];
  s = fmaF32(s, z, SIN_P[1]);
  s = fmaF32(s, z, SIN_P[2]);
  s = f32(s * z);
  s = fmaF32(s, x, x);
  // The selected polynomial plus +0 (the masked-out one), as the vector code adds them.
  let sin = (polyIsCos ? s : c) + 0;
  let cos = (polyIsCos ? c : s) + 0;
  if (negative !== sinSwap) sin = -sin;
  if (cosNegative) cos = -cos;
  return { sin, cos };
}

// ---- Box–Muller blocks of 16 ---------------------------------------------------------------------------------------

function block16(data: Float64Array | Float32Array, at: number, dtype: TorchNoiseDtype, path: TorchFloat32Path): void {
  // Every result is `value · std + mean` with std 1 and mean +0: adding +0 turns a −0 into +0, as torch's does.
  for (let j = 0; j < 8; j++) {
    const a = at + j, b = at + j + 8;
    const u2 = data[b];
    if (dtype === "float64") {
      const radius = Math.sqrt(-2 * Math.log(1 - data[a]));
      const theta = TWO_PI * u2;
      data[a] = radius * Math.cos(theta) + 0;
      data[b] = radius * Math.sin(theta) + 0;
    } else if (dtype === "bfloat16") {
      const u1 = roundBf16(1 - data[a]);
      const radius = roundBf16(Math.sqrt(roundBf16(-2 * roundBf16(f32(Math.log(u1))))));
      const theta = bf(TWO_PI * u2);
      data[a] = roundBf16(radius * roundBf16(f32(Math.cos(theta)))) + 0;
      data[b] = roundBf16(radius * roundBf16(f32(Math.sin(theta)))) + 0;
    } else if (path === "avx2") {
      const u1 = f32(1 - data[a]);
      const radius = f32(Math.sqrt(f32(-2 * cephesLogF32(u1))));
      const { sin, cos } = cephesSinCosF32(f32(TWO_PI_F32 * u2));
      data[a] = f32(radius * cos) + 0;
      data[b] = f32(radius * sin) + 0;
    } else {
      const u1 = f32(1 - data[a]);
      const radius = f32(Math.sqrt(f32(-2 * f32(Math.log(u1)))));
      const theta = f32(TWO_PI * u2);
      data[a] = f32(radius * f32(Math.cos(theta))) + 0;
      data[b] = f32(radius * f32(Math.sin(theta))) + 0;
    }
  }
}

function uniformOf(rng: TorchMt19937, dtype: TorchNoiseDtype): number {
  if (dtype === "float64") return rng.uniform53();
  if (dtype === "bfloat16") return (rng.next32() & 0xff) / 256;
  return (rng.next32() & 0xffffff) / 16777216;
}

export interface TorchRandnOptions {
  /** Default float32. */
  dtype?: TorchNoiseDtype;
  /** float32 only: which of PyTorch's two CPU code paths to reproduce (default "scalar": AVX-512 or plain kernels). */
  float32Path?: TorchFloat32Path;
}

/** `torch.randn(numel values, generator=torch.Generator("cpu").manual_seed(seed), dtype)`, flattened in C order. Values
 * are exact in the dtype (bfloat16 values widened to float64 losslessly). */
export function torchRandn(seed: number | bigint, numel: number, options: TorchRandnOptions = {}): Float64Array {
  const dtype = options.dtype ?? "float32";
  const path = options.float32Path ?? "scalar";
  if (!["float32", "bfloat16", "float64"].includes(dtype)) {
    throw new Error(`torch noise dtype "${dtype}": expected float32, bfloat16 or float64`);
  }
  if (path !== "scalar" && path !== "avx2") throw new Error(`torch float32 path "${path}": expected scalar or avx2`);
  if (!Number.isSafeInteger(numel) || numel < 0) throw new Error(`torch noise: element count ${numel} must be a whole number ≥ 0`);
  if (typeof seed === "number" && !Number.isSafeInteger(seed)) throw new Error(`torch seed ${seed} must be a whole number`);
  const rng = new TorchMt19937(seed);
  const out = new Float64Array(numel);
  const round = dtype === "float64" ? (x: number) => x : dtype === "bfloat16" ? bf : f32;
  if (numel < 16) {
    // normal_distribution<double>, one Box–Muller pair per two values.
    for (let i = 0; i < numel; i += 2) {
      const u1 = rng.uniform53(), u2 = rng.uniform53();
      const r = Math.sqrt(-2 * Math.log1p(-u2));
      const theta = TWO_PI * u1;
      out[i] = round(r * Math.cos(theta) + 0);
      if (i + 1 < numel) out[i + 1] = round(r * Math.sin(theta) + 0);
    }
    return out;
  }
  for (let i = 0; i < numel; i++) out[i] = uniformOf(rng, dtype);
  for (let i = 0; i + 16 <= numel; i += 16) block16(out, i, dtype, path);
  if (numel % 16) {
    const at = numel - 16;
    for (let i = 0; i < 16; i++) out[at + i] = uniformOf(rng, dtype);
    block16(out, at, dtype, path);
  }
  return out;
}

export interface TorchCpuNoiseOptions extends TorchRandnOptions {
  /** Latent channels before packing (FLUX.2: the transformer's in_channels, 128). */
  channels?: number;
}

/** FLUX.2 klein's initial latents as diffusers draws them with a CPU generator, packed as model/sampler.ts packs
 * latents: tokens [(height/16)·(width/16), channels], float32 values (exact bfloat16 values when dtype is bfloat16).
 * The published study's pipeline runs in bfloat16: pass `dtype: "bfloat16"` to reproduce its noise. */
export function torchCpuNoise(seed: number | bigint, width: number, height: number, options: TorchCpuNoiseOptions = {}): Float32Array {
  const channels = options.channels ?? 128;
  for (const [name, v] of [["width", width], ["height", height]] as const) {
    if (!Number.isInteger(v) || v < 16 || v % 16) throw new Error(`torch noise: ${name} ${v} must be a positive multiple of 16`);
  }
  if (!Number.isInteger(channels) || channels < 1) throw new Error(`torch noise: channels ${channels} must be a positive integer`);
  const h = height / 16, w = width / 16;
  const chw = Float32Array.from(torchRandn(seed, channels * h * w, options));
  return packLatents(chw, channels, h, w);
}
