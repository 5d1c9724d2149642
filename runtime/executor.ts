// Compiles a graph into a plan — buffers, pipelines, bind groups and one uniform arena, built once — and replays
// it: every run encodes the same dispatches, in chunks per submit, without reading anything back. Tensors are read
// back either at once (read, readRows: the caller waits for the GPU) or behind later work (readAsync).

import type { GpuContext } from "./device.ts";
import type { Graph, GraphNode } from "./graph.ts";
import { renderKernel, variantKey } from "./kernel.ts";
import { createStorageBuffer, readBuffer } from "./buffers.ts";
import { shapeString, tensorBytes, type TensorSpec } from "./tensor.ts";

/** Where weight tensors live: the weight store answers with a buffer (and byte offset) per name. */
export interface WeightSource {
  bufferFor(name: string, spec: TensorSpec): { buffer: GPUBuffer; offset: number };
}

export interface PlanOptions {
  label?: string;
  /** Dispatches encoded per submit. */
  dispatchesPerSubmit?: number;
  /** Record per-node GPU time (needs timestamp-query; one pass per node). */
  profile?: boolean;
}

interface Binding {
  buffer: GPUBuffer;
  offset: number;
  size: number;
}

const UNIFORM_SLOT = 256;
const pipelineCache = new WeakMap<GPUDevice, Map<string, Promise<GPUComputePipeline>>>();
const layoutCache = new WeakMap<GPUDevice, Map<string, GPUBindGroupLayout>>();

/** Explicit layout from the kernel declaration (an "auto" layout would drop bindings a variant does not use). */
function layoutFor(gpu: GpuContext, kernel: GraphNode["kernel"]): GPUBindGroupLayout {
  let cache = layoutCache.get(gpu.device);
  if (!cache) layoutCache.set(gpu.device, cache = new Map());
  let layout = cache.get(kernel.name);
  if (!layout) {
    const entries: GPUBindGroupLayoutEntry[] = kernel.bindings.map((b, i) => ({
      binding: i,
      visibility: GPUShaderStage.COMPUTE,
      buffer: { type: b.access === "read" ? "read-only-storage" : "storage" },
    }));
    if (kernel.params.length) {
      entries.push({ binding: kernel.bindings.length, visibility: GPUShaderStage.COMPUTE, buffer: { type: "uniform" } });
    }
    layout = gpu.device.createBindGroupLayout({ label: kernel.name, entries });
    cache.set(kernel.name, layout);
  }
  return layout;
}

function pipelineFor(gpu: GpuContext, node: GraphNode): Promise<GPUComputePipeline> {
  let cache = pipelineCache.get(gpu.device);
  if (!cache) pipelineCache.set(gpu.device, cache = new Map());
  const key = variantKey(node.kernel, node.variant);
  let p = cache.get(key);
  if (!p) {
    if (node.kernel.usesF16 && !gpu.hasF16) {
      throw new Error(
        `${node.name}: kernel ${node.kernel.name} computes in f16, but adapter ${gpu.adapterDescription} offers no shader-f16`,
      );
    }
    // Labels and messages name the kernel family and the node (the variant key also lists every template value).
    const label = `${node.kernel.name} (${node.name})`;
    p = (async () => {
      const code = await renderKernel(node.kernel, node.variant);
      const module = gpu.device.createShaderModule({ label, code });
      const info = await module.getCompilationInfo();
      const errors = info.messages.filter((m) => m.type === "error");
      if (errors.length) {
        throw new Error(`kernel ${label} does not compile:\n${errors.map((m) => `  line ${m.lineNum}: ${m.message}`).join("\n")}`);
      }
      gpu.device.pushErrorScope("validation");
      const layout = gpu.device.createPipelineLayout({ bindGroupLayouts: [layoutFor(gpu, node.kernel)] });
      const pipeline = await gpu.device.createComputePipelineAsync({ label, layout, compute: { module, entryPoint: "main" } });
      const err = await gpu.device.popErrorScope();
      if (err) throw new Error(`kernel ${label}: pipeline creation failed: ${err.message}`);
      return pipeline;
    })();
    p.catch(() => cache!.delete(key));
    cache.set(key, p);
  }
  return p;
}

