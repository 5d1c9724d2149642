// 2-D convolution as an implicit GEMM: out[co, p] = Σ_k W[co, k] · X̂[k, p] + bias[co] (+ residual[co, p]),
// where k = (ci, dy, dx) runs over Cin·KH·KW and X̂ is the im2col view of the input, never materialised.
// Activations are channel-major f32 rows: x[ci, iy·w + ix], out[co, oy·wo + ox].
// Weights [Cout, Cin, KH, KW] and bias are bf16 pairs in u32 words or plain f32, chosen by W_BF16 / B_BF16.
// UPSAMPLE reads the input through a nearest ×2 upsampling (virtual size 2h × 2w) without storing it.
// Padding is given as (top, left); bottom/right padding follows from the output size (reads outside are 0),
// which covers both the symmetric pad-1 convolution and the (0,1,0,1) padding of the stride-2 downsample.
//
// Tiling: a workgroup computes TM output channels × TN pixels; each of its 256 threads holds a 4×4 block of
// accumulators (channels ty + 16·i, pixels tx + 16·j). K is consumed in slices of BK through shared memory.

const TM: u32 = 64u;
const TN: u32 = 64u;
const BK: u32 = 16u;
const KH: u32 = {{KH}}u;
const KW: u32 = {{KW}}u;
const STRIDE: u32 = {{STRIDE}}u;
const UPSAMPLE: bool = {{UPSAMPLE}};
const W_BF16: bool = {{W_BF16}};
const B_BF16: bool = {{B_BF16}};
const RESIDUAL: bool = {{RESIDUAL}};

var<workgroup> wTile: array<f32, 1024>; // [BK][TM]
var<workgroup> xTile: array<f32, 1024>; // [BK][TN]

fn loadWeight(i: u32) -> f32 {
  if (W_BF16) {
    let word = weight[i >> 1u];
    if ((i & 1u) == 0u) { return bitcast<f32>(word << 16u); }
    return bitcast<f32>(word & 0xffff0000u);
  }
  return bitcast<f32>(weight[i]);
}

fn loadBias(i: u32) -> f32 {
  if (B_BF16) {
    let word = bias[i >> 1u];
    if ((i & 1u) == 0u) { return bitcast<f32>(word << 16u); }
    return bitcast<f32>(word & 0xffff0000u);
  }
  return bitcast<f32>(bias[i]);
}

// One element of the im2col matrix: row k = (ci, dy, dx), column p = output pixel.
fn loadPatch(k: u32, p: u32) -> f32 {
  if (k >= params.kTotal || p >= params.pixels) { return 0.0; }
  let ci = k / (KH * KW);
  let r = k - ci * (KH * KW);
  let dy = r / KW;
  let dx = r - dy * KW;
  let oy = p / params.wo;
  let ox = p - oy * params.wo;
  let vy = i32(oy * STRIDE + dy) - params.padTop;
  let vx = i32(ox * STRIDE + dx) - params.padLeft;
  var vh = params.h;
  var vw = params.w;
  if (UPSAMPLE) { vh = 2u * params.h; vw = 2u * params.w; }
  if (vy < 0 || vx < 0 || u32(vy) >= vh || u32(vx) >= vw) { return 0.0; }
  var iy = u32(vy);
  var ix = u32(vx);
  if (UPSAMPLE) { iy = iy >> 1u; ix = ix >> 1u; }
  return x[ci * params.h * params.w + iy * params.w + ix];
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let tileP = (wid.x + wid.y * nwg.x) * TN;
  let tileC = wid.z * TM;
  let tx = lid % 16u;
  let ty = lid / 16u;
  var acc: array<f32, 16>;
  for (var i = 0u; i < 16u; i++) { acc[i] = 0.0; }

  for (var k0 = 0u; k0 < params.kTotal; k0 += BK) {
    for (var s = 0u; s < 4u; s++) {
      // Weights: consecutive threads read consecutive k of one output channel.
      let e = lid + s * 256u;
      let m = e / BK;
      let kk = e % BK;
      let co = tileC + m;
      let k = k0 + kk;
      var wv = 0.0;
      if (co < params.cout && k < params.kTotal) { wv = loadWeight(co * params.kTotal + k); }
      wTile[kk * TM + m] = wv;
      // Input patches: consecutive threads read consecutive pixels of one k.
      let kx = e / TN;
      let n = e % TN;
      xTile[kx * TN + n] = loadPatch(k0 + kx, tileP + n);
    }
    workgroupBarrier();
    for (var kk = 0u; kk < BK; kk++) {
      var a: array<f32, 4>;
      var b: array<f32, 4>;
      for (var i = 0u; i < 4u; i++) { a[i] = wTile[kk * TM + ty + 16u * i]; }
      for (var j = 0u; j < 4u; j++) { b[j] = xTile[kk * TN + tx + 16u * j]; }
      for (var i = 0u; i < 4u; i++) {
        for (var j = 0u; j < 4u; j++) { acc[i * 4u + j] = fma(a[i], b[j], acc[i * 4u + j]); }
      }
    }
    workgroupBarrier();
  }

  for (var i = 0u; i < 4u; i++) {
    let co = tileC + ty + 16u * i;
    if (co >= params.cout) { continue; }
    let bv = loadBias(co);
    for (var j = 0u; j < 4u; j++) {
      let p = tileP + tx + 16u * j;
      if (p >= params.pixels) { continue; }
      let o = co * params.pixels + p;
      var v = acc[i * 4u + j] + bv;
      if (RESIDUAL) { v = v + residual[o]; }
      out[o] = v;
    }
  }
}
