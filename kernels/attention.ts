// Flash attention with masks given as rules (causal, right padding, token-group knockout), never as an S×S tensor.
// One WGSL family; the variant key is the head dimension, the tile configuration and whether a group mask is bound.
// The tile configuration comes from the caller, else it is chosen for the device the plan is compiled on
// (attentionConfigFor): tiles tuned for that adapter, the built-in table for its class of device
// (kernels/attention_tuned.json), a rule for software adapters, else a default that fits 32 KiB of workgroup memory.
//
// A query row whose keys are all masked has no probability mass: the kernel writes zeros for it rather than NaN.
// Such a mask is almost always a mistake, so callers refuse it beforehand with fullyMaskedQueries().

import type { Graph, GraphNode } from "../runtime/graph.ts";
import type { DeviceCapabilities } from "../runtime/device.ts";
import { ceilDiv, type KernelSpec, MAX_WORKGROUPS_PER_DIM } from "../runtime/kernel.ts";
import { shapeString } from "../runtime/tensor.ts";
import { checkTuningTable, readTuningFile, type TuningTable } from "./tuning_file.ts";
import builtinTiles from "./attention_tuned.json" with { type: "json" };
import { checkWarpCols, LANES, range, threadPositionLines } from "./register_tile.ts";

/** Tile configuration. Threads form (blockQ / rowsPerThread) row groups × threadsPerRow; a key block holds
 * threadsPerRow · keysPerThread keys. */
export interface AttentionConfig {
  /** Query rows per workgroup (multiple of rowsPerThread). */
  blockQ: number;
  /** Query rows each thread owns (multiple of 4). */
  rowsPerThread: number;
  /** Threads that share a row: they split the keys of a block in q·kᵀ and the output columns in p·v. */
  threadsPerRow: number;
  /** Keys of a block each thread scores (multiple of 4). */
  keysPerThread: number;
  /** Head-dim columns of q and k staged per step of q·kᵀ (multiple of 4 dividing the head dim). */
  dStep: number;
  /** Keys of v staged per step of p·v (divides the key block). */
  keyStep: number;
  /** Most output columns per workgroup; larger head dims are split over workgroups that each recompute the scores. */
  maxDv: number;
  /** Threads of one 32-thread warp along a row group (see threadPositionLines); default: row-major threads. */
  warpCols?: number;
}

/** Knockout rule: the queries listed may not read the keys listed. */
export interface GroupRule {
  queries: number[];
  keys: number[];
}

/** Per-token rule bits, as bound to the kernel: key j is masked for query i iff (queryBits[i] & keyBits[j]) != 0. */
export interface GroupMaskBits {
  queryBits: Uint32Array;
  keyBits: Uint32Array;
}

export interface AttentionArgs {
  /** f32 [Sq, heads·headDim]. */
  q: number;
  /** f32 [Sk, kvHeads·headDim]. */
  k: number;
  /** f32 [Sk, kvHeads·headDim]. */
  v: number;
  heads: number;
  /** Key/value heads; heads must be a multiple (query head h reads kv head floor(h / (heads / kvHeads))). */
  kvHeads: number;
  headDim: number;
  /** Default 1/√headDim. */
  scale?: number;
  /** Key j is visible to query i only if j ≤ i. */
  causal?: boolean;
  /** Keys j ≥ keyLength are masked (right padding). */
  keyLength?: number;
  /** u32 tensors [Sq] and [Sk] of rule bits (see groupMaskBits). */
  groupMask?: { queryBits: number; keyBits: number };
  /** Write into this f32 [Sq, heads·headDim] tensor instead of a new activation. */
  out?: number;
  /** Tile configuration; default: chosen for the device and head dim when the plan is compiled (attentionConfigFor). */
  config?: AttentionConfig;
}

const MAX_THREADS = 256;
const MAX_OUTPUT_REGISTERS = 128;
const MAX_SCORE_REGISTERS = 64;
const MAX_RULES = 32;

// ---- Configurations -------------------------------------------------------------------------------------------

/** A configuration that fits 32 KiB of workgroup memory and 256 threads, for any head dim that is a multiple of 4. */
export function defaultAttentionConfig(headDim: number): AttentionConfig {
  const d4 = headDim / 4;
  const threadsPerRow = [16, 8, 4, 2, 1].find((n) => d4 % n === 0) ?? 1;
  // Output columns per thread for the default maxDv of 128; rows per thread such that at most 64 accumulators result.
  const dv = widestChunk(headDim, 4 * threadsPerRow, 128);
  const rowsPerThread = 8 * (dv / threadsPerRow) <= 64 ? 8 : 4;
  const dStep = headDim % 8 === 0 ? 8 : 4;
  return { blockQ: 64, rowsPerThread, threadsPerRow, keysPerThread: 4, dStep, keyStep: 4, maxDv: 128 };
}

/** Software adapters (llvmpipe), where every workgroup-memory read is a per-lane gather and every barrier a switch
 * between SIMD batches: 8 query rows × 8 keys per thread, so that each value read serves 8 multiply-adds, and
 * head-dim steps of 16 (fewer barriers). On llvmpipe (2 cores) this runs 1.9× faster than 16 query rows of 4 per
 * thread with steps of 4 (the earlier rule) at head dim 128 and at 16, and compiles as quickly
 * (bench/results/attention_llvmpipe.txt). Rows per thread drop to 4 where 8 would exceed the output registers. */
