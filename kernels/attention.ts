// Flash attention with masks given as rules (causal, right padding, token-group knockout), never as an S×S tensor.
// One WGSL family; the variant key is the head dimension, the tile configuration and whether a group mask is bound.
// The tile configuration comes from the caller, else from kernels/attention_tuned.json for the device chosen with
// setAttentionDevice, else from a default that fits 32 KiB of workgroup memory.
//
// A query row whose keys are all masked has no probability mass: the kernel writes zeros for it rather than NaN.
// Such a mask is almost always a mistake, so callers refuse it beforehand with fullyMaskedQueries().

import type { Graph, GraphNode } from "../runtime/graph.ts";
import { ceilDiv, type KernelSpec, MAX_WORKGROUPS_PER_DIM } from "../runtime/kernel.ts";
import { shapeString } from "../runtime/tensor.ts";
import { readTuningFile, type TuningTable } from "./tuning_file.ts";

/** Tile configuration. Threads form (blockQ / rowsPerThread) query groups × keyGroups key groups. */
export interface AttentionConfig {
  /** Query rows per workgroup (multiple of rowsPerThread). */
  blockQ: number;
  /** Query rows each thread owns: 4 (default) or 8 (fewer shared-memory reads per multiply-add, more registers). */
  rowsPerThread?: 4 | 8;
  /** Threads along the keys: a key block holds 4·keyGroups keys, and the same threads split the output columns. */
  keyGroups: number;
  /** Head-dim columns of q and k staged per step of q·kᵀ; equal to the head dim, q stays staged for all key blocks. */
  dChunk: number;
  /** Keys of v staged per step of p·v (divides the key block). */
  keyChunk: number;
  /** Most output columns per workgroup; larger head dims are split over workgroups that each recompute the scores. */
  maxDv: number;
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
  /** Tile configuration; default: tuned for the active device and head dim, else defaultAttentionConfig(headDim). */
  config?: AttentionConfig;
}

const MAX_THREADS = 256;
const MAX_OUTPUT_REGISTERS = 128;
const MAX_RULES = 32;

// ---- Configurations -------------------------------------------------------------------------------------------

/** A configuration that fits 32 KiB of workgroup memory and 256 threads, for any head dim that is a multiple of 4. */
export function defaultAttentionConfig(headDim: number): AttentionConfig {
  if (headDim % 32 === 0) return { blockQ: 64, keyGroups: 8, dChunk: 32, keyChunk: 32, maxDv: 128 };
  if (headDim % 16 === 0) return { blockQ: 64, keyGroups: 4, dChunk: 16, keyChunk: 16, maxDv: 128 };
  return { blockQ: 64, keyGroups: 1, dChunk: 4, keyChunk: 4, maxDv: 128 };
}

/** The configurations a tuning sweep tries for head dims that are multiples of 32 (too large ones are skipped). */
export const ATTENTION_SWEEP_CONFIGS: readonly Readonly<AttentionConfig>[] = [
  { blockQ: 64, keyGroups: 8, dChunk: 32, keyChunk: 32, maxDv: 128 },
  { blockQ: 64, keyGroups: 8, dChunk: 64, keyChunk: 32, maxDv: 128 },
  { blockQ: 128, keyGroups: 8, dChunk: 32, keyChunk: 32, maxDv: 128 },
  { blockQ: 128, keyGroups: 8, dChunk: 16, keyChunk: 16, maxDv: 128 },
  { blockQ: 64, keyGroups: 16, dChunk: 32, keyChunk: 32, maxDv: 128 },
  { blockQ: 64, keyGroups: 16, dChunk: 16, keyChunk: 16, maxDv: 128 },
  { blockQ: 32, keyGroups: 8, dChunk: 128, keyChunk: 32, maxDv: 128 },
  { blockQ: 64, keyGroups: 8, dChunk: 32, keyChunk: 32, maxDv: 64 },
  { blockQ: 32, keyGroups: 8, dChunk: 32, keyChunk: 32, maxDv: 128 },
  { blockQ: 64, keyGroups: 4, dChunk: 32, keyChunk: 16, maxDv: 128 },
  { blockQ: 128, keyGroups: 4, dChunk: 32, keyChunk: 16, maxDv: 128 },
  { blockQ: 64, rowsPerThread: 8, keyGroups: 16, dChunk: 32, keyChunk: 32, maxDv: 128 },
  { blockQ: 64, rowsPerThread: 8, keyGroups: 16, dChunk: 16, keyChunk: 16, maxDv: 128 },
  { blockQ: 128, rowsPerThread: 8, keyGroups: 8, dChunk: 32, keyChunk: 32, maxDv: 128 },
  { blockQ: 64, rowsPerThread: 8, keyGroups: 8, dChunk: 32, keyChunk: 32, maxDv: 128 },
  { blockQ: 128, rowsPerThread: 8, keyGroups: 8, dChunk: 32, keyChunk: 16, maxDv: 64 },
];