/** Tensors being copied back behind later GPU work (Plan.readAsync): one host-mappable staging buffer of its own. */
export interface AsyncReadback {
  /** Bytes staged: the tensors' sizes, in the order asked for. */
  readonly bytes: number;
  /** Resolves once the GPU has copied the tensors and the staging buffer is mapped; rejects when the mapping fails
   * or the plan is destroyed first. */
  readonly mapped: Promise<void>;
  /** One f32 view per tensor into the mapped memory (once `mapped` resolved), valid until release(). Taking them may
   * copy the whole mapped range on the calling thread (some WebGPU implementations do), so a caller that must not
   * delay other work takes them later. */
  views(): Float32Array[];
  /** Unmap and free the staging buffer (the views become unusable). Idempotent. */
  release(): void;
}

/** Each tensor's slot in a staging buffer starts at a multiple of this (copy and map offsets need 4 and 8). */
const STAGING_ALIGN = 256;
/** Released staging buffers a plan keeps for reuse (readAsync). */
const STAGING_POOL = 4;

export interface NodeTiming {
  name: string;
  kernel: string;
  ms: number;
  flops?: number;
}

export class Plan {
  private destroyed = false;
  /** Staging buffers of readAsync calls not yet released: freed with the plan. */
  private readonly staging = new Set<GPUBuffer>();
  /** Released staging buffers, unmapped, kept for the next readAsync of the same size: a step loop reads back the same
   * tensors every step, and allocating (pinning) hundreds of MB of host-visible memory each time costs more than the
   * copy. At most STAGING_POOL buffers; freed with the plan. */
  private readonly stagingPool: GPUBuffer[] = [];
  /** Staging buffers readAsync has allocated (not taken from the pool) so far. */
  stagingAllocations = 0;
  private constructor(
    readonly gpu: GpuContext,
    readonly graph: Graph,
    private readonly bindings: Binding[],
    private readonly ownedBuffers: GPUBuffer[],
    private readonly pipelines: GPUComputePipeline[],
    private readonly bindGroups: GPUBindGroup[],
    private readonly uniforms: GPUBuffer | null,
    private readonly options: PlanOptions,
    /** Bytes of activation/state/input memory this plan allocated. */
    readonly allocatedBytes: number,
  ) {}

