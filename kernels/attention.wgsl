// Flash attention with rule-based masks: out = softmax(q·kᵀ·scale + mask)·v per head, with an online softmax in f32,
// never materialising the Sq×Sk score matrix.
//
// The per-thread register code is generated fully unrolled by kernels/attention.ts (attentionRegisterCode) and
// inserted at the {{...}} blocks below, with one named variable per register (s_2, m_0, o_3_1, ...). A private array
// indexed inside a loop (or a vector indexed by a loop counter) is emitted by naga as a function-scope array with
// clamped indices, which the driver keeps in local (off-chip) memory instead of registers; named variables and
// constant vector components stay in registers.
//
// Layout: q and out are [Sq, H·D], k and v are [Sk, Hkv·D], f32 row-major, read as vec4 (D % 4 == 0). Query head h
// reads key/value head h / groupSize (grouped-query attention).
//
// One workgroup computes BQ query rows of one head, for the DV output columns of its column chunk (large head dims are
// split over several workgroups, each recomputing the scores). Threads form a grid of BQ/TQ query groups × NKG key
// groups: thread (qg, kg) owns the TQ = 4·RV query rows TQ·qg.. (RV vec4 slots of four rows each) and, within each
// block of BK = 4·NKG keys, the keys kg + NKG·c (c = 0..3); in the p·v product it owns output vec4 columns
// kg + NKG·u (u = 0..NU-1).
//
// Registers of thread (qg, kg), as generated: s_t (scores of row t against its four keys, component c for key
// kg + NKG·c), m_t and l_t (running maximum and sum of row t), qb_t (group-mask bits of row t), o_t_u (output
// vec4 column kg + NKG·u of row t).
//
// Per key block: q and k are staged transposed, DC head-dim columns at a time, so that one vec4 read gives four
// query rows (or four of the thread's keys) at one head-dim index; scores are masked, the row maxima combined through
// `partial`, probabilities written transposed to `probs`; v is staged KC keys at a time (reusing the q/k staging
// memory unless q stays resident) and accumulated into registers.
//
// Every local variable is initialised explicitly: naga (wgpu's translator, as shipped in Deno 2.9) does not zero a
// loop-local `var` without initialiser on each iteration (gfx-rs/wgpu#9489), so it would carry the last block's values.
//
// Masks are rules, evaluated per score: key j is visible to query i iff j < keyEnd, (not causal or j <= i), and
// (GROUP_MASK off or queryBits[i] & keyBits[j] == 0). Key blocks past keyEnd (and past the query block under a causal
// mask) are skipped. A query row with no visible key has zero probability mass and is written as zeros.

const D: u32 = {{D}}u;
const BQ: u32 = {{BQ}}u;
const RV: u32 = {{RV}}u;
const NKG: u32 = {{NKG}}u;
const DC: u32 = {{DC}}u;
const KC: u32 = {{KC}}u;
const DV: u32 = {{DV}}u;
const GROUP_MASK: bool = {{GROUP_MASK}};

const TQ: u32 = 4u * RV;
const NQG: u32 = BQ / TQ;
const NT: u32 = NQG * NKG;
const BK: u32 = 4u * NKG;
const BQ4: u32 = BQ / 4u;
const BK4: u32 = BK / 4u;
const DC4: u32 = DC / 4u;
const D4: u32 = D / 4u;
const DV4: u32 = DV / 4u;
const NU: u32 = DV4 / NKG;
// When one staged chunk spans the whole head dimension, q is staged once and stays; v then uses the k region.
const Q_RESIDENT: bool = DC == D;
const QT_SIZE: u32 = DC * BQ4;
const KT_SIZE: u32 = DC * BK4;
const V_SIZE: u32 = KC * DV4;
const V_OFFSET: u32 = select(0u, QT_SIZE, Q_RESIDENT);
const STAGE_SIZE: u32 = max(QT_SIZE + KT_SIZE, V_OFFSET + V_SIZE);
// Scores of masked keys; far below any real score, so it never wins a maximum against one.
const MASKED: f32 = -3.0e38;
const VISIBLE_FLOOR: f32 = -1.0e38;

