// The study's noise seed of a task: zlib's CRC-32 of the task id's UTF-8 bytes (data/tasks/_seed.py in the published
// code: `zlib.crc32(task_id.encode("utf-8"))`, an unsigned 32-bit value). Depends on the id alone, so a task keeps
// its seed whatever file or order it is built in.

const TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

/** CRC-32 (IEEE 802.3, reflected, as zlib.crc32) of bytes, unsigned. */
export function crc32(bytes: Uint8Array): number {
  let c = 0xffffffff;
  for (const b of bytes) c = TABLE[(c ^ b) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

/** The noise seed of a built task: crc32 of its id's UTF-8 bytes. */
export function taskSeed(taskId: string): number {
  if (typeof taskId !== "string" || taskId === "") throw new Error("a task seed needs a non-empty task id");
  return crc32(new TextEncoder().encode(taskId));
}