/** The shader's compile-time sizes for one head dim. */
export interface AttentionTiles {
  headDim: number;
  blockQ: number;
  rowsPerThread: 4 | 8;
  keyGroups: number;
  blockK: number;
  dChunk: number;
  keyChunk: number;
  /** Output columns per workgroup. */
  dv: number;
  threads: number;
}

export function attentionConfigName(c: AttentionConfig): string {
  return `q${c.blockQ}${c.rowsPerThread === 8 ? "r8" : ""}.kg${c.keyGroups}.dc${c.dChunk}.kc${c.keyChunk}.dv${c.maxDv}`;
}

/** Resolve a configuration against a head dim; throws when the shader cannot be instantiated with it. */
export function attentionTiles(c: AttentionConfig, headDim: number, where = "attention"): AttentionTiles {
  const name = `${where}: configuration ${JSON.stringify(c)} for head dim ${headDim}`;
  for (const key of ["blockQ", "keyGroups", "dChunk", "keyChunk", "maxDv"] as const) {
    if (!Number.isInteger(c[key]) || c[key] <= 0) throw new Error(`${name}: ${key} must be a positive integer, got ${c[key]}`);
  }
  if (!Number.isInteger(headDim) || headDim <= 0 || headDim % 4 !== 0) {
    throw new Error(`${where}: head dim must be a positive multiple of 4, got ${headDim}`);
  }
  const rowsPerThread = c.rowsPerThread ?? 4;
  if (rowsPerThread !== 4 && rowsPerThread !== 8) throw new Error(`${name}: rowsPerThread must be 4 or 8`);
  if (c.blockQ % rowsPerThread !== 0) throw new Error(`${name}: blockQ must be a multiple of rowsPerThread (${rowsPerThread})`);
  const blockK = 4 * c.keyGroups;
  const dChunk = Math.min(c.dChunk, headDim);
  if (dChunk % 4 !== 0 || headDim % dChunk !== 0) throw new Error(`${name}: dChunk must be a multiple of 4 that divides the head dim`);
  if (blockK % c.keyChunk !== 0) throw new Error(`${name}: keyChunk must divide the key block of ${blockK}`);
  const colGroup = 4 * c.keyGroups;
  if (headDim % colGroup !== 0) throw new Error(`${name}: the head dim must be a multiple of 4·keyGroups = ${colGroup}`);
  // Widest divisor of the head dim that is a multiple of 4·keyGroups and at most maxDv.
  let dv = colGroup;
  for (let t = headDim / colGroup; t >= 1; t--) {
    if ((headDim / colGroup) % t === 0 && colGroup * t <= Math.max(c.maxDv, colGroup)) {
      dv = colGroup * t;
      break;
    }
  }
  const threads = (c.blockQ / rowsPerThread) * c.keyGroups;
  if (threads > MAX_THREADS) throw new Error(`${name}: needs ${threads} threads per workgroup, more than ${MAX_THREADS}`);
  const accumulators = rowsPerThread * (dv / c.keyGroups);
  if (accumulators > MAX_OUTPUT_REGISTERS) {
    throw new Error(`${name}: ${accumulators} output accumulators per thread exceed ${MAX_OUTPUT_REGISTERS}; lower maxDv or rowsPerThread`);
  }
  return { headDim, blockQ: c.blockQ, rowsPerThread, keyGroups: c.keyGroups, blockK, dChunk, keyChunk: c.keyChunk, dv, threads };
}

// ---- Register-level code ---------------------------------------------------------------------------------------

const LANES = ["x", "y", "z", "w"] as const;

/** Balanced reduction of terms with a binary WGSL function or operator, e.g. max(max(a, b), max(c, d)). */
function reduceTree(terms: string[], combine: (a: string, b: string) => string): string {
  if (terms.length === 1) return terms[0];
  const half = Math.ceil(terms.length / 2);
  return combine(reduceTree(terms.slice(0, half), combine), reduceTree(terms.slice(half), combine));
}

/**
 * The per-thread code of attention.wgsl for one tile configuration, fully unrolled over the thread's rows, keys, output
 * columns and the staged head-dim columns and keys, with one named variable per register: private arrays indexed in
 * loops (and vectors indexed by loop counters) would be kept in local memory rather than registers. Keys are the
 * template's {{...}} blocks. The group-mask decision stays in the GROUP_MASK constant, so that setAttentionGroupMask
 * can switch it on an existing node.
 */
