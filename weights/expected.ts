// Checking a checkpoint against the tensors a model expects: every missing, mis-shaped, non-float and (optionally)
// unexpected tensor is listed at once, so a user sees the whole picture in one error.

import type { Checkpoint } from "./checkpoint.ts";
import { printable } from "../runtime/printable.ts";

const FLOAT_DTYPES = new Set(["BF16", "F16", "F32"]);

export interface ExpectationOptions {
  /** Report tensors the model does not expect (except those in `ignore`). Default false. */
  reportUnexpected?: boolean;
  /** Names never reported as unexpected (e.g. buffers a model stores but does not read). */
  ignore?: ReadonlySet<string>;
}

export function checkpointProblems(
  ckpt: Checkpoint,
  expected: ReadonlyMap<string, readonly number[]>,
  options: ExpectationOptions = {},
): string[] {
  const problems: string[] = [];
  for (const [name, shape] of expected) {
    if (!ckpt.has(name)) {
      problems.push(`missing tensor ${printable(name)} (expected shape [${shape.join(", ")}])`);
      continue;
    }
    const info = ckpt.info(name);
    if (info.shape.length !== shape.length || info.shape.some((d, i) => d !== shape[i])) {
      problems.push(`tensor ${printable(name)} has shape [${info.shape.join(", ")}], expected [${shape.join(", ")}]`);
    } else if (!FLOAT_DTYPES.has(info.dtype)) {
      problems.push(`tensor ${printable(name)} is ${info.dtype}, expected BF16, F16 or F32`);
    }
  }
  if (options.reportUnexpected) {
    for (const name of ckpt.names()) {
      if (!expected.has(name) && !options.ignore?.has(name)) {
        problems.push(`unexpected tensor ${printable(name)} [${ckpt.info(name).shape.join(", ")}]`);
      }
    }
  }
  return problems;
}
