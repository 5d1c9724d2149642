// Row patching, the primitive of activation patching and steering. For row i < count and column c:
//   replace: dst[index[i], c] = src[i, c]
//   add:     dst[index[i], c] = dst[index[i], c] + alpha * src[i, c]
// control[0] switches the patch on (1) or off (0) for a run, so a static plan can patch only selected steps;
// control[1] is alpha. Rows of `index` outside 0..rows-1 of dst are skipped.

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let i = (wid.x + wid.y * nwg.x) * 256u + lid;
  if (i >= params.count * params.cols || control[0] == 0.0) { return; }
  let r = i / params.cols;
  let c = i % params.cols;
  let row = index[r];
  if (row >= params.dst_rows) { return; }
  let d = row * params.cols + c;
  {{BODY}}
}