  static async compile(gpu: GpuContext, graph: Graph, weights: WeightSource | null, options: PlanOptions = {}): Promise<Plan> {
    const label = options.label ?? "plan";
    graph.chooseTiles(gpu.caps);
    const tensors = graph.tensors;
    const nodes = graph.nodes;
    const maxBinding = gpu.limits.maxStorageBufferBindingSize;
    for (const t of tensors) {
      if (tensorBytes(t) > maxBinding) {
        throw new Error(
          `tensor ${t.name} ${shapeString(t.shape)} needs ${tensorBytes(t)} bytes, more than this device's ` +
            `maxStorageBufferBindingSize ${maxBinding}`,
        );
      }
    }
    // Lifetimes of pooled (activation) roots: first writer .. last reader.
    const first = new Array<number>(tensors.length).fill(-1);
    const last = new Array<number>(tensors.length).fill(-1);
    nodes.forEach((n, i) => {
      for (const b of n.kernel.bindings) {
        const root = graph.rootOf(n.bindings[b.name]);
        if (first[root] < 0) {
          if (b.access === "read" && tensors[root].role === "activation") {
            throw new Error(`node ${n.name} reads activation ${tensors[root].name} before any node writes it`);
          }
          first[root] = i;
        }
        last[root] = i;
      }
    });
    const resolved: (Binding | null)[] = new Array(tensors.length).fill(null);
    const owned: GPUBuffer[] = [];
    let allocated = 0;
    const newBuffer = (name: string, size: number) => {
      const buf = createStorageBuffer(gpu, `${label}:${name}`, size);
      owned.push(buf);
      allocated += buf.size;
      return buf;
    };
    for (const t of tensors) {
      if (t.viewOf) continue;
      if (t.role === "weight") {
        if (first[t.id] < 0) continue;
        if (!weights) throw new Error(`graph needs weight ${t.name} but no weight store was given`);
        const w = weights.bufferFor(t.name, t);
        resolved[t.id] = { buffer: w.buffer, offset: w.offset, size: tensorBytes(t) };
      } else if (t.role === "input" || t.role === "state") {
        resolved[t.id] = { buffer: newBuffer(t.name, tensorBytes(t)), offset: 0, size: tensorBytes(t) };
      }
    }
    // Greedy pool for activations, by lifetime: best fit among free buffers no more than twice as large.
    const free: GPUBuffer[] = [];
    const releaseAt = new Map<number, number[]>();
    tensors.forEach((t) => {
      if (t.role === "activation" && !t.viewOf && first[t.id] >= 0) {
        const list = releaseAt.get(last[t.id]) ?? [];
        list.push(t.id);
        releaseAt.set(last[t.id], list);
      }
    });
    const holder = new Map<number, GPUBuffer>();
    nodes.forEach((n, i) => {
      for (const b of n.kernel.bindings) {
        const root = graph.rootOf(n.bindings[b.name]);
        const t = tensors[root];
        if (t.role !== "activation" || resolved[root]) continue;
        const size = Math.max(16, Math.ceil(tensorBytes(t) / 16) * 16);
        let best = -1;
        for (let j = 0; j < free.length; j++) {
          const s = free[j].size;
          if (s >= size && s <= 2 * size && (best < 0 || s < free[best].size)) best = j;
        }
        const buf = best >= 0 ? free.splice(best, 1)[0] : newBuffer(`pool${owned.length}`, size);
        holder.set(root, buf);
        resolved[root] = { buffer: buf, offset: 0, size: tensorBytes(t) };
      }
      for (const id of releaseAt.get(i) ?? []) {
        const buf = holder.get(id);
        if (buf) free.push(buf);
      }
    });
    // Views resolve through their base.
    const bindingOf = (id: number): Binding => {
      const t = tensors[id];
      if (t.viewOf) {
        const base = bindingOf(t.viewOf.base);
        return { buffer: base.buffer, offset: base.offset + t.viewOf.byteOffset, size: tensorBytes(t) };
      }
      const r = resolved[id];
      if (!r) throw new Error(`tensor ${t.name} has no buffer (is it used by any node?)`);
      return r;
    };
    const allBindings = tensors.map((t) => (first[graph.rootOf(t.id)] >= 0 || t.role !== "weight" ? safe(() => bindingOf(t.id)) : null));

    // Uniform arena: one 256-byte slot per node that has parameters.
    const withParams = nodes.filter((n) => n.kernel.params.length > 0).length;
    const uniforms = withParams
      ? gpu.device.createBuffer({
        label: `${label}:uniforms`,
        size: withParams * UNIFORM_SLOT,
        usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
      })
      : null;
    const arena = new ArrayBuffer(withParams * UNIFORM_SLOT);
    const pipelines = await Promise.all(nodes.map((n) => pipelineFor(gpu, n)));
    const bindGroups: GPUBindGroup[] = [];
    let slot = 0;
    gpu.device.pushErrorScope("validation");
    for (let i = 0; i < nodes.length; i++) {
      const n = nodes[i];
      const entries: GPUBindGroupEntry[] = n.kernel.bindings.map((b, j) => {
        const r = allBindings[n.bindings[b.name]];
        if (!r) throw new Error(`node ${n.name}: binding ${b.name} has no buffer`);
        if (r.offset % gpu.limits.minStorageBufferOffsetAlignment !== 0) {
          throw new Error(`node ${n.name}: binding ${b.name} offset ${r.offset} is not aligned`);
        }
        return { binding: j, resource: { buffer: r.buffer, offset: r.offset, size: Math.ceil(r.size / 4) * 4 } };
      });
      if (n.kernel.params.length) {
        const view = new DataView(arena, slot * UNIFORM_SLOT, UNIFORM_SLOT);
        n.kernel.params.forEach((p, k) => {
          const v = n.params[p.name];
          if (p.type === "f32") view.setFloat32(k * 4, v, true);
          else if (p.type === "i32") view.setInt32(k * 4, v, true);
          else view.setUint32(k * 4, v, true);
        });
        entries.push({
          binding: n.kernel.bindings.length,
          resource: { buffer: uniforms!, offset: slot * UNIFORM_SLOT, size: n.kernel.params.length * 4 },
        });
        slot++;
      }
      bindGroups.push(gpu.device.createBindGroup({ label: n.name, layout: layoutFor(gpu, n.kernel), entries }));
    }
    const bindError = await gpu.device.popErrorScope();
    if (bindError) throw new Error(`plan ${label}: bind group creation failed: ${bindError.message}`);
    if (uniforms) gpu.device.queue.writeBuffer(uniforms, 0, arena);
    for (const [id, data] of graph.constants) {
      const b = allBindings[id];
      if (b) gpu.device.queue.writeBuffer(b.buffer, b.offset, data.buffer as ArrayBuffer, data.byteOffset, data.byteLength);
    }
    return new Plan(gpu, graph, allBindings as Binding[], owned, pipelines, bindGroups, uniforms, options, allocated);
  }