// qᵀ chunk at [0, QT_SIZE): index d·BQ4 + slot holds rows 4·slot..4·slot+3 at head-dim index d0 + d.
// kᵀ chunk at [QT_SIZE, +KT_SIZE): index d·BK4 + kg holds keys kg + NKG·c (c = 0..3) at d0 + d.
// v chunk at [V_OFFSET, +V_SIZE): index j·DV4 + c4 holds key kc0 + j, output vec4 column c4.
var<workgroup> stage: array<vec4<f32>, STAGE_SIZE>;
// probsᵀ: index j·BQ4 + slot holds the probabilities of rows 4·slot..4·slot+3 for key j of the block.
var<workgroup> probs: array<vec4<f32>, BK * BQ4>;
// Per-row partial maxima (then partial sums) of each key group: index row·NKG + kg.
var<workgroup> partial: array<f32, BQ * NKG>;

// Staging writes whole vec4s only (a write to one lane of a shared vec4 is a read-modify-write of all four): each
// item is a 4×4 block, four rows × four head-dim columns, transposed in registers. Row groups vary fastest across
// threads so that neighbouring threads store to neighbouring vec4s.
fn stageQueryChunk(lid: u32, q0: u32, col4: u32) {
  for (var idx = lid; idx < BQ4 * DC4; idx += NT) {
    let slot = idx % BQ4;
    let c4 = idx / BQ4;
    let i0 = q0 + 4u * slot;
    let src = i0 * params.qRow4 + col4 + c4;
    var r0 = vec4<f32>(0.0);
    var r1 = vec4<f32>(0.0);
    var r2 = vec4<f32>(0.0);
    var r3 = vec4<f32>(0.0);
    if (i0 < params.sq) {
      r0 = q[src];
    }
    if (i0 + 1u < params.sq) {
      r1 = q[src + params.qRow4];
    }
    if (i0 + 2u < params.sq) {
      r2 = q[src + 2u * params.qRow4];
    }
    if (i0 + 3u < params.sq) {
      r3 = q[src + 3u * params.qRow4];
    }
    let dst = 4u * c4 * BQ4 + slot;
    stage[dst] = vec4<f32>(r0.x, r1.x, r2.x, r3.x);
    stage[dst + BQ4] = vec4<f32>(r0.y, r1.y, r2.y, r3.y);
    stage[dst + 2u * BQ4] = vec4<f32>(r0.z, r1.z, r2.z, r3.z);
    stage[dst + 3u * BQ4] = vec4<f32>(r0.w, r1.w, r2.w, r3.w);
  }
}

fn stageKeyChunk(lid: u32, k0: u32, kEnd: u32, col4: u32) {
  for (var idx = lid; idx < BK4 * DC4; idx += NT) {
    let slot = idx % BK4;
    let c4 = idx / BK4;
    // Slot kg holds the keys kg + NKG·c, c = 0..3.
    let j0 = k0 + slot;
    let src = j0 * params.kvRow4 + col4 + c4;
    var k0v = vec4<f32>(0.0);
    var k1v = vec4<f32>(0.0);
    var k2v = vec4<f32>(0.0);
    var k3v = vec4<f32>(0.0);
    if (j0 < kEnd) {
      k0v = k[src];
    }
    if (j0 + NKG < kEnd) {
      k1v = k[src + NKG * params.kvRow4];
    }
    if (j0 + 2u * NKG < kEnd) {
      k2v = k[src + 2u * NKG * params.kvRow4];
    }
    if (j0 + 3u * NKG < kEnd) {
      k3v = k[src + 3u * NKG * params.kvRow4];
    }
    let dst = QT_SIZE + 4u * c4 * BK4 + slot;
    stage[dst] = vec4<f32>(k0v.x, k1v.x, k2v.x, k3v.x);
    stage[dst + BK4] = vec4<f32>(k0v.y, k1v.y, k2v.y, k3v.y);
    stage[dst + 2u * BK4] = vec4<f32>(k0v.z, k1v.z, k2v.z, k3v.z);
    stage[dst + 3u * BK4] = vec4<f32>(k0v.w, k1v.w, k2v.w, k3v.w);
  }
}

