// 2-D convolution as an implicit GEMM: out[co, p] = Σ_k W[co, k] · X̂[k, p] + bias[co] (+ residual[co, p]),
// where k = (ci, dy, dx) runs over Cin·KH·KW and X̂ is the im2col view of the input, never materialised.
// Activations are channel-major f32 rows: x[ci, iy·w + ix], out[co, oy·wo + ox].
// Weights [Cout, Cin, KH, KW] and bias are bf16 pairs in u32 words or plain f32, chosen by W_BF16 / B_BF16.
// UPSAMPLE reads the input through a nearest ×2 upsampling (virtual size 2h × 2w) without storing it.
// Padding is given as (top, left); bottom/right padding follows from the output size (reads outside are 0),
// which covers both the symmetric pad-1 convolution and the (0,1,0,1) padding of the stride-2 downsample.
//
// Tiling: a workgroup of 256 threads computes TC output channels × TP pixels and advances along K in steps of BK,
// with the weight and patch tiles of a step in workgroup memory, two stages deep, so that one barrier per step
// suffices and the global loads of the next step are in flight while the current one is computed. Both tiles are
// stored transposed, one vec4 holding four channels (or four consecutive pixels) at one k:
//   w_tile[stage][k][i][tc] = W[tileC + 4·(i·NTC + tc) + 0..3, k0 + k]
//   x_tile[stage][k][j][tp] = X̂[k0 + k, tileP + 4·(j·NTP + tp) + 0..3]
// Thread (tc, tp) = (lid / NTP, lid % NTP) owns channels 4·(i·NTC + tc) + r and pixels 4·(j·NTP + tp) + c
// (i < RC/4, j < RP/4) and per k does RC·RP multiply-adds, an outer product of one column of each tile.
// A staging unit is four channels (or four pixels) at one k: four scalar loads into one vec4 register, stored as a
// whole vec4. Unit u of a tile is quad u % (T/4), k u / (T/4), so neighbouring threads store neighbouring vec4s and
// read neighbouring pixels; since T/4 divides 256, a thread's pixel quad is the same at every step, and its
// coordinates (the im2col gather's top-left corner) are computed once.
//
// The per-thread code (tile declarations, accumulators, staging registers, fetches, stores, the multiply-adds of
// one step, the writes) is generated unrolled by kernels/conv2d.ts with one named variable per register: private
// arrays indexed inside loops are placed in off-chip local memory by the GPU compilers this runs through. The tiles
// are nested arrays indexed [stage][k][register][thread position], so that every index of the inner loop is a
// constant or the thread's own position.
//
// The "direct" form (software adapters) stages nothing: the thread of the tiled form, in a workgroup of NTC·NTP
// threads, reads the weights of its own channels (bf16: the words of a whole step at once) and gathers its own pixel
// quads with read_x at every k of a step, straight from the buffers, in the generated COMPUTE block; FETCH and STORE
// are then empty and the barriers vanish (see step_barrier).
//
// Variant values: TC TP RC RP BK FORM (tile), KH KW STRIDE UPSAMPLE W_BF16 B_BF16 RESIDUAL; generated from the tile
// when the shader is rendered: TILED, TILES, POSITION (tc, tp and the pixel corners the thread gathers from),
// DECLARE, FETCH, STORE, COMPUTE, WRITE.

const TC: u32 = {{TC}}u;
const TP: u32 = {{TP}}u;
const RC: u32 = {{RC}}u;
const RP: u32 = {{RP}}u;
const BK: u32 = {{BK}}u;
const NTC: u32 = TC / RC;
const NTP: u32 = TP / RP;
// 256 in the tiled form.
const THREADS: u32 = NTC * NTP;
// False in the direct form, which shares no tiles: its shader then holds no barrier at all (see step_barrier).
const TILED: bool = {{TILED}};
const KH: u32 = {{KH}}u;
const KW: u32 = {{KW}}u;
const STRIDE: u32 = {{STRIDE}}u;
const UPSAMPLE: bool = {{UPSAMPLE}};
const W_BF16: bool = {{W_BF16}};
const B_BF16: bool = {{B_BF16}};
const RESIDUAL: bool = {{RESIDUAL}};

{{TILES}}

fn widen(word: u32, i: u32) -> f32 {
  return bitcast<f32>(select(word & 0xffff0000u, word << 16u, (i & 1u) == 0u));
}

