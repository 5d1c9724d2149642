// Matrix product y[M, N] = act(x[M, K] · W[N, K]ᵀ + bias[N]) (+ y when accumulating), the nn.Linear layout.
// x is f32; W is bf16 (packed pairs) or f32; arithmetic and accumulation are f32.
//
// Tiling: a workgroup computes a BM×BN tile of y, each thread a TM×TN register tile made of vec4 chunks spread
// over the tile (thread ty owns rows (i·WGY + ty)·4 .. +3 for chunk i, likewise columns), so that the reads of
// workgroup memory in the inner loop are vec4s without bank conflicts. K advances in steps of BK: the x tile and
// the W tile are both stored K-major ("transposed") in workgroup memory, two stages deep, so that one barrier per
// step suffices and the global loads of the next step are in flight while the current one is computed.
// Elements travel in groups of 4 consecutive k: read_x / read_w return one group as a vec4 (zeros outside the
// matrix), bf16 already widened, so the widening happens once per element.
//
// Variant values: BM BN BK TM TN (tile configuration), READ_X / READ_W (bodies of the group readers, vectorised
// or element-wise), HAS_BIAS, BIAS_BF16, ACCUMULATE, ACT (identity | silu | gelu_tanh).

const BM: u32 = {{BM}}u;
const BN: u32 = {{BN}}u;
const BK: u32 = {{BK}}u;
const TM: u32 = {{TM}}u;
const TN: u32 = {{TN}}u;
const HAS_BIAS: bool = {{HAS_BIAS}};
const BIAS_BF16: bool = {{BIAS_BF16}};
const ACCUMULATE: bool = {{ACCUMULATE}};

const WGX: u32 = BN / TN;
const WGY: u32 = BM / TM;
const THREADS: u32 = WGX * WGY;
const BM4: u32 = BM / 4u;
const BN4: u32 = BN / 4u;
const BK4: u32 = BK / 4u;
const TM4: u32 = TM / 4u;
const TN4: u32 = TN / 4u;
// Groups of 4 k-consecutive elements per tile, and per thread (the last round may be partial).
const X_GROUPS: u32 = BM * BK4;
const W_GROUPS: u32 = BN * BK4;
const X_LOADS: u32 = (X_GROUPS + THREADS - 1u) / THREADS;
const W_LOADS: u32 = (W_GROUPS + THREADS - 1u) / THREADS;
const X_EXACT: bool = X_LOADS * THREADS == X_GROUPS;
const W_EXACT: bool = W_LOADS * THREADS == W_GROUPS;
// Consecutive workgroups walk down GROUP_M row tiles before moving to the next column tile (L2 reuse of W).
const GROUP_M: u32 = 8u;

// [stage · BK + k][row / 4] holds rows row..row+3 of column k of the tile.
var<workgroup> x_tile: array<array<vec4<f32>, BM4>, 2u * BK>;
var<workgroup> w_tile: array<array<vec4<f32>, BN4>, 2u * BK>;

fn bf16_lo(word: u32) -> f32 {
  return bitcast<f32>(word << 16u);
}

fn bf16_hi(word: u32) -> f32 {
  return bitcast<f32>(word & 0xffff0000u);
}

// x[row, k .. k+3]; zero where row ≥ M or k ≥ K.
fn read_x(row: u32, k: u32) -> vec4<f32> {
  {{READ_X}}
}

// W[n, k .. k+3]; zero where n ≥ N or k ≥ K.
fn read_w(n: u32, k: u32) -> vec4<f32> {
  {{READ_W}}
}

fn read_bias(n: u32) -> f32 {
  if (BIAS_BF16) {
    let word = bias[n >> 1u];
    return select(bf16_hi(word), bf16_lo(word), (n & 1u) == 0u);
  }
  return bitcast<f32>(bias[n]);
}

fn identity(v: f32) -> f32 {
  return v;
}

fn silu(v: f32) -> f32 {
  return v / (1.0 + exp(-v));
}

// 0.5·v·(1 + tanh(√(2/π)·(v + 0.044715·v³))), with tanh written through exp of a non-positive argument so
// that large |v| cannot overflow.
fn gelu_tanh(v: f32) -> f32 {
  let u = 0.7978845608028654 * (v + 0.044715 * v * v * v);
  let e = exp(-2.0 * abs(u));
  let t = sign(u) * (1.0 - e) / (1.0 + e);
  return 0.5 * v * (1.0 + t);
}

// Group g of a tile covers tile row g % BM (or column g % BN) and k-group g / BM: consecutive threads take
// consecutive rows, so the transposed stores of store_step hit distinct banks.
fn fetch_step(xg: ptr<function, array<vec4<f32>, X_LOADS>>, wg: ptr<function, array<vec4<f32>, W_LOADS>>, lid: u32, row0: u32,
              col0: u32, k0: u32) {
  for (var l = 0u; l < X_LOADS; l++) {
    let g = lid + l * THREADS;
    if (X_EXACT || g < X_GROUPS) {
      (*xg)[l] = read_x(row0 + g % BM, k0 + (g / BM) * 4u);
    }
  }
  for (var l = 0u; l < W_LOADS; l++) {
    let g = lid + l * THREADS;
    if (W_EXACT || g < W_GROUPS) {
      (*wg)[l] = read_w(col0 + g % BN, k0 + (g / BN) * 4u);
    }
  }
}

