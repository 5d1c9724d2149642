// The downloader against a local imitation of the Hub API: the tree listing that @huggingface/hub's listFiles reads,
// and /resolve/ file downloads with HTTP Range support, a gated repository and one whose listing lies about a size.

import assert from "node:assert/strict";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { downloadPipeline, downloadRepoFile, isPipelineFile, listRepoFiles, type RepoFile } from "../../model/download.ts";

const TOKEN = "hf_test_token_123";

/** Deterministic bytes, different per file. */
function bytes(n: number, salt: number): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = (i * 31 + salt * 17 + (i >> 8)) & 0xff;
  return out;
}

const json = (v: unknown) => new TextEncoder().encode(JSON.stringify(v));

/** A fake pipeline repository: every folder the pipeline reads, plus files it must not fetch. */
function pipelineRepo(): Map<string, Uint8Array<ArrayBuffer>> {
  return new Map<string, Uint8Array<ArrayBuffer>>([
    ["README.md", new TextEncoder().encode("# fake\n")],
    ["flux-2-klein-fake.safetensors", bytes(5000, 1)],
    ["model_index.json", json({ _class_name: "Flux2KleinPipeline", is_distilled: true })],
    ["scheduler/scheduler_config.json", json({ shift: 3 })],
    ["tokenizer/tokenizer.json", json({ model: {} })],
    ["tokenizer/tokenizer_config.json", json({ pad_token: "<pad>" })],
    ["tokenizer/chat_template.jinja", new TextEncoder().encode("{{ messages }}")],
    ["text_encoder/config.json", json({ hidden_size: 8 })],
    ["text_encoder/model.safetensors.index.json", json({ weight_map: {} })],
    ["text_encoder/model-00001-of-00002.safetensors", bytes(70_001, 2)],
    ["text_encoder/model-00002-of-00002.safetensors", bytes(12_345, 3)],
    ["text_encoder/pytorch_model.bin", bytes(999, 4)],
    ["transformer/config.json", json({ in_channels: 32 })],
    ["transformer/diffusion_pytorch_model.safetensors", bytes(300_007, 5)],
    ["vae/config.json", json({ latent_channels: 32 })],
    ["vae/diffusion_pytorch_model.safetensors", bytes(40_000, 6)],
    ["samples/example.png", bytes(100, 7)],
  ]);
}

interface FakeRepo {
  files: Map<string, Uint8Array<ArrayBuffer>>;
  /** Sizes the listing claims, where they differ from the bytes served. */
  listedSizes?: Map<string, number>;
  gated?: boolean;
  /** Answer range requests with the whole file (200), as some servers do. */
  ignoreRange?: boolean;
  /** Send bodies as a stream without Content-Length. */
  streamed?: boolean;
}

interface Seen {
  method: string;
  path: string;
  range: string | null;
  authorization: string | null;
}

/** Starts the fake Hub on 127.0.0.1 (a free port); stop() must be awaited. */
function fakeHub(repos: Record<string, FakeRepo>) {
  const seen: Seen[] = [];
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, (req) => {
    const url = new URL(req.url);
    const path = decodeURIComponent(url.pathname);
    seen.push({ method: req.method, path, range: req.headers.get("Range"), authorization: req.headers.get("Authorization") });
    const tree = /^\/api\/models\/([^/]+\/[^/]+)\/tree\/([^/]+)$/.exec(path);
    const resolve = /^\/([^/]+\/[^/]+)\/resolve\/([^/]+)\/(.+)$/.exec(path);
    const repoId = tree?.[1] ?? resolve?.[1];
    const repo = repoId ? repos[repoId] : undefined;
    if (!repo || (tree ?? resolve)![2] !== "main") {
      return Response.json({ error: "Repository not found" }, { status: 404 });
    }
    if (repo.gated && req.headers.get("Authorization") !== `Bearer ${TOKEN}`) {
      return Response.json({ error: "Access to model is restricted. You must have access to it and be authenticated." }, { status: 401 });
    }
    if (tree) {
      const entries: unknown[] = [];
      const dirs = new Set<string>();
      for (const [p, data] of repo.files) {
        const dir = p.split("/").slice(0, -1).join("/");
        if (dir && !dirs.has(dir)) {
          dirs.add(dir);
          entries.push({ type: "directory", oid: "0", size: 0, path: dir });
        }
        const size = repo.listedSizes?.get(p) ?? data.byteLength;
        const big = p.endsWith(".safetensors");
        entries.push({ type: "file", oid: "1", size, path: p, ...(big ? { lfs: { oid: "2", size, pointerSize: 134 } } : {}) });
      }
      return Response.json(entries);
    }
    const data = repo.files.get(resolve![3]);
    if (!data) return Response.json({ error: "Entry not found" }, { status: 404 });
    const range = /^bytes=(\d+)-$/.exec(req.headers.get("Range") ?? "");
    if (repo.streamed) {
      const start = range ? Number(range[1]) : 0;
      if (start >= data.byteLength) return new Response(null, { status: 416 });
      const body = new ReadableStream<Uint8Array>({
        start(c) {
          for (let o = start; o < data.byteLength; o += 4096) c.enqueue(data.slice(o, Math.min(o + 4096, data.byteLength)));
          c.close();
        },
      });
      const headers = range ? { "Content-Range": `bytes ${start}-${data.byteLength - 1}/*` } : undefined;
      return new Response(body, { status: range ? 206 : 200, headers });
    }
    if (range && !repo.ignoreRange) {
      const start = Number(range[1]);
      if (start >= data.byteLength) {
        return new Response(null, { status: 416, headers: { "Content-Range": `bytes */${data.byteLength}` } });
      }
      return new Response(data.slice(start), {
        status: 206,
        headers: {
          "Content-Range": `bytes ${start}-${data.byteLength - 1}/${data.byteLength}`,
          "Content-Type": "application/octet-stream",
        },
      });
    }
    return new Response(data.slice(), { headers: { "Content-Type": "application/octet-stream" } });
  });
  return {
    endpoint: `http://127.0.0.1:${server.addr.port}`,
    seen,
    stop: () => server.shutdown(),
  };
}

