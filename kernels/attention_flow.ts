// Attention flow by token group: for one attention node, the softmax probability mass each query group sends to each
// key group, per head and averaged over heads, computed from the node's own q and k (after RoPE) under the node's own
// masks, without an S×S tensor. Group ids are u32 per token (at most MAX_FLOW_GROUPS groups on each side; an id at or
// past the group count, such as NO_FLOW_GROUP, puts the token in no group); queries and keys may use different
// partitions. See attention_flow.wgsl for the passes.
//
// Outputs (state tensors, named after the flow):
//   <name>.rows   f32 [H, Sq, Gk]     mass of each query row on each key group (rows with no visible key: zeros)
//   <name>.mass   f32 [H + 1, Gq, Gk] mean over each query group's rows; slice H is the mean over heads. An empty
//                                     query group's rows are zeros.
//   <name>.counts f32 [Gq]            rows of each query group (0 marks an empty group)
//   <name>.tokens f32 [H + 1, Sk]     only with tokenGroup: the mass each key receives, averaged over that query
//                                     group's rows; slice H is the mean over heads
// When the key groups cover every visible key, each row of `rows`, and each non-empty group's row of `mass`, sums to 1.
//
// The kernel binds 10 storage buffers (more than WebGPU's default of 8; every desktop adapter allows it, and
// runtime/device.ts requests the adapter's limit).

import type { Graph } from "../runtime/graph.ts";
import { ceilDiv, grid1d, type KernelSpec, MAX_WORKGROUPS_PER_DIM } from "../runtime/kernel.ts";
import { shapeString } from "../runtime/tensor.ts";
import { attentionKernel } from "./attention.ts";

/** Most groups on either side (the rows pass keeps four groups per thread, four threads per row). */
export const MAX_FLOW_GROUPS = 16;
/** The id of a token in no group. */
export const NO_FLOW_GROUP = 0xffffffff;

const BLOCK_Q = 64;
const BLOCK_K = 64;
const THREADS = 256;

export interface AttentionFlowGroups {
  /** u32 [Sq]: the query group of each query token. */
  queryGroups: number;
  /** Query groups Gq (1..16). */
  queryGroupCount: number;
  /** u32 [Sk]: the key group of each key token. */
  keyGroups: number;
  /** Key groups Gk (1..16). */
  keyGroupCount: number;
  /** A query group whose per-key masses are also wanted (output `tokens`). */
  tokenGroup?: number;
}

export interface AttentionFlowArgs extends AttentionFlowGroups {
  /** f32 [Sq, heads·headDim]: the attention node's queries, after RoPE. */
  q: number;
  /** f32 [Sk, kvHeads·headDim]: its keys, after RoPE. */
  k: number;
  heads: number;
  /** Default heads. */
  kvHeads?: number;
  headDim: number;
  /** Default 1/√headDim. */
  scale?: number;
  causal?: boolean;
  keyLength?: number;
  /** The node's knockout rule bits (u32 [Sq] and [Sk]), as attention() takes them. */
  groupMask?: { queryBits: number; keyBits: number };
}

export interface AttentionFlowOutputs {
  /** f32 [H, Sq, Gk]. */
  rows: number;
  /** f32 [H + 1, Gq, Gk]; slice H is the mean over heads. */
  mass: number;
  /** f32 [Gq]: rows per query group. */
  counts: number;
  /** f32 [H + 1, Sk], when a token group was asked for. */
  tokens?: number;
}

export const attentionFlowKernel: KernelSpec = {
  name: "attention_flow",
  source: new URL("./attention_flow.wgsl", import.meta.url),
  bindings: [
    { name: "q", type: "array<vec4<f32>>", access: "read" },
    { name: "k", type: "array<vec4<f32>>", access: "read" },
    { name: "queryBits", type: "array<u32>", access: "read" },
    { name: "keyBits", type: "array<u32>", access: "read" },
    { name: "queryGroups", type: "array<u32>", access: "read" },
    { name: "keyGroups", type: "array<u32>", access: "read" },
    { name: "rowsOut", type: "array<f32>", access: "read_write" },
    { name: "stats", type: "array<vec2<f32>>", access: "read_write" },
    { name: "result", type: "array<f32>", access: "read_write" },
    { name: "counts", type: "array<f32>", access: "read_write" },
  ],
  params: [
    { name: "sq", type: "u32" },
    { name: "sk", type: "u32" },
    { name: "keyEnd", type: "u32" },
    { name: "causal", type: "u32" },
    { name: "qRow4", type: "u32" },
    { name: "kRow4", type: "u32" },
    { name: "groupSize", type: "u32" },
    { name: "heads", type: "u32" },
    { name: "groupsQ", type: "u32" },
    { name: "groupsK", type: "u32" },
    { name: "tokenGroup", type: "u32" },
    { name: "count", type: "u32" },
    { name: "scaleLog2", type: "f32" },
  ],
};

const PASSES = { rows: 0, tokens: 1, groups: 2, mean: 3 } as const;