export function attentionRegisterCode(t: AttentionTiles): Record<string, string> {
  const rows = t.rowsPerThread, rv = rows / 4, nu = t.dv / 4 / t.keyGroups;
  const T = [...Array(rows).keys()], U = [...Array(nu).keys()], H = [...Array(rv).keys()], G = [...Array(t.keyGroups).keys()];
  const rowExpr = (r: number) => `firstRow + ${r}u`;
  const partialAt = (r: number, g: string) => `partial[(${rowExpr(r)}) * NKG + ${g}]`;
  const lines = (xs: string[]) => xs.join("\n");

  const declare = [
    ...T.map((r) => `var qb_${r} = 0u;`),
    "if (GROUP_MASK) {",
    ...T.map((r) => `if (q0 + ${rowExpr(r)} < params.sq) { qb_${r} = queryBits[q0 + ${rowExpr(r)}]; }`),
    "}",
    ...T.map((r) => `var m_${r} = MASKED;`),
    ...T.map((r) => `var l_${r} = 0.0;`),
    ...T.flatMap((r) => U.map((u) => `var o_${r}_${u} = vec4<f32>(0.0);`)),
  ];

  const clear = T.map((r) => `var s_${r} = vec4<f32>(0.0);`);

  // One head-dim index d: b holds the thread's four keys, a_h rows 4h..4h+3.
  const qk = [...Array(t.dChunk).keys()].map((d) =>
    lines([
      "{",
      `let b = stage[QT_SIZE + ${d}u * BK4 + kg];`,
      ...H.map((h) => `let a${h} = stage[${d}u * BQ4 + firstSlot + ${h}u];`),
      ...H.flatMap((h) => LANES.map((c, e) => `s_${4 * h + e} = fma(vec4<f32>(a${h}.${c}), b, s_${4 * h + e});`)),
      "}",
    ])
  );

  const mask = T.map((r) =>
    lines([
      "{",
      "var visible = keyInRange;",
      `if (params.causal != 0u) { visible = visible & (keyIndex <= vec4<u32>(q0 + ${rowExpr(r)})); }`,
      `if (GROUP_MASK) { visible = visible & ((keyBitsOfKey & vec4<u32>(qb_${r})) == vec4<u32>(0u)); }`,
      `s_${r} = select(vec4<f32>(MASKED), s_${r} * params.scaleLog2, visible);`,
      `${partialAt(r, "kg")} = rowMax(s_${r});`,
      "}",
    ])
  );

  const softmax = [
    ...T.map((r) =>
      lines([
        "{",
        `let mNew = max(m_${r}, ${reduceTree(G.map((g) => partialAt(r, `${g}u`)), (a, b) => `max(${a}, ${b})`)});`,
        `let alpha = exp2(m_${r} - mNew);`,
        `m_${r} = mNew;`,
        `s_${r} = select(vec4<f32>(0.0), exp2(s_${r} - vec4<f32>(mNew)), s_${r} > vec4<f32>(VISIBLE_FLOOR));`,
        `l_${r} = l_${r} * alpha + ((s_${r}.x + s_${r}.y) + (s_${r}.z + s_${r}.w));`,
        ...U.map((u) => `o_${r}_${u} = o_${r}_${u} * alpha;`),
        "}",
      ])
    ),
    ...LANES.flatMap((c, e) =>
      H.map((h) =>
        `probs[(kg + ${e}u * NKG) * BQ4 + firstSlot + ${h}u] = vec4<f32>(${[0, 1, 2, 3].map((i) => `s_${4 * h + i}.${c}`).join(", ")});`
      )
    ),
  ];

  // One key j of the staged v chunk: p_h holds the probabilities of rows 4h..4h+3, v_u output column kg + NKG·u.
  const pv = [...Array(t.keyChunk).keys()].map((j) =>
    lines([
      "{",
      ...H.map((h) => `let p${h} = probs[(kc0 + ${j}u) * BQ4 + firstSlot + ${h}u];`),
      ...U.map((u) => `let v${u} = stage[V_OFFSET + ${j}u * DV4 + kg + ${u}u * NKG];`),
      ...H.flatMap((h) =>
        LANES.flatMap((c, e) => U.map((u) => `o_${4 * h + e}_${u} = fma(vec4<f32>(p${h}.${c}), v${u}, o_${4 * h + e}_${u});`))
      ),
      "}",
    ])
  );

  const storeSums = T.map((r) => `${partialAt(r, "kg")} = l_${r};`);

  const writeOutput = T.map((r) =>
    lines([
      "{",
      `let row = q0 + ${rowExpr(r)};`,
      "if (row < params.sq) {",
      `let sum = ${reduceTree(G.map((g) => partialAt(r, `${g}u`)), (a, b) => `(${a} + ${b})`)};`,
      "let inv = select(0.0, 1.0 / sum, sum > 0.0);",
      ...U.map((u) => `out[row * params.qRow4 + outCol4 + kg + ${u}u * NKG] = o_${r}_${u} * inv;`),
      "}",
      "}",
    ])
  );

  return {
    DECLARE_REGISTERS: lines(declare),
    CLEAR_SCORES: lines(clear),
    QK_CHUNK: lines(qk),
    MASK_SCORES: lines(mask),
    SOFTMAX: lines(softmax),
    PV_CHUNK: lines(pv),
    STORE_SUMS: lines(storeSums),
    WRITE_OUTPUT: lines(writeOutput),
  };
}

