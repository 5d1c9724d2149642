// deno task generate / edit / demo, run as a user runs them (subprocesses of cli.ts) on the bundled tiny checkpoint.
// One full edit (checked against the reference pipeline's output), one demo; every bad input must fail before any
// GPU work with one error line, a non-zero exit code and no output file.

import assert from "node:assert/strict";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { decodeImage, encodePng } from "../../model/images.ts";
import { SafetensorsFile } from "../../weights/safetensors.ts";
import { writeSafetensors } from "../../weights/safetensors_writer.ts";
import { unpackLatents } from "../../model/sampler.ts";
import { readInitialLatents } from "../../cli/generate.ts";
import { defaultOutputPath, sideOption, UsageError } from "../../cli/common.ts";
import { relativeL2 } from "../../kernels/audit.ts";

const CLI = fileURLToPath(new URL("../../cli.ts", import.meta.url));
const FIXTURES = fileURLToPath(new URL("../fixtures/klein-tiny/", import.meta.url));
const REF0 = join(FIXTURES, "images", "ref0_80x64.png");

interface Run {
  code: number;
  stdout: string;
  stderr: string;
  ms: number;
}

async function cli(...args: string[]): Promise<Run> {
  const t0 = performance.now();
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", CLI, ...args],
    env: { XDG_RUNTIME_DIR: "/tmp", KLEINSCOPE_DEBUG: "" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr), ms: performance.now() - t0 };
}

async function listDir(dir: string): Promise<string[]> {
  const names: string[] = [];
  for await (const e of Deno.readDir(dir)) names.push(e.name);
  return names.sort();
}

async function readTensor(file: string, name: string): Promise<Float32Array> {
  const f = await SafetensorsFile.open(file);
  try {
    return await f.readF32(name);
  } finally {
    f.close();
  }
}

Deno.test("generate/edit --help explains every option with an example", async () => {
  for (const command of ["generate", "edit"]) {
    const r = await cli(command, "--help");
    assert.equal(r.code, 0, r.stderr);
    for (
      const option of [
        "--model",
        "--prompt",
        "--width",
        "--height",
        "--steps",
        "--guidance",
        "--seed",
        "--max-sequence-length",
        "--latents",
        "--out",
        "--save-latents",
      ]
    ) {
      assert.ok(r.stdout.includes(option), `${command} --help mentions ${option}`);
    }
    assert.equal(r.stdout.includes("--ref IMG"), command === "edit");
    assert.match(r.stdout, /multiples of 16/);
    assert.match(r.stdout, new RegExp(`example: deno task ${command} `));
  }
});

