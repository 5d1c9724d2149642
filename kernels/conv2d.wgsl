// 2-D convolution as an implicit GEMM: out[co, p] = Σ_k W[co, k] · X̂[k, p] + bias[co] (+ residual[co, p]),
// where k = (ci, dy, dx) runs over Cin·KH·KW and X̂ is the im2col view of the input, never materialised.
// Activations are channel-major f32 rows: x[ci, iy·w + ix], out[co, oy·wo + ox].
// Weights [Cout, Cin, KH, KW] and bias are bf16 pairs in u32 words or plain f32, chosen by W_BF16 / B_BF16.
// UPSAMPLE reads the input through a nearest ×2 upsampling (virtual size 2h × 2w) without storing it.
// Padding is given as (top, left); bottom/right padding follows from the output size (reads outside are 0),
// which covers both the symmetric pad-1 convolution and the (0,1,0,1) padding of the stride-2 downsample.
//
// Tiling: a workgroup of 256 threads computes TC output channels × TP pixels, K consumed BK at a time through
// workgroup memory. Threads form NTC × NTP; thread (tc, tp) holds RC × RP accumulators: the channel quads
// v·NTC + tc (v < RC/4) and pixel quads u·NTP + tp (u < RP/4), so that neighbouring threads read neighbouring
// vec4s of the staged tiles. TP divides 256, so every thread stages the same pixel column at every step and
// computes that pixel's coordinates once.

const TC: u32 = {{TC}}u;
const TP: u32 = {{TP}}u;
const RC: u32 = {{RC}}u;
const RP: u32 = {{RP}}u;
const BK: u32 = {{BK}}u;
const NTC: u32 = TC / RC;
const NTP: u32 = TP / RP;
const KH: u32 = {{KH}}u;
const KW: u32 = {{KW}}u;
const STRIDE: u32 = {{STRIDE}}u;
const UPSAMPLE: bool = {{UPSAMPLE}};
const W_BF16: bool = {{W_BF16}};
const B_BF16: bool = {{B_BF16}};
const RESIDUAL: bool = {{RESIDUAL}};

var<workgroup> wTile: array<vec4<f32>, BK * TC / 4u>; // [BK][TC/4]
var<workgroup> xTile: array<vec4<f32>, BK * TP / 4u>; // [BK][TP/4]

fn widen(word: u32, i: u32) -> f32 {
  if ((i & 1u) == 0u) { return bitcast<f32>(word << 16u); }
  return bitcast<f32>(word & 0xffff0000u);
}

fn loadWeight(i: u32) -> f32 {
  if (W_BF16) { return widen(weight[i >> 1u], i); }
  return bitcast<f32>(weight[i]);
}

fn loadBias(i: u32) -> f32 {
  if (B_BF16) { return widen(bias[i >> 1u], i); }
  return bitcast<f32>(bias[i]);
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let tileP = (wid.x + wid.y * nwg.x) * TP;
  let tileC = wid.z * TC;
  let tp = lid % NTP;
  let tc = lid / NTP;

  // The pixel this thread stages: its top-left input position (in the possibly upsampled input).
  let stageP = tileP + lid % TP;
  let stageValid = stageP < params.pixels;
  let oy = stageP / params.wo;
  let ox = stageP - oy * params.wo;
  let baseY = i32(oy * STRIDE) - params.padTop;
  let baseX = i32(ox * STRIDE) - params.padLeft;
  var vh = params.h;
  var vw = params.w;
  if (UPSAMPLE) { vh = 2u * params.h; vw = 2u * params.w; }
  let plane = params.h * params.w;

  var acc: array<vec4<f32>, RC * RP / 4u>;
  for (var i = 0u; i < RC * RP / 4u; i++) { acc[i] = vec4<f32>(0.0); }

  for (var k0 = 0u; k0 < params.kTotal; k0 += BK) {
    // Weights: consecutive threads read consecutive k of one output channel.
    for (var s = 0u; s < BK * TC / 256u; s++) {
      let e = lid + s * 256u;
      let m = e / BK;
      let kk = e % BK;
      let co = tileC + m;
      let k = k0 + kk;
      var wv = 0.0;
      if (co < params.cout && k < params.kTotal) { wv = loadWeight(co * params.kTotal + k); }
      wTile[kk * (TC / 4u) + m / 4u][m % 4u] = wv;
    }
    // Input patches: consecutive threads read consecutive pixels of one k.
    for (var s = 0u; s < BK * TP / 256u; s++) {
      let kk = (lid + s * 256u) / TP;
      let k = k0 + kk;
      var xv = 0.0;
      if (stageValid && k < params.kTotal) {
        let ci = k / (KH * KW);
        let r = k - ci * (KH * KW);
        let dy = r / KW;
        let vy = baseY + i32(dy);
        let vx = baseX + i32(r - dy * KW);
        if (vy >= 0 && vx >= 0 && u32(vy) < vh && u32(vx) < vw) {
          var iy = u32(vy);
          var ix = u32(vx);
          if (UPSAMPLE) { iy = iy >> 1u; ix = ix >> 1u; }
          xv = x[ci * plane + iy * params.w + ix];
        }
      }
      let n = lid % TP;
      xTile[kk * (TP / 4u) + n / 4u][n % 4u] = xv;
    }
    workgroupBarrier();
    for (var kk = 0u; kk < BK; kk++) {
      var b: array<vec4<f32>, RP / 4u>;
      for (var u = 0u; u < RP / 4u; u++) { b[u] = xTile[kk * (TP / 4u) + u * NTP + tp]; }
      for (var v = 0u; v < RC / 4u; v++) {
        let a = wTile[kk * (TC / 4u) + v * NTC + tc];
        for (var c = 0u; c < 4u; c++) {
          for (var u = 0u; u < RP / 4u; u++) {
            let i = (v * 4u + c) * (RP / 4u) + u;
            acc[i] = fma(vec4<f32>(a[c]), b[u], acc[i]);
          }
        }
      }
    }
    workgroupBarrier();
  }

  for (var v = 0u; v < RC / 4u; v++) {
    for (var c = 0u; c < 4u; c++) {
      let co = tileC + (v * NTC + tc) * 4u + c;
      if (co >= params.cout) { continue; }
      let bv = loadBias(co);
      for (var u = 0u; u < RP / 4u; u++) {
        let quad = acc[(v * 4u + c) * (RP / 4u) + u];
        for (var j = 0u; j < 4u; j++) {
          let p = tileP + (u * NTP + tp) * 4u + j;
          if (p >= params.pixels) { continue; }
          let o = co * params.pixels + p;
          var y = quad[j] + bv;
          if (RESIDUAL) { y = y + residual[o]; }
          out[o] = y;
        }
      }
    }
  }
}
