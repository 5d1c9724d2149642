// Attention flow by token group: how much of each query row's softmax probability lands on each key group, without
// ever materialising the Sq×Sk score matrix. The scores are those of the attention node they describe: q·kᵀ·scale
// per head, masked by the same rules (key j visible to query i iff j < keyEnd, (not causal or j <= i), and
// (GROUP_MASK off or queryBits[i] & keyBits[j] == 0)), softmax over the visible keys.
//
// Layout: q is [Sq, H·D], k is [Sk, Hkv·D], f32 row-major, read as vec4 (D % 4 == 0); query head h reads key head
// h / groupSize. Group ids are u32 per token; ids at or past the group count belong to no group.
//
// One template, four passes (PASS), sharing bindings and parameters:
//  0 rows:   one workgroup per (BQ query rows, head) walks the key blocks with an online softmax. The scores of a
//            block are computed in a 4×4 register tile per thread (transposed q and k staged in workgroup memory, as
//            attention.wgsl does), masked, turned into probabilities relative to the running row maximum and
//            written to `prob`; then the four threads of each row add the block's probabilities into per-group
//            accumulators (thread part p owns groups p, p+4, p+8, p+12, kept in one vec4 and added to with one fma
//            by the key's group indicator, so no private array is indexed at run time), rescaling them when the
//            maximum moves. Writes rows[h, i, g] = mass of row i
//            on key group g, and stats[h, i] = (row maximum in the log2 domain, softmax denominator).
//  1 tokens: one workgroup per (BK keys, head) walks the query blocks that hold a row of query group tokenGroup,
//            recomputes the same scores and adds exp2(s − m_i) / (l_i·|group|) over those rows: the mass each key
//            receives, averaged over the group's rows. Writes result[h, j].
//  2 groups: one workgroup per (query group, head) averages the rows of the group: result[h, gq, gk], and
//            counts[gq] = the group's row count (head 0 writes it).
//  3 mean:   result[H, n] = mean over heads of result[h, n] for n < count (the last slice of either output).
//
// Rows whose keys are all masked have no probability mass: their masses are zeros (as attention writes zeros).
// An empty query group has no rows to average: its masses are zeros, and counts[gq] = 0 tells it apart.
//
// Global reads past the last query or key row read the last one instead (their scores are masked or never used), so
// loads are unguarded. Every local variable is initialised explicitly (see attention.wgsl on naga and gfx-rs/wgpu#9489).

const PASS: u32 = {{PASS}}u;
const D: u32 = {{D}}u;
const DK: u32 = {{DK}}u;
const GROUP_MASK: bool = {{GROUP_MASK}};

const BQ: u32 = 64u;
const BK: u32 = 64u;
const NTX: u32 = 16u;
const NT: u32 = 256u;
const D4: u32 = D / 4u;
const DK4: u32 = DK / 4u;
const D_STEPS: u32 = D / DK;
// Padded row of `prob`, so that the 8 rows a warp's accumulating threads read at once fall in distinct banks.
const PW: u32 = BK + 1u;
// Score of a masked key; far below any real score, so it never wins a maximum against one.
const MASKED: f32 = -3.0e38;
const VISIBLE_FLOOR: f32 = -1.0e38;

// qT[d][y]: query rows 4y .. 4y+3 of the block at head-dim index d0 + d, scaled by scale·log2(e).
var<workgroup> qT: array<array<vec4<f32>, 16>, DK>;
// kT[d][x]: keys 4x .. 4x+3 of the block at head-dim index d0 + d.
var<workgroup> kT: array<array<vec4<f32>, 16>, DK>;
// prob[r·PW + c]: probability of row r, key c of the block (rows pass).
var<workgroup> prob: array<f32, BQ * PW>;
// red[a][b]: partial row maxima (rows pass: [tx][ty], rows 4ty..+3), column sums (tokens pass: [ty][tx]), or
// per-lane sums and counts (groups pass: [lane][group]).
var<workgroup> red: array<array<vec4<f32>, 16>, 16>;
// keyMask[p][c]: for key c of the block, 1.0 in component i where the key belongs to group p + 4i, else 0.0 (rows
// pass), so that adding a probability to the accumulators of part p is one fma.
var<workgroup> keyMask: array<array<vec4<f32>, BK>, 4>;
// Per row of the block: rescale factor (rows pass) or weight (tokens pass); then the row maximum.
var<workgroup> rowA: array<f32, BQ>;
var<workgroup> rowB: array<f32, BQ>;
// Tokens pass: rows of the group in the current query block (non-zero: some), and the group's row count.
var<workgroup> blockHasRows: u32;
var<workgroup> groupRows: atomic<u32>;

