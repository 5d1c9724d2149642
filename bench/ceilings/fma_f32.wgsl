// f32 multiply-add rate: every thread runs ACC independent vec4 chains acc = fma(acc, b, c) for params.iters steps
// (b and c come from the uniforms, so nothing folds at compile time) and writes their sum, so nothing is dropped.

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let thread = gid.x + gid.y * nwg.x * 256u;
  let b = vec4<f32>(params.b);
  let start = f32(thread % 7u) * 0.01;
  var a0 = vec4<f32>(start, start + 1.0, start + 2.0, start + 3.0);
  var a1 = a0 + vec4<f32>(4.0);
  var a2 = a0 + vec4<f32>(8.0);
  var a3 = a0 + vec4<f32>(12.0);
  let c0 = vec4<f32>(params.c);
  let c1 = c0 * 2.0;
  let c2 = c0 * 3.0;
  let c3 = c0 * 4.0;
  // Eight steps per pass (params.iters is a multiple of 8), so the loop's own counter and branch are about 2% of
  // the instructions issued rather than 20%.
  for (var i = 0u; i < params.iters; i += 8u) {
    a0 = fma(a0, b, c0);
    a1 = fma(a1, b, c1);
    a2 = fma(a2, b, c2);
    a3 = fma(a3, b, c3);
    a0 = fma(a0, b, c0);
    a1 = fma(a1, b, c1);
    a2 = fma(a2, b, c2);
    a3 = fma(a3, b, c3);
    a0 = fma(a0, b, c0);
    a1 = fma(a1, b, c1);
    a2 = fma(a2, b, c2);
    a3 = fma(a3, b, c3);
    a0 = fma(a0, b, c0);
    a1 = fma(a1, b, c1);
    a2 = fma(a2, b, c2);
    a3 = fma(a3, b, c3);
    a0 = fma(a0, b, c0);
    a1 = fma(a1, b, c1);
    a2 = fma(a2, b, c2);
    a3 = fma(a3, b, c3);
    a0 = fma(a0, b, c0);
    a1 = fma(a1, b, c1);
    a2 = fma(a2, b, c2);
    a3 = fma(a3, b, c3);
    a0 = fma(a0, b, c0);
    a1 = fma(a1, b, c1);
    a2 = fma(a2, b, c2);
    a3 = fma(a3, b, c3);
    a0 = fma(a0, b, c0);
    a1 = fma(a1, b, c1);
    a2 = fma(a2, b, c2);
    a3 = fma(a3, b, c3);
  }
  out[thread] = a0 + a1 + a2 + a3;
}
