// `deno task verify`: a stored run is run again from its spec.json and its images compared under the study's rule
// (mean absolute pixel difference ≤ 1.0 of 255). The comparison on synthetic images (the threshold itself, sizes,
// a missing source image); then the command on the tiny checkpoint: a 32×32, 1-step edit written by `deno task run`
// verifies, and a copy whose image was brightened by 2 levels does not (exit 1), both printing the figure.

import assert from "node:assert/strict";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { loadImage, savePng } from "../../model/images.ts";
import { compareRunImages, verdictOf } from "../../cli/verify.ts";

const CLI = fileURLToPath(new URL("../../cli.ts", import.meta.url));
const MODEL = fileURLToPath(new URL("../fixtures/klein-tiny/model", import.meta.url));
const REF = fileURLToPath(new URL("../fixtures/klein-tiny/images/ref0_80x64.png", import.meta.url));

/** An image of random 8-bit levels in 3…252, shifted by `shift` levels on the first `count` values. */
async function writeImage(path: string, w: number, h: number, seed: number, shift = 0, count = Infinity): Promise<void> {
  const planes = new Float32Array(3 * w * h);
  let s = seed;
  for (let i = 0; i < planes.length; i++) {
    s = (s * 1103515245 + 12345) >>> 0;
    const level = 3 + (s >>> 8) % 250;
    planes[i] = (level + (i < count ? shift : 0)) / 255;
  }
  await savePng(path, planes, w, h);
}

Deno.test("verify: the comparison — threshold 1.0 inclusive, sizes, missing images", async () => {
  const root = await Deno.makeTempDir({ prefix: "ks-verify-cmp-" });
  try {
    const [a, b, c, d] = ["a", "b", "c", "d"].map((n) => join(root, n));
    for (const dir of [a, b, c, d]) await Deno.mkdir(dir);
    await writeImage(join(a, "image.png"), 24, 16, 7);
    await writeImage(join(b, "image.png"), 24, 16, 7, 1); // every value one level up: exactly 1.0
    await writeImage(join(c, "image.png"), 24, 16, 7, 3, 3 * 24 * 16 / 2 + 3); // half the values 3 up: just over 1.5
    await writeImage(join(d, "image.png"), 16, 16, 7);
    const one = await compareRunImages(a, b);
    assert.deepEqual(one.map((x) => x.name), ["image.png"]);
    assert.ok(Math.abs(one[0].difference! - 1) < 1e-12, String(one[0].difference));
    assert.equal(verdictOf(one, 1.0), true);
    assert.equal(verdictOf(one, 0.999), false);
    const over = await compareRunImages(a, c);
    assert.ok(over[0].difference! > 1.5 && over[0].difference! < 1.52, String(over[0].difference));
    assert.equal(verdictOf(over, 1.0), false);
    const sized = await compareRunImages(a, d);
    assert.deepEqual([sized[0].difference, sized[0].problem], [null, "sizes differ: stored 24×16, new 16×16"]);
    assert.equal(verdictOf(sized, 1.0), false);
    // A source image on one side only fails; on both sides it is compared too.
    await writeImage(join(a, "source.png"), 8, 8, 1);
    const missing = await compareRunImages(a, b);
    assert.deepEqual(missing[1], { name: "source.png", difference: null, problem: "the new run did not write it" });
    assert.equal(verdictOf(missing, 1.0), false);
    await writeImage(join(b, "source.png"), 8, 8, 1);
    assert.deepEqual((await compareRunImages(a, b)).map((x) => x.difference === 0 || Math.abs(x.difference! - 1) < 1e-12), [true, true]);
    assert.equal(verdictOf([], 1.0), false, "nothing compared is no pass");
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

async function cli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", CLI, ...args],
    env: { XDG_RUNTIME_DIR: "/tmp", KLEINSCOPE_DEBUG: "" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

Deno.test("deno task verify on the tiny checkpoint: a stored run passes, a tampered copy fails", async () => {
  const root = await Deno.makeTempDir({ prefix: "ks-verify-" });
  try {
    const spec = join(root, "spec.json");
    await Deno.writeTextFile(
      spec,
      JSON.stringify({
        model: MODEL,
        prompt: "draw a couch in this color",
        refs: [REF],
        width: 32,
        height: 32,
        steps: 1,
        seed: 5,
        maxSequenceLength: 64,
      }),
    );
    const stored = join(root, "stored");
    const run = await cli(["run", spec, "--out", stored]);
    assert.equal(run.code, 0, run.stderr);

    const kept = join(root, "again");
    const ok = await cli(["verify", stored, "--keep", kept]);
    assert.equal(ok.code, 0, ok.stdout + ok.stderr);
    const figure = ok.stdout.match(/image\.png: mean \|Δ\| = (\d+\.\d{4}) of 255 \(tolerance 1\) — pass/);
    assert.ok(figure, ok.stdout);
    assert.ok(Number(figure[1]) <= 1);
    assert.match(ok.stdout, /: PASS \(largest mean \|Δ\| \d+\.\d{4} of 255, tolerance 1\)/);
    assert.ok((await Deno.stat(join(kept, "image.png"))).isFile, "--keep keeps the new run");

    // A copy of the stored run whose image is 2 levels brighter everywhere (clamped): no longer reproduced.
    const tampered = join(root, "tampered");
    await Deno.mkdir(tampered);
    await Deno.copyFile(join(stored, "spec.json"), join(tampered, "spec.json"));
    const img = await loadImage(join(stored, "image.png"));
    const n = img.width * img.height;
    const planes = new Float32Array(3 * n);
    for (let i = 0; i < n; i++) for (let c = 0; c < 3; c++) planes[c * n + i] = Math.min(255, img.data[i * 3 + c] + 2) / 255;
    await savePng(join(tampered, "image.png"), planes, img.width, img.height);
    const bad = await cli(["verify", tampered]);
    assert.equal(bad.code, 1, bad.stdout + bad.stderr);
    const worse = bad.stdout.match(/image\.png: mean \|Δ\| = (\d+\.\d{4}) of 255 \(tolerance 1\) — fail/);
    assert.ok(worse && Number(worse[1]) > 1.5, bad.stdout);
    assert.match(bad.stdout, /: FAIL /);

    // Usage mistakes and folders without a run.
    assert.equal((await cli(["verify"])).code, 2);
    assert.equal((await cli(["verify", stored, "--tolerance", "-1"])).code, 2);
    await Deno.mkdir(join(root, "empty"));
    const empty = await cli(["verify", join(root, "empty")]);
    assert.equal(empty.code, 1);
    assert.match(empty.stderr, /holds no spec\.json/);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});
