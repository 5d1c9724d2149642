// Flash attention with rule-based masks: out = softmax(q·kᵀ·scale + mask)·v per head, with an online softmax in f32,
// never materialising the Sq×Sk score matrix.
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
    var rows = array<vec4<f32>, 4>(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
    for (var r = 0u; r < 4u; r++) {
      let i = q0 + 4u * slot + r;
      if (i < params.sq) {
        rows[r] = q[i * params.qRow4 + col4 + c4];
      }
    }
    for (var e = 0u; e < 4u; e++) {
      stage[(4u * c4 + e) * BQ4 + slot] = vec4<f32>(rows[0][e], rows[1][e], rows[2][e], rows[3][e]);
    }
  }
}

fn stageKeyChunk(lid: u32, k0: u32, kEnd: u32, col4: u32) {
  for (var idx = lid; idx < BK4 * DC4; idx += NT) {
    let slot = idx % BK4;
    let c4 = idx / BK4;
    // Slot kg holds the keys kg + NKG·c, c = 0..3.
    var keys = array<vec4<f32>, 4>(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
    for (var c = 0u; c < 4u; c++) {
      let j = k0 + slot + NKG * c;
      if (j < kEnd) {
        keys[c] = k[j * params.kvRow4 + col4 + c4];
      }
    }
    for (var e = 0u; e < 4u; e++) {
      stage[QT_SIZE + (4u * c4 + e) * BK4 + slot] = vec4<f32>(keys[0][e], keys[1][e], keys[2][e], keys[3][e]);
    }
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

  var queryBitsOfRow: array<u32, TQ>;
  var m: array<f32, TQ>;
  var l: array<f32, TQ>;
  for (var t = 0u; t < TQ; t++) {
    queryBitsOfRow[t] = 0u;
    m[t] = MASKED;
    l[t] = 0.0;
    if (GROUP_MASK && q0 + firstRow + t < params.sq) {
      queryBitsOfRow[t] = queryBits[q0 + firstRow + t];
    }
  }
  var o: array<vec4<f32>, TQ * NU>;
  for (var i = 0u; i < TQ * NU; i++) {
    o[i] = vec4<f32>(0.0);
  }

  if (Q_RESIDENT) {
    stageQueryChunk(lid, q0, qCol4);
  }

  for (var blk = 0u; blk < blocks; blk++) {
    let k0 = blk * BK;
    // s[t] holds the scores of row t against keys kg + NKG·c in component c.
    var s: array<vec4<f32>, TQ>;
    for (var t = 0u; t < TQ; t++) {
      s[t] = vec4<f32>(0.0);
    }
    for (var d0 = 0u; d0 < D; d0 += DC) {
      workgroupBarrier();
      if (!Q_RESIDENT) {
        stageQueryChunk(lid, q0, qCol4 + d0 / 4u);
      }
      stageKeyChunk(lid, k0, kEnd, kvCol4 + d0 / 4u);
      workgroupBarrier();
      for (var d = 0u; d < DC; d++) {
        let b = stage[QT_SIZE + d * BK4 + kg];
        for (var h = 0u; h < RV; h++) {
          let a = stage[d * BQ4 + firstSlot + h];
          s[4u * h + 0u] = fma(vec4<f32>(a.x), b, s[4u * h + 0u]);
          s[4u * h + 1u] = fma(vec4<f32>(a.y), b, s[4u * h + 1u]);
          s[4u * h + 2u] = fma(vec4<f32>(a.z), b, s[4u * h + 2u]);
          s[4u * h + 3u] = fma(vec4<f32>(a.w), b, s[4u * h + 3u]);
        }
      }
    }

    // Scale (log2 domain) and mask.
    var keyIndex = vec4<u32>(0u);
    var keyBitsOfKey = vec4<u32>(0u);
    for (var c = 0u; c < 4u; c++) {
      keyIndex[c] = k0 + kg + NKG * c;
      if (GROUP_MASK && keyIndex[c] < kEnd) {
        keyBitsOfKey[c] = keyBits[keyIndex[c]];
      }
    }
    for (var t = 0u; t < TQ; t++) {
      var visible = keyIndex < vec4<u32>(kEnd);
      if (params.causal != 0u) {
        visible = visible & (keyIndex <= vec4<u32>(q0 + firstRow + t));
      }
      if (GROUP_MASK) {
        visible = visible & ((keyBitsOfKey & vec4<u32>(queryBitsOfRow[t])) == vec4<u32>(0u));
      }
      s[t] = select(vec4<f32>(MASKED), s[t] * params.scaleLog2, visible);
      partial[(firstRow + t) * NKG + kg] = rowMax(s[t]);
    }
    workgroupBarrier();

    // Online softmax: new row maxima, rescale what was accumulated, probabilities of this block.
    for (var t = 0u; t < TQ; t++) {
      var mNew = m[t];
      for (var g = 0u; g < NKG; g++) {
        mNew = max(mNew, partial[(firstRow + t) * NKG + g]);
      }
      let alpha = exp2(m[t] - mNew);
      m[t] = mNew;
      let p = select(vec4<f32>(0.0), exp2(s[t] - vec4<f32>(mNew)), s[t] > vec4<f32>(VISIBLE_FLOOR));
      s[t] = p;
      l[t] = l[t] * alpha + (p.x + p.y + p.z + p.w);
      for (var u = 0u; u < NU; u++) {
        o[t * NU + u] = o[t * NU + u] * alpha;
      }
    }
    for (var c = 0u; c < 4u; c++) {
      for (var h = 0u; h < RV; h++) {
        probs[(kg + NKG * c) * BQ4 + firstSlot + h] = vec4<f32>(s[4u * h][c], s[4u * h + 1u][c], s[4u * h + 2u][c], s[4u * h + 3u][c]);
      }
    }

    // o += p·v, KC keys of v at a time.
    for (var kc0 = 0u; kc0 < BK; kc0 += KC) {
      workgroupBarrier();
      stageValueChunk(lid, k0 + kc0, kEnd, kvCol4 + chunk * DV4);
      workgroupBarrier();
      for (var j = 0u; j < KC; j++) {
        for (var h = 0u; h < RV; h++) {
          let p = probs[(kc0 + j) * BQ4 + firstSlot + h];
          for (var u = 0u; u < NU; u++) {
            let vv = stage[V_OFFSET + j * DV4 + kg + NKG * u];
            o[(4u * h + 0u) * NU + u] = fma(vec4<f32>(p.x), vv, o[(4u * h + 0u) * NU + u]);
            o[(4u * h + 1u) * NU + u] = fma(vec4<f32>(p.y), vv, o[(4u * h + 1u) * NU + u]);
            o[(4u * h + 2u) * NU + u] = fma(vec4<f32>(p.z), vv, o[(4u * h + 2u) * NU + u]);
            o[(4u * h + 3u) * NU + u] = fma(vec4<f32>(p.w), vv, o[(4u * h + 3u) * NU + u]);
          }
        }
      }
    }
  }

  // Row sums: each key group holds the sum over its own keys, all relative to the same running maximum.
  workgroupBarrier();
  for (var t = 0u; t < TQ; t++) {
    partial[(firstRow + t) * NKG + kg] = l[t];
  }
  workgroupBarrier();
  let outCol4 = qCol4 + chunk * DV4;
  for (var t = 0u; t < TQ; t++) {
    let row = q0 + firstRow + t;
    if (row >= params.sq) {
      continue;
    }
    var sum = 0.0;
    for (var g = 0u; g < NKG; g++) {
      sum += partial[(firstRow + t) * NKG + g];
    }
    // A row with no visible key has no probability mass: it is written as zeros, never NaN.
    let inv = select(0.0, 1.0 / sum, sum > 0.0);
    for (var u = 0u; u < NU; u++) {
      out[row * params.qRow4 + outCol4 + kg + NKG * u] = o[t * NU + u] * inv;
    }
  }
}
