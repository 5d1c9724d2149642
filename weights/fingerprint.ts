// A fingerprint of a pipeline checkpoint: SHA-256 over every config/index JSON and every safetensors file's header
// and size. Cheap (no tensor data is read) and changes whenever a tensor's name, dtype, shape, offset or the file
// length changes; written into every experiment spec so an output can be traced to its weights.

import { join, relative } from "node:path";
import { MAX_HEADER_BYTES } from "./safetensors.ts";

async function walk(dir: string, out: string[]): Promise<void> {
  for await (const e of Deno.readDir(dir)) {
    const p = join(dir, e.name);
    if (e.isDirectory) await walk(p, out);
    else if (e.isFile && (e.name.endsWith(".json") || e.name.endsWith(".safetensors"))) out.push(p);
  }
}

export async function checkpointFingerprint(path: string): Promise<string> {
  const stat = await Deno.stat(path);
  const files: string[] = [];
  if (stat.isDirectory) await walk(path, files);
  else files.push(path);
  files.sort();
  const parts: Uint8Array[] = [];
  const enc = new TextEncoder();
  for (const f of files) {
    const name = stat.isDirectory ? relative(path, f) : f.split("/").pop()!;
    const size = (await Deno.stat(f)).size;
    parts.push(enc.encode(`${name}\n${size}\n`));
    if (f.endsWith(".json")) {
      // The tokenizer vocabulary is large; its size and name are enough.
      if (!name.endsWith("tokenizer.json")) parts.push(await Deno.readFile(f));
    } else {
      const file = await Deno.open(f);
      try {
        const head = new Uint8Array(8);
        if ((await file.read(head)) === 8) {
          const n = Number(new DataView(head.buffer).getBigUint64(0, true));
          const header = new Uint8Array(Math.min(n, MAX_HEADER_BYTES));
          let got = 0;
          while (got < header.length) {
            const r = await file.read(header.subarray(got));
            if (r === null) break;
            got += r;
          }
          parts.push(head, header.subarray(0, got));
        }
      } finally {
        file.close();
      }
    }
  }
  const total = parts.reduce((a, p) => a + p.length, 0);
  const all = new Uint8Array(total);
  let o = 0;
  for (const p of parts) {
    all.set(p, o);
    o += p.length;
  }
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", all));
  return "sha256:" + [...digest].map((b) => b.toString(16).padStart(2, "0")).join("");
}
