// The study's noise seed of a task: zlib's CRC-32 of the task id's UTF-8 bytes (data/tasks/_seed.py in the published
// code: `zlib.crc32(task_id.encode("utf-8"))`, an unsigned 32-bit value). Depends on the id alone, so a task keeps
// its seed whatever file or order it is built in.

import { crc32 } from "../runtime/crc32.ts";

/** The noise seed of a built task: crc32 of its id's UTF-8 bytes. */
export function taskSeed(taskId: string): number {
  if (typeof taskId !== "string" || taskId === "") throw new Error("a task seed needs a non-empty task id");
  return crc32(new TextEncoder().encode(taskId));
}