struct Tile {
  s0: vec4<f32>,
  s1: vec4<f32>,
  s2: vec4<f32>,
  s3: vec4<f32>,
}

// Scores (log2 domain) of query rows q0 + 4ty + i (field s<i>) against keys k0 + 4tx .. +3 (one vec4 component per
// key). Contains barriers: call from uniform control flow.
fn scoreTile(q0: u32, qCol4: u32, k0: u32, kCol4: u32, lid: u32, tx: u32, ty: u32) -> Tile {
  let qLast = params.sq - 1u;
  let kLast = params.sk - 1u;
  var t = Tile(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
  for (var ds = 0u; ds < D_STEPS; ds++) {
    let d4 = ds * DK4;
    for (var e = lid; e < (BQ + BK) * DK4; e += NT) {
      if (e < BQ * DK4) {
        let r = e / DK4;
        let c = e % DK4;
        let v = q[min(q0 + r, qLast) * params.qRow4 + qCol4 + d4 + c] * params.scaleLog2;
        qT[4u * c][r / 4u][r % 4u] = v.x;
        qT[4u * c + 1u][r / 4u][r % 4u] = v.y;
        qT[4u * c + 2u][r / 4u][r % 4u] = v.z;
        qT[4u * c + 3u][r / 4u][r % 4u] = v.w;
      } else {
        let r = (e - BQ * DK4) / DK4;
        let c = (e - BQ * DK4) % DK4;
        let v = k[min(k0 + r, kLast) * params.kRow4 + kCol4 + d4 + c];
        kT[4u * c][r / 4u][r % 4u] = v.x;
        kT[4u * c + 1u][r / 4u][r % 4u] = v.y;
        kT[4u * c + 2u][r / 4u][r % 4u] = v.z;
        kT[4u * c + 3u][r / 4u][r % 4u] = v.w;
      }
    }
    workgroupBarrier();
    for (var d = 0u; d < DK; d++) {
      let a = qT[d][ty];
      let b = kT[d][tx];
      t.s0 = fma(vec4<f32>(a.x), b, t.s0);
      t.s1 = fma(vec4<f32>(a.y), b, t.s1);
      t.s2 = fma(vec4<f32>(a.z), b, t.s2);
      t.s3 = fma(vec4<f32>(a.w), b, t.s3);
    }
    workgroupBarrier();
  }
  return t;
}

// Which of `keys` query `row` (rule bits `qb`) may read; kb holds the keys' rule bits.
fn visible(keys: vec4<u32>, row: u32, qb: u32, kb: vec4<u32>) -> vec4<bool> {
  var v = keys < vec4<u32>(params.keyEnd);
  if (params.causal != 0u) {
    v = v & (keys <= vec4<u32>(row));
  }
  if (GROUP_MASK) {
    v = v & ((vec4<u32>(qb) & kb) == vec4<u32>(0u));
  }
  return v;
}

// Masked scores of a tile: rows[i] and qb[i] are row 4ty + i's index and rule bits, keys and kb those of the keys.
fn maskTile(t: Tile, rows: vec4<u32>, qb: vec4<u32>, keys: vec4<u32>, kb: vec4<u32>) -> Tile {
  let m = vec4<f32>(MASKED);
  return Tile(
    select(m, t.s0, visible(keys, rows.x, qb.x, kb)),
    select(m, t.s1, visible(keys, rows.y, qb.y, kb)),
    select(m, t.s2, visible(keys, rows.z, qb.z, kb)),
    select(m, t.s3, visible(keys, rows.w, qb.w, kb)),
  );
}

// Whether a tile with rows [q0, q0 + BQ) and keys [k0, k0 + BK) needs the mask at all (a uniform decision).
fn needsMask(q0: u32, k0: u32) -> bool {
  return GROUP_MASK || k0 + BK > params.keyEnd || (params.causal != 0u && k0 + BK > q0 + 1u);
}

// Rule bits of four tokens (zeros without a group mask, where the bit bindings stand in for other tensors).
fn queryBits4(first: u32) -> vec4<u32> {
  if (!GROUP_MASK) {
    return vec4<u32>(0u);
  }
  let last = params.sq - 1u;
  return vec4<u32>(queryBits[min(first, last)], queryBits[min(first + 1u, last)], queryBits[min(first + 2u, last)],
                   queryBits[min(first + 3u, last)]);
}

fn keyBits4(first: u32) -> vec4<u32> {
  if (!GROUP_MASK) {
    return vec4<u32>(0u);
  }
  let last = params.sk - 1u;
  return vec4<u32>(keyBits[min(first, last)], keyBits[min(first + 1u, last)], keyBits[min(first + 2u, last)],
                   keyBits[min(first + 3u, last)]);
}

fn maxOf(v: vec4<f32>) -> f32 {
  return max(max(v.x, v.y), max(v.z, v.w));
}

// exp2(s − m) for visible scores, 0 for masked ones.
fn probabilities(s: vec4<f32>, m: f32) -> vec4<f32> {
  return select(vec4<f32>(0.0), exp2(s - vec4<f32>(m)), s > vec4<f32>(VISIBLE_FLOOR));
}

fn rowsPass(wid: vec3<u32>, lid: u32) {
  let tx = lid % NTX;
  let ty = lid / NTX;
  let q0 = wid.x * BQ;
  let head = wid.y;
  let qCol4 = head * D4;
  let kCol4 = (head / params.groupSize) * D4;
  var kEnd = params.keyEnd;
  if (params.causal != 0u) {
    kEnd = min(kEnd, q0 + BQ);
  }
  let blocks = (kEnd + BK - 1u) / BK;

  // As a score owner: rows q0 + 4ty + i, their rule bits and running maxima.
  let rows = vec4<u32>(q0 + 4u * ty) + vec4<u32>(0u, 1u, 2u, 3u);
  let qb = queryBits4(q0 + 4u * ty);
  var m = vec4<f32>(MASKED);
  // As an accumulator: row ar of the block, groups part + 4c (c < 4), and the row's running denominator.
  let ar = lid / 4u;
  let part = lid % 4u;
  var acc = vec4<f32>(0.0);
  var l = 0.0;

  for (var blk = 0u; blk < blocks; blk++) {
    let k0 = blk * BK;
    var t = scoreTile(q0, qCol4, k0, kCol4, lid, tx, ty);
    let keys = vec4<u32>(k0 + 4u * tx) + vec4<u32>(0u, 1u, 2u, 3u);
    if (needsMask(q0, k0)) {
      t = maskTile(t, rows, qb, keys, keyBits4(k0 + 4u * tx));
    }
    red[tx][ty] = vec4<f32>(maxOf(t.s0), maxOf(t.s1), maxOf(t.s2), maxOf(t.s3));
    {
      // NT = 4·BK: each thread fills one (part, key) entry.
      let key = k0 + lid % BK;
      let group = select(0xffffffffu, keyGroups[min(key, params.sk - 1u)], key < kEnd);
      let owner = lid / BK;
      let groups = vec4<u32>(owner) + vec4<u32>(0u, 4u, 8u, 12u);
      keyMask[owner][lid % BK] = select(vec4<f32>(0.0), vec4<f32>(1.0), vec4<u32>(group) == groups);
    }
    workgroupBarrier();

    // New row maxima over the block; probabilities relative to them.
    var blockMax = vec4<f32>(MASKED);
    for (var x = 0u; x < NTX; x++) {
      blockMax = max(blockMax, red[x][ty]);
    }
    let mNew = max(m, blockMax);
    if (tx == 0u) {
      let alpha = exp2(m - mNew);
      rowA[4u * ty] = alpha.x;
      rowA[4u * ty + 1u] = alpha.y;
      rowA[4u * ty + 2u] = alpha.z;
      rowA[4u * ty + 3u] = alpha.w;
    }
    m = mNew;
    let p0 = probabilities(t.s0, mNew.x);
    let p1 = probabilities(t.s1, mNew.y);
    let p2 = probabilities(t.s2, mNew.z);
    let p3 = probabilities(t.s3, mNew.w);
    let base = 4u * ty * PW + 4u * tx;
    prob[base] = p0.x;
    prob[base + 1u] = p0.y;
    prob[base + 2u] = p0.z;
    prob[base + 3u] = p0.w;
    prob[base + PW] = p1.x;
    prob[base + PW + 1u] = p1.y;
    prob[base + PW + 2u] = p1.z;
    prob[base + PW + 3u] = p1.w;
    prob[base + 2u * PW] = p2.x;
    prob[base + 2u * PW + 1u] = p2.y;
    prob[base + 2u * PW + 2u] = p2.z;
    prob[base + 2u * PW + 3u] = p2.w;
    prob[base + 3u * PW] = p3.x;
    prob[base + 3u * PW + 1u] = p3.y;
    prob[base + 3u * PW + 2u] = p3.z;
    prob[base + 3u * PW + 3u] = p3.w;
    workgroupBarrier();

    // Group sums of row ar: rescale to the new maximum, then add the block's probabilities by key group.
    let alpha = rowA[ar];
    acc = acc * alpha;
    l = l * alpha;
    for (var c = 0u; c < BK; c++) {
      let p = prob[ar * PW + c];
      acc = fma(vec4<f32>(p), keyMask[part][c], acc);
      l = l + p;
    }
    // The next block's first writes to these arrays come after the barriers of its score tile.
  }

  if (tx == 0u) {
    rowB[4u * ty] = m.x;
    rowB[4u * ty + 1u] = m.y;
    rowB[4u * ty + 2u] = m.z;
    rowB[4u * ty + 3u] = m.w;
  }
  workgroupBarrier();
  let row = q0 + ar;
  if (row < params.sq) {
    let inv = select(0.0, 1.0 / l, l > 0.0);
    let mass = acc * inv;
    let out = (head * params.sq + row) * params.groupsK;
    if (part < params.groupsK) {
      rowsOut[out + part] = mass.x;
    }
    if (part + 4u < params.groupsK) {
      rowsOut[out + part + 4u] = mass.y;
    }
    if (part + 8u < params.groupsK) {
      rowsOut[out + part + 8u] = mass.z;
    }
    if (part + 12u < params.groupsK) {
      rowsOut[out + part + 12u] = mass.w;
    }
    if (part == 0u) {
      stats[head * params.sq + row] = vec2<f32>(rowB[ar], l);
    }
  }
}

fn tokensPass(wid: vec3<u32>, lid: u32) {
  let tx = lid % NTX;
  let ty = lid / NTX;
  let k0 = wid.x * BK;
  let head = wid.y;
  let qCol4 = head * D4;
  let kCol4 = (head / params.groupSize) * D4;
  let keys = vec4<u32>(k0 + 4u * tx) + vec4<u32>(0u, 1u, 2u, 3u);
  let kb = keyBits4(k0 + 4u * tx);

  // Rows of the group, over the whole sequence.
  if (lid == 0u) {
    atomicStore(&groupRows, 0u);
  }
  workgroupBarrier();
  var count = 0u;
  for (var i = lid; i < params.sq; i += NT) {
    count += select(0u, 1u, queryGroups[i] == params.tokenGroup);
  }
  atomicAdd(&groupRows, count);
  workgroupBarrier();
  let members = f32(atomicLoad(&groupRows));

  var col = vec4<f32>(0.0);
  let queryBlocks = (params.sq + BQ - 1u) / BQ;
  for (var qBlock = 0u; qBlock < queryBlocks; qBlock++) {
    let q0 = qBlock * BQ;
    if (lid < BQ) {
      let row = q0 + lid;
      let st = stats[head * params.sq + min(row, params.sq - 1u)];
      let member = row < params.sq && queryGroups[min(row, params.sq - 1u)] == params.tokenGroup;
      rowA[lid] = select(0.0, 1.0 / (st.y * members), member && st.y > 0.0);
      rowB[lid] = st.x;
    }
    workgroupBarrier();
    if (lid == 0u) {
      var some = 0u;
      for (var r = 0u; r < BQ; r++) {
        some = some | select(0u, 1u, rowA[r] > 0.0);
      }
      blockHasRows = some;
    }
    if (workgroupUniformLoad(&blockHasRows) == 0u) {
      continue;
    }
    var t = scoreTile(q0, qCol4, k0, kCol4, lid, tx, ty);
    if (needsMask(q0, k0)) {
      let rows = vec4<u32>(q0 + 4u * ty) + vec4<u32>(0u, 1u, 2u, 3u);
      t = maskTile(t, rows, queryBits4(q0 + 4u * ty), keys, kb);
    }
    let r = 4u * ty;
    col += probabilities(t.s0, rowB[r]) * rowA[r];
    col += probabilities(t.s1, rowB[r + 1u]) * rowA[r + 1u];
    col += probabilities(t.s2, rowB[r + 2u]) * rowA[r + 2u];
    col += probabilities(t.s3, rowB[r + 3u]) * rowA[r + 3u];
    // rowA and rowB are rewritten at the top of the next iteration.
    workgroupBarrier();
  }

  red[ty][tx] = col;
  workgroupBarrier();
  if (lid < NTX) {
    var sum = vec4<f32>(0.0);
    for (var y = 0u; y < NT / NTX; y++) {
      sum += red[y][lid];
    }
    let key = k0 + 4u * lid;
    let out = head * params.sk + key;
    if (key < params.sk) {
      result[out] = sum.x;
    }
    if (key + 1u < params.sk) {
      result[out + 1u] = sum.y;
    }
    if (key + 2u < params.sk) {
      result[out + 2u] = sum.z;
    }
    if (key + 3u < params.sk) {
      result[out + 3u] = sum.w;
    }
  }
}

fn groupsPass(wid: vec3<u32>, lid: u32) {
  let gq = wid.x;
  let head = wid.y;
  let g = lid % 16u;
  let lane = lid / 16u;
  var sum = 0.0;
  var count = 0u;
  for (var i = lane; i < params.sq; i += 16u) {
    if (queryGroups[i] == gq) {
      count += 1u;
      if (g < params.groupsK) {
        sum += rowsOut[(head * params.sq + i) * params.groupsK + g];
      }
    }
  }
  red[lane][g] = vec4<f32>(sum, f32(count), 0.0, 0.0);
  workgroupBarrier();
  if (lane == 0u) {
    var total = vec2<f32>(0.0);
    for (var x = 0u; x < 16u; x++) {
      total += red[x][g].xy;
    }
    if (g < params.groupsK) {
      result[(head * params.groupsQ + gq) * params.groupsK + g] = select(0.0, total.x / total.y, total.y > 0.0);
    }
    if (head == 0u && g == 0u) {
      counts[gq] = total.y;
    }
  }
}

fn meanPass(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) {
  let n = (wid.x + wid.y * nwg.x) * NT + lid;
  if (n >= params.count) {
    return;
  }
  var sum = 0.0;
  for (var h = 0u; h < params.heads; h++) {
    sum += result[h * params.count + n];
  }
  result[params.heads * params.count + n] = sum / f32(params.heads);
}

@compute @workgroup_size(NT)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  if (PASS == 0u) {
    rowsPass(wid, lid);
  } else if (PASS == 1u) {
    tokensPass(wid, lid);
  } else if (PASS == 2u) {
    groupsPass(wid, lid);
  } else {
    meanPass(wid, nwg, lid);
  }
}
