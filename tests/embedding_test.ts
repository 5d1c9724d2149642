// kleinscope used as a library from another Deno project: a folder outside this repository, with its own deno.json
// (no import map) and a main.ts that is the README's library example, importing mod.ts by file URL, run in small on
// the bundled checkpoint. Nothing may depend on this repository's deno.json, and no dependency may bring npm lifecycle
// scripts (Deno prints a warning banner for those the first time a project resolves them, and on every run of a
// project without a lock file).

import assert from "node:assert/strict";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { loadQwen3Tokenizer } from "../model/qwen3/tokenizer.ts";
import { decodeImage } from "../model/images.ts";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const MOD = new URL("../mod.ts", import.meta.url).href;
const MODEL = join(ROOT, "tests/fixtures/klein-tiny/model");
const REF = join(ROOT, "tests/fixtures/klein-tiny/images/ref0_80x64.png");
const PROMPT = "draw a couch in this color";

/** Deno's banner for npm packages whose lifecycle scripts were not run. */
const BANNER = /Warning|lifecycle|build scripts|nodeModulesDir/;

/** The README's library example ("From your own Deno code"), pointed at this checkout and the bundled tiny checkpoint
 * (whose blocks are double.0–1 and single.0–1), at 32×32 and one step. Every edit must find its text, so a changed
 * example fails here instead of drifting. */
function readmeExample(): string {
  const readme = Deno.readTextFileSync(join(ROOT, "README.md"));
  const section = readme.slice(readme.indexOf("### From your own Deno code"));
  const code = /```ts\n([\s\S]*?)```/.exec(section)?.[1];
  assert.ok(code, "the README has a TypeScript example under 'From your own Deno code'");
  const edits: [string, string][] = [
    [`from "./mod.ts"`, `from ${JSON.stringify(MOD)}`],
    [`Flux2KleinPipeline.load("models/klein-4b")`, `Flux2KleinPipeline.load(${JSON.stringify(MODEL)})`],
    [`refs: ["swatch.png"]`, `refs: [${JSON.stringify(REF)}], width: 32, height: 32, steps: 1, seed: 3`],
    [`"double.2.txt"`, `"double.1.txt"`],
  ];
  let out = code;
  for (const [from, to] of edits) {
    assert.ok(out.includes(from), `the README example contains ${from}`);
    out = out.replaceAll(from, to);
  }
  assert.ok(out.includes(`prompt: ${JSON.stringify(PROMPT)}`), "the README example edits the test's prompt");
  return out + "pipe.release();\n";
}

async function deno(args: string[], cwd: string): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args,
    cwd,
    env: { XDG_RUNTIME_DIR: "/tmp", NO_COLOR: "1", KLEINSCOPE_DEBUG: "" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder();
  return { code: out.code, stdout: text.decode(out.stdout), stderr: text.decode(out.stderr) };
}

/** npm packages of a lock file that carry lifecycle scripts (Deno marks them `"scripts": true`). */
async function packagesWithScripts(lockPath: string): Promise<string[]> {
  const lock = JSON.parse(await Deno.readTextFile(lockPath));
  return Object.entries(lock.npm ?? {}).filter(([, v]) => (v as { scripts?: boolean }).scripts).map(([k]) => k);
}

Deno.test("embedding: another project imports mod.ts by file URL and runs a knockout with a capture, without warnings", async () => {
  const dir = await Deno.makeTempDir({ prefix: "kleinscope-embed-" });
  try {
    assert.ok(!dir.startsWith(ROOT), `${dir} is outside the repository`);
    await Deno.writeTextFile(join(dir, "deno.json"), JSON.stringify({ imports: {} }, null, 2) + "\n");
    await Deno.writeTextFile(join(dir, "main.ts"), readmeExample());
    const r = await deno(["run", "-A", "--config", join(dir, "deno.json"), "main.ts"], dir);
    assert.equal(r.code, 0, r.stderr);
    assert.doesNotMatch(r.stderr, BANNER, r.stderr);

    // The capture's shape: one row per token of the prompt's own text, the transformer's width in columns.
    const config = JSON.parse(await Deno.readTextFile(join(MODEL, "transformer", "config.json")));
    const tokens = (await loadQwen3Tokenizer(join(MODEL, "tokenizer"))).encode(PROMPT).ids.length;
    const line = r.stdout.trim().split("\n").at(-1)!;
    const width = config.num_attention_heads * config.attention_head_dim;
    assert.equal(line, `${tokens} ${width} []`, r.stdout);
    const png = decodeImage(await Deno.readFile(join(dir, "couch.png")), "couch.png");
    assert.deepEqual([png.width, png.height], [32, 32]);

    // The project resolved kleinscope's npm packages by their pinned specifiers alone, none with lifecycle scripts.
    const lock = JSON.parse(await Deno.readTextFile(join(dir, "deno.lock")));
    assert.deepEqual(Object.keys(lock.specifiers ?? {}).sort(), [
      "npm:@huggingface/jinja@0.5.11",
      "npm:@huggingface/tokenizers@0.2.0",
      "npm:jpeg-js@0.4.4",
    ]);
    assert.deepEqual(await packagesWithScripts(join(dir, "deno.lock")), []);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("embedding: deno task inspect prints no dependency banner, and the lock file holds no package with lifecycle scripts", async () => {
  const r = await deno(["task", "inspect", "tests/fixtures/klein-tiny/model/vae"], ROOT);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /tensors \(/);
  assert.doesNotMatch(r.stderr, BANNER, r.stderr);
  assert.deepEqual(await packagesWithScripts(join(ROOT, "deno.lock")), []);
});
