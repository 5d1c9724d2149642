// Embedding lookup: out[s, d] = table[ids[s], d], widened to f32. The table is bound as 32-bit words so one
// layout serves bf16 tables (two values per word, element 2i in the low half) and f32 tables; {{READ}} picks
// the accessor. An id past the end of the table reads the last row instead of reading out of bounds.
// Linear thread index = (wid.x + wid.y · nwg.x) · 256 + lid.

fn f32At(e: u32) -> f32 {
  return bitcast<f32>(table[e]);
}

fn bf16At(e: u32) -> f32 {
  let word = table[e >> 1u];
  if ((e & 1u) == 0u) { return bitcast<f32>(word << 16u); }
  return bitcast<f32>(word & 0xffff0000u);
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let i = (wid.x + wid.y * nwg.x) * 256u + lid;
  if (i >= params.count) { return; }
  let s = i / params.dim;
  let d = i % params.dim;
  let row = min(ids[s], params.vocab - 1u);
  out[i] = {{READ}}(row * params.dim + d);
}
