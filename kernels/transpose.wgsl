// Transpose of a row-major matrix x [rows, cols] into out [cols, rows], optionally adding residual [cols, rows]:
// the bridge between channel-major images [C, H·W] and token-major activations [H·W, C].
// A workgroup moves one 32×32 tile through shared memory so that both the reads and the writes are coalesced;
// each of its 256 threads moves 4 values. Tiles are numbered linearly (wid.x + wid.y · nwg.x).

const TILE: u32 = 32u;
const RESIDUAL: bool = {{RESIDUAL}};

var<workgroup> tile: array<f32, 1056>; // 32 × 33: the extra column avoids bank conflicts

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let t = wid.x + wid.y * nwg.x;
  if (t >= params.tiles) { return; }
  let r0 = (t / params.colTiles) * TILE;
  let c0 = (t % params.colTiles) * TILE;
  let lx = lid % TILE;
  let ly = lid / TILE;
  for (var s = 0u; s < 4u; s++) {
    let r = r0 + ly + 8u * s;
    let c = c0 + lx;
    var v = 0.0;
    if (r < params.rows && c < params.cols) { v = x[r * params.cols + c]; }
    tile[(ly + 8u * s) * 33u + lx] = v;
  }
  workgroupBarrier();
  for (var s = 0u; s < 4u; s++) {
    let c = c0 + ly + 8u * s;
    let r = r0 + lx;
    if (r < params.rows && c < params.cols) {
      let o = c * params.rows + r;
      var v = tile[lx * 33u + ly + 8u * s];
      if (RESIDUAL) { v = v + residual[o]; }
      out[o] = v;
    }
  }
}
