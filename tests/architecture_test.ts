// Each folder owns one layer and lower layers never import upper ones (README, architecture).

import assert from "node:assert/strict";
import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..");
/** Lowest first; a module may import its own layer and those before it. */
const LAYERS = ["runtime", "weights", "kernels", "model", "interventions", "studies", "experiments"];

function* sources(dir: string): Generator<string> {
  for (const e of Deno.readDirSync(dir)) {
    const p = join(dir, e.name);
    if (e.isDirectory) yield* sources(p);
    else if (e.name.endsWith(".ts")) yield p;
  }
}

Deno.test("no layer imports a layer above it", () => {
  const violations: string[] = [];
  for (const [rank, layer] of LAYERS.entries()) {
    for (const file of sources(join(ROOT, layer))) {
      const text = Deno.readTextFileSync(file);
      for (const m of text.matchAll(/(?:from|import)\s*\(?\s*"(\.[^"]+)"/g)) {
        const target = relative(ROOT, resolve(dirname(file), m[1])).split("/")[0];
        const targetRank = LAYERS.indexOf(target);
        if (targetRank > rank || ["cli", "conformance", "bench", "tests"].includes(target)) {
          violations.push(`${relative(ROOT, file)} imports ${m[1]}`);
        }
      }
    }
  }
  assert.deepEqual(violations, []);
});

Deno.test("library code uses pinned npm: specifiers, not this repository's import map", () => {
  const bare: string[] = [];
  for (const layer of LAYERS) {
    for (const file of sources(join(ROOT, layer))) {
      for (const m of Deno.readTextFileSync(file).matchAll(/^\s*(?:import|export)\b[^"\n]*from\s+"([^".][^"]*)"/gm)) {
        if (!/^(npm:|node:)/.test(m[1])) bare.push(`${relative(ROOT, file)}: ${m[1]}`);
      }
    }
  }
  assert.deepEqual(bare, []);
});
