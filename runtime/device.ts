// Adapter and device bring-up: request the limits a plan needs and the optional features that help,
// and fail with a message that tells the user how to get a working adapter.

export interface GpuContext {
  device: GPUDevice;
  adapterDescription: string;
  hasF16: boolean;
  hasTimestamps: boolean;
  limits: GPUSupportedLimits;
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

let shared: Promise<GpuContext> | null = null;

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
  const adapter = await navigator.gpu.requestAdapter({ powerPreference: "high-performance" });
  if (!adapter) throw new Error(`No WebGPU adapter was found. ${HOW_TO_GET_AN_ADAPTER}`);
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
  return { device, adapterDescription: adapter.info.description || adapter.info.vendor, hasF16, hasTimestamps, limits: device.limits };
}
