// Matrix product y[M, N] = act(x[M, K] · W[N, K]ᵀ + bias[N]) (+ y when accumulating), the nn.Linear layout.
// x is f32; W is bf16 (packed pairs) or f32; arithmetic and accumulation are f32.
//
// Tiling (the "outer" and "dot" forms): a workgroup computes a BM×BN tile of y and advances along K in steps of BK, with the x and W tiles of a step
// in workgroup memory, two stages deep, so that one barrier per step suffices and the global loads of the next
// step are in flight while the current one is computed. Two forms of the inner product (see kernels/matmul.ts):
//  - "outer": both tiles are stored transposed, one vec4 holding four rows (or columns) at one k; per k a thread
//    reads TM/4 + TN/4 vec4s and does TM·TN multiply-adds, an outer product of its rows and columns. Thread (tx, ty)
//    owns rows 4·(i·WGY + ty) + r and columns 4·(j·WGX + tx) + c. Few operand registers are live at a time.
//  - "dot": both tiles are stored K-contiguous, as in global memory, one vec4 holding four consecutive k of a row,
//    with a row stride of BK/4 + 1 vec4s so that the rows eight neighbouring threads read fall in distinct banks.
//    Thread (tx, ty) owns rows ty + i·WGY and columns tx + j·WGX and forms dot products over each k group.
// The "direct" form (software adapters) stages nothing: the thread of the dot form reads its rows and columns straight
// from x and W, BK k per pass of the same loop, whose FETCH and STORE are then empty and whose barriers vanish.
//
// The per-thread code (tile declarations, accumulators, fetched groups, the multiply-adds of one step, the stores)
// is generated unrolled by kernels/matmul.ts with one named variable per register: private arrays indexed inside
// loops are placed in off-chip local memory by the GPU compilers this runs through, which costs an order of
// magnitude. The tiles are nested arrays indexed [stage][k or register][thread position][…], so that every index of
// the inner loop is a constant or the thread's own position: the bounds clamps the translator adds then fold into
// one per thread, and the addresses into constant offsets.
//
// Variant values: BM BN BK TM TN FORM WARP_COLS (tile configuration; WARP_COLS 0: threads in row-major order),
// READ_X / READ_W (bodies of the group readers, vectorised or element-wise) and HELPERS (functions they need),
// HAS_BIAS, BIAS_BF16, ACCUMULATE, ACT (identity | silu | gelu_tanh). Generated from them when the shader is
// rendered: TILED, TILES, POSITION (tx and ty from lid), DECLARE, FETCH, STORE, COMPUTE, FLUSH (f16 step sums into the f32
// accumulators), WRITE.

const BM: u32 = {{BM}}u;
const BN: u32 = {{BN}}u;
const BK: u32 = {{BK}}u;
const TM: u32 = {{TM}}u;
const TN: u32 = {{TN}}u;
const HAS_BIAS: bool = {{HAS_BIAS}};
const BIAS_BF16: bool = {{BIAS_BF16}};
const ACCUMULATE: bool = {{ACCUMULATE}};
// False in the direct form, which shares no tiles: its shader then holds no barrier at all (see step_barrier).
const TILED: bool = {{TILED}};

const WGX: u32 = BN / TN;
const WGY: u32 = BM / TM;
const THREADS: u32 = WGX * WGY;
const BK4: u32 = BK / 4u;
// Consecutive workgroups walk down GROUP_M row tiles before moving to the next column tile (L2 reuse of W).
const GROUP_M: u32 = 8u;

{{TILES}}

fn bf16_lo(word: u32) -> f32 {
  return bitcast<f32>(word << 16u);
}

fn bf16_hi(word: u32) -> f32 {
  return bitcast<f32>(word & 0xffff0000u);
}

{{HELPERS}}

// x[row, k .. k+3] for a row < M; zero where k ≥ K.
fn read_x(row: u32, k: u32) -> vec4<f32> {
  {{READ_X}}
}

// W[n, k .. k+3] for n < N; zero where k ≥ K.
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

// A software adapter (llvmpipe) runs a shader that holds any barrier as coroutines, one per SIMD batch, switched at
// every barrier, which alone halves the direct form's speed there. A barrier under a false constant is removed when
// the shader is compiled.
fn step_barrier() {
  if (TILED) {
    workgroupBarrier();
  }
}

fn write_out(row: u32, col: u32, acc: f32) {
  if (row < params.M && col < params.N) {
    var y = acc;
    if (HAS_BIAS) {
      y += read_bias(col);
    }
    y = {{ACT}}(y);
    let o = row * params.N + col;
    if (ACCUMULATE) {
      y += out[o];
    }
    out[o] = y;
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
  // Rows and columns past the matrix read the last one (their results are never written).
  let last_row = M - 1u;
  let last_col = N - 1u;

{{POSITION}}

{{DECLARE}}

  let steps = (K + BK - 1u) / BK;

  // Prologue: step 0 into stage 0.
  {
    let k0 = 0u;
{{FETCH}}
  }
  {
    let base = 0u;
{{STORE}}
  }
  step_barrier();

  // Step s computes from stage s & 1 while the global loads of step s + 1 are in flight; those land in the other
  // stage, whose last readers (step s - 1) all passed the barrier that ended the previous iteration.
  for (var s = 0u; s < steps; s++) {
    let more = s + 1u < steps;
    if (more) {
      let k0 = (s + 1u) * BK;
{{FETCH}}
    }
    {
      let st = s & 1u;
{{COMPUTE}}
{{FLUSH}}
    }
    if (more) {
      let base = ((s + 1u) & 1u);
{{STORE}}
    }
    step_barrier();
  }

{{WRITE}}
}