/** Head-dim columns staged per step of q·kᵀ. */
function flowDStep(headDim: number): number {
  return headDim % 8 === 0 ? 8 : 4;
}

/** Workgroup memory of the kernel for a head dim, in bytes (mirrors the declarations in attention_flow.wgsl). */
export function attentionFlowWorkgroupBytes(headDim: number): number {
  const qk = 2 * flowDStep(headDim) * 16 * 16;
  const prob = BLOCK_Q * (BLOCK_K + 1) * 4;
  const red = 16 * 16 * 16;
  const keyMask = 4 * BLOCK_K * 16;
  const perRow = 2 * BLOCK_Q * 4;
  return qk + prob + red + keyMask + perRow + 8;
}

/** Add the flow passes for an attention problem to the graph. Returns the output tensors. */
export function attentionFlow(g: Graph, name: string, args: AttentionFlowArgs): AttentionFlowOutputs {
  const scale = args.scale ?? 1 / Math.sqrt(args.headDim);
  if (!Number.isFinite(scale)) throw new Error(`${name}: scale must be finite, got ${scale}`);
  // The same expression as attention(), so that the scores match the node's bit for bit.
  return addFlowNodes(g, name, args, scale * Math.LOG2E);
}

/** Attach a flow to an attention node already in the graph (e.g. "double.3.attn"): it reads the node's q and k,
 * scale, causal and padding masks and, if the node has one at this point, its knockout rule bits; its passes are
 * inserted right after the node. Attach it after any rewrite that changes the node's mask. */
export function attentionFlowOfNode(g: Graph, nodeName: string, name: string, groups: AttentionFlowGroups): AttentionFlowOutputs {
  const index = g.nodes.findIndex((n) => n.name === nodeName);
  if (index < 0) throw new Error(`${name}: no node named ${nodeName} in the graph`);
  const node = g.nodes[index];
  if (node.kernel !== attentionKernel) throw new Error(`${name}: node ${nodeName} is a ${node.kernel.name} node, not attention`);
  const headDim = Number(node.variant.D);
  const heads = g.shape(node.bindings.q)[1] / headDim;
  const args: AttentionFlowArgs = {
    ...groups,
    q: node.bindings.q,
    k: node.bindings.k,
    heads,
    kvHeads: heads / node.params.groupSize,
    headDim,
    causal: node.params.causal !== 0,
    keyLength: node.params.keyEnd,
    groupMask: node.variant.GROUP_MASK ? { queryBits: node.bindings.queryBits, keyBits: node.bindings.keyBits } : undefined,
  };
  return g.insertBuilt(index, () => addFlowNodes(g, name, args, node.params.scaleLog2));
}

