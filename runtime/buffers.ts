// Host↔GPU transfers: bounded-size uploads and readback through a mapped staging buffer.

import type { GpuContext } from "./device.ts";

/** Upload bytes in pieces, waiting for the queue every `flushBytes` so staging memory stays bounded. */
export class ChunkedUploader {
  private pending = 0;
  constructor(private readonly gpu: GpuContext, private readonly flushBytes = 256 << 20) {}

  async write(buffer: GPUBuffer, offset: number, data: Uint8Array): Promise<void> {
    // writeBuffer needs sizes that are multiples of 4: pad the tail with zeros.
    let bytes = data;
    if (bytes.byteLength % 4 !== 0) {
      const padded = new Uint8Array(Math.ceil(bytes.byteLength / 4) * 4);
      padded.set(bytes);
      bytes = padded;
    }
    this.gpu.device.queue.writeBuffer(buffer, offset, bytes as Uint8Array<ArrayBuffer>, 0, bytes.byteLength);
    this.pending += bytes.byteLength;
    if (this.pending >= this.flushBytes) await this.flush();
  }

  async flush(): Promise<void> {
    if (this.pending === 0) return;
    this.pending = 0;
    await this.gpu.device.queue.onSubmittedWorkDone();
  }
}

/** Copy `size` bytes at `offset` of a storage buffer back to the host. */
export async function readBuffer(gpu: GpuContext, buffer: GPUBuffer, offset: number, size: number): Promise<ArrayBuffer> {
  const padded = Math.ceil(size / 4) * 4;
  const staging = gpu.device.createBuffer({ label: "readback", size: padded, usage: GPUBufferUsage.COPY_DST | GPUBufferUsage.MAP_READ });
  try {
    const enc = gpu.device.createCommandEncoder({ label: "readback" });
    enc.copyBufferToBuffer(buffer, offset, staging, 0, padded);
    gpu.device.queue.submit([enc.finish()]);
    await staging.mapAsync(GPUMapMode.READ);
    return staging.getMappedRange().slice(0, size);
  } finally {
    staging.destroy();
  }
}

export function createStorageBuffer(gpu: GpuContext, label: string, size: number): GPUBuffer {
  const bytes = Math.max(16, Math.ceil(size / 16) * 16);
  if (bytes > gpu.limits.maxBufferSize) {
    throw new Error(`buffer ${label} needs ${bytes} bytes, more than this device's maxBufferSize ${gpu.limits.maxBufferSize}`);
  }
  return gpu.device.createBuffer({
    label,
    size: bytes,
    usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC,
  });
}