// Scatter the fetched groups, transposed, into the stage that starts at row `base` of the tiles.
fn store_step(xg: ptr<function, array<vec4<f32>, X_LOADS>>, wg: ptr<function, array<vec4<f32>, W_LOADS>>, lid: u32, base: u32) {
  for (var l = 0u; l < X_LOADS; l++) {
    let g = lid + l * THREADS;
    if (!X_EXACT && g >= X_GROUPS) {
      break;
    }
    let r = g % BM;
    let kk = base + (g / BM) * 4u;
    let v = (*xg)[l];
    x_tile[kk][r >> 2u][r & 3u] = v.x;
    x_tile[kk + 1u][r >> 2u][r & 3u] = v.y;
    x_tile[kk + 2u][r >> 2u][r & 3u] = v.z;
    x_tile[kk + 3u][r >> 2u][r & 3u] = v.w;
  }
  for (var l = 0u; l < W_LOADS; l++) {
    let g = lid + l * THREADS;
    if (!W_EXACT && g >= W_GROUPS) {
      break;
    }
    let c = g % BN;
    let kk = base + (g / BN) * 4u;
    let v = (*wg)[l];
    w_tile[kk][c >> 2u][c & 3u] = v.x;
    w_tile[kk + 1u][c >> 2u][c & 3u] = v.y;
    w_tile[kk + 2u][c >> 2u][c & 3u] = v.z;
    w_tile[kk + 3u][c >> 2u][c & 3u] = v.w;
  }
}

@compute @workgroup_size(THREADS)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let M = params.M;
  let N = params.N;
  let K = params.K;
  let tiles_m = (M + BM - 1u) / BM;
  let tiles_n = (N + BN - 1u) / BN;
  let linear = wid.x + wid.y * nwg.x;
  if (linear >= tiles_m * tiles_n) {
    return;
  }
  let per_group = GROUP_M * tiles_n;
  let first_m = (linear / per_group) * GROUP_M;
  let group_rows = min(tiles_m - first_m, GROUP_M);
  let tile_m = first_m + (linear % per_group) % group_rows;
  let tile_n = (linear % per_group) / group_rows;
  let row0 = tile_m * BM;
  let col0 = tile_n * BN;

  let tx = lid % WGX;
  let ty = lid / WGX;

  var acc: array<vec4<f32>, TM * TN4>;
  var xg: array<vec4<f32>, X_LOADS>;
  var wg: array<vec4<f32>, W_LOADS>;
  var a: array<vec4<f32>, TM4>;
  var b: array<vec4<f32>, TN4>;

  let steps = (K + BK - 1u) / BK;

  // Prologue: step 0 into stage 0.
  fetch_step(&xg, &wg, lid, row0, col0, 0u);
  store_step(&xg, &wg, lid, 0u);
  workgroupBarrier();

  // Step s computes from stage s & 1 while the global loads of step s + 1 are in flight; those land in the other
  // stage, whose last readers (step s - 1) all passed the barrier that ended the previous iteration.
  for (var s = 0u; s < steps; s++) {
    let more = s + 1u < steps;
    if (more) {
      fetch_step(&xg, &wg, lid, row0, col0, (s + 1u) * BK);
    }
    let base = (s & 1u) * BK;
    for (var k = 0u; k < BK; k++) {
      for (var i = 0u; i < TM4; i++) {
        a[i] = x_tile[base + k][i * WGY + ty];
      }
      for (var j = 0u; j < TN4; j++) {
        b[j] = w_tile[base + k][j * WGX + tx];
      }
      for (var i = 0u; i < TM4; i++) {
        for (var r = 0u; r < 4u; r++) {
          let av = vec4<f32>(a[i][r]);
          for (var j = 0u; j < TN4; j++) {
            let idx = (i * 4u + r) * TN4 + j;
            acc[idx] = fma(av, b[j], acc[idx]);
          }
        }
      }
    }
    if (more) {
      store_step(&xg, &wg, lid, ((s + 1u) & 1u) * BK);
    }
    workgroupBarrier();
  }

  for (var i = 0u; i < TM4; i++) {
    for (var r = 0u; r < 4u; r++) {
      let row = row0 + (i * WGY + ty) * 4u + r;
      if (row >= M) {
        continue;
      }
      for (var j = 0u; j < TN4; j++) {
        let v = acc[(i * 4u + r) * TN4 + j];
        for (var c = 0u; c < 4u; c++) {
          let col = col0 + (j * WGX + tx) * 4u + c;
          if (col < N) {
            var y = v[c];
            if (HAS_BIAS) {
              y += read_bias(col);
            }
            y = {{ACT}}(y);
            let o = row * N + col;
            if (ACCUMULATE) {
              y += out[o];
            }
            out[o] = y;
          }
        }
      }
    }
  }
}
