// Normalisation family: one workgroup per group of `groupSize` contiguous values (a row, or one head of a row),
// parallel reduction in workgroup memory, all statistics in f32.
//   {{LAYER}} true:  v = (x − mean) / sqrt(var + eps), biased variance, corrected two-pass (LayerNorm)
//   {{LAYER}} false: v = x / sqrt(mean(x²) + eps)                                             (RMSNorm)
//   {{AFFINE}}: an expression of `v` and the in-group index `k`, e.g. `v`, `v * weightBf16(k)` or a modulation.
// Binding `p` holds the optional per-column parameters (weight or modulation vector) as 32-bit words, so that the
// same layout serves bf16 weights (two per word) and f32 vectors (bitcast).
// Groups are numbered over the 2-D dispatch grid: linear workgroup index = wid.x + wid.y · nwg.x.

const WG: u32 = {{WG}}u;

var<workgroup> partial: array<vec2<f32>, {{WG}}>;

// Sum of a pair of per-thread values over the workgroup (every thread gets the total).
fn reduceSum(value: vec2<f32>, lid: u32) -> vec2<f32> {
  partial[lid] = value;
  workgroupBarrier();
  var stride = WG / 2u;
  loop {
    if (stride == 0u) { break; }
    if (lid < stride) { partial[lid] = partial[lid] + partial[lid + stride]; }
    workgroupBarrier();
    stride = stride / 2u;
  }
  let total = partial[0];
  workgroupBarrier();
  return total;
}

fn f32At(i: u32) -> f32 {
  return bitcast<f32>(p[i]);
}

fn bf16At(i: u32) -> f32 {
  let word = p[i >> 1u];
  if ((i & 1u) == 0u) { return bitcast<f32>(word << 16u); }
  return bitcast<f32>(word & 0xffff0000u);
}

@compute @workgroup_size({{WG}})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let group = wid.x + wid.y * nwg.x;
  if (group >= params.groups) { return; }
  let n = params.groupSize;
  let base = group * n;
  let count = f32(n);

  var scale: f32;
  var center: f32 = 0.0;
  var residual: f32 = 0.0;
  if ({{LAYER}}) {
    var s: f32 = 0.0;
    for (var k = lid; k < n; k += WG) { s += x[base + k]; }
    center = reduceSum(vec2<f32>(s, 0.0), lid).x / count;
    // Corrected two-pass: the mean of the deviations from the rounded first mean (`residual`) is subtracted from
    // each deviation, so a row with a large offset keeps full precision: x − center is exact, and the mean is
    // never rounded to a single f32.
    var moments = vec2<f32>(0.0, 0.0);
    for (var k = lid; k < n; k += WG) {
      let d = x[base + k] - center;
      moments += vec2<f32>(d, d * d);
    }
    let sums = reduceSum(moments, lid);
    residual = sums.x / count;
    let variance = max(sums.y - sums.x * sums.x / count, 0.0) / count;
    scale = 1.0 / sqrt(variance + params.eps);
  } else {
    var q: f32 = 0.0;
    for (var k = lid; k < n; k += WG) {
      let xv = x[base + k];
      q += xv * xv;
    }
    scale = 1.0 / sqrt(reduceSum(vec2<f32>(q, 0.0), lid).x / count + params.eps);
  }

  for (var k = lid; k < n; k += WG) {
    let v = ((x[base + k] - center) - residual) * scale;
    out[base + k] = {{AFFINE}};
  }
}
