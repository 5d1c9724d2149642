// Nearest-neighbour ×2 upsampling of a channel-major image: out[c, oy, ox] = x[c, oy / 2, ox / 2],
// x is [C, h·w], out is [C, 2h·2w]. One thread per output value.

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let i = (wid.x + wid.y * nwg.x) * 256u + lid;
  if (i >= params.count) { return; }
  let wo = 2u * params.w;
  let plane = 4u * params.h * params.w;
  let c = i / plane;
  let r = i - c * plane;
  let oy = r / wo;
  let ox = r - oy * wo;
  out[i] = x[c * params.h * params.w + (oy >> 1u) * params.w + (ox >> 1u)];
}
