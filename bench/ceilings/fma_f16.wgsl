// Packed-f16 multiply-add rate: as fma_f32.wgsl with vec4<f16> chains (two packed pairs each), widened to f32 for the
// write.

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let thread = gid.x + gid.y * nwg.x * 256u;
  let b = vec4<f16>(f16(params.b));
  let start = f16(thread % 7u) * 0.01h;
  var a0 = vec4<f16>(start, start + 0.25h, start + 0.5h, start + 0.75h);
  var a1 = a0 + vec4<f16>(0.125h);
  var a2 = a0 + vec4<f16>(0.0625h);
  var a3 = a0 + vec4<f16>(0.03125h);
  let c0 = vec4<f16>(f16(params.c));
  let c1 = c0 * 2.0h;
  let c2 = c0 * 3.0h;
  let c3 = c0 * 4.0h;
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
  out[thread] = vec4<f32>(a0) + vec4<f32>(a1) + vec4<f32>(a2) + vec4<f32>(a3);
}
