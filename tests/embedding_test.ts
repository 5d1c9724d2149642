// kleinscope used as a library from another Deno project: a folder outside this repository, with its own deno.json
// (no import map) and a main.ts that imports mod.ts by file URL and runs the README's example in small, on the
// bundled checkpoint. Nothing may depend on this repository's deno.json, and no dependency may bring npm lifecycle
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
    await Deno.writeTextFile(
      join(dir, "main.ts"),
      `import { CaptureIntervention, Flux2KleinPipeline, KnockoutIntervention, savePng } from ${JSON.stringify(MOD)};

const pipe = await Flux2KleinPipeline.load(${JSON.stringify(MODEL)});
const cap = new CaptureIntervention([{ tap: "double.1.txt", group: "text[content]" }]);
const ko = new KnockoutIntervention([{ setting: "ref->text[padding]", blocks: "all" }]);
const run = await pipe.generate({
  prompt: ${JSON.stringify(PROMPT)},
  refs: [${JSON.stringify(REF)}],
  width: 32,
  height: 32,
  steps: 1,
  seed: 3,
  interventions: [ko, cap],
});
await savePng("out.png", run.image, run.width, run.height);
const rows = cap.results(run).at("double.1.txt", "text[content]", 0);
console.log(JSON.stringify({ rows: rows.rows, cols: rows.cols, values: rows.data.length, finite: rows.data.every(Number.isFinite) }));
pipe.release();
`,
    );
    const r = await deno(["run", "-A", "--config", join(dir, "deno.json"), "main.ts"], dir);
    assert.equal(r.code, 0, r.stderr);
    assert.doesNotMatch(r.stderr, BANNER, r.stderr);

    // The capture's shape: one row per token of the prompt's own text, the transformer's width in columns.
    const config = JSON.parse(await Deno.readTextFile(join(MODEL, "transformer", "config.json")));
    const tokens = (await loadQwen3Tokenizer(join(MODEL, "tokenizer"))).encode(PROMPT).ids.length;
    const line = r.stdout.trim().split("\n").at(-1)!;
    const width = config.num_attention_heads * config.attention_head_dim;
    assert.deepEqual(JSON.parse(line), { rows: tokens, cols: width, values: tokens * width, finite: true }, r.stdout);
    const png = decodeImage(await Deno.readFile(join(dir, "out.png")), "out.png");
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