export function softwareAttentionConfig(headDim: number): AttentionConfig {
  const threadsPerRow = [8, 4, 2, 1].find((n) => (headDim / 4) % n === 0) ?? 1;
  const colsPerThread = widestChunk(headDim, 4 * threadsPerRow, 128) / threadsPerRow;
  const rowsPerThread = 8 * colsPerThread <= MAX_OUTPUT_REGISTERS ? 8 : 4;
  const dStep = [16, 8, 4].find((n) => headDim % n === 0) ?? 4;
  return { blockQ: 64, rowsPerThread, threadsPerRow, keysPerThread: 8, dStep, keyStep: 8, maxDv: 128 };
}

/** The configurations a tuning sweep tries (too large ones for a head dim or device are skipped). */
export const ATTENTION_SWEEP_CONFIGS: readonly Readonly<AttentionConfig>[] = [
  { blockQ: 64, rowsPerThread: 8, threadsPerRow: 16, keysPerThread: 4, dStep: 16, keyStep: 16, maxDv: 128 },
  { blockQ: 64, rowsPerThread: 8, threadsPerRow: 16, keysPerThread: 4, dStep: 32, keyStep: 16, maxDv: 128 },
  { blockQ: 64, rowsPerThread: 8, threadsPerRow: 16, keysPerThread: 4, dStep: 16, keyStep: 32, maxDv: 128 },
  { blockQ: 64, rowsPerThread: 8, threadsPerRow: 16, keysPerThread: 4, dStep: 32, keyStep: 8, maxDv: 128 },
  { blockQ: 128, rowsPerThread: 8, threadsPerRow: 16, keysPerThread: 4, dStep: 16, keyStep: 16, maxDv: 128 },
  { blockQ: 128, rowsPerThread: 8, threadsPerRow: 16, keysPerThread: 4, dStep: 16, keyStep: 16, maxDv: 128, warpCols: 8 },
  { blockQ: 128, rowsPerThread: 8, threadsPerRow: 16, keysPerThread: 4, dStep: 16, keyStep: 16, maxDv: 128, warpCols: 4 },
  { blockQ: 128, rowsPerThread: 8, threadsPerRow: 16, keysPerThread: 4, dStep: 8, keyStep: 16, maxDv: 128 },
  { blockQ: 64, rowsPerThread: 8, threadsPerRow: 16, keysPerThread: 8, dStep: 16, keyStep: 16, maxDv: 128 },
  { blockQ: 64, rowsPerThread: 8, threadsPerRow: 16, keysPerThread: 8, dStep: 8, keyStep: 16, maxDv: 128 },
  { blockQ: 64, rowsPerThread: 8, threadsPerRow: 16, keysPerThread: 8, dStep: 16, keyStep: 8, maxDv: 128 },
  { blockQ: 128, rowsPerThread: 8, threadsPerRow: 16, keysPerThread: 4, dStep: 16, keyStep: 8, maxDv: 128 },
];

/** The shader's compile-time sizes for one head dim. */
export interface AttentionTiles {
  headDim: number;
  blockQ: number;
  rowsPerThread: number;
  threadsPerRow: number;
  keysPerThread: number;
  /** Keys per block: threadsPerRow · keysPerThread. */
  blockK: number;
  dStep: number;
  keyStep: number;
  /** Output columns per workgroup. */
  dv: number;
  /** Output columns per thread. */
  colsPerThread: number;
  threads: number;
  /** As in AttentionConfig; undefined: row-major threads. */
  warpCols?: number;
}

export function attentionConfigName(c: AttentionConfig): string {
  const warp = c.warpCols ? `.w${c.warpCols}` : "";
  return `q${c.blockQ}r${c.rowsPerThread}.t${c.threadsPerRow}k${c.keysPerThread}.ds${c.dStep}.ks${c.keyStep}.dv${c.maxDv}${warp}`;
}

/** The configuration attentionConfigName names, e.g. "q128r8.t16k4.ds16.ks16.dv128" or "….dv128.w8". */
export function parseAttentionConfigName(text: string): AttentionConfig {
  const m = /^q(\d+)r(\d+)\.t(\d+)k(\d+)\.ds(\d+)\.ks(\d+)\.dv(\d+)(?:\.w(\d+))?$/.exec(text.trim());
  if (!m) throw new Error(`attention configuration "${text}" is not qBQrTR.tNTXkTK.dsDK.ksKS.dvDV[.wC], e.g. q128r8.t16k4.ds16.ks16.dv128`);
  const [blockQ, rowsPerThread, threadsPerRow, keysPerThread, dStep, keyStep, maxDv] = m.slice(1, 8).map(Number);
  const config: AttentionConfig = { blockQ, rowsPerThread, threadsPerRow, keysPerThread, dStep, keyStep, maxDv };
  if (m[8]) config.warpCols = Number(m[8]);
  return config;
}

/** Widest divisor of the head dim that is a multiple of `group` and at most max(limit, group). */
function widestChunk(headDim: number, group: number, limit: number): number {
  for (let t = Math.floor(headDim / group); t >= 1; t--) {
    if ((headDim / group) % t === 0 && group * t <= Math.max(limit, group)) return group * t;
  }
  return group;
}

/** Whether the row maxima and sums exchanged by the threads of a row fit in the second stage of the v tile, which is
 * free while they are in use: red[x][i][y] is then v_tile[1][x][i][y]. */
export function attentionRedInVTile(t: AttentionTiles): boolean {
  return t.keyStep >= t.threadsPerRow && t.colsPerThread >= t.rowsPerThread && t.threadsPerRow >= t.blockQ / t.rowsPerThread;
}