  private binding(name: string): Binding {
    const id = this.graph.find(name);
    if (id === undefined) throw new Error(`plan ${this.options.label ?? ""}: no tensor named ${name}`);
    const b = this.bindings[id];
    if (!b) throw new Error(`tensor ${name} is not bound in this plan`);
    return b;
  }

  /** Write a host array into an input (or state) tensor. */
  write(name: string, data: Float32Array | Uint32Array | Int32Array): void {
    const b = this.binding(name);
    const t = this.graph.get(this.graph.find(name)!);
    if (data.byteLength !== tensorBytes(t)) {
      throw new Error(`input ${name} ${shapeString(t.shape)} ${t.dtype} needs ${tensorBytes(t)} bytes, got ${data.byteLength}`);
    }
    this.gpu.device.queue.writeBuffer(b.buffer, b.offset, data.buffer as ArrayBuffer, data.byteOffset, data.byteLength);
  }

  /** Read a tensor (state or input; activations only while still live) as f32. */
  async read(name: string): Promise<Float32Array> {
    const b = this.binding(name);
    return new Float32Array(await readBuffer(this.gpu, b.buffer, b.offset, b.size));
  }

  async readRows(name: string, rowStart: number, rowCount: number): Promise<Float32Array> {
    const id = this.graph.find(name)!;
    const t = this.graph.get(id);
    const rowElems = t.shape.slice(1).reduce((a, c) => a * c, 1);
    const b = this.binding(name);
    return new Float32Array(await readBuffer(this.gpu, b.buffer, b.offset + rowStart * rowElems * 4, rowCount * rowElems * 4));
  }

