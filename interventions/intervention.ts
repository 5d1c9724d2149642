// The block and step grammars of interventions. (What an intervention is to the pipeline — bind to a prepared run,
// rewrite its graph, act around steps — is defined by the model in model/run.ts.)

/** Block selection: "all", a list of names or absolute indices, "a..b" ranges, "first:k", "last:k", "window:i:k". */
export function resolveBlocks(spec: string | (string | number)[], blocks: string[], where: string): number[] {
  const n = blocks.length;
  const pick = new Set<number>();
  const add = (i: number, from: string) => {
    if (!Number.isInteger(i) || i < 0 || i >= n) {
      throw new Error(`${where}: block ${from} is out of range (this model has ${n} blocks: 0..${n - 1}, ${blocks[0]} … ${blocks[n - 1]})`);
    }
    pick.add(i);
  };
  const items = typeof spec === "string" ? spec.split(",").map((s) => s.trim()).filter(Boolean) : spec;
  if (!items.length) throw new Error(`${where}: empty block selection`);
  for (const item of items) {
    if (typeof item === "number") {
      add(item, String(item));
      continue;
    }
    let m: RegExpExecArray | null;
    if (item === "all") { for (let i = 0; i < n; i++) pick.add(i); }
    else if (item === "double") blocks.forEach((b, i) => b.startsWith("double.") && pick.add(i));
    else if (item === "single") blocks.forEach((b, i) => b.startsWith("single.") && pick.add(i));
    else if ((m = /^(\d+)\.\.(\d+)$/.exec(item))) {
      const [a, b] = [Number(m[1]), Number(m[2])];
      if (b <= a) throw new Error(`${where}: empty block range ${item}`);
      for (let i = a; i < b; i++) add(i, `${i} (in ${item})`);
    } else if ((m = /^first:(\d+)$/.exec(item))) {
      const k = Number(m[1]);
      if (k < 1 || k > n) throw new Error(`${where}: ${item} needs 1 ≤ k ≤ ${n}`);
      for (let i = 0; i < k; i++) pick.add(i);
    } else if ((m = /^last:(\d+)$/.exec(item))) {
      const k = Number(m[1]);
      if (k < 1 || k > n) throw new Error(`${where}: ${item} needs 1 ≤ k ≤ ${n}`);
      for (let i = n - k; i < n; i++) pick.add(i);
    } else if ((m = /^window:(\d+):(\d+)$/.exec(item))) {
      const [s, k] = [Number(m[1]), Number(m[2])];
      if (k < 1) throw new Error(`${where}: ${item} needs a window of at least one block`);
      for (let i = s; i < s + k; i++) add(i, `${i} (in ${item})`);
    } else if (/^\d+$/.test(item)) add(Number(item), item);
    else {
      const i = blocks.indexOf(item);
      if (i < 0) {
        throw new Error(
          `${where}: unknown block "${item}" (use all, double, single, an index, a..b, first:k, last:k, window:i:k or a name like ${
            blocks[0]
          })`,
        );
      }
      pick.add(i);
    }
  }
  return [...pick].sort((a, b) => a - b);
}

/** Step selection: "all", a list of step indices, or "a..b" ranges (half-open). */
export function resolveSteps(spec: string | number[] | undefined, steps: number, where: string): Set<number> {
  if (spec === undefined || spec === "all") return new Set(Array.from({ length: steps }, (_, i) => i));
  const out = new Set<number>();
  const items = typeof spec === "string" ? spec.split(",").map((s) => s.trim()).filter(Boolean) : spec.map(String);
  if (!items.length) throw new Error(`${where}: empty step selection`);
  for (const item of items) {
    const m = /^(\d+)\.\.(\d+)$/.exec(item);
    const list = m ? Array.from({ length: Math.max(0, Number(m[2]) - Number(m[1])) }, (_, i) => Number(m![1]) + i) : [Number(item)];
    if (m && !list.length) throw new Error(`${where}: empty step range ${item}`);
    for (const s of list) {
      if (!Number.isInteger(s) || s < 0 || s >= steps) {
        throw new Error(`${where}: step ${item} is beyond this run's ${steps} steps (0..${steps - 1})`);
      }
      out.add(s);
    }
  }
  return out;
}