/** Workgroup memory of a configuration for a head dim, in bytes (mirrors the declarations in attention.wgsl). */
export function attentionWorkgroupBytes(c: AttentionConfig, headDim: number): number {
  const t = attentionTiles(c, headDim);
  const qt = t.dChunk * (t.blockQ / 4), kt = t.dChunk * (t.blockK / 4), vs = t.keyChunk * (t.dv / 4);
  const vOffset = t.dChunk === headDim ? qt : 0;
  const stage = Math.max(qt + kt, vOffset + vs);
  const probs = t.blockK * (t.blockQ / 4);
  return (stage + probs) * 16 + t.blockQ * t.keyGroups * 4;
}

// ---- Tuned configurations -------------------------------------------------------------------------------------

/** kernels/attention_tuned.json: device description → head dim → configuration. */
export type AttentionTuningTable = TuningTable<AttentionConfig>;

const TUNING_FILE = new URL("./attention_tuned.json", import.meta.url);
let tuningTable: AttentionTuningTable | null = null;
let activeDevice: { description: string; workgroupBytes: number } | null = null;

/** Read a tuning file; a missing file means no tuned configurations. */
export function loadAttentionTuning(file: URL = TUNING_FILE): AttentionTuningTable {
  return readTuningFile<AttentionConfig>(file, "head dim", (config, dim, where) => attentionTiles(config, Number(dim), where));
}

/** Replace the tuning table (null: read kernels/attention_tuned.json again on next use). */
export function setAttentionTuning(table: AttentionTuningTable | null): void {
  tuningTable = table;
}

/** Choose the device whose tuned configurations attention() uses (null: defaults only). */
export function setAttentionDevice(gpu: { adapterDescription: string; limits: { maxComputeWorkgroupStorageSize: number } } | null): void {
  activeDevice = gpu ? { description: gpu.adapterDescription, workgroupBytes: gpu.limits.maxComputeWorkgroupStorageSize } : null;
}

/** The configuration attention() uses for this head dim on the active device. */
export function attentionConfigFor(headDim: number): AttentionConfig {
  if (activeDevice) {
    tuningTable ??= loadAttentionTuning();
    const tuned = tuningTable[activeDevice.description]?.[String(headDim)];
    if (tuned && attentionWorkgroupBytes(tuned, headDim) <= activeDevice.workgroupBytes) return { ...tuned };
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

  const tiles = attentionTiles(args.config ?? attentionConfigFor(headDim), headDim, name);
  const dChunks = headDim / tiles.dv;
  const queryBlocks = ceilDiv(sq, tiles.blockQ);
  if (queryBlocks > MAX_WORKGROUPS_PER_DIM || heads * dChunks > MAX_WORKGROUPS_PER_DIM) {
    throw new Error(
      `${name}: ${queryBlocks} query blocks × ${heads * dChunks} head chunks exceed ${MAX_WORKGROUPS_PER_DIM} workgroups per dimension`,
    );
  }
  const flops = 4 * sq * sk * headDim * heads;
  g.add({
    name,
    kernel: attentionKernel,
    variant: {
      D: headDim,
      BQ: tiles.blockQ,
      RV: tiles.rowsPerThread / 4,
      NKG: tiles.keyGroups,
      DC: tiles.dChunk,
      KC: tiles.keyChunk,
      DV: tiles.dv,
      GROUP_MASK: args.groupMask !== undefined,
      ...attentionRegisterCode(tiles),
    },
    // Without a group mask, q stands in for the bit bindings (the shader never reads them).
    bindings: { q, k, v, queryBits: args.groupMask?.queryBits ?? q, keyBits: args.groupMask?.keyBits ?? q, out },
    params: {
      sq,
      keyEnd: keyLength,
      causal: args.causal ? 1 : 0,
      qRow4: qCols / 4,
      kvRow4: kCols / 4,
      groupSize: heads / kvHeads,
      dChunks,
      scaleLog2: scale * Math.LOG2E,
    },
    workgroups: [queryBlocks, heads * dChunks, 1],
    flops: args.causal ? flops / 2 : flops,
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