  /** Copy tensors (states or inputs; activations only while still live) into a staging buffer of their own after all
   * the work submitted so far, and start mapping it: the GPU copies them in queue order, so work submitted later (the
   * next step, writing the same tensors again) never reaches this readback. The copy is its own submit, right behind the
   * caller's last one. That submit may not return before the GPU has finished it: a submit that copies into a mappable
   * buffer is held until its work is done (seen with Deno 2.9 on the H200's Vulkan driver, where a submit of dispatches
   * alone returns at once; on lavapipe every submit runs to completion). So a caller with host work to do while the GPU
   * runs does it first and calls this afterwards. */
  readAsync(names: readonly string[]): AsyncReadback {
    if (this.destroyed) throw new Error(`plan ${this.options.label ?? ""}: readAsync after destroy`);
    const parts = names.map((n) => ({ name: n, ...this.binding(n), staging: 0, slot: 0 }));
    // Slots packed into staging buffers of at most the device's largest buffer (one tensor always fits: it is bound).
    const sizes: number[] = [0];
    for (const p of parts) {
      const dtype = this.graph.get(this.graph.find(p.name)!).dtype;
      if (dtype !== "f32") throw new Error(`readAsync reads f32 tensors; ${p.name} is ${dtype}`);
      if (p.offset % 4 !== 0) throw new Error(`tensor ${p.name} starts at byte ${p.offset}, which a buffer copy cannot read from`);
      const slotBytes = Math.ceil(p.size / STAGING_ALIGN) * STAGING_ALIGN;
      if (sizes[sizes.length - 1] && sizes[sizes.length - 1] + slotBytes > this.gpu.device.limits.maxBufferSize) sizes.push(0);
      p.staging = sizes.length - 1;
      p.slot = sizes[p.staging];
      sizes[p.staging] += slotBytes;
    }
    const bytes = parts.reduce((a, p) => a + p.size, 0);
    const dev = this.gpu.device;
    const label = `${this.options.label ?? "plan"}:readback`;
    const staging = sizes.map((size) => {
      const want = Math.max(size, STAGING_ALIGN);
      const pooled = this.stagingPool.findIndex((b) => b.size === want);
      if (pooled >= 0) return this.stagingPool.splice(pooled, 1)[0];
      this.stagingAllocations++;
      return dev.createBuffer({ label, size: want, usage: GPUBufferUsage.COPY_DST | GPUBufferUsage.MAP_READ });
    });
    for (const b of staging) this.staging.add(b);
    const enc = dev.createCommandEncoder({ label });
    // Sizes rounded up to 4 bytes stay inside the source buffer: storage buffers are allocated in 16-byte units.
    for (const p of parts) enc.copyBufferToBuffer(p.buffer, p.offset, staging[p.staging], p.slot, Math.ceil(p.size / 4) * 4);
    dev.queue.submit([enc.finish()]);
    let released = false;
    let isMapped = false;
    const release = () => {
      if (released) return;
      released = true;
      for (const b of staging) {
        this.staging.delete(b);
        // A buffer whose mapping is still pending cannot be reused; a mapped one is unmapped and kept.
        if (isMapped && !this.destroyed && this.stagingPool.length < STAGING_POOL) {
          b.unmap();
          this.stagingPool.push(b);
        } else {
          b.destroy();
        }
      }
    };
    const mapped = Promise.all(staging.map((b) => b.mapAsync(GPUMapMode.READ))).then(() => {
      // Not every implementation rejects a mapping whose buffer was destroyed meanwhile.
      if (released || this.destroyed) {
        throw new Error(`readback of ${names.join(", ")} was ${released ? "released" : "freed with its plan"} before it arrived`);
      }
      isMapped = true;
    });
    // A readback dropped unread (its run failed) must not end the process as an unhandled rejection; whoever awaits
    // `mapped` still sees the error.
    mapped.catch(() => {});
    const views = () => {
      if (released || this.destroyed || !isMapped) {
        throw new Error(`readback of ${names.join(", ")} is ${released || this.destroyed ? "released" : "not mapped yet"}`);
      }
      const ranges = staging.map((b) => b.getMappedRange());
      return parts.map((p) => new Float32Array(ranges[p.staging], p.slot, p.size / 4));
    };
    return { bytes, mapped, views, release };
  }

  bufferOf(name: string): { buffer: GPUBuffer; offset: number; size: number } {
    return this.binding(name);
  }

  /** Encode and submit every dispatch, in chunks. Resolves when the GPU finished. */
  async run(): Promise<void> {
    this.submit();
    await this.gpu.device.queue.onSubmittedWorkDone();
  }