/** Shape of the workgroup array `qkp` that holds the two q·kᵀ stages and, once the scores of a block are done, the
 * probabilities: qkp[n][h][w] is flat row n·rows + h, column w (a vec4). Stage s holds q at flat rows 2·DK·s + d and k
 * at 2·DK·s + DK + d (d < DK; column = row group or key group of four). Key kk of p is at flat row
 * pOffset + kk / keysPerRow, columns (kk % keysPerRow)·BQ/4 + row group (keysPerRow keys share a row where the key
 * block is wider than the query block). The p rows of the last p·v step lie past stage 0, which that step refills for
 * the next block. Rows per slab divide DK and the p rows of a p·v step, so every index of the inner products is a
 * constant below a runtime slab. */
export interface AttentionQkpLayout {
  rows: number;
  width: number;
  slabs: number;
  pOffset: number;
  keysPerRow: number;
}

function gcd(a: number, b: number): number {
  return b === 0 ? a : gcd(b, a % b);
}

export function attentionQkpLayout(t: AttentionTiles): AttentionQkpLayout {
  const width = Math.max(t.blockQ, t.blockK) / 4;
  const fit = Math.floor((4 * width) / t.blockQ);
  const keysPerRow = t.keyStep % fit === 0 ? fit : 1;
  const pRows = t.blockK / keysPerRow, pStep = t.keyStep / keysPerRow;
  const rows = gcd(t.dStep, pStep);
  const stage = 2 * t.dStep;
  const pOffset = Math.ceil(Math.max(0, stage - (pRows - pStep)) / rows) * rows;
  const slabs = Math.max(2 * stage, pOffset + pRows) / rows;
  return { rows, width, slabs, pOffset, keysPerRow };
}

/** Resolve a configuration against a head dim; throws when the shader cannot be instantiated with it. */
export function attentionTiles(c: AttentionConfig, headDim: number, where = "attention"): AttentionTiles {
  const name = `${where}: configuration ${JSON.stringify(c)} for head dim ${headDim}`;
  for (const key of ["blockQ", "rowsPerThread", "threadsPerRow", "keysPerThread", "dStep", "keyStep", "maxDv"] as const) {
    if (!Number.isInteger(c[key]) || c[key] <= 0) throw new Error(`${name}: ${key} must be a positive integer, got ${c[key]}`);
  }
  if (!Number.isInteger(headDim) || headDim <= 0 || headDim % 4 !== 0) {
    throw new Error(`${where}: head dim must be a positive multiple of 4, got ${headDim}`);
  }
  const { blockQ, rowsPerThread, threadsPerRow, keysPerThread, keyStep } = c;
  if (rowsPerThread % 4 !== 0) throw new Error(`${name}: rowsPerThread must be a multiple of 4`);
  if (keysPerThread % 4 !== 0) throw new Error(`${name}: keysPerThread must be a multiple of 4`);
  if (blockQ % rowsPerThread !== 0) throw new Error(`${name}: blockQ must be a multiple of rowsPerThread (${rowsPerThread})`);
  const blockK = threadsPerRow * keysPerThread;
  const dStep = Math.min(c.dStep, headDim);
  if (dStep % 4 !== 0 || headDim % dStep !== 0) throw new Error(`${name}: dStep must be a multiple of 4 that divides the head dim`);
  if (blockK % keyStep !== 0) throw new Error(`${name}: keyStep must divide the key block of ${blockK}`);
  const group = 4 * threadsPerRow;
  if (headDim % group !== 0) throw new Error(`${name}: the head dim must be a multiple of 4·threadsPerRow = ${group}`);
  const dv = widestChunk(headDim, group, c.maxDv);
  const colsPerThread = dv / threadsPerRow;
  const threads = (blockQ / rowsPerThread) * threadsPerRow;
  if (threads > MAX_THREADS) throw new Error(`${name}: needs ${threads} threads per workgroup, more than ${MAX_THREADS}`);
  if (c.warpCols !== undefined) checkWarpCols(c.warpCols, threadsPerRow, blockQ / rowsPerThread, name);
  const accumulators = rowsPerThread * colsPerThread;
  if (accumulators > MAX_OUTPUT_REGISTERS) {
    throw new Error(`${name}: ${accumulators} output accumulators per thread exceed ${MAX_OUTPUT_REGISTERS}; lower maxDv or rowsPerThread`);
  }
  if (rowsPerThread * keysPerThread > MAX_SCORE_REGISTERS) {
    throw new Error(`${name}: ${rowsPerThread * keysPerThread} scores per thread exceed ${MAX_SCORE_REGISTERS}`);
  }
  const tiles: AttentionTiles = {
    headDim,
    blockQ,
    rowsPerThread,
    threadsPerRow,
    keysPerThread,
    blockK,
    dStep,
    keyStep,
    dv,
    colsPerThread,
    threads,
  };
  if (c.warpCols !== undefined) tiles.warpCols = c.warpCols;
  return tiles;
}

// ---- Generated per-thread code --------------------------------------------------------------------------------

/** Balanced reduction of terms with a binary WGSL function or operator, e.g. max(max(a, b), max(c, d)). */
function reduceTree(terms: string[], combine: (a: string, b: string) => string): string {
  if (terms.length === 1) return terms[0];
  const half = Math.ceil(terms.length / 2);
  return combine(reduceTree(terms.slice(0, half), combine), reduceTree(terms.slice(half), combine));
}