function addFlowNodes(g: Graph, name: string, args: AttentionFlowArgs, scaleLog2: number): AttentionFlowOutputs {
  const { q, k, heads, headDim } = args;
  const kvHeads = args.kvHeads ?? heads;
  for (const [label, value] of [["heads", heads], ["kvHeads", kvHeads], ["headDim", headDim]] as const) {
    if (!Number.isInteger(value) || value <= 0) throw new Error(`${name}: ${label} must be a positive integer, got ${value}`);
  }
  if (headDim % 4 !== 0) throw new Error(`${name}: headDim must be a multiple of 4, got ${headDim}`);
  if (heads % kvHeads !== 0) throw new Error(`${name}: heads (${heads}) must be a multiple of kvHeads (${kvHeads})`);
  const qs = g.get(q), ks = g.get(k);
  for (const [label, t, cols] of [["q", qs, heads * headDim], ["k", ks, kvHeads * headDim]] as const) {
    if (t.dtype !== "f32" || t.shape.length !== 2 || t.shape[1] !== cols) {
      throw new Error(`${name}: ${label} ${t.name} must be f32 [tokens, ${cols}], got ${t.dtype} ${shapeString(t.shape)}`);
    }
  }
  const sq = qs.shape[0], sk = ks.shape[0];
  const keyLength = args.keyLength ?? sk;
  if (!Number.isInteger(keyLength) || keyLength < 1 || keyLength > sk) {
    throw new Error(`${name}: keyLength must be an integer in [1, ${sk}], got ${args.keyLength}`);
  }
  const u32Tensor = (label: string, id: number, n: number) => {
    const t = g.get(id);
    if (t.dtype !== "u32" || g.elementCount(id) !== n) {
      throw new Error(`${name}: ${label} ${t.name} must be u32 with ${n} elements, got ${t.dtype} ${shapeString(t.shape)}`);
    }
  };
  if (args.groupMask) {
    u32Tensor("queryBits", args.groupMask.queryBits, sq);
    u32Tensor("keyBits", args.groupMask.keyBits, sk);
  }
  u32Tensor("queryGroups", args.queryGroups, sq);
  u32Tensor("keyGroups", args.keyGroups, sk);
  const gq = args.queryGroupCount, gk = args.keyGroupCount;
  for (const [label, n] of [["queryGroupCount", gq], ["keyGroupCount", gk]] as const) {
    if (!Number.isInteger(n) || n < 1 || n > MAX_FLOW_GROUPS) {
      throw new Error(`${name}: ${label} must be an integer in [1, ${MAX_FLOW_GROUPS}], got ${n}`);
    }
  }
  const tokenGroup = args.tokenGroup;
  if (tokenGroup !== undefined && (!Number.isInteger(tokenGroup) || tokenGroup < 0 || tokenGroup >= gq)) {
    throw new Error(`${name}: tokenGroup must be a query group in [0, ${gq}), got ${tokenGroup}`);
  }
  if (!Number.isFinite(scaleLog2)) throw new Error(`${name}: scale must be finite`);
  const queryBlocks = ceilDiv(sq, BLOCK_Q), keyBlocks = ceilDiv(sk, BLOCK_K);
  if (Math.max(queryBlocks, keyBlocks, heads) > MAX_WORKGROUPS_PER_DIM) {
    throw new Error(
      `${name}: ${Math.max(queryBlocks, keyBlocks)} blocks × ${heads} heads exceed ${MAX_WORKGROUPS_PER_DIM} workgroups per dimension`,
    );
  }

  const rows = g.state(`${name}.rows`, [heads, sq, gk]);
  const stats = g.activation(`${name}.stats`, [heads, sq, 2]);
  const mass = g.state(`${name}.mass`, [heads + 1, gq, gk]);
  const counts = g.state(`${name}.counts`, [gq]);
  const tokens = tokenGroup !== undefined ? g.state(`${name}.tokens`, [heads + 1, sk]) : undefined;

  const variant = { D: headDim, DK: flowDStep(headDim), GROUP_MASK: args.groupMask !== undefined };
  // Without a group mask, q stands in for the bit bindings (the shader never reads them).
  const inputs = {
    q,
    k,
    queryBits: args.groupMask?.queryBits ?? q,
    keyBits: args.groupMask?.keyBits ?? q,
    queryGroups: args.queryGroups,
    keyGroups: args.keyGroups,
  };
  const params = {
    sq,
    sk,
    keyEnd: keyLength,
    causal: args.causal ? 1 : 0,
    qRow4: (heads * headDim) / 4,
    kRow4: (kvHeads * headDim) / 4,
    groupSize: heads / kvHeads,
    heads,
    groupsQ: gq,
    groupsK: gk,
    tokenGroup: tokenGroup ?? 0,
    count: 0,
    scaleLog2,
  };
  const scoreFlops = 2 * sq * sk * headDim * heads;
  const pass = (suffix: string, which: keyof typeof PASSES, result: number, workgroups: [number, number, number], extra = {}, flops = 0) =>
    g.add({
      name: `${name}.${suffix}`,
      kernel: attentionFlowKernel,
      variant: { ...variant, PASS: PASSES[which] },
      bindings: { ...inputs, rowsOut: rows, stats, result, counts },
      params: { ...params, ...extra },
      workgroups,
      flops,
    });
  pass("rows", "rows", mass, [queryBlocks, heads, 1], {}, args.causal ? scoreFlops / 2 : scoreFlops);
  pass("groups", "groups", mass, [gq, heads, 1]);
  pass("groups_mean", "mean", mass, grid1d(ceilDiv(gq * gk, THREADS)), { count: gq * gk });
  if (tokens !== undefined) {
    // The tokens pass skips query blocks without a row of the group: its flops are at most those of the rows pass.
    pass("tokens", "tokens", tokens, [keyBlocks, heads, 1], {}, args.causal ? scoreFlops / 2 : scoreFlops);
    pass("tokens_mean", "mean", tokens, grid1d(ceilDiv(sk, THREADS)), { count: sk });
  }
  return { rows, mass, counts, tokens };
}

// ---- Group ids on the host ----------------------------------------------------------------------------------------

/** Per-token group ids from lists of token indices (group i = lists[i]); tokens in no list get NO_FLOW_GROUP. A token
 * in two lists, an index outside [0, tokens) or more than MAX_FLOW_GROUPS lists is refused. */
export function flowGroupIds(tokens: number, lists: readonly (readonly number[])[], where = "attention flow groups"): Uint32Array {
  if (lists.length < 1 || lists.length > MAX_FLOW_GROUPS) {
    throw new Error(`${where}: ${lists.length} groups given, expected 1 to ${MAX_FLOW_GROUPS}`);
  }
  const ids = new Uint32Array(tokens).fill(NO_FLOW_GROUP);
  lists.forEach((list, group) => {
    for (const i of list) {
      if (!Number.isInteger(i) || i < 0 || i >= tokens) {
        throw new Error(`${where}: group ${group} lists token ${i}, outside [0, ${tokens})`);
      }
      if (ids[i] !== NO_FLOW_GROUP) throw new Error(`${where}: token ${i} is in groups ${ids[i]} and ${group}; groups must not overlap`);
      ids[i] = group;
    }
  });
  return ids;
}
