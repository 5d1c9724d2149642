// Workgroup-memory read bandwidth: 256 threads fill a 16 KiB tile of vec4s, then each reads four vec4s per step for
// params.iters steps, neighbouring threads at neighbouring addresses (no bank conflicts), and writes the sum.

var<workgroup> tile: array<vec4<f32>, 1024>;

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let group = wid.x + wid.y * nwg.x;
  for (var j = 0u; j < 4u; j++) {
    let e = lid + 256u * j;
    tile[e] = vec4<f32>(f32(e), f32(e) * 0.5, f32(group % 5u), 1.0);
  }
  workgroupBarrier();
  var s0 = vec4<f32>(0.0);
  var s1 = vec4<f32>(0.0);
  var s2 = vec4<f32>(0.0);
  var s3 = vec4<f32>(0.0);
  for (var i = 0u; i < params.iters; i++) {
    let e = (lid + i * params.stride) & 255u;
    s0 += tile[e];
    s1 += tile[e + 256u];
    s2 += tile[e + 512u];
    s3 += tile[e + 768u];
  }
  out[group * 256u + lid] = s0 + s1 + s2 + s3;
}