Deno.test("edit on the tiny checkpoint writes the reference pipeline's image and final latents", async () => {
  const dir = await Deno.makeTempDir({ prefix: "kleinscope-edit-" });
  try {
    // The golden pipeline_i2i case: ref0, its prompt, 64×96, 4 steps, its initial latents [C, h, w].
    const caseFile = join(FIXTURES, "cases", "pipeline_i2i.safetensors");
    const initial = await readTensor(caseFile, "initial_latents");
    const latentsIn = join(dir, "initial.safetensors");
    await writeSafetensors(latentsIn, { latents: { dtype: "F32", shape: [32, 6, 4], data: initial } });
    const out = join(dir, "sub", "edit.png");
    const latentsOut = join(dir, "final.safetensors");
    const r = await cli(
      "edit",
      "--prompt",
      "draw a couch in this color",
      "--ref",
      REF0,
      "--width",
      "64",
      "--height",
      "96",
      "--latents",
      latentsIn,
      "--out",
      out,
      "--save-latents",
      latentsOut,
    );
    assert.equal(r.code, 0, r.stderr);
    const lines = r.stdout.split("\n");
    assert.match(r.stdout, /^note: no --model given, using the bundled tiny checkpoint \(random weights/);
    const steps = lines.filter((l) => l.startsWith("step "));
    assert.equal(steps.length, 4, r.stdout);
    assert.match(steps[0], /^step 1\/4 {2}σ=1\.000 {2}\d+(\.\d+)? m?s$/);
    assert.match(steps[3], /^step 4\/4 {2}σ=0\.\d{3} {2}/);
    for (const label of ["device", "model", "size", "times", "memory", "image", "latents"]) {
      assert.ok(lines.some((l) => l.startsWith(`${label} `)), `summary line "${label}" in:\n${r.stdout}`);
    }
    assert.match(r.stdout, /size {5}64×96, 4 steps, latents from file, 1 reference \(80×64\)/);
    assert.match(r.stdout, /transformer weights \d/);

    const png = decodeImage(await Deno.readFile(out), out);
    assert.equal(png.width, 64);
    assert.equal(png.height, 96);
    const want = await readTensor(caseFile, "image");
    let maxDiff = 0;
    for (let p = 0; p < 64 * 96; p++) {
      for (let c = 0; c < 3; c++) maxDiff = Math.max(maxDiff, Math.abs(png.data[p * 3 + c] / 255 - want[c * 64 * 96 + p]));
    }
    assert.ok(maxDiff <= 0.5 / 255 + 1e-4, `PNG differs from the reference image by ${maxDiff} (more than 8-bit rounding)`);
    const final = await readTensor(latentsOut, "latents");
    const err = relativeL2(final, await readTensor(caseFile, "latents.step3"));
    assert.ok(err <= 2e-5, `final latents: relative L2 ${err}`);
    // What --save-latents writes is accepted back by --latents (packed [h·w, C]).
    assert.deepEqual(unpackLatents(await readInitialLatents(latentsOut, 32, 64, 96), 32, 6, 4), unpackLatents(final, 32, 6, 4));
    assert.deepEqual(await listDir(join(dir, "sub")), ["edit.png"]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("--f16 is not a command-line option (it is no faster than f32 on the GPUs measured): a usage mistake", async () => {
  const r = await cli("edit", "--prompt", "x", "--ref", REF0, "--f16");
  assert.equal(r.code, 2, r.stderr);
  assert.match(r.stderr, /--f16/);
});

Deno.test("bad inputs: one error line, exit code 1 or 2, no GPU work and no file written", async () => {
  const dir = await Deno.makeTempDir({ prefix: "kleinscope-bad-" });
  try {
    const out = join(dir, "out", "x.png");
    const notImage = join(dir, "notes.png");
    await Deno.writeTextFile(notImage, "this is not an image");
    const small = join(dir, "small48.png");
    await Deno.writeFile(small, encodePng({ width: 48, height: 48, data: new Uint8Array(48 * 48 * 3).fill(90) }));
    const aFile = join(dir, "plain-file");
    await Deno.writeTextFile(aFile, "x");
    const badLatents = join(dir, "bad-latents.safetensors");
    await writeSafetensors(badLatents, { latents: { dtype: "F32", shape: [32, 5, 5], data: new Float32Array(32 * 25).fill(0.5) } });

    const cases: { args: string[]; code: number; message: RegExp }[] = [
      {
        args: ["edit", "--model", join(dir, "no-such-model"), "--prompt", "p", "--ref", REF0],
        code: 1,
        message: /model folder .*no-such-model: no such file or folder/,
      },
      {
        args: ["edit", "--model", FIXTURES, "--prompt", "p", "--ref", REF0],
        code: 1,
        message: /is not a FLUX.2 klein pipeline folder: it lacks model_index.json/,
      },
      { args: ["edit", "--prompt", "p", "--ref", notImage], code: 1, message: /image .*notes\.png: not a readable PNG or JPEG/ },
      {
        args: ["edit", "--prompt", "p", "--ref", join(dir, "missing.png")],
        code: 1,
        message: /image .*missing\.png: cannot read it: no such file/,
      },
      {
        args: ["edit", "--prompt", "p", "--ref", small],
        code: 1,
        message: /small48\.png: 48×48 is too small, both sides must be at least 64 px/,
      },
      {
        args: ["edit", "--prompt", "p", "--ref", REF0, "--width", "100"],
        code: 2,
        message: /--width 100 is not a multiple of 16 \(nearest: 96\)/,
      },
      { args: ["generate", "--prompt", "p", "--height", "8"], code: 2, message: /--height 8 is not a multiple of 16 \(nearest: 16\)/ },
      {
        args: ["edit", "--prompt", "p", "--ref", REF0, "--out", join(aFile, "x.png")],
        code: 1,
        message: /output image .*plain-file\/x\.png: a parent of it is a file/,
      },
      {
        args: ["edit", "--prompt", "p", "--ref", REF0, "--latents", badLatents],
        code: 1,
        message: /tensor "latents" has shape \[32, 5, 5\]; a 80×64 image needs \[32, 4, 5\] \(channel-major\) or \[20, 32\] \(packed\)/,
      },
      { args: ["generate", "--prompt", "p", "--ref", REF0], code: 2, message: /generate takes no --ref/ },
      { args: ["edit", "--prompt", "p"], code: 2, message: /edit needs at least one --ref/ },
      { args: ["generate", "--width", "64"], code: 2, message: /--prompt is required/ },
      { args: ["generate", "--prompt", "p", "--steps", "two"], code: 2, message: /--steps "two" is not a whole number/ },
      { args: ["generate", "--prompt", "p", "--guidance", "3"], code: 2, message: /guidance-distilled/ },
      { args: ["generate", "--prompt", "p", "--colour", "red"], code: 2, message: /Unknown option '--colour'/ },
      { args: ["generate", "--prompt", "p", "--out", join(dir, "x.jpg")], code: 2, message: /give a name ending in \.png/ },
    ];
    for (const c of cases) {
      const args = c.args.includes("--out") ? c.args : [...c.args, "--out", out];
      const r = await cli(...args);
      const what = `${c.args.join(" ")}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`;
      assert.equal(r.code, c.code, what);
      const lines = r.stderr.trim().split("\n");
      assert.equal(lines.length, 1, what);
      assert.match(lines[0], /^error: /, what);
      assert.match(lines[0], c.message, what);
      assert.ok(!r.stdout.includes("step 1/"), `no step ran: ${what}`);
    }
    // Every case failed before the output checks or at them: nothing was written, not even the output folder.
    assert.deepEqual(await listDir(dir), ["bad-latents.safetensors", "notes.png", "plain-file", "small48.png"]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("demo writes a text-to-image result and an edit on the tiny checkpoint and says how to use real weights", async () => {
  const dir = await Deno.makeTempDir({ prefix: "kleinscope-demo-" });
  try {
    const r = await cli("demo", "--out", dir);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(await listDir(dir), ["edit.png", "text-to-image.png"]);
    const t2i = decodeImage(await Deno.readFile(join(dir, "text-to-image.png")), "text-to-image.png");
    assert.deepEqual([t2i.width, t2i.height], [64, 96]);
    const edit = decodeImage(await Deno.readFile(join(dir, "edit.png")), "edit.png");
    assert.deepEqual([edit.width, edit.height], [80, 64]);
    assert.match(r.stdout, /deno task download black-forest-labs\/FLUX\.2-klein-4B --dir models\/klein-4b/);
    assert.match(r.stdout, /deno task edit --model models\/klein-4b --prompt/);
    assert.equal(r.stdout.split("\n").filter((l) => /^ {2}step \d\/4/.test(l)).length, 8);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("sideOption refuses sizes that are not multiples of 16 and names the nearest", () => {
  assert.equal(sideOption("width", "1024"), 1024);
  assert.equal(sideOption("width", undefined), undefined);
  assert.throws(() => sideOption("width", "100"), (e: Error) => e instanceof UsageError && /nearest: 96\)/.test(e.message));
  assert.throws(() => sideOption("width", "1030"), /nearest: 1024\)/);
  assert.throws(() => sideOption("width", "104"), /nearest: 96 or 112\)/);
  assert.throws(() => sideOption("height", "7"), /nearest: 16\)/);
  assert.throws(() => sideOption("height", "0"), /at least 1/);
  assert.throws(() => sideOption("height", "64.5"), /not a whole number/);
});

Deno.test("readInitialLatents accepts [C, h, w], [h·w, C] and a leading batch of 1; refuses other shapes and non-finite values", async () => {
  const dir = await Deno.makeTempDir({ prefix: "kleinscope-latents-" });
  try {
    const C = 4, h = 2, w = 3;
    const chw = Float32Array.from({ length: C * h * w }, (_, i) => i + 0.25);
    const packed = new Float32Array(C * h * w);
    for (let c = 0; c < C; c++) for (let p = 0; p < h * w; p++) packed[p * C + c] = chw[c * h * w + p];
    const write = async (name: string, shape: number[], data: Float32Array, tensor = "latents") => {
      const path = join(dir, name);
      await writeSafetensors(path, { [tensor]: { dtype: "F32", shape, data } });
      return path;
    };
    assert.deepEqual(await readInitialLatents(await write("a", [C, h, w], chw), C, 16 * w, 16 * h), packed);
    assert.deepEqual(await readInitialLatents(await write("b", [1, C, h, w], chw), C, 16 * w, 16 * h), packed);
    assert.deepEqual(await readInitialLatents(await write("c", [h * w, C], packed, "noise"), C, 16 * w, 16 * h), packed);
    await assert.rejects(
      readInitialLatents(await write("d", [C, w, h], chw), C, 16 * w, 16 * h),
      /has shape \[4, 3, 2\]; a 48×32 image needs \[4, 2, 3\]/,
    );
    await assert.rejects(readInitialLatents(join(dir, "a"), C + 1, 16 * w, 16 * h), /needs \[5, 2, 3\]/);
    const withNan = chw.slice();
    withNan[5] = NaN;
    await assert.rejects(readInitialLatents(await write("e", [C, h, w], withNan), C, 16 * w, 16 * h), /holds NaN/);
    await assert.rejects(readInitialLatents(join(dir, "nope"), C, 16 * w, 16 * h), /cannot open: no such file/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("defaultOutputPath is out/<command>-<date>-<time>.png", () => {
  assert.equal(defaultOutputPath("edit", new Date(2030, 0, 2, 3, 4, 5)), join("out", "edit-20300102-030405.png"));
});