  /** Nodes left out of submit() until enabled again (by index in the graph's dispatch order). */
  private readonly disabledNodes = new Set<number>();

  /** Leave the named nodes out of the following submits (enabled false) or put them back: for work that a run needs at
   * some steps only (e.g. an attention read-out), in a plan that is otherwise the same every step. */
  setNodesEnabled(names: Iterable<string>, enabled: boolean): void {
    for (const name of names) {
      const i = this.graph.nodes.findIndex((n) => n.name === name);
      if (i < 0) throw new Error(`plan ${this.options.label ?? ""}: no node named ${name}`);
      if (enabled) this.disabledNodes.delete(i);
      else this.disabledNodes.add(i);
    }
  }

  /** Encode and submit without waiting (the caller waits or reads back later). */
  submit(): void {
    const dev = this.gpu.device;
    const per = this.options.dispatchesPerSubmit ?? 2048;
    for (let start = 0; start < this.graph.nodes.length; start += per) {
      const end = Math.min(this.graph.nodes.length, start + per);
      const enc = dev.createCommandEncoder({ label: `${this.options.label ?? "plan"}[${start}..${end})` });
      const pass = enc.beginComputePass();
      for (let i = start; i < end; i++) {
        if (this.disabledNodes.has(i)) continue;
        const n = this.graph.nodes[i];
        pass.setPipeline(this.pipelines[i]);
        pass.setBindGroup(0, this.bindGroups[i]);
        pass.dispatchWorkgroups(n.workgroups[0], n.workgroups[1], n.workgroups[2]);
      }
      pass.end();
      dev.queue.submit([enc.finish()]);
    }
  }

  /** Run once with a timestamp pair around every dispatch. */
  async profile(): Promise<NodeTiming[]> {
    if (!this.gpu.hasTimestamps) throw new Error("profiling needs the timestamp-query feature, which this adapter lacks");
    const dev = this.gpu.device;
    const nodes = this.graph.nodes;
    const out: NodeTiming[] = [];
    const chunk = 1024;
    for (let start = 0; start < nodes.length; start += chunk) {
      const end = Math.min(nodes.length, start + chunk);
      const count = (end - start) * 2;
      const qs = dev.createQuerySet({ type: "timestamp", count });
      const resolveBuf = dev.createBuffer({ size: count * 8, usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC });
      const enc = dev.createCommandEncoder();
      for (let i = start; i < end; i++) {
        const k = (i - start) * 2;
        const pass = enc.beginComputePass({ timestampWrites: { querySet: qs, beginningOfPassWriteIndex: k, endOfPassWriteIndex: k + 1 } });
        pass.setPipeline(this.pipelines[i]);
        pass.setBindGroup(0, this.bindGroups[i]);
        pass.dispatchWorkgroups(...nodes[i].workgroups);
        pass.end();
      }
      enc.resolveQuerySet(qs, 0, count, resolveBuf, 0);
      dev.queue.submit([enc.finish()]);
      const raw = new BigUint64Array(await readBuffer(this.gpu, resolveBuf, 0, count * 8));
      for (let i = start; i < end; i++) {
        const k = (i - start) * 2;
        out.push({ name: nodes[i].name, kernel: nodes[i].kernel.name, ms: Number(raw[k + 1] - raw[k]) / 1e6, flops: nodes[i].flops });
      }
      qs.destroy();
      resolveBuf.destroy();
    }
    return out;
  }

  destroy(): void {
    // Idempotent: a pipeline frees a plan early and again in its cleanup.
    if (this.destroyed) return;
    this.destroyed = true;
    for (const b of [...this.staging, ...this.stagingPool]) b.destroy();
    this.staging.clear();
    this.stagingPool.length = 0;
    for (const b of this.ownedBuffers) b.destroy();
    this.uniforms?.destroy();
  }
}

function safe<T>(f: () => T): T | null {
  try {
    return f();
  } catch {
    return null;
  }
}
