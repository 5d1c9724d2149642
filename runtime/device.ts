// Adapter and device bring-up: request the limits a plan needs and the optional features that help,
// and fail with a message that tells the user how to get a working adapter.

import { checkPinnedAdapter } from "./adapter_select.ts";

export interface GpuContext {
  device: GPUDevice;
  adapterDescription: string;
  hasF16: boolean;
  hasTimestamps: boolean;
  limits: GPUSupportedLimits;
  /** What kernels choose their tiles from; kernels/tuning.ts adds the tiles tuned for this adapter. */
  caps: DeviceCapabilities;
}

/** Families of adapters that share their best tiles: the built-in tables (kernels/*_tuned.json) are keyed by these,
 * never by one exact adapter name. */
export type DeviceClass = "software" | "nvidia-datacenter" | "nvidia" | "amd" | "intel" | "apple" | "other";

/** Tiles chosen for one adapter: kernel family → shape class (or head dim) → tile configuration. Opaque here; each
 * kernel family checks and reads its own entries. */
export type TileChoices = Record<string, Record<string, object>>;

/** The adapter as kernels see it when they choose tiles: identity, class, limits, features and the tiles chosen. */
export interface DeviceCapabilities {
  description: string;
  /** Vendor name ("nvidia", "amd", "intel", "apple", "mesa", …) from the PCI id or the description; "" if unknown. */
  vendor: string;
  /** The adapter's own vendor, device and architecture strings, as reported. */
  vendorId: string;
  deviceId: string;
  architecture: string;
  /** Driver version where the system tells it (NVIDIA's kernel module), else "". */
  driver: string;
  deviceClass: DeviceClass;
  /** A CPU implementation (llvmpipe, lavapipe, SwiftShader, WARP) or the browser's fallback adapter. */
  software: boolean;
  limits: { maxComputeWorkgroupStorageSize: number; maxComputeInvocationsPerWorkgroup: number; maxStorageBufferBindingSize: number };
  features: string[];
  tiles: TileChoices;
  /** Where `tiles` came from once kernels/tuning.ts has run: the adapter's cache file, the built-in table of its device
   * class, a tuning run, or neither. */
  tilesFrom?: "cache" | "builtin" | "tuned" | "skipped";
}

export interface DeviceRequest {
  /** Largest single buffer the plan will allocate, in bytes. */
  maxBufferSize?: number;
  /** Largest storage-buffer binding the plan will use, in bytes. */
  maxStorageBufferBindingSize?: number;
  /** Ask for shader-f16 when offered (default true). */
  wantF16?: boolean;
}

const HOW_TO_GET_AN_ADAPTER = "Install a Vulkan driver (for a CPU-only machine: `apt-get install mesa-vulkan-drivers`, " +
  "which provides the llvmpipe software adapter), or choose a backend with DENO_WEBGPU_BACKEND=vulkan|gl|metal|dx12.";

const PCI_VENDORS: Record<number, string> = {
  0x10de: "nvidia",
  0x1002: "amd",
  0x1022: "amd",
  0x8086: "intel",
  0x106b: "apple",
  0x13b5: "arm",
  0x5143: "qualcomm",
  0x1010: "imagination",
  0x10005: "mesa",
  0x1ae0: "google",
};

/** A vendor string as adapters report it: a decimal or hex PCI id, or a name. */
function vendorName(vendorId: string, description: string): string {
  const id = /^0x[0-9a-f]+$/i.test(vendorId) ? parseInt(vendorId, 16) : /^\d+$/.test(vendorId) ? Number(vendorId) : NaN;
  if (PCI_VENDORS[id]) return PCI_VENDORS[id];
  const text = `${vendorId} ${description}`.toLowerCase();
  for (const name of ["nvidia", "amd", "intel", "apple", "arm", "qualcomm", "mesa", "google"]) if (text.includes(name)) return name;
  if (/radeon/.test(text)) return "amd";
  return vendorId.toLowerCase();
}

