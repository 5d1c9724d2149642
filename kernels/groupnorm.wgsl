// GroupNorm over a channel-major image x[C, HW]: group g is the contiguous range of C/G channels × HW values.
// y = (x − mean_g) / sqrt(var_g + eps) · gamma[c] + beta[c], optionally followed by SiLU; statistics in f32.
// Each group is cut into `chunks` pieces, one workgroup per (chunk, group) in every pass, so large images keep the
// whole GPU busy. Three passes over the same bindings ({{PASS}} picks one), two-pass variance for accuracy:
//   sum:    stats[g·chunks + k]             = Σ x over chunk k of group g
//   sqdev:  stats[G·chunks + g·chunks + k]  = Σ (x − mean_g)² over that chunk   (mean_g from the partial sums)
//   apply:  out = normalised x                                                  (mean_g, var_g from the partials)
// gamma/beta are bf16 pairs in u32 words or f32 (AFFINE_BF16).

const AFFINE_BF16: bool = {{AFFINE_BF16}};
const SILU: bool = {{SILU}};

var<workgroup> scratch: array<f32, 256>;

fn widen(word: u32, i: u32) -> f32 {
  if ((i & 1u) == 0u) { return bitcast<f32>(word << 16u); }
  return bitcast<f32>(word & 0xffff0000u);
}

fn loadGamma(i: u32) -> f32 {
  if (AFFINE_BF16) { return widen(gamma[i >> 1u], i); }
  return bitcast<f32>(gamma[i]);
}

fn loadBeta(i: u32) -> f32 {
  if (AFFINE_BF16) { return widen(beta[i >> 1u], i); }
  return bitcast<f32>(beta[i]);
}

// Sum of one value per thread across the workgroup; every thread gets the result.
fn workgroupSum(v: f32, lid: u32) -> f32 {
  scratch[lid] = v;
  workgroupBarrier();
  for (var s = 128u; s > 0u; s = s >> 1u) {
    if (lid < s) { scratch[lid] = scratch[lid] + scratch[lid + s]; }
    workgroupBarrier();
  }
  let total = scratch[0];
  workgroupBarrier();
  return total;
}

// Sum of the per-chunk partials of group g stored at stats[base + g·chunks ..] (chunks ≤ 256).
fn groupTotal(base: u32, g: u32, lid: u32) -> f32 {
  var v = 0.0;
  if (lid < params.chunks) { v = stats[base + g * params.chunks + lid]; }
  return workgroupSum(v, lid);
}

fn pass_sum(g: u32, k: u32, lid: u32, start: u32, end: u32) {
  var s = 0.0;
  for (var i = start + lid; i < end; i += 256u) { s += x[i]; }
  let total = workgroupSum(s, lid);
  if (lid == 0u) { stats[g * params.chunks + k] = total; }
}

fn pass_sqdev(g: u32, k: u32, lid: u32, start: u32, end: u32) {
  let mean = groupTotal(0u, g, lid) / f32(params.groupSize);
  var s = 0.0;
  for (var i = start + lid; i < end; i += 256u) {
    let d = x[i] - mean;
    s += d * d;
  }
  let total = workgroupSum(s, lid);
  if (lid == 0u) { stats[params.groups * params.chunks + g * params.chunks + k] = total; }
}

fn pass_apply(g: u32, k: u32, lid: u32, start: u32, end: u32) {
  let n = f32(params.groupSize);
  let mean = groupTotal(0u, g, lid) / n;
  let variance = groupTotal(params.groups * params.chunks, g, lid) / n;
  let rstd = 1.0 / sqrt(variance + params.eps);
  for (var i = start + lid; i < end; i += 256u) {
    let c = i / params.hw;
    var y = (x[i] - mean) * rstd * loadGamma(c) + loadBeta(c);
    if (SILU) { y = y / (1.0 + exp(-y)); }
    out[i] = y;
  }
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let k = wid.x;
  let g = wid.y;
  let groupStart = g * params.groupSize;
  let start = groupStart + min(k * params.chunkLen, params.groupSize);
  let end = groupStart + min((k + 1u) * params.chunkLen, params.groupSize);
  {{PASS}}(g, k, lid, start, end);
}