/**
 * The unrolled blocks of attention.wgsl for one tile configuration (see the comment at the top there), with one named
 * variable per register. Row t = 4i + r of a thread is block row 4·(i·NTY + ty) + r; s_t_j holds its scores against
 * keys 4·(j·NTX + tx) .. +3, o_t_u its output columns 4·(u·NTX + tx) .. +3. The group-mask decision stays in the
 * GROUP_MASK constant, so that setAttentionGroupMask can switch it on an existing node.
 */
export function attentionCodeBlocks(t: AttentionTiles): Record<string, string> {
  const tr4 = t.rowsPerThread / 4, tk4 = t.keysPerThread / 4, td4 = t.colsPerThread / 4;
  const ntx = t.threadsPerRow, dk4 = t.dStep / 4, dv4 = t.dv / 4;
  const T = range(t.rowsPerThread), I = range(tr4), J = range(tk4), U = range(td4), X = range(ntx);
  const row = (r: number) => `q0 + ${4 * Math.floor(r / 4)}u * NTY + 4u * ty + ${r % 4}u`;
  const aliased = attentionRedInVTile(t);
  const lay = attentionQkpLayout(t);
  const red = (x: string | number, i: number) => `${aliased ? "v_tile[1]" : "red"}[${x}][${i}][ty]`;
  const redTile = aliased
    ? "// red lives in v_tile[1] (see attentionRedInVTile)."
    : "var<workgroup> red: array<array<array<vec4<f32>, NTY>, TR4>, NTX>;";
  const lines = (xs: string[]) => xs.join("\n");

  // Loads of one q·kᵀ step: units of four rows × four head-dim columns, q units first, then k units; neighbouring
  // threads take neighbouring column groups of the same rows.
  const qUnits = (t.blockQ / 4) * dk4, kUnits = (t.blockK / 4) * dk4, units = qUnits + kUnits;
  const qkRounds = Math.ceil(units / t.threads);
  const vUnits = t.keyStep * dv4, vRounds = Math.ceil(vUnits / t.threads);
  const declare: string[] = [];
  declare.push(...T.map((r) => `var m_${r} = MASKED;`), ...T.map((r) => `var l_${r} = 0.0;`));
  declare.push(...T.flatMap((r) => U.map((u) => `var o_${r}_${u} = vec4<f32>(0.0);`)));
  declare.push(...T.flatMap((r) => J.map((j) => `var s_${r}_${j} = vec4<f32>(0.0);`)));
  const fetchQk: string[] = [], storeQk: string[] = [];
  const tileUnits = [
    {
      tile: "q_tile",
      src: "q",
      first: "q0",
      last: "qLast",
      stride: "params.qRow4",
      col: "qCol4",
      threads: "NTY",
      offset: 0,
      count: qUnits,
    },
    {
      tile: "k_tile",
      src: "k",
      first: "kf0",
      last: "kLast",
      stride: "params.kvRow4",
      col: "kvCol4",
      threads: "NTX",
      offset: qUnits,
      count: kUnits,
    },
  ];
  for (let l = 0; l < qkRounds; l++) {
    const regs = range(4).map((r) => `f${l}_${r}`);
    declare.push(...regs.map((reg) => `var ${reg} = vec4<f32>(0.0);`));
    const u = l === 0 ? "lid" : `(lid + ${l * t.threads}u)`;
    const lo = l * t.threads, hi = Math.min((l + 1) * t.threads, units);
    for (const p of tileUnits.filter((p) => lo < p.offset + p.count && hi > p.offset)) {
      const local = p.offset === 0 ? u : `(${u} - ${p.offset}u)`;
      const group = `(${local} / ${dk4}u)`, kq = `(${local} % ${dk4}u)`;
      const reads = regs.map((reg, r) =>
        `${reg} = ${p.src}[min(${p.first} + ${group} * 4u + ${r}u, ${p.last}) * ${p.stride} + ${p.col} + d4 + ${kq}];`
      );
      const scale = p.src === "q" ? " * params.scaleLog2" : "";
      const writes = LANES.map((c, e) => {
        const flat = `(base * ${2 * t.dStep}u + ${p.tile === "k_tile" ? t.dStep : 0}u + ${kq} * 4u + ${e}u)`;
        return `qkp[${flat} / QH][${flat} % QH][${group}] = vec4<f32>(${regs.map((reg) => `${reg}.${c}`).join(", ")})${scale};`;
      });
      const conditions: string[] = [];
      if (lo < p.offset) conditions.push(`${u} >= ${p.offset}u`);
      if ((l + 1) * t.threads > p.offset + p.count) conditions.push(`${u} < ${p.offset + p.count}u`);
      const cond = conditions.join(" && ");
      fetchQk.push(cond ? `if (${cond}) { ${reads.join(" ")} }` : reads.join("\n"));
      storeQk.push(cond ? `if (${cond}) { ${writes.join(" ")} }` : writes.join("\n"));
    }
  }
  const fetchV: string[] = [], storeV: string[] = [];
  for (let l = 0; l < vRounds; l++) {
    const reg = `g${l}`;
    declare.push(`var ${reg} = vec4<f32>(0.0);`);
    const u = l === 0 ? "lid" : `(lid + ${l * t.threads}u)`;
    const partial = (l + 1) * t.threads > vUnits;
    const open = partial ? `if (${u} < ${vUnits}u) { ` : "", close = partial ? " }" : "";
    const kk = `(${u} / ${dv4}u)`, g = `(${u} % ${dv4}u)`;
    fetchV.push(`${open}${reg} = v[min(j0 + ${kk}, kLast) * params.kvRow4 + vCol4 + ${g}];${close}`);
    storeV.push(`${open}v_tile[base][${kk}][${g} / NTX][${g} % NTX] = ${reg};${close}`);
  }

  const clear = T.flatMap((r) => J.map((j) => `s_${r}_${j} = vec4<f32>(0.0);`));

  // Slab of flat row 2·DK·st + r of a q·kᵀ stage.
  const slab = (r: number) => `st * ${(2 * t.dStep) / lay.rows}u + ${Math.floor(r / lay.rows)}u`;
  const computeQk = range(t.dStep).map((d) =>
    lines([
      "{",
      ...I.map((i) => `let a${i} = qkp[${slab(d)}][${d % lay.rows}][${i}u * NTY + ty];`),
      ...J.map((j) => `let b${j} = qkp[${slab(t.dStep + d)}][${(t.dStep + d) % lay.rows}][${j}u * NTX + tx];`),
      ...T.flatMap((r) => J.map((j) => `s_${r}_${j} = fma(vec4<f32>(a${r >> 2}.${LANES[r & 3]}), b${j}, s_${r}_${j});`)),
      "}",
    ])
  );

  const mask = [
    ...J.flatMap((j) => [
      `let key${j} = vec4<u32>(k0 + ${4 * j}u * NTX + 4u * tx) + vec4<u32>(0u, 1u, 2u, 3u);`,
      `let in${j} = key${j} < vec4<u32>(kEnd);`,
      `var kb${j} = vec4<u32>(0u);`,
      `if (GROUP_MASK) { kb${j} = vec4<u32>(${LANES.map((c) => `keyBits[min(key${j}.${c}, kLast)]`).join(", ")}); }`,
    ]),
    // Rows' rule bits are read only where one of the thread's keys carries a rule.
    `let ruled = GROUP_MASK && (${J.map((j) => `any(kb${j} != vec4<u32>(0u))`).join(" || ")});`,
    ...T.map((r) =>
      lines([
        "{",
        `let rowIndex = ${row(r)};`,
        "var qb = 0u;",
        `if (ruled) { qb = queryBits[min(rowIndex, qLast)]; }`,
        ...J.flatMap((j) => [
          `var visible${j} = in${j};`,
          `if (params.causal != 0u) { visible${j} = visible${j} & (key${j} <= vec4<u32>(rowIndex)); }`,
          `if (ruled) { visible${j} = visible${j} & ((kb${j} & vec4<u32>(qb)) == vec4<u32>(0u)); }`,
          `s_${r}_${j} = select(vec4<f32>(MASKED), s_${r}_${j}, visible${j});`,
        ]),
        "}",
      ])
    ),
  ];

  const rowMaxOf = (r: number) => reduceTree(J.map((j) => `s_${r}_${j}`), (a, b) => `max(${a}, ${b})`);
  const rowMax = I.map((i) => {
    const maxes = range(4).map((e) => {
      const v = rowMaxOf(4 * i + e);
      return `max(max(${v}.x, ${v}.y), max(${v}.z, ${v}.w))`;
    });
    return `${red("tx", i)} = vec4<f32>(${maxes.join(", ")});`;
  });

  const softmax = [
    ...I.map((i) => `let mx${i} = ${reduceTree(X.map((x) => red(x, i)), (a, b) => `max(${a}, ${b})`)};`),
    ...T.map((r) =>
      lines([
        "{",
        `let mNew = max(m_${r}, mx${r >> 2}.${LANES[r & 3]});`,
        `let alpha = exp2(m_${r} - mNew);`,
        `m_${r} = mNew;`,
        ...J.map((j) =>
          `s_${r}_${j} = select(vec4<f32>(0.0), exp2(s_${r}_${j} - vec4<f32>(mNew)), s_${r}_${j} > vec4<f32>(VISIBLE_FLOOR));`
        ),
        `l_${r} = l_${r} * alpha + ${reduceTree(J.map((j) => `dot(s_${r}_${j}, vec4<f32>(1.0))`), (a, b) => `(${a} + ${b})`)};`,
        ...U.map((u) => `o_${r}_${u} = o_${r}_${u} * alpha;`),
        "}",
      ])
    ),
    ...J.flatMap((j) =>
      LANES.flatMap((c, e) => [
        "{",
        `let key = ${4 * j}u * NTX + 4u * tx + ${e}u;`,
        `let pRow = P_OFF + key / KPR;`,
        `let pCol = (key % KPR) * ${t.blockQ / 4}u + ty;`,
        ...I.map((i) =>
          `qkp[pRow / QH][pRow % QH][pCol + ${i}u * NTY] = vec4<f32>(${range(4).map((r) => `s_${4 * i + r}_${j}.${c}`).join(", ")});`
        ),
        "}",
      ])
    ),
  ];

  const computePv = range(t.keyStep).map((kk) =>
    lines([
      "{",
      ...I.map((i) => {
        const r = Math.floor(kk / lay.keysPerRow), col = (kk % lay.keysPerRow) * (t.blockQ / 4) + i * (t.blockQ / t.rowsPerThread);
        const slab = `P_OFF / QH + vs * ${t.keyStep / lay.keysPerRow / lay.rows}u + ${Math.floor(r / lay.rows)}u`;
        return `let p${i} = qkp[${slab}][${r % lay.rows}][${col}u + ty];`;
      }),
      ...U.map((u) => `let w${u} = v_tile[st][${kk}][${u}][tx];`),
      ...T.flatMap((r) => U.map((u) => `o_${r}_${u} = fma(vec4<f32>(p${r >> 2}.${LANES[r & 3]}), w${u}, o_${r}_${u});`)),
      "}",
    ])
  );

  const storeSums = I.map((i) => `${red("tx", i)} = vec4<f32>(${range(4).map((e) => `l_${4 * i + e}`).join(", ")});`);

  const writeOutput = [
    ...I.map((i) => `let sum${i} = ${reduceTree(X.map((x) => red(x, i)), (a, b) => `(${a} + ${b})`)};`),
    ...T.map((r) =>
      lines([
        "{",
        `let rowIndex = ${row(r)};`,
        "if (rowIndex < params.sq) {",
        `let sum = sum${r >> 2}.${LANES[r & 3]};`,
        "let inv = select(0.0, 1.0 / sum, sum > 0.0);",
        ...U.map((u) => `out[rowIndex * params.qRow4 + outCol4 + ${u}u * NTX + tx] = o_${r}_${u} * inv;`),
        "}",
        "}",
      ])
    ),
  ];

  return {
    RED_TILE: redTile,
    POSITION: threadPositionLines(t.warpCols, "NTX"),
    DECLARE: lines(declare),
    FETCH_QK: lines(fetchQk),
    STORE_QK: lines(storeQk),
    FETCH_V: lines(fetchV),
    STORE_V: lines(storeV),
    CLEAR_SCORES: lines(clear),
    COMPUTE_QK: lines(computeQk),
    MASK: lines(mask),
    ROW_MAX: lines(rowMax),
    SOFTMAX: lines(softmax),
    COMPUTE_PV: lines(computePv),
    STORE_SUMS: lines(storeSums),
    WRITE_OUTPUT: lines(writeOutput),
  };
}

