// The graph IR: an ordered list of kernel dispatches over named tensors. Model code builds it; interventions
// rewrite it (insert nodes after a tap, swap bindings); the executor compiles it once into a plan.

import type { KernelSpec, Variant } from "./kernel.ts";
import type { DeviceCapabilities } from "./device.ts";
import { type DType, elementCount, shapeString, type TensorRole, type TensorSpec } from "./tensor.ts";

export interface GraphNode {
  /** Stable, human-readable name, e.g. "double.3.attn.q_proj". */
  name: string;
  kernel: KernelSpec;
  variant: Variant;
  /** Binding name (as in kernel.bindings) → tensor id. */
  bindings: Record<string, number>;
  params: Record<string, number>;
  workgroups: [number, number, number];
  /** FLOPs of this dispatch, for benchmark tables (optional). */
  flops?: number;
  /** For kernels with tiles: the tile-dependent part of the node for the device it is compiled on (Graph.chooseTiles),
   * which may throw when tiles given explicitly do not fit that device. Until then the node holds the tiles that fit
   * any device (or the explicit ones). */
  chooseTiles?: (device: DeviceCapabilities) => TileChoice;
}

/** The tile-dependent part of a node: template values, uniform values and the dispatch size. */
export interface TileChoice {
  variant: Variant;
  params?: Record<string, number>;
  workgroups: [number, number, number];
}

export class Graph {
  readonly tensors: TensorSpec[] = [];
  readonly nodes: GraphNode[] = [];
  /** Named tap points: a name → the tensor that holds that activation once its producer ran. */
  readonly taps: Map<string, number> = new Map();
  /** Per tap: the sequence position of its row 0, or null when its rows are not tokens. */
  readonly tapSequenceStart: Map<string, number | null> = new Map();
  /** Contents of constant tensors (index lists, masks' bit sets), written once when a plan is compiled. */
  readonly constants: Map<number, Float32Array | Uint32Array | Int32Array> = new Map();
  private readonly byName = new Map<string, number>();
  /** Prefix of names created inside `scoped` (weights are shared and never prefixed). */
  private scope = "";

  /** Build a second copy of a subgraph (e.g. the unconditional forward of guidance) under a name prefix. */
  scoped<T>(prefix: string, build: () => T): T {
    const saved = this.scope;
    this.scope = saved + prefix;
    try {
      return build();
    } finally {
      this.scope = saved;
    }
  }

  tensor(name: string, shape: number[], dtype: DType, role: TensorRole): number {
    if (role !== "weight") name = this.scope + name;
    if (shape.some((d) => !Number.isInteger(d) || d <= 0)) {
      throw new Error(`tensor ${name}: invalid shape ${shapeString(shape)}`);
    }
    if (this.byName.has(name)) throw new Error(`tensor name ${name} is used twice in the graph`);
    const id = this.tensors.length;
    this.tensors.push({ id, name, shape: [...shape], dtype, role });
    this.byName.set(name, id);
    return id;
  }

  /** A byte range of another tensor (offset in bytes, 256-aligned), shaped as given. */
  view(name: string, base: number, byteOffset: number, shape: number[]): number {
    const b = this.tensors[base];
    if (byteOffset % 256 !== 0) throw new Error(`view ${name}: offset ${byteOffset} is not 256-byte aligned`);
    const id = this.tensor(name, shape, b.dtype, b.role);
    this.tensors[id].viewOf = { base, byteOffset };
    return id;
  }

  weight(name: string, shape: number[], dtype: DType = "bf16"): number {
    const existing = this.byName.get(name);
    if (existing !== undefined) {
      const t = this.tensors[existing];
      if (t.role !== "weight" || t.dtype !== dtype || t.shape.join() !== shape.join()) {
        throw new Error(
          `weight ${name} ${shapeString(shape)} ${dtype} conflicts with tensor ${shapeString(t.shape)} ${t.dtype} of that name`,
        );
      }
      return existing;
    }
    return this.tensor(name, shape, dtype, "weight");
  }

  input(name: string, shape: number[], dtype: DType = "f32"): number {
    return this.tensor(name, shape, dtype, "input");
  }

  activation(name: string, shape: number[], dtype: DType = "f32"): number {
    return this.tensor(name, shape, dtype, "activation");
  }

