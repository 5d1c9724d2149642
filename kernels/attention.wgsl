// Flash attention with rule-based masks: out = softmax(q·kᵀ·scale + mask)·v per head, with an online softmax in f32,
// never materialising the Sq×Sk score matrix.
//
// Layout: q and out are [Sq, H·D], k and v are [Sk, Hkv·D], f32 row-major, read as vec4 (D % 4 == 0). Query head h
// reads key/value head h / groupSize (grouped-query attention).
//
// One workgroup computes BQ query rows of one head, for the DV output columns of its column chunk (large head dims are
// split over several workgroups, each recomputing the scores), walking the keys in blocks of BK. Per key block it
// does two register-tiled matrix products, as kernels/matmul.wgsl does ("outer" form):
//  - s = q·kᵀ over the head dim, DK columns per step, with qᵀ and kᵀ staged transposed (one vec4 holds four rows,
//    or four keys, at one head-dim index) two stages deep, one barrier per step;
//  - o += p·v over the keys of the block, KS keys per step, p staged transposed by the softmax, v staged as it lies
//    in memory (one vec4 holds four output columns of one key), two stages deep.
// p shares its workgroup array with the q and k stages (qkp), which are free once the scores of a block are done, so
// that larger steps and blocks fit the 48 KiB of workgroup memory.
// Threads form NTY × NTX: thread (tx, ty) owns the TR rows 4·(i·NTY + ty) + r (i < TR/4, r < 4), the TK keys
// 4·(j·NTX + tx) + c of each key block (j < TK/4) and the TD output columns 4·(u·NTX + tx) + c (u < TD/4). The NTX
// threads of a row exchange their row maxima (then row sums) through `red`. Which lid is which (tx, ty) is generated
// (POSITION): row-major, or in 32-thread warps of WARP_COLS × 32/WARP_COLS (kernels/register_tile.ts).
//
// The per-thread code is generated fully unrolled by kernels/attention.ts (attentionCodeBlocks) and inserted at the
// {{...}} blocks below, with one named variable per register (s_t_j, o_t_u, m_t, l_t, ...): private arrays indexed
// inside loops are kept in off-chip local memory. The workgroup tiles are nested arrays indexed so that every index of
// the inner products is a constant, the step's stage, or the thread's own position; the translator's bounds clamps
// then fold into a few per thread and the addresses into constant offsets.
//
// q is scaled by scale·log2(e) as it is staged, so scores are in the log2 domain. Global reads past the last query or
// key row read the last one instead (their scores are masked, their outputs never written), so no load is guarded.
//
// Every local variable is initialised explicitly: naga (wgpu's translator, as shipped in Deno 2.9) does not zero a
// loop-local `var` without initialiser on each iteration (gfx-rs/wgpu#9489), so it would carry the last block's values.
//
// Masks are rules, evaluated per score: key j is visible to query i iff j < keyEnd, (not causal or j <= i), and
// (GROUP_MASK off or queryBits[i] & keyBits[j] == 0). Key blocks past keyEnd (and past the query block under a causal
// mask) are skipped; blocks that no rule can touch skip the mask. A query row with no visible key has zero
// probability mass and is written as zeros.

const D: u32 = {{D}}u;
const BQ: u32 = {{BQ}}u;
const TR: u32 = {{TR}}u;
const NTX: u32 = {{NTX}}u;
const TK: u32 = {{TK}}u;
const DK: u32 = {{DK}}u;
const KS: u32 = {{KS}}u;
const DV: u32 = {{DV}}u;
const QH: u32 = {{QH}}u;
const QW: u32 = {{QW}}u;
const QN: u32 = {{QN}}u;
const P_OFF: u32 = {{P_OFF}}u;
const KPR: u32 = {{KPR}}u;
const GROUP_MASK: bool = {{GROUP_MASK}};

const NTY: u32 = BQ / TR;
const NT: u32 = NTX * NTY;
const BK: u32 = NTX * TK;
const TR4: u32 = TR / 4u;
const TK4: u32 = TK / 4u;
const TD4: u32 = DV / 4u / NTX;
const D4: u32 = D / 4u;
const DK4: u32 = DK / 4u;
const DV4: u32 = DV / 4u;
const D_STEPS: u32 = D / DK;
const V_STEPS: u32 = BK / KS;
// Scores of masked keys; far below any real score, so it never wins a maximum against one.
const MASKED: f32 = -3.0e38;
const VISIBLE_FLOOR: f32 = -1.0e38;

