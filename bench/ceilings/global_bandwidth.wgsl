// Global-memory bandwidth: a copy of params.count vec4s, each thread moving one per grid-wide stride (one read and
// one write per element).

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let threads = nwg.x * nwg.y * 256u;
  for (var e = gid.x + gid.y * nwg.x * 256u; e < params.count; e += threads) {
    out[e] = src[e];
  }
}