fn stageValueChunk(lid: u32, j0: u32, kEnd: u32, col4: u32) {
  for (var idx = lid; idx < KC * DV4; idx += NT) {
    let row = idx / DV4;
    let c4 = idx % DV4;
    let j = j0 + row;
    var val = vec4<f32>(0.0);
    if (j < kEnd) {
      val = v[j * params.kvRow4 + col4 + c4];
    }
    stage[V_OFFSET + idx] = val;
  }
}

fn rowMax(s: vec4<f32>) -> f32 {
  return max(max(s.x, s.y), max(s.z, s.w));
}

@compute @workgroup_size(NT)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let qg = lid / NKG;
  let kg = lid % NKG;
  let q0 = wid.x * BQ;
  let head = wid.y / params.dChunks;
  let chunk = wid.y % params.dChunks;
  let kvHead = head / params.groupSize;
  let qCol4 = head * D4;
  let kvCol4 = kvHead * D4;
  // Row t of this thread (t = 0..TQ-1) is block row TQ·qg + t; its four-row slot in qᵀ and probsᵀ is RV·qg + t / 4.
  let firstRow = TQ * qg;
  let firstSlot = RV * qg;

  var kEnd = params.keyEnd;
  if (params.causal != 0u) {
    kEnd = min(kEnd, q0 + BQ);
  }
  let blocks = (kEnd + BK - 1u) / BK;
  // The thread's keys in a block are k0 + keyOffsets.
  let keyOffsets = vec4<u32>(kg, kg + NKG, kg + 2u * NKG, kg + 3u * NKG);

  // qb_t, m_t, l_t, o_t_u: declared and initialised (qb_t read from queryBits under GROUP_MASK).
  {{DECLARE_REGISTERS}}

  if (Q_RESIDENT) {
    stageQueryChunk(lid, q0, qCol4);
  }

  for (var blk = 0u; blk < blocks; blk++) {
    let k0 = blk * BK;
    // s_t = 0.
    {{CLEAR_SCORES}}
    for (var d0 = 0u; d0 < D; d0 += DC) {
      workgroupBarrier();
      if (!Q_RESIDENT) {
        stageQueryChunk(lid, q0, qCol4 + d0 / 4u);
      }
      stageKeyChunk(lid, k0, kEnd, kvCol4 + d0 / 4u);
      workgroupBarrier();
      // s_t += q(row t)·k(keys) over the DC staged head-dim columns.
      {{QK_CHUNK}}
    }

    // Scale (log2 domain) and mask.
    let keyIndex = vec4<u32>(k0) + keyOffsets;
    let keyInRange = keyIndex < vec4<u32>(kEnd);
    var keyBitsOfKey = vec4<u32>(0u);
    if (GROUP_MASK) {
      if (keyInRange.x) {
        keyBitsOfKey.x = keyBits[keyIndex.x];
      }
      if (keyInRange.y) {
        keyBitsOfKey.y = keyBits[keyIndex.y];
      }
      if (keyInRange.z) {
        keyBitsOfKey.z = keyBits[keyIndex.z];
      }
      if (keyInRange.w) {
        keyBitsOfKey.w = keyBits[keyIndex.w];
      }
    }
    // Per row t: s_t masked and scaled, its maximum written to partial.
    {{MASK_SCORES}}
    workgroupBarrier();

    // Online softmax per row t: new row maximum over the key groups, rescale of l_t and o_t_u, s_t becomes the
    // probabilities of this block, written transposed to probs.
    {{SOFTMAX}}

    // o += p·v, KC keys of v at a time.
    for (var kc0 = 0u; kc0 < BK; kc0 += KC) {
      workgroupBarrier();
      stageValueChunk(lid, k0 + kc0, kEnd, kvCol4 + chunk * DV4);
      workgroupBarrier();
      {{PV_CHUNK}}
    }
  }

  // Row sums: each key group holds the sum over its own keys, all relative to the same running maximum.
  workgroupBarrier();
  {{STORE_SUMS}}
  workgroupBarrier();
  let outCol4 = qCol4 + chunk * DV4;
  // Per row t: sum over the key groups; a row with no visible key has no probability mass and is written as zeros,
  // never NaN.
  {{WRITE_OUTPUT}}
}
