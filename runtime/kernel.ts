// Kernels are declared as data: a WGSL template, its storage bindings and its uniform parameters.
// The executor generates the binding declarations and the Params struct from this declaration, so the
// shader body and the host never disagree about layout.

export type ParamType = "u32" | "i32" | "f32";

export interface BindingSpec {
  name: string;
  /** WGSL type of the binding, e.g. "array<f32>", "array<vec4<f32>>", "array<u32>". */
  type: string;
  access: "read" | "read_write";
}

export interface KernelSpec {
  /** Family name, e.g. "matmul". */
  name: string;
  /** The WGSL file holding the shader body (without bindings or Params). */
  source: URL;
  bindings: BindingSpec[];
  params: { name: string; type: ParamType }[];
  /** Whether the shader needs `enable f16;`. */
  usesF16?: boolean;
  /** Template values derived from the variant (generated per-thread code), computed when a variant's shader is
   * rendered, so once per distinct variant and never part of the variant or its key. */
  expand?: (variant: Variant) => Variant;
}

/** Variant substitutions: every `{{KEY}}` in the template is replaced by the value. */
export type Variant = Record<string, string | number | boolean>;

const sourceCache = new Map<string, string>();

async function loadTemplate(url: URL): Promise<string> {
  const key = url.href;
  let text = sourceCache.get(key);
  if (text === undefined) {
    const response = await fetch(url);
    if (!response.ok) throw new Error(`cannot load kernel source ${url.href}: HTTP ${response.status}`);
    text = await response.text();
    sourceCache.set(key, text);
  }
  return text;
}

export function variantKey(kernel: KernelSpec, variant: Variant): string {
  const keys = Object.keys(variant).sort();
  return kernel.name + "|" + keys.map((k) => `${k}=${variant[k]}`).join(",");
}

/** The full WGSL module for one variant of a kernel. */
export async function renderKernel(kernel: KernelSpec, variant: Variant): Promise<string> {
  // Comments may mention placeholders; they are dropped before substitution.
  let body = (await loadTemplate(kernel.source)).replace(/\/\/[^\n]*/g, "");
  const values = kernel.expand ? { ...variant, ...kernel.expand(variant) } : variant;
  body = body.replace(/\{\{(\w+)\}\}/g, (_m, key: string) => {
    if (!(key in values)) throw new Error(`kernel ${kernel.name}: template needs variant value {{${key}}}`);
    const v = values[key];
    return typeof v === "boolean" ? (v ? "true" : "false") : String(v);
  });
  const header: string[] = [];
  if (kernel.usesF16) header.push("enable f16;");
  kernel.bindings.forEach((b, i) => {
    const access = b.access === "read" ? "read" : "read_write";
    header.push(`@group(0) @binding(${i}) var<storage, ${access}> ${b.name}: ${b.type};`);
  });
  if (kernel.params.length) {
    header.push(`struct Params { ${kernel.params.map((p) => `${p.name}: ${p.type}`).join(", ")} }`);
    header.push(`@group(0) @binding(${kernel.bindings.length}) var<uniform> params: Params;`);
  }
  return header.join("\n") + "\n" + body;
}

export const MAX_WORKGROUPS_PER_DIM = 65535;

/** Split a 1-D workgroup count over x and y so that neither exceeds the WebGPU limit.
 * Shaders recover the linear index as `wid.x + wid.y * nwg.x`. */
export function grid1d(workgroups: number): [number, number, number] {
  if (workgroups <= MAX_WORKGROUPS_PER_DIM) return [Math.max(1, workgroups), 1, 1];
  const y = Math.ceil(workgroups / MAX_WORKGROUPS_PER_DIM);
  const x = Math.ceil(workgroups / y);
  return [x, y, 1];
}

export function ceilDiv(a: number, b: number): number {
  return Math.floor((a + b - 1) / b);
}
