// Float64 reference and audit cases for row patching.

import type { AuditCase } from "../audit.ts";
import { type PatchMode, patchRows } from "../patch.ts";

function patchCase(mode: PatchMode, enabled: boolean): AuditCase {
  const ROWS = 41, COLS = 67, COUNT = 9;
  return {
    kernel: `patch.${mode}`,
    label: `${COUNT} of ${ROWS}×${COLS}${enabled ? "" : " (switched off)"}`,
    build(g, rng) {
      const dst0 = rng.normalArray(ROWS * COLS), src = rng.normalArray(COUNT * COLS);
      const index = Uint32Array.from({ length: COUNT }, (_, i) => (i * 7 + 3) % ROWS);
      const alpha = 0.6;
      const dst = g.state("dst", [ROWS, COLS]);
      patchRows(g, "op", {
        src: g.input("src", [COUNT, COLS]),
        dst,
        index: g.input("index", [COUNT], "u32"),
        control: g.input("control", [2]),
        mode,
      });
      const exp = Float64Array.from(dst0);
      if (enabled) {
        for (let i = 0; i < COUNT; i++) {
          for (let c = 0; c < COLS; c++) {
            const d = index[i] * COLS + c;
            exp[d] = mode === "replace" ? src[i * COLS + c] : exp[d] + Math.fround(alpha) * src[i * COLS + c];
          }
        }
      }
      return {
        inputs: [{ name: "src", data: src }, { name: "index", data: index }, {
          name: "control",
          data: Float32Array.of(enabled ? 1 : 0, alpha),
        }],
        outputs: [{ name: "dst", expected: exp, initial: dst0 }],
      };
    },
  };
}

export const patchAuditCases: AuditCase[] = [patchCase("replace", true), patchCase("add", true), patchCase("replace", false)];