/** Workgroup memory of a configuration for a head dim, in bytes (mirrors the declarations in attention.wgsl). */
export function attentionWorkgroupBytes(c: AttentionConfig, headDim: number): number {
  const t = attentionTiles(c, headDim);
  const lay = attentionQkpLayout(t);
  const qkp = 4 * lay.slabs * lay.rows * lay.width, v = 2 * t.keyStep * t.dv;
  const red = attentionRedInVTile(t) ? 0 : t.threadsPerRow * t.blockQ;
  return (qkp + v + red) * 4;
}

// ---- Tile choice ----------------------------------------------------------------------------------------------

/** kernels/attention_tuned.json: device class → head dim → configuration. */
export type AttentionTuningTable = TuningTable<AttentionConfig>;

/** The built-in table. Its nvidia-datacenter entries are the sweep winners measured on an H100 80GB HBM3 (bench
 * attention --sweep, bench/results/attention*.txt), the best known for NVIDIA's datacenter parts; head dim 128 then
 * took warps of 4 × 8 threads, 3% faster on an H200 (bench/results/tiles_tried_h200.txt). */
export const BUILTIN_ATTENTION_TILES: AttentionTuningTable = checkTuningTable<AttentionConfig>(
  builtinTiles,
  "kernels/attention_tuned.json",
  "head dim",
  (config, dim, where) => attentionTiles(config, Number(dim), where),
);