  state(name: string, shape: number[], dtype: DType = "f32"): number {
    return this.tensor(name, shape, dtype, "state");
  }

  /** A tensor whose contents are fixed when the graph is built (stored as `state`, written at compile time). */
  constant(name: string, shape: number[], dtype: DType, data: Float32Array | Uint32Array | Int32Array): number {
    const id = this.tensor(name, shape, dtype, "state");
    if (data.length !== elementCount(shape)) throw new Error(`constant ${name}: ${data.length} values for shape ${shapeString(shape)}`);
    this.constants.set(id, data);
    return id;
  }

  find(name: string): number | undefined {
    return this.byName.get(name);
  }

  get(id: number): TensorSpec {
    const t = this.tensors[id];
    if (!t) throw new Error(`no tensor with id ${id}`);
    return t;
  }

  shape(id: number): number[] {
    return this.get(id).shape;
  }

  /** Give every node that chooses its own tiles the tiles for this device (the executor calls this when it compiles
   * a plan, so one graph description serves every adapter). */
  chooseTiles(device: DeviceCapabilities): void {
    for (const node of this.nodes) {
      if (!node.chooseTiles) continue;
      const choice = node.chooseTiles(device);
      node.variant = { ...node.variant, ...choice.variant };
      if (choice.params) node.params = { ...node.params, ...choice.params };
      node.workgroups = choice.workgroups;
    }
  }

  add(node: GraphNode): void {
    for (const b of node.kernel.bindings) {
      if (!(b.name in node.bindings)) throw new Error(`node ${node.name}: binding ${b.name} of ${node.kernel.name} is not set`);
    }
    for (const p of node.kernel.params) {
      const v = node.params[p.name];
      if (v === undefined || !Number.isFinite(v)) throw new Error(`node ${node.name}: parameter ${p.name} is ${v}`);
    }
    this.nodes.push(this.scope ? { ...node, name: this.scope + node.name } : node);
  }

  /** Register a named tap point for a tensor whose row 0 is sequence position `sequenceStart` (null: its rows are
   * not tokens, e.g. the timestep embedding). */
  tap(name: string, id: number, sequenceStart: number | null = 0): number {
    name = this.scope + name;
    if (this.taps.has(name)) throw new Error(`tap point ${name} is declared twice`);
    this.taps.set(name, id);
    this.tapSequenceStart.set(name, sequenceStart);
    return id;
  }

  tapTensor(name: string): number {
    const id = this.taps.get(name);
    if (id === undefined) {
      const known = [...this.taps.keys()];
      throw new Error(`unknown tap point "${name}" (known: ${known.slice(0, 12).join(", ")}${known.length > 12 ? ", …" : ""})`);
    }
    return id;
  }

  /** Index of the last node that writes tensor `id` (directly or through a view). */
  producerIndex(id: number): number {
    for (let i = this.nodes.length - 1; i >= 0; i--) {
      const n = this.nodes[i];
      for (const b of n.kernel.bindings) {
        if (b.access === "read_write" && this.rootOf(n.bindings[b.name]) === this.rootOf(id)) return i;
      }
    }
    return -1;
  }

  /** Index of the first node that writes tensor `id`. */
  firstWriterIndex(id: number): number {
    const root = this.rootOf(id);
    return this.nodes.findIndex((n) =>
      n.kernel.bindings.some((b) => b.access === "read_write" && this.rootOf(n.bindings[b.name]) === root)
    );
  }

  /** Run `build` (which appends nodes with the usual builders) and move what it appended to just after `index`. */
  insertBuilt<T>(index: number, build: () => T): T {
    const mark = this.nodes.length;
    const result = build();
    const added = this.nodes.splice(mark);
    this.insertAfter(index, added);
    return result;
  }

  /** Insert nodes right after position `index` in the dispatch order. */
  insertAfter(index: number, nodes: GraphNode[]): void {
    this.nodes.splice(index + 1, 0, ...nodes);
  }

  rootOf(id: number): number {
    let t = this.get(id);
    while (t.viewOf) t = this.get(t.viewOf.base);
    return t.id;
  }

  elementCount(id: number): number {
    return elementCount(this.get(id).shape);
  }

  /** Total flops of nodes that declare them. */
  flops(): number {
    return this.nodes.reduce((s, n) => s + (n.flops ?? 0), 0);
  }
}