// qkp[n][h][w]: the two q·kᵀ stages, then the probabilities of the block (see attentionQkpLayout). Flat row
// r = n·QH + h. Stage s: q rows 4·(i·NTY + ty) .. +3 at head-dim index d0 + d (scaled) in row 2·DK·s + d, column
// i·NTY + ty; keys 4·(j·NTX + tx) .. +3 of the block in row 2·DK·s + DK + d, column j·NTX + tx. p: rows
// 4·(i·NTY + ty) .. +3 for key kk of the block in row P_OFF + kk / KPR, column (kk % KPR)·BQ/4 + i·NTY + ty.
var<workgroup> qkp: array<array<array<vec4<f32>, QW>, QH>, QN>;
// v_tile[stage][kk][u][tx]: key j0 + kk, output columns 4·(u·NTX + tx) .. +3 of the column chunk.
var<workgroup> v_tile: array<array<array<array<vec4<f32>, NTX>, TD4>, KS>, 2u>;
// red[tx][i][ty]: row maxima (then row sums) over the keys of thread tx, rows 4·(i·NTY + ty) .. +3; its own array,
// or the second stage of v_tile where that is free while red is in use (attentionRedInVTile).
{{RED_TILE}}

@compute @workgroup_size(NT)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
{{POSITION}}
  let q0 = wid.x * BQ;
  let head = wid.y / params.dChunks;
  let chunk = wid.y % params.dChunks;
  let kvHead = head / params.groupSize;
  let qCol4 = head * D4;
  let kvCol4 = kvHead * D4;
  let vCol4 = kvCol4 + chunk * DV4;
  let qLast = params.sq - 1u;

  var kEnd = params.keyEnd;
  if (params.causal != 0u) {
    kEnd = min(kEnd, q0 + BQ);
  }
  let kLast = kEnd - 1u;
  let blocks = (kEnd + BK - 1u) / BK;

  {{DECLARE}}

  // Prologue: the first head-dim step of the first key block into stage 0.
  {
    let kf0 = 0u;
    let d4 = 0u;
    {{FETCH_QK}}
  }
  {
    let base = 0u;
    {{STORE_QK}}
  }
  workgroupBarrier();

  for (var blk = 0u; blk < blocks; blk++) {
    let k0 = blk * BK;
    {{CLEAR_SCORES}}
    // s = q·kᵀ: step ds computes from stage ds & 1 while the loads of step ds + 1 are in flight.
    for (var ds = 0u; ds < D_STEPS; ds++) {
      let more = ds + 1u < D_STEPS;
      if (more) {
        let kf0 = k0;
        let d4 = (ds + 1u) * DK4;
        {{FETCH_QK}}
      }
      {
        let st = ds & 1u;
        {{COMPUTE_QK}}
      }
      if (more) {
        let base = (ds + 1u) & 1u;
        {{STORE_QK}}
      }
      workgroupBarrier();
    }

    // The first v step's loads are in flight during the mask and the softmax.
    {
      let j0 = k0;
      {{FETCH_V}}
    }
    // Mask only blocks some rule can touch (a uniform decision); then the row maxima over the thread's keys.
    let needMask = GROUP_MASK || k0 + BK > kEnd || (params.causal != 0u && k0 + BK > q0 + 1u);
    if (needMask) {
      {{MASK}}
    }
    {{ROW_MAX}}
    {
      let base = 0u;
      {{STORE_V}}
    }
    workgroupBarrier();

    // Online softmax: new row maxima over the NTX threads of a row, rescale of l and o, probabilities to qkp.
    {{SOFTMAX}}
    workgroupBarrier();

    // o += p·v; the last step loads the next key block's first q·kᵀ step instead.
    for (var vs = 0u; vs < V_STEPS; vs++) {
      let more = vs + 1u < V_STEPS;
      let next = !more && blk + 1u < blocks;
      if (more) {
        let j0 = k0 + (vs + 1u) * KS;
        {{FETCH_V}}
      }
      if (next) {
        let kf0 = k0 + BK;
        let d4 = 0u;
        {{FETCH_QK}}
      }
      {
        let st = vs & 1u;
        {{COMPUTE_PV}}
      }
      if (more) {
        let base = (vs + 1u) & 1u;
        {{STORE_V}}
      }
      if (next) {
        let base = 0u;
        {{STORE_QK}}
      }
      workgroupBarrier();
    }
  }

  // Row sums: each thread holds the sum over its own keys, all relative to the same running maximum.
  {{STORE_SUMS}}
  workgroupBarrier();
  let outCol4 = qCol4 + chunk * DV4;
  // A row with no visible key has no probability mass and is written as zeros, never NaN.
  {{WRITE_OUTPUT}}
}