/** Read and check a tuning file in the layout of kernels/attention_tuned.json; a missing file means none. */
export function loadAttentionTuning(file: URL): AttentionTuningTable {
  return readTuningFile<AttentionConfig>(file, "head dim", (config, dim, where) => attentionTiles(config, Number(dim), where));
}

/** Whether a configuration fits the device's workgroup memory (null: the 32 KiB the defaults assume). */
export function attentionConfigFits(c: AttentionConfig, headDim: number, device: DeviceCapabilities | null): boolean {
  return attentionWorkgroupBytes(c, headDim) <= (device?.limits.maxComputeWorkgroupStorageSize ?? 32768);
}

/** The configuration attention() uses for this head dim on a device (null: the default): the tiles tuned for the
 * adapter, else the built-in entry for its device class, else softwareAttentionConfig on a software adapter, else
 * defaultAttentionConfig. */
export function attentionConfigFor(device: DeviceCapabilities | null, headDim: number): AttentionConfig {
  if (device) {
    const tuned = device.tiles.attention?.[String(headDim)] as AttentionConfig | undefined;
    for (const c of [tuned, BUILTIN_ATTENTION_TILES[device.deviceClass]?.[String(headDim)]]) {
      if (c && attentionConfigFits(c, headDim, device)) return { ...c };
    }
    if (device.software) return softwareAttentionConfig(headDim);
  }
  return defaultAttentionConfig(headDim);
}

// ---- Kernel declaration ---------------------------------------------------------------------------------------

