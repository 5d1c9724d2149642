// Shared paths and helpers of the weights tests.

export const FIXTURES = new URL("../fixtures/klein-tiny/", import.meta.url).pathname;
export const TRANSFORMER = `${FIXTURES}model/transformer`;
export const TEXT_ENCODER = `${FIXTURES}model/text_encoder`;
export const VAE = `${FIXTURES}model/vae`;
export const VAE_FILE = `${VAE}/diffusion_pytorch_model.safetensors`;
export const BFL = `${FIXTURES}transformer-bfl.safetensors`;
export const PIPELINE = `${FIXTURES}model`;

/** The bytes of a tensor read straight from the file with the header parsed independently of weights/. */
export async function rawTensorBytes(file: string, name: string): Promise<Uint8Array> {
  const all = await Deno.readFile(file);
  const n = Number(new DataView(all.buffer).getBigUint64(0, true));
  const header = JSON.parse(new TextDecoder().decode(all.subarray(8, 8 + n)));
  const [b, e] = header[name].data_offsets;
  return all.slice(8 + n + b, 8 + n + e);
}

/** Copy a folder's files (not recursive) to a new temporary folder, writable. */
export async function copyFolder(src: string): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "kleinscope-weights-" });
  for await (const e of Deno.readDir(src)) {
    if (!e.isFile) continue;
    await Deno.writeFile(`${dir}/${e.name}`, await Deno.readFile(`${src}/${e.name}`));
  }
  return dir;
}

export function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.byteLength !== b.byteLength) return false;
  for (let i = 0; i < a.byteLength; i++) if (a[i] !== b[i]) return false;
  return true;
}