const SOFTWARE_ADAPTER = /llvmpipe|lavapipe|softpipe|swiftshader|microsoft basic render|warp/i;
/** NVIDIA's datacenter parts (Ampere A100/A800/A30, Hopper H100/H200/H800/H20/GH200, Blackwell B100/B200/GB200). */
const NVIDIA_DATACENTER = /\b(G?H\d{2,3}|A100|A800|A30|G?B\d{3})\b/i;

/** The capabilities record of an adapter, from what it reports (kept separate from bring-up so that tests can
 * describe adapters they do not have). */
export function describeAdapter(
  info: {
    description?: string;
    vendor?: string;
    device?: string;
    architecture?: string;
    isFallbackAdapter?: boolean;
  },
  limits: DeviceCapabilities["limits"],
  features: Iterable<string> = [],
  driver = "",
): DeviceCapabilities {
  const vendorId = info.vendor ?? "", description = info.description || vendorId;
  const vendor = vendorName(vendorId, description);
  const software = !!info.isFallbackAdapter || SOFTWARE_ADAPTER.test(description);
  let deviceClass: DeviceClass = "other";
  if (software) deviceClass = "software";
  else if (vendor === "nvidia") deviceClass = NVIDIA_DATACENTER.test(description) ? "nvidia-datacenter" : "nvidia";
  else if (vendor === "amd" || vendor === "intel" || vendor === "apple") deviceClass = vendor;
  return {
    description,
    vendor,
    vendorId,
    deviceId: info.device ?? "",
    architecture: info.architecture ?? "",
    driver,
    deviceClass,
    software,
    limits: {
      maxComputeWorkgroupStorageSize: limits.maxComputeWorkgroupStorageSize,
      maxComputeInvocationsPerWorkgroup: limits.maxComputeInvocationsPerWorkgroup,
      maxStorageBufferBindingSize: limits.maxStorageBufferBindingSize,
    },
    features: [...features].sort(),
    tiles: {},
  };
}

/** The driver version where the system exposes it (WebGPU does not): NVIDIA's kernel module on Linux. */
function driverVersion(vendor: string): string {
  if (vendor !== "nvidia") return "";
  try {
    return Deno.readTextFileSync("/sys/module/nvidia/version").trim();
  } catch {
    return "";
  }
}

let shared: Promise<GpuContext> | null = null;

/** Deno's WebGPU starts every wgpu backend it has unless DENO_WEBGPU_BACKEND names some: on Linux, GL's (libEGL) as
 * well as Vulkan's, which is the one kleinscope runs on there. With several isolates using WebGPU in one process
 * (`deno test --parallel`), libEGL's finaliser at process exit was seen to free an invalid pointer, which aborted a
 * test run that had passed. So on Linux, unless the user chose, only Vulkan is started. Read by Deno when an isolate
 * first asks for an adapter; without permission to read the environment, Deno's default stands. */
export function preferVulkanOnLinux(): void {
  if (Deno.build.os !== "linux") return;
  try {
    if (Deno.env.get("DENO_WEBGPU_BACKEND") === undefined) Deno.env.set("DENO_WEBGPU_BACKEND", "vulkan");
  } catch {
    // No --allow-env: leave the choice to Deno.
  }
}

/** One device per process: every plan and weight store shares it. */
export function getGpu(request: DeviceRequest = {}): Promise<GpuContext> {
  if (!shared) {
    shared = openGpu(request);
    shared.catch(() => (shared = null));
  }
  return shared;
}