export const attentionKernel: KernelSpec = {
  name: "attention",
  source: new URL("./attention.wgsl", import.meta.url),
  bindings: [
    { name: "q", type: "array<vec4<f32>>", access: "read" },
    { name: "k", type: "array<vec4<f32>>", access: "read" },
    { name: "v", type: "array<vec4<f32>>", access: "read" },
    { name: "queryBits", type: "array<u32>", access: "read" },
    { name: "keyBits", type: "array<u32>", access: "read" },
    { name: "out", type: "array<vec4<f32>>", access: "read_write" },
  ],
  params: [
    { name: "sq", type: "u32" },
    { name: "keyEnd", type: "u32" },
    { name: "causal", type: "u32" },
    { name: "qRow4", type: "u32" },
    { name: "kvRow4", type: "u32" },
    { name: "groupSize", type: "u32" },
    { name: "dChunks", type: "u32" },
    { name: "scaleLog2", type: "f32" },
  ],
  // The variant holds the tile values attentionTiles derived (DK clamped to the head dim, DV a valid chunk), so
  // deriving again from them gives the same tiles.
  expand: (v) =>
    attentionCodeBlocks(
      attentionTiles({
        blockQ: Number(v.BQ),
        rowsPerThread: Number(v.TR),
        threadsPerRow: Number(v.NTX),
        keysPerThread: Number(v.TK),
        dStep: Number(v.DK),
        keyStep: Number(v.KS),
        maxDv: Number(v.DV),
        ...(Number(v.WARP_COLS) > 0 ? { warpCols: Number(v.WARP_COLS) } : {}),
      }, Number(v.D)),
    ),
};

// ---- Builders -------------------------------------------------------------------------------------------------

/** out[Sq, H·D] = softmax(q·kᵀ·scale + mask)·v per head. Returns the output tensor id. */
export function attention(g: Graph, name: string, args: AttentionArgs): number {
  const { q, k, v, heads, kvHeads, headDim } = args;
  for (const [label, value] of [["heads", heads], ["kvHeads", kvHeads], ["headDim", headDim]] as const) {
    if (!Number.isInteger(value) || value <= 0) throw new Error(`${name}: ${label} must be a positive integer, got ${value}`);
  }
  if (heads % kvHeads !== 0) throw new Error(`${name}: heads (${heads}) must be a multiple of kvHeads (${kvHeads})`);
  const qs = g.get(q), ks = g.get(k), vs = g.get(v);
  for (const t of [qs, ks, vs]) {
    if (t.dtype !== "f32") throw new Error(`${name}: ${t.name} must be f32, got ${t.dtype}`);
    if (t.shape.length !== 2) throw new Error(`${name}: ${t.name} must be 2-D [tokens, heads·headDim], got ${shapeString(t.shape)}`);
  }
  const [sq, qCols] = qs.shape;
  const [sk, kCols] = ks.shape;
  if (qCols !== heads * headDim) {
    throw new Error(
      `${name}: q ${qs.name} ${shapeString(qs.shape)} must have heads·headDim = ${heads}·${headDim} = ${heads * headDim} columns`,
    );
  }
  if (kCols !== kvHeads * headDim) {
    throw new Error(
      `${name}: k ${ks.name} ${shapeString(ks.shape)} must have kvHeads·headDim = ${kvHeads}·${headDim} = ${kvHeads * headDim} columns`,
    );
  }
  if (vs.shape[0] !== sk || vs.shape[1] !== kCols) {
    throw new Error(`${name}: v ${vs.name} ${shapeString(vs.shape)} must match k ${ks.name} ${shapeString(ks.shape)}`);
  }
  const keyLength = args.keyLength ?? sk;
  if (!Number.isInteger(keyLength) || keyLength < 1 || keyLength > sk) {
    throw new Error(`${name}: keyLength must be an integer in [1, ${sk}], got ${args.keyLength}`);
  }
  const scale = args.scale ?? 1 / Math.sqrt(headDim);
  if (!Number.isFinite(scale)) throw new Error(`${name}: scale must be finite, got ${scale}`);
  if (args.groupMask) checkGroupMaskTensors(g, name, args.groupMask, sq, sk);

  let out: number;
  if (args.out !== undefined) {
    const os = g.get(args.out);
    if (os.dtype !== "f32" || os.shape.length !== 2 || os.shape[0] !== sq || os.shape[1] !== qCols) {
      throw new Error(`${name}: out ${os.name} must be f32 [${sq}×${qCols}], got ${os.dtype} ${shapeString(os.shape)}`);
    }
    out = args.out;
  } else {
    out = g.activation(name, [sq, qCols]);
  }

  // Without an explicit configuration the node starts with the default, and the plan compiler swaps in the one
  // chosen for its device.
  const tileChoice = (device: DeviceCapabilities | null) => {
    const tiles = attentionTiles(args.config ?? attentionConfigFor(device, headDim), headDim, name);
    const dChunks = headDim / tiles.dv;
    const qkp = attentionQkpLayout(tiles);
    const queryBlocks = ceilDiv(sq, tiles.blockQ);
    if (queryBlocks > MAX_WORKGROUPS_PER_DIM || heads * dChunks > MAX_WORKGROUPS_PER_DIM) {
      throw new Error(
        `${name}: ${queryBlocks} query blocks × ${heads * dChunks} head chunks exceed ${MAX_WORKGROUPS_PER_DIM} workgroups per dimension`,
      );
    }
    return {
      variant: {
        BQ: tiles.blockQ,
        TR: tiles.rowsPerThread,
        NTX: tiles.threadsPerRow,
        TK: tiles.keysPerThread,
        DK: tiles.dStep,
        KS: tiles.keyStep,
        DV: tiles.dv,
        QH: qkp.rows,
        QW: qkp.width,
        QN: qkp.slabs,
        P_OFF: qkp.pOffset,
        KPR: qkp.keysPerRow,
        WARP_COLS: tiles.warpCols ?? 0,
      },
      params: { dChunks },
      workgroups: [queryBlocks, heads * dChunks, 1] as [number, number, number],
    };
  };
  const initial = tileChoice(null);
  const flops = 4 * sq * sk * headDim * heads;
  g.add({
    name,
    kernel: attentionKernel,
    variant: { D: headDim, ...initial.variant, GROUP_MASK: args.groupMask !== undefined },
    // Without a group mask, q stands in for the bit bindings (the shader never reads them).
    bindings: { q, k, v, queryBits: args.groupMask?.queryBits ?? q, keyBits: args.groupMask?.keyBits ?? q, out },
    params: {
      sq,
      keyEnd: keyLength,
      causal: args.causal ? 1 : 0,
      qRow4: qCols / 4,
      kvRow4: kCols / 4,
      groupSize: heads / kvHeads,
      dChunks: initial.params.dChunks,
      scaleLog2: scale * Math.LOG2E,
    },
    workgroups: initial.workgroups,
    flops: args.causal ? flops / 2 : flops,
    chooseTiles: args.config ? undefined : tileChoice,
  });
  return out;
}