async function tempDir(): Promise<string> {
  return await Deno.makeTempDir({ prefix: "kleinscope-download-" });
}

async function listTree(dir: string, prefix = ""): Promise<string[]> {
  const out: string[] = [];
  for await (const e of Deno.readDir(join(dir, prefix))) {
    const rel = prefix ? `${prefix}/${e.name}` : e.name;
    if (e.isDirectory) out.push(...(await listTree(dir, rel)));
    else out.push(rel);
  }
  return out.sort();
}

Deno.test("isPipelineFile keeps the component folders' configs, indexes and weights, and nothing else", () => {
  for (const p of ["model_index.json", "transformer/config.json", "vae/diffusion_pytorch_model.safetensors", "tokenizer/merges.txt"]) {
    assert.ok(isPipelineFile(p), p);
  }
  for (const p of ["README.md", "flux.safetensors", "text_encoder/pytorch_model.bin", "transformer/sub/x.safetensors", "samples/a.png"]) {
    assert.ok(!isPipelineFile(p), p);
  }
});

Deno.test("download: the whole pipeline, byte for byte, only the files it needs; a second run downloads nothing", async () => {
  const files = pipelineRepo();
  const hub = fakeHub({ "acme/klein-fake": { files } });
  const dir = await tempDir();
  try {
    const outcomes: string[] = [];
    const listed = await downloadPipeline("acme/klein-fake", dir, {
      endpoint: hub.endpoint,
      token: "",
      onFileDone: (f, _i, o) => outcomes.push(`${f.path}:${o}`),
    });
    const expected = [...files.keys()].filter(isPipelineFile).sort();
    assert.deepEqual(listed.map((f) => f.path).sort(), expected);
    assert.deepEqual(await listTree(dir), expected);
    for (const p of expected) assert.deepEqual(await Deno.readFile(join(dir, p)), files.get(p), p);
    assert.ok(outcomes.every((o) => o.endsWith(":downloaded")), outcomes.join(", "));
    assert.ok(hub.seen.every((s) => s.authorization === null), "no token was configured, none may be sent");

    const before = hub.seen.length;
    const again: string[] = [];
    await downloadPipeline("acme/klein-fake", dir, { endpoint: hub.endpoint, token: "", onFileDone: (_f, _i, o) => again.push(o) });
    assert.ok(again.every((o) => o === "present"));
    assert.equal(hub.seen.slice(before).filter((s) => s.path.includes("/resolve/")).length, 0, "complete files are not fetched again");
  } finally {
    await hub.stop();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("download: a truncated FILE.part is resumed with a Range request and completed", async () => {
  const files = pipelineRepo();
  const hub = fakeHub({ "acme/klein-fake": { files } });
  const dir = await tempDir();
  const path = "transformer/diffusion_pytorch_model.safetensors";
  const data = files.get(path)!;
  try {
    await Deno.mkdir(join(dir, "transformer"), { recursive: true });
    await Deno.writeFile(join(dir, `${path}.part`), data.slice(0, 123_456));
    const file: RepoFile = { path, size: data.byteLength };
    const outcome = await downloadRepoFile("acme/klein-fake", file, dir, { endpoint: hub.endpoint, token: "" });
    assert.equal(outcome, "resumed");
    assert.deepEqual(await Deno.readFile(join(dir, path)), data);
    await assert.rejects(Deno.stat(join(dir, `${path}.part`)), Deno.errors.NotFound);
    const requests = hub.seen.filter((s) => s.path.endsWith(path));
    assert.equal(requests.length, 1);
    assert.equal(requests[0].range, "bytes=123456-");

    // A .part holding the whole file (interrupted before the rename) is completed without downloading again.
    await Deno.rename(join(dir, path), join(dir, `${path}.part`));
    assert.equal(await downloadRepoFile("acme/klein-fake", file, dir, { endpoint: hub.endpoint, token: "" }), "resumed");
    assert.deepEqual(await Deno.readFile(join(dir, path)), data);
  } finally {
    await hub.stop();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("download: a file whose size differs from the listing is refused and not kept", async () => {
  const files = pipelineRepo();
  const shorter = "vae/diffusion_pytorch_model.safetensors";
  const longer = "text_encoder/model-00002-of-00002.safetensors";
  const hub = fakeHub({
    "acme/klein-lies": {
      files,
      listedSizes: new Map([[shorter, files.get(shorter)!.byteLength - 10], [longer, files.get(longer)!.byteLength + 10]]),
    },
  });
  const dir = await tempDir();
  try {
    const listing = await listRepoFiles("acme/klein-lies", { endpoint: hub.endpoint, token: "" });
    for (const path of [shorter, longer]) {
      const file = listing.find((f) => f.path === path)!;
      await assert.rejects(
        downloadRepoFile("acme/klein-lies", file, dir, { endpoint: hub.endpoint, token: "" }),
        (e: Error) => e.message.includes(path) && /size mismatch/.test(e.message),
      );
      // Caught from the response headers, before a byte was written.
      await assert.rejects(Deno.stat(join(dir, path)), Deno.errors.NotFound);
      await assert.rejects(Deno.stat(join(dir, `${path}.part`)), Deno.errors.NotFound);
    }
  } finally {
    await hub.stop();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("download: a server that ignores the Range header restarts the file from its first byte", async () => {
  const files = pipelineRepo();
  const hub = fakeHub({ "acme/klein-fake": { files, ignoreRange: true } });
  const dir = await tempDir();
  const path = "vae/diffusion_pytorch_model.safetensors";
  const data = files.get(path)!;
  try {
    await Deno.mkdir(join(dir, "vae"));
    await Deno.writeFile(join(dir, `${path}.part`), data.slice(0, 1000));
    const outcome = await downloadRepoFile("acme/klein-fake", { path, size: data.byteLength }, dir, { endpoint: hub.endpoint, token: "" });
    assert.equal(outcome, "downloaded");
    assert.deepEqual(await Deno.readFile(join(dir, path)), data);
  } finally {
    await hub.stop();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("download: without Content-Length, a size mismatch is found while streaming", async () => {
  const files = pipelineRepo();
  const shorter = "vae/diffusion_pytorch_model.safetensors";
  const longer = "text_encoder/model-00002-of-00002.safetensors";
  const sizes = new Map([[shorter, files.get(shorter)!.byteLength - 10], [longer, files.get(longer)!.byteLength + 10]]);
  const hub = fakeHub({ "acme/klein-lies": { files, listedSizes: sizes, streamed: true } });
  const dir = await tempDir();
  const opts = { endpoint: hub.endpoint, token: "" };
  try {
    // More bytes than listed: refused mid-stream, the partial file removed.
    await assert.rejects(downloadRepoFile("acme/klein-lies", { path: shorter, size: sizes.get(shorter)! }, dir, opts), /size mismatch/);
    await assert.rejects(Deno.stat(join(dir, `${shorter}.part`)), Deno.errors.NotFound);
    // Fewer bytes than listed: looks like a broken connection, kept to resume; the resume finds the mismatch.
    await assert.rejects(
      downloadRepoFile("acme/klein-lies", { path: longer, size: sizes.get(longer)! }, dir, opts),
      /stopped at 12345 of 12355 bytes; run the command again to resume/,
    );
    assert.equal((await Deno.stat(join(dir, `${longer}.part`))).size, 12_345);
    await assert.rejects(
      downloadRepoFile("acme/klein-lies", { path: longer, size: sizes.get(longer)! }, dir, opts),
      /size mismatch: the server has no byte 12345/,
    );
    await assert.rejects(Deno.stat(join(dir, `${longer}.part`)), Deno.errors.NotFound);
    await assert.rejects(Deno.stat(join(dir, longer)), Deno.errors.NotFound);
  } finally {
    await hub.stop();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("download: a gated repository answers 401 without the token, with a message saying what to do", async () => {
  const hub = fakeHub({ "acme/klein-gated": { files: pipelineRepo(), gated: true } });
  const dir = await tempDir();
  try {
    await assert.rejects(
      downloadPipeline("acme/klein-gated", dir, { endpoint: hub.endpoint, token: "" }),
      (e: Error) =>
        /401/.test(e.message) && /this repository is gated: accept its license on the website/.test(e.message) &&
        /set HF_TOKEN/.test(e.message),
    );
    assert.deepEqual(await listTree(dir), []);
    // With a wrong token the message says the token was refused.
    await assert.rejects(
      downloadPipeline("acme/klein-gated", dir, { endpoint: hub.endpoint, token: "hf_wrong" }),
      (e: Error) => /although HF_TOKEN was sent/.test(e.message),
    );
  } finally {
    await hub.stop();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("download: the token is sent as a Bearer header on the listing and on every file", async () => {
  const files = pipelineRepo();
  const hub = fakeHub({ "acme/klein-gated": { files, gated: true } });
  const dir = await tempDir();
  try {
    await downloadPipeline("acme/klein-gated", dir, { endpoint: hub.endpoint, token: TOKEN });
    assert.deepEqual(await listTree(dir), [...files.keys()].filter(isPipelineFile).sort());
    assert.ok(hub.seen.some((s) => s.path.includes("/tree/")));
    for (const s of hub.seen) assert.equal(s.authorization, `Bearer ${TOKEN}`, s.path);
  } finally {
    await hub.stop();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("download: a repository that is not a diffusers klein pipeline, and a bad repository id, are refused before any download", async () => {
  const files = pipelineRepo();
  files.delete("vae/config.json");
  files.delete("transformer/diffusion_pytorch_model.safetensors");
  const hub = fakeHub({ "acme/not-klein": { files } });
  const dir = await tempDir();
  try {
    await assert.rejects(
      downloadPipeline("acme/not-klein", dir, { endpoint: hub.endpoint, token: "" }),
      /acme\/not-klein is not a diffusers FLUX.2 klein pipeline repository: it lacks vae\/config.json, transformer\/\*.safetensors/,
    );
    await assert.rejects(downloadPipeline("acme/missing", dir, { endpoint: hub.endpoint, token: "" }), /no such repository/);
    await assert.rejects(downloadPipeline("../etc", dir, { endpoint: hub.endpoint, token: "" }), /not a repository id/);
    assert.deepEqual(await listTree(dir), []);
    assert.equal(hub.seen.filter((s) => s.path.includes("/resolve/")).length, 0);
  } finally {
    await hub.stop();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("deno task download: prints per-file progress and exits 0; a gated repository is one error line and exit 1", async () => {
  const files = pipelineRepo();
  const hub = fakeHub({ "acme/klein-fake": { files }, "acme/klein-gated": { files, gated: true } });
  const dir = await tempDir();
  const cli = fileURLToPath(new URL("../../cli.ts", import.meta.url));
  const run = async (...args: string[]) => {
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", cli, "download", ...args],
      env: { HF_TOKEN: "", XDG_RUNTIME_DIR: "/tmp" },
      stdout: "piped",
      stderr: "piped",
    }).output();
    const dec = new TextDecoder();
    return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
  };
  try {
    const ok = await run("acme/klein-fake", "--dir", join(dir, "ok"), "--endpoint", hub.endpoint);
    assert.equal(ok.code, 0, ok.stderr);
    assert.match(ok.stdout, /13 files/);
    assert.match(ok.stdout, /\[ 1\/13\] model_index\.json .* downloaded in .*\/s/);
    assert.match(ok.stdout, /transformer\/diffusion_pytorch_model\.safetensors\s+300 KB\s+downloaded/);
    assert.match(ok.stdout, /done: 13 files/);

    const gated = await run("acme/klein-gated", "--dir", join(dir, "gated"), "--endpoint", hub.endpoint);
    assert.equal(gated.code, 1);
    const lines = gated.stderr.trim().split("\n");
    assert.equal(lines.length, 1, gated.stderr);
    assert.match(lines[0], /^error: acme\/klein-gated: access refused \(HTTP 401\): this repository is gated/);

    const usage = await run("--endpoint", hub.endpoint);
    assert.equal(usage.code, 2);
    assert.match(usage.stderr, /^error: the repository id is missing/);
  } finally {
    await hub.stop();
    await Deno.remove(dir, { recursive: true });
  }
});
