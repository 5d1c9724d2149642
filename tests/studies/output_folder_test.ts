// Output folders: only what kleinscope wrote is ever removed; `.`, ancestors of the current folder, home, roots, the
// model folder and folders of the user's are refused with one line and left untouched; a swap keeps the old folder
// until the new one is in place; atomic files leave no temporary behind.

import assert from "node:assert/strict";
import { join } from "node:path";
import {
  checkOutputPath,
  OUTPUT_MARKER,
  OutputFolderError,
  ownedFiles,
  prepareOutputFolder,
  removeOwnedFolder,
  replaceOutputFolder,
  writeFileAtomic,
  writeOutputFolder,
} from "../../studies/output_folder.ts";

async function names(dir: string): Promise<string[]> {
  return (await Array.fromAsync(Deno.readDir(dir))).map((e) => e.name).sort();
}

/** A folder of the user's: files that must survive everything below. */
async function userFolder(dir: string): Promise<Map<string, string>> {
  await Deno.mkdir(join(dir, "notes"), { recursive: true });
  const files = new Map([["thesis.tex", "\\documentclass{article}"], ["notes/todo.txt", "cite the paper"]]);
  for (const [f, text] of files) await Deno.writeTextFile(join(dir, f), text);
  return files;
}

async function assertIntact(dir: string, files: Map<string, string>) {
  for (const [f, text] of files) assert.equal(await Deno.readTextFile(join(dir, f)), text, `${f} was changed`);
}

/** What a run writes into its folder. */
async function writeRun(dir: string, tag: string) {
  await Deno.writeTextFile(join(dir, "image.png"), `png ${tag}`);
  await Deno.writeTextFile(join(dir, "spec.json"), `{"tag": "${tag}"}`);
  await Deno.writeTextFile(join(dir, "run.json"), "{}");
}

async function inFolder<T>(dir: string, body: () => Promise<T>): Promise<T> {
  const before = Deno.cwd();
  Deno.chdir(dir);
  try {
    return await body();
  } finally {
    Deno.chdir(before);
  }
}