function checkGroupMaskTensors(g: Graph, name: string, mask: { queryBits: number; keyBits: number }, sq: number, sk: number): void {
  for (const [label, id, n] of [["queryBits", mask.queryBits, sq], ["keyBits", mask.keyBits, sk]] as const) {
    const t = g.get(id);
    if (t.dtype !== "u32" || g.elementCount(id) !== n) {
      throw new Error(`${name}: group mask ${label} ${t.name} must be u32 with ${n} elements, got ${t.dtype} ${shapeString(t.shape)}`);
    }
  }
}

/** Attach (or replace) a group mask on an attention node already in the graph: the knockout rewrite. */
export function setAttentionGroupMask(g: Graph, nodeName: string, mask: { queryBits: number; keyBits: number }): GraphNode {
  const node = g.nodes.find((n) => n.name === nodeName);
  if (!node) throw new Error(`no node named ${nodeName} in the graph`);
  if (node.kernel !== attentionKernel) throw new Error(`node ${nodeName} is a ${node.kernel.name} node, not attention`);
  const sq = node.params.sq;
  const sk = g.shape(node.bindings.k)[0];
  checkGroupMaskTensors(g, nodeName, mask, sq, sk);
  node.variant = { ...node.variant, GROUP_MASK: true };
  node.bindings = { ...node.bindings, queryBits: mask.queryBits, keyBits: mask.keyBits };
  return node;
}

// ---- Mask rules on the host -----------------------------------------------------------------------------------

/** Pack up to 32 knockout rules into per-token bits: rule r sets bit r on its queries and on its keys. */
export function groupMaskBits(sq: number, sk: number, rules: GroupRule[]): GroupMaskBits {
  if (rules.length > MAX_RULES) {
    throw new Error(`group mask: ${rules.length} rules given, at most ${MAX_RULES} fit in the 32 bits per token`);
  }
  const queryBits = new Uint32Array(sq), keyBits = new Uint32Array(sk);
  rules.forEach((rule, r) => {
    const bit = (1 << r) >>> 0;
    for (const [label, list, n, bits] of [["queries", rule.queries, sq, queryBits], ["keys", rule.keys, sk, keyBits]] as const) {
      for (const i of list) {
        if (!Number.isInteger(i) || i < 0 || i >= n) throw new Error(`group mask rule ${r}: ${label} index ${i} is outside [0, ${n})`);
        bits[i] |= bit;
      }
    }
  });
  return { queryBits, keyBits };
}

/** Mask rules as the host sees them, to check before a run. */
export interface AttentionMaskRules {
  causal?: boolean;
  keyLength?: number;
  /** Knockout rules, or their packed bits. */
  rules?: GroupRule[];
  bits?: GroupMaskBits;
}

/** Query indices that would see no key at all. Keys are grouped by bit pattern, so the cost is
 * O(Sq + Sk + distinct query patterns × distinct key patterns), not O(Sq·Sk). */
export function fullyMaskedQueries(sq: number, sk: number, mask: AttentionMaskRules = {}): number[] {
  const keyEnd = Math.min(sk, mask.keyLength ?? sk);
  const bits = mask.bits ?? (mask.rules ? groupMaskBits(sq, sk, mask.rules) : null);
  if (bits && (bits.queryBits.length !== sq || bits.keyBits.length !== sk)) {
    throw new Error(
      `fullyMaskedQueries: bits cover ${bits.queryBits.length} queries and ${bits.keyBits.length} keys, expected ${sq} and ${sk}`,
    );
  }
  // The keys visible before rules form a prefix [0, end); a query is fully masked iff every key pattern that first
  // occurs inside its prefix shares a bit with the query's pattern.
  const firstKeyOfPattern = new Map<number, number>();
  if (bits) {
    for (let j = 0; j < keyEnd; j++) {
      if (!firstKeyOfPattern.has(bits.keyBits[j])) firstKeyOfPattern.set(bits.keyBits[j], j);
    }
  }
  const firstVisibleByQueryPattern = new Map<number, number>();
  const firstVisibleKey = (pattern: number): number => {
    let first = firstVisibleByQueryPattern.get(pattern);
    if (first === undefined) {
      first = Infinity;
      for (const [keyPattern, j] of firstKeyOfPattern) if ((keyPattern & pattern) === 0 && j < first) first = j;
      firstVisibleByQueryPattern.set(pattern, first);
    }
    return first;
  };
  const masked: number[] = [];
  for (let i = 0; i < sq; i++) {
    const end = mask.causal ? Math.min(keyEnd, i + 1) : keyEnd;
    const first = bits ? firstVisibleKey(bits.queryBits[i]) : 0;
    if (first >= end) masked.push(i);
  }
  return masked;
}