export async function openGpu(request: DeviceRequest = {}): Promise<GpuContext> {
  if (typeof navigator === "undefined" || !("gpu" in navigator) || !navigator.gpu) {
    throw new Error(`WebGPU is not available in this runtime (navigator.gpu is missing). Run with Deno 2.x. ${HOW_TO_GET_AN_ADAPTER}`);
  }
  preferVulkanOnLinux();
  const adapter = await navigator.gpu.requestAdapter({ powerPreference: "high-performance" });
  if (!adapter) throw new Error(`No WebGPU adapter was found. ${HOW_TO_GET_AN_ADAPTER}`);
  checkPinnedAdapter(adapter.info); // a process pinned to one GPU of several (KLEINSCOPE_GPU) got that one
  const a = adapter.limits;
  const wantBuffer = request.maxBufferSize ?? a.maxBufferSize;
  const wantBinding = request.maxStorageBufferBindingSize ?? a.maxStorageBufferBindingSize;
  const missing: string[] = [];
  if (wantBuffer > a.maxBufferSize) missing.push(`maxBufferSize ${wantBuffer} > adapter's ${a.maxBufferSize}`);
  if (wantBinding > a.maxStorageBufferBindingSize) {
    missing.push(`maxStorageBufferBindingSize ${wantBinding} > adapter's ${a.maxStorageBufferBindingSize}`);
  }
  if (a.maxComputeInvocationsPerWorkgroup < 256) {
    missing.push(`maxComputeInvocationsPerWorkgroup ${a.maxComputeInvocationsPerWorkgroup} < 256`);
  }
  if (a.maxComputeWorkgroupStorageSize < 16384) missing.push(`maxComputeWorkgroupStorageSize ${a.maxComputeWorkgroupStorageSize} < 16384`);
  if (missing.length) {
    throw new Error(
      `The WebGPU adapter "${adapter.info.description}" is too small for this plan: ${missing.join("; ")}. ${HOW_TO_GET_AN_ADAPTER}`,
    );
  }
  const features: GPUFeatureName[] = [];
  const hasF16 = (request.wantF16 ?? true) && adapter.features.has("shader-f16");
  if (hasF16) features.push("shader-f16");
  const hasTimestamps = adapter.features.has("timestamp-query");
  if (hasTimestamps) features.push("timestamp-query");
  const device = await adapter.requestDevice({
    requiredFeatures: features,
    requiredLimits: {
      maxBufferSize: Math.min(a.maxBufferSize, Math.max(wantBuffer, 256 << 20)),
      maxStorageBufferBindingSize: Math.min(a.maxStorageBufferBindingSize, Math.max(wantBinding, 128 << 20)),
      maxComputeWorkgroupStorageSize: a.maxComputeWorkgroupStorageSize,
      maxComputeInvocationsPerWorkgroup: a.maxComputeInvocationsPerWorkgroup,
      maxComputeWorkgroupSizeX: a.maxComputeWorkgroupSizeX,
      maxComputeWorkgroupSizeY: a.maxComputeWorkgroupSizeY,
      maxStorageBuffersPerShaderStage: a.maxStorageBuffersPerShaderStage,
    },
  });
  device.lost.then((info) => {
    if (info.reason !== "destroyed") console.error(`WebGPU device lost: ${info.message}`);
  });
  device.addEventListener("uncapturederror", (e) => {
    console.error(`WebGPU error: ${(e as GPUUncapturedErrorEvent).error.message}`);
  });
  const info = adapter.info as GPUAdapterInfo & { isFallbackAdapter?: boolean };
  const fallback = info.isFallbackAdapter ?? (adapter as GPUAdapter & { isFallbackAdapter?: boolean }).isFallbackAdapter;
  const caps = describeAdapter({ ...pickInfo(info), isFallbackAdapter: fallback }, device.limits, device.features);
  caps.driver = driverVersion(caps.vendor);
  return { device, adapterDescription: caps.description, hasF16, hasTimestamps, limits: device.limits, caps };
}

function pickInfo(info: GPUAdapterInfo): { description: string; vendor: string; device: string; architecture: string } {
  return { description: info.description, vendor: info.vendor, device: info.device, architecture: info.architecture };
}