fn load_weight(i: u32) -> f32 {
  if (W_BF16) { return widen(weight[i >> 1u], i); }
  return bitcast<f32>(weight[i]);
}

fn load_bias(i: u32) -> f32 {
  if (B_BF16) { return widen(bias[i >> 1u], i); }
  return bitcast<f32>(bias[i]);
}

// Weights of channels co .. co + 3 (clamped to the last channel; those results are never written) at k; zero
// where k is past K.
fn read_w(co: u32, k: u32) -> vec4<f32> {
  if (k >= params.kTotal) { return vec4<f32>(0.0); }
  let last = params.cout - 1u;
  let kt = params.kTotal;
  return vec4<f32>(
    load_weight(min(co, last) * kt + k),
    load_weight(min(co + 1u, last) * kt + k),
    load_weight(min(co + 2u, last) * kt + k),
    load_weight(min(co + 3u, last) * kt + k),
  );
}

// Pixel coordinates a thread stages: the top-left corner of the patch of output pixel p in the (possibly
// upsampled) input, (x, y). Pixels past the image repeat the last one (their results are never written).
fn corner(p: u32) -> vec2<i32> {
  let q = min(p, params.pixels - 1u);
  let oy = q / params.wo;
  let ox = q - oy * params.wo;
  return vec2<i32>(i32(ox * STRIDE) - params.padLeft, i32(oy * STRIDE) - params.padTop);
}

// X̂[k, p] for the pixel whose patch corner is c: zero in the padding and where k is past K (valid false).
fn gather(c: vec2<i32>, dy: u32, dx: u32, base: u32, valid: bool) -> f32 {
  let vy = c.y + i32(dy);
  let vx = c.x + i32(dx);
  var vh = params.h;
  var vw = params.w;
  if (UPSAMPLE) { vh = 2u * params.h; vw = 2u * params.w; }
  if (!valid || vy < 0 || vx < 0 || u32(vy) >= vh || u32(vx) >= vw) { return 0.0; }
  var iy = u32(vy);
  var ix = u32(vx);
  if (UPSAMPLE) { iy = iy >> 1u; ix = ix >> 1u; }
  return x[base + iy * params.w + ix];
}

// Four pixels' patches at k; the corners come from the thread's pixel quad.
fn read_x(c0: vec2<i32>, c1: vec2<i32>, c2: vec2<i32>, c3: vec2<i32>, k: u32) -> vec4<f32> {
  let valid = k < params.kTotal;
  let ci = k / (KH * KW);
  let r = k - ci * (KH * KW);
  let dy = r / KW;
  let dx = r - dy * KW;
  let base = ci * params.h * params.w;
  return vec4<f32>(gather(c0, dy, dx, base, valid), gather(c1, dy, dx, base, valid), gather(c2, dy, dx, base, valid), gather(c3, dy, dx, base, valid));
}

// A software adapter (llvmpipe) runs a shader that holds any barrier as coroutines, one per SIMD batch, switched at
// every barrier. A barrier under a false constant is removed when the shader is compiled.
fn step_barrier() {
  if (TILED) {
    workgroupBarrier();
  }
}

fn write_out(co: u32, p: u32, bv: f32, acc: f32) {
  if (co < params.cout && p < params.pixels) {
    let o = co * params.pixels + p;
    var y = acc + bv;
    if (RESIDUAL) { y = y + residual[o]; }
    out[o] = y;
  }
}

@compute @workgroup_size(THREADS)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let tileP = (wid.x + wid.y * nwg.x) * TP;
  let tileC = wid.z * TC;

{{POSITION}}

{{DECLARE}}

  let steps = (params.kTotal + BK - 1u) / BK;

  // Prologue: step 0 into stage 0.
  {
    let k0 = 0u;
{{FETCH}}
  }
  {
    let base = 0u;
{{STORE}}
  }
  step_barrier();

  // Step s computes from stage s & 1 while the global loads of step s + 1 are in flight; those land in the other
  // stage, whose last readers (step s - 1) all passed the barrier that ended the previous iteration.
  for (var s = 0u; s < steps; s++) {
    let more = s + 1u < steps;
    if (more) {
      let k0 = (s + 1u) * BK;
{{FETCH}}
    }
    {
      let st = s & 1u;
{{COMPUTE}}
    }
    if (more) {
      let base = (s + 1u) & 1u;
{{STORE}}
    }
    step_barrier();
  }

{{WRITE}}
}
