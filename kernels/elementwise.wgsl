// Elementwise family. {{OP}} selects the operation; all arithmetic in f32.
//   add:        out = a + b
//   mul:        out = a * b
//   scale:      out = a * alpha
//   silu:       out = a * sigmoid(a)
//   swiglu:     out[r, c] = silu(a[r, c]) * a[r, c + cols]  (a has 2·cols columns; first half gated)
//   modulate:   out[r, c] = (1 + b[scaleOff + c]) * a[r, c] + b[shiftOff + c]   (b is a modulation vector)
//   gated_add:  out[r, c] = out[r, c] + b[gateOff + c] * a[r, c]                (in-place residual)
//   gated_sum:  out[r, c] = base[r, c] + b[gateOff + c] * a[r, c]                  (residual into a new tensor)
//   axpy:       out = out + b[off0] * a                                         (in place, scalar from a tensor)
// Linear index i covers rows × cols; cols is the row width of `out`.

fn sigmoid(x: f32) -> f32 {
  return 1.0 / (1.0 + exp(-x));
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let i = (wid.x + wid.y * nwg.x) * 256u + lid;
  if (i >= params.count) { return; }
  let r = i / params.cols;
  let c = i % params.cols;
  {{BODY}}
}