Deno.test("output folder: --out . --overwrite in a folder of the user's is refused and nothing is touched", async () => {
  const root = await Deno.makeTempDir({ prefix: "ks-out-" });
  try {
    const work = join(root, "work");
    const files = await userFolder(work);
    await writeRun(work, "old"); // even a folder that also holds a run's files
    await inFolder(work, async () => {
      for (const out of [".", "./", "..", join(root), work, "/"]) {
        await assert.rejects(
          () => writeOutputFolder(out, { overwrite: true }, () => Promise.reject(new Error("must not run"))),
          (e: Error) => {
            assert.ok(e instanceof OutputFolderError, e.message);
            assert.match(e.message, /refusing to write there/);
            assert.equal(e.message.includes("\n"), false);
            return true;
          },
        );
      }
    });
    await assertIntact(work, files);
    assert.deepEqual(await names(work), ["image.png", "notes", "run.json", "spec.json", "thesis.tex"]);
    assert.deepEqual(await names(root), ["work"], "no temporary folder left beside it");
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("output folder: home, the model folder and folders around it are refused", async () => {
  const root = await Deno.makeTempDir({ prefix: "ks-out-" });
  const home = Deno.env.get("HOME");
  try {
    const model = join(root, "models", "klein");
    await Deno.mkdir(model, { recursive: true });
    const protect = [{ path: model, what: "model folder" }];
    await assert.rejects(() => checkOutputPath(model, { protect }), /is the model folder/);
    await assert.rejects(() => checkOutputPath(join(root, "models"), { protect }), /holds the model folder/);
    await assert.rejects(() => checkOutputPath(join(model, "out"), { protect }), /is inside the model folder/);
    Deno.env.set("HOME", join(root, "home"));
    await Deno.mkdir(join(root, "home"));
    await assert.rejects(() => checkOutputPath(join(root, "home"), {}), /is the home folder/);
    assert.equal(await checkOutputPath(join(root, "out"), { protect }), join(root, "out"));
    // A control character in the name is shown escaped.
    await assert.rejects(() => checkOutputPath(`${root}/models\x1b[2J/..`, {}), (e: Error) => {
      assert.ok(e.message.includes("\\x1b[2J"), e.message);
      return true;
    });
  } finally {
    if (home) Deno.env.set("HOME", home);
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("output folder: only folders kleinscope wrote are replaced, and only when they hold nothing else", async () => {
  const root = await Deno.makeTempDir({ prefix: "ks-out-" });
  try {
    const out = join(root, "out");
    // New folder: written, with a marker listing its files.
    await writeOutputFolder(out, {}, (tmp) => writeRun(tmp, "one"));
    assert.deepEqual(await names(out), [OUTPUT_MARKER, "image.png", "run.json", "spec.json"]);
    assert.deepEqual((await ownedFiles(out))!.foreign, []);
    // Without --overwrite a non-empty folder is refused.
    await assert.rejects(() => writeOutputFolder(out, {}, (tmp) => writeRun(tmp, "two")), /is not empty/);
    // With it, replaced.
    await writeOutputFolder(out, { overwrite: true }, (tmp) => writeRun(tmp, "two"));
    assert.equal(await Deno.readTextFile(join(out, "spec.json")), `{"tag": "two"}`);
    // A file the user added: refused, nothing touched.
    await Deno.writeTextFile(join(out, "my-notes.txt"), "keep me");
    await assert.rejects(
      () => writeOutputFolder(out, { overwrite: true }, (tmp) => writeRun(tmp, "three")),
      /holds my-notes.txt, which kleinscope did not write/,
    );
    assert.equal(await Deno.readTextFile(join(out, "my-notes.txt")), "keep me");
    assert.equal(await Deno.readTextFile(join(out, "spec.json")), `{"tag": "two"}`);
    // A folder of the user's (no marker, no spec.json + run.json): refused.
    const mine = join(root, "mine");
    const files = await userFolder(mine);
    await assert.rejects(
      () => writeOutputFolder(mine, { overwrite: true }, (tmp) => writeRun(tmp, "x")),
      /does not look like a kleinscope output/,
    );
    await assertIntact(mine, files);
    // An output written before the marker existed (spec.json + run.json + image.png only) is recognised.
    const legacy = join(root, "legacy");
    await Deno.mkdir(legacy);
    await writeRun(legacy, "legacy");
    await writeOutputFolder(legacy, { overwrite: true }, (tmp) => writeRun(tmp, "new"));
    assert.equal(await Deno.readTextFile(join(legacy, "spec.json")), `{"tag": "new"}`);
    // An empty folder is filled without --overwrite.
    const empty = join(root, "empty");
    await Deno.mkdir(empty);
    await writeOutputFolder(empty, {}, (tmp) => writeRun(tmp, "e"));
    assert.ok((await names(empty)).includes("image.png"));
    // Nothing temporary is left beside them.
    assert.deepEqual(await names(root), ["empty", "legacy", "mine", "out"]);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("output folder: a failed run leaves the previous folder as it was and no temporary folder", async () => {
  const root = await Deno.makeTempDir({ prefix: "ks-out-" });
  try {
    const out = join(root, "out");
    await writeOutputFolder(out, {}, (tmp) => writeRun(tmp, "good"));
    await assert.rejects(
      () =>
        writeOutputFolder(out, { overwrite: true }, async (tmp) => {
          await writeRun(tmp, "half");
          throw new Error("the GPU fell over");
        }),
      /the GPU fell over/,
    );
    assert.equal(await Deno.readTextFile(join(out, "spec.json")), `{"tag": "good"}`);
    assert.deepEqual(await names(root), ["out"]);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("output folder: a folder filled by someone else while the run went is not replaced; the result is kept", async () => {
  const root = await Deno.makeTempDir({ prefix: "ks-out-" });
  try {
    const out = join(root, "out");
    const prepared = await prepareOutputFolder(out, {});
    await writeRun(prepared.tmp, "mine");
    const files = await userFolder(out); // appears meanwhile
    await assert.rejects(() => replaceOutputFolder(prepared), /changed while this run was going.*the result is kept in/);
    await assertIntact(out, files);
    assert.equal(await Deno.readTextFile(join(prepared.tmp, "spec.json")), `{"tag": "mine"}`);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("output folder: removeOwnedFolder removes listed files only, never recursively", async () => {
  const root = await Deno.makeTempDir({ prefix: "ks-out-" });
  try {
    const out = join(root, "out");
    await writeOutputFolder(out, {}, async (tmp) => {
      await writeRun(tmp, "x");
      await Deno.mkdir(join(tmp, "sub"));
      await Deno.writeTextFile(join(tmp, "sub", "captures.json"), "[]");
    });
    await Deno.writeTextFile(join(out, "sub", "added.txt"), "user");
    await assert.rejects(() => removeOwnedFolder(out), /holds sub\/added.txt, which kleinscope did not write/);
    assert.ok((await names(join(out, "sub"))).includes("captures.json"), "nothing was removed");
    await Deno.remove(join(out, "sub", "added.txt"));
    await removeOwnedFolder(out);
    assert.deepEqual(await names(root), []);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("writeFileAtomic: replaces whole files and leaves no temporary file", async () => {
  const root = await Deno.makeTempDir({ prefix: "ks-out-" });
  try {
    const path = join(root, "sub", "manifest.json");
    await writeFileAtomic(path, "first");
    await writeFileAtomic(path, new TextEncoder().encode("second, longer"));
    assert.equal(await Deno.readTextFile(path), "second, longer");
    assert.deepEqual(await names(join(root, "sub")), ["manifest.json"]);
    await assert.rejects(() => writeFileAtomic(join(root, "sub", "manifest.json", "x"), "y"), /cannot write/);
    assert.deepEqual(await names(join(root, "sub")), ["manifest.json"]);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});
