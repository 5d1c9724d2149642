// Row and column movement over f32 matrices: one thread per element (or per vec4 of four elements when every
// width and offset is a multiple of 4; the kernel declaration then binds the arrays as vec4<f32> and all
// widths, strides and offsets below are in vec4 units). {{BODY}} is the operation:
//   block copy:  dst[dstOffset + r·dstStride + c] = src[srcOffset + r·srcStride + c]   (rows, row slices,
//                column slices and column placement are all rectangular blocks)
//   scatter:     dst[dstIndex[r], c] = src[srcIndex[r], c], or += alpha · src[…] (indices outside the tensors
//                are skipped)
//   gather:      dst[r, c] = src[srcIndex[r], c] (an index past the end reads the last row)
// r is the block row (or index entry), c the column inside the block; count = rows · cols.
// Linear thread index = (wid.x + wid.y · nwg.x) · 256 + lid.

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let i = (wid.x + wid.y * nwg.x) * 256u + lid;
  if (i >= params.count) { return; }
  let r = i / params.cols;
  let c = i % params.cols;
  {{BODY}}
}
