// Initial latents from a safetensors file: the tensor named after "#" (`file.safetensors#initial_latents`), else
// "latents", else the first; channel-major [C, h, w] (a leading batch of 1 allowed) or packed [h·w, C], checked
// against the image size and for non-finite values.

import { SafetensorsFile } from "../weights/safetensors.ts";
import { packLatents } from "./sampler.ts";

/** Initial latents from a safetensors file, as packed tokens [(height/16)·(width/16), channels]. */
export async function readInitialLatents(where: string, channels: number, width: number, height: number): Promise<Float32Array> {
  const hash = where.lastIndexOf("#");
  const [path, wanted] = hash > 0 ? [where.slice(0, hash), where.slice(hash + 1)] : [where, undefined];
  const file = await SafetensorsFile.open(path);
  try {
    const names = file.names();
    if (!names.length) throw new Error(`latents ${path}: the file holds no tensor`);
    if (wanted !== undefined && !file.has(wanted)) throw new Error(`latents ${path}: the file holds no tensor "${wanted}"`);
    const name = wanted ?? (file.has("latents") ? "latents" : names[0]);
    const shape = file.info(name).shape;
    const h = height / 16, w = width / 16;
    const expected = `[${channels}, ${h}, ${w}] (channel-major) or [${h * w}, ${channels}] (packed)`;
    const wrongShape = () =>
      new Error(`latents ${path}: tensor "${name}" has shape [${shape.join(", ")}]; a ${width}×${height} image needs ${expected}`);
    let dims = shape;
    while (dims.length > 2 && dims[0] === 1) dims = dims.slice(1);
    let packed: Float32Array;
    if (dims.length === 3 && dims[0] === channels && dims[1] === h && dims[2] === w) {
      packed = packLatents(await file.readF32(name), channels, h, w);
    } else if (dims.length === 2 && dims[0] === h * w && dims[1] === channels) {
      packed = await file.readF32(name);
    } else {
      throw wrongShape();
    }
    const bad = packed.findIndex((v) => !Number.isFinite(v));
    if (bad >= 0) throw new Error(`latents ${path}: tensor "${name}" holds ${packed[bad]} at element ${bad}`);
    return packed;
  } finally {
    file.close();
  }
}
