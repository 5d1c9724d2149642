// Rotary position embedding over x [S, H·D] with precomputed tables cosTable, sinTable [S, D/2]; one thread per rotated
// pair, written to a separate output. {{PAIR}} picks which two elements of a head form pair j:
//   interleaved (FLUX.2):  (2j, 2j + 1)
//   rotate_half (Qwen3):   (j, j + D/2)
//   out[a] = x[a]·cos − x[b]·sin,  out[b] = x[b]·cos + x[a]·sin
// Linear thread index = (wid.x + wid.y · nwg.x) · 256 + lid.

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let i = (wid.x + wid.y * nwg.x) * 256u + lid;
  if (i >= params.pairs) { return; }
  let halfDim = params.headDim / 2u;
  let pairsPerRow = params.heads * halfDim;
  let s = i / pairsPerRow;
  let withinRow = i % pairsPerRow;
  let h = withinRow / halfDim;
  let j = withinRow % halfDim;
  let head = s * params.heads * params.headDim + h * params.headDim;
  {{PAIR}}
  let c = cosTable[s * halfDim + j];
  let sn = sinTable[s * halfDim + j];
  let xa = x[a];
  let xb = x[b];
  out[a] = xa * c - xb * sn;
  out[b] = xb * c + xa * sn;
}
