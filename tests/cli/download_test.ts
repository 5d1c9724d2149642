// The downloader against a local imitation of the Hub API on 127.0.0.1: the paginated tree listing and /resolve/
// file downloads with HTTP Range support, a gated repository, one whose listing lies about a size, and hostile
// servers: a second origin that must never see the token, a silent server, pagination loops, wrong bytes, transient
// 503s, HTML answers and listings with hostile file names. Every server listens on loopback only.

import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { downloadPipeline, downloadRepoFile, isPipelineFile, listRepoFiles, type RepoFile } from "../../model/download.ts";

const TOKEN = "hf_test_token_123";

/** Short limits so failures show within a second or two. */
const FAST = { connectTimeoutMs: 400, idleTimeoutMs: 400, retries: 2, retryDelayMs: 20 };

/** Deterministic bytes, different per file. */
function bytes(n: number, salt: number): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = (i * 31 + salt * 17 + (i >> 8)) & 0xff;
  return out;
}

const json = (v: unknown) => new TextEncoder().encode(JSON.stringify(v));
const sha256 = (data: Uint8Array) => createHash("sha256").update(data).digest("hex");
const gitBlobId = (data: Uint8Array) => createHash("sha1").update(`blob ${data.byteLength}\0`).update(data).digest("hex");

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
  /** Listing entries added as they are (hostile names, malformed entries). */
  extraEntries?: unknown[];
  /** Files served with one byte changed (the listing keeps the true size and hash). */
  corrupt?: Set<string>;
  gated?: boolean;
  /** Answer range requests with the whole file (200), as some servers do. */
  ignoreRange?: boolean;
  /** Send bodies as a stream without Content-Length. */
  streamed?: boolean;
  /** Listing entries per page (default: all on one page); pages are linked with Link rel="next" ?cursor=N. */
  pageSize?: number;
  /** Origin the Link header's next page points to (default: this server's). */
  linkOrigin?: string;
}

interface Seen {
  method: string;
  path: string;
  query: string;
  range: string | null;
  authorization: string | null;
}

/** Called before the fake Hub's own handling; a Response returned is sent instead. `n` counts requests so far. */
type Intercept = (req: Request, url: URL, n: number) => Response | Promise<Response> | undefined;

/** Starts the fake Hub on 127.0.0.1 (a free port); stop() must be awaited. */
function fakeHub(repos: Record<string, FakeRepo>, intercept?: Intercept) {
  const seen: Seen[] = [];
  let released = () => {};
  const release = new Promise<void>((r) => released = r);
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, async (req) => {
    const url = new URL(req.url);
    const path = decodeURIComponent(url.pathname);
    seen.push({
      method: req.method,
      path,
      query: url.search,
      range: req.headers.get("Range"),
      authorization: req.headers.get("Authorization"),
    });
    const override = await intercept?.(req, url, seen.length);
    if (override) return override;
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
        entries.push({
          type: "file",
          oid: big ? "3".repeat(40) : gitBlobId(data),
          size,
          path: p,
          ...(big ? { lfs: { oid: sha256(data), size, pointerSize: 134 } } : {}),
        });
      }
      entries.push(...(repo.extraEntries ?? []));
      const per = repo.pageSize ?? entries.length;
      const cursor = Number(url.searchParams.get("cursor") ?? 0);
      const headers: Record<string, string> = {};
      if (cursor + per < entries.length) {
        const next = new URL(`${url.pathname}${url.search}`, repo.linkOrigin ?? url.origin);
        next.searchParams.set("cursor", String(cursor + per));
        headers.Link = `<${next.href}>; rel="next"`;
      }
      return Response.json(entries.slice(cursor, cursor + per), { headers });
    }
    const original = repo.files.get(resolve![3]);
    if (!original) return Response.json({ error: "Entry not found" }, { status: 404 });
    const data = original.slice();
    if (repo.corrupt?.has(resolve![3])) data[data.byteLength >> 1] ^= 0x5a;
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
    return new Response(data, { headers: { "Content-Type": "application/octet-stream" } });
  });
  return {
    endpoint: `http://127.0.0.1:${server.addr.port}`,
    seen,
    /** Resolves when stop() is called (for handlers that hold a response open until then). */
    release,
    stop: async () => {
      released();
      await server.shutdown();
    },
  };
}

/** A server that accepts connections (at most `limit`) and never answers, or with `hangUp` closes each at once. */
function silentServer({ limit = 20, hangUp = false } = {}) {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const conns: Deno.Conn[] = [];
  const accepting = (async () => {
    try {
      while (conns.length < limit) {
        const c = await listener.accept();
        conns.push(c);
        if (hangUp) c.close();
      }
    } catch {
      // Closed by stop().
    }
  })();
  return {
    endpoint: `http://127.0.0.1:${(listener.addr as Deno.NetAddr).port}`,
    connections: () => conns.length,
    stop: async () => {
      listener.close();
      for (const c of conns) {
        try {
          c.close();
        } catch {
          // Already closed (hangUp).
        }
      }
      await accepting;
    },
  };
}

/** A body that sends `head`, then nothing until `until` resolves (then ends, short). */
function stallingBody(head: Uint8Array, until: Promise<void>): ReadableStream<Uint8Array> {
  return new ReadableStream<Uint8Array>({
    start(c) {
      c.enqueue(head);
    },
    async pull(c) {
      await until;
      try {
        c.close();
      } catch {
        // Already cancelled by the client.
      }
    },
  });
}

const CLI = fileURLToPath(new URL("../../cli.ts", import.meta.url));

function cliCommand(args: string[]): Deno.Command {
  return new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", CLI, "download", ...args],
    env: { HF_TOKEN: "", XDG_RUNTIME_DIR: "/tmp" },
    stdout: "piped",
    stderr: "piped",
  });
}

/** `deno task download ARGS`, with its exit code and output. */
async function run(...args: string[]) {
  const out = await cliCommand(args).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
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

Deno.test("download: a truncated FILE.partial is resumed with a Range request and completed", async () => {
  const files = pipelineRepo();
  const hub = fakeHub({ "acme/klein-fake": { files } });
  const dir = await tempDir();
  const path = "transformer/diffusion_pytorch_model.safetensors";
  const data = files.get(path)!;
  try {
    await Deno.mkdir(join(dir, "transformer"), { recursive: true });
    await Deno.writeFile(join(dir, `${path}.partial`), data.slice(0, 123_456));
    const file: RepoFile = { path, size: data.byteLength };
    const outcome = await downloadRepoFile("acme/klein-fake", file, dir, { endpoint: hub.endpoint, token: "" });
    assert.equal(outcome, "resumed");
    assert.deepEqual(await Deno.readFile(join(dir, path)), data);
    await assert.rejects(Deno.stat(join(dir, `${path}.partial`)), Deno.errors.NotFound);
    const requests = hub.seen.filter((s) => s.path.endsWith(path));
    assert.equal(requests.length, 1);
    assert.equal(requests[0].range, "bytes=123456-");

    // A .partial holding the whole file (interrupted before the rename) is completed without downloading again.
    await Deno.rename(join(dir, path), join(dir, `${path}.partial`));
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
      await assert.rejects(Deno.stat(join(dir, `${path}.partial`)), Deno.errors.NotFound);
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
    await Deno.writeFile(join(dir, `${path}.partial`), data.slice(0, 1000));
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
  const opts = { endpoint: hub.endpoint, token: "", ...FAST };
  try {
    // More bytes than listed: refused mid-stream, the partial file removed.
    await assert.rejects(downloadRepoFile("acme/klein-lies", { path: shorter, size: sizes.get(shorter)! }, dir, opts), /size mismatch/);
    await assert.rejects(Deno.stat(join(dir, `${shorter}.partial`)), Deno.errors.NotFound);
    // Fewer bytes than listed: looks like a broken connection, kept to resume (here without retries); the resume
    // (a retry within the same call, or the next run) finds the mismatch.
    await assert.rejects(
      downloadRepoFile("acme/klein-lies", { path: longer, size: sizes.get(longer)! }, dir, { ...opts, retries: 0 }),
      /stopped at 12345 of 12355 bytes .*the partial file is kept, run the command again to resume \(gave up after 1 attempt\)/,
    );
    assert.equal((await Deno.stat(join(dir, `${longer}.partial`))).size, 12_345);
    await assert.rejects(
      downloadRepoFile("acme/klein-lies", { path: longer, size: sizes.get(longer)! }, dir, opts),
      /size mismatch: the server has no byte 12345/,
    );
    await assert.rejects(Deno.stat(join(dir, `${longer}.partial`)), Deno.errors.NotFound);
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

Deno.test("deno task download: a silent server is one error line naming the request, within the timeout; bad limits are usage errors", async () => {
  const silent = silentServer();
  const dir = await tempDir();
  try {
    const t0 = performance.now();
    const r = await run("acme/klein-fake", "--dir", dir, "--endpoint", silent.endpoint, "--connect-timeout", "0.3", "--retries", "1");
    assert.ok(performance.now() - t0 < 15_000);
    assert.equal(r.code, 1, r.stderr);
    assert.match(
      r.stdout,
      /attempt 1 of 2 failed, retrying in 1\.00 s: GET http:\/\/127\.0\.0\.1:\d+\/api\/models\/acme\/klein-fake\/tree\/main/,
    );
    assert.match(
      r.stderr,
      /^error: GET http:\/\/127\.0\.0\.1:\d+\/api\/models\/acme\/klein-fake\/tree\/main\?recursive=true&expand=false: no answer within 0\.3 s \(gave up after 2 attempts\)\n$/,
    );
    assert.equal(silent.connections(), 2);
    for (
      const [flag, value, message] of [["--connect-timeout", "0", /must be a positive number of seconds/], [
        "--retries",
        "-1",
        /must be at least 0|not a whole number/,
      ], ["--idle-timeout", "soon", /is not a number/]] as const
    ) {
      const bad = await run("acme/klein-fake", "--dir", dir, "--endpoint", silent.endpoint, `${flag}=${value}`);
      assert.equal(bad.code, 2, bad.stderr);
      assert.match(bad.stderr, message);
    }
    assert.equal(silent.connections(), 2);
  } finally {
    await silent.stop();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("deno task download: a download killed mid-file resumes from its .partial on the next run", async () => {
  const files = pipelineRepo();
  const weights = "transformer/diffusion_pytorch_model.safetensors";
  const data = files.get(weights)!;
  let stall = true;
  const hub = fakeHub({ "acme/klein-fake": { files } }, (_req, url) => {
    if (!stall || !url.pathname.endsWith(weights)) return;
    return new Response(stallingBody(data.slice(0, 100_000), hub.release), { headers: { "Content-Type": "application/octet-stream" } });
  });
  const dir = await tempDir();
  const partial = join(dir, `${weights}.partial`);
  try {
    const child = cliCommand(["acme/klein-fake", "--dir", dir, "--endpoint", hub.endpoint, "--idle-timeout", "60"]).spawn();
    const stdout = child.stdout.cancel(), stderr = child.stderr.cancel();
    // Wait (at most 20 s) for the stalled file's first bytes to reach the disk, then kill the process.
    let size = 0;
    for (let i = 0; i < 200 && size < 100_000; i++) {
      await new Promise((r) => setTimeout(r, 100));
      size = (await Deno.stat(partial).catch(() => null))?.size ?? 0;
    }
    child.kill("SIGKILL");
    await child.status;
    await Promise.all([stdout, stderr]);
    assert.equal(size, 100_000);
    await assert.rejects(Deno.stat(join(dir, weights)), Deno.errors.NotFound);

    stall = false;
    const again = await run("acme/klein-fake", "--dir", dir, "--endpoint", hub.endpoint);
    assert.equal(again.code, 0, again.stderr);
    assert.match(again.stdout, /model_index\.json .* already complete/);
    assert.match(again.stdout, /transformer\/diffusion_pytorch_model\.safetensors\s+300 KB\s+resumed/);
    assert.ok(hub.seen.some((s) => s.path.endsWith(weights) && s.range === "bytes=100000-"));
    for (const p of [...files.keys()].filter(isPipelineFile)) assert.deepEqual(await Deno.readFile(join(dir, p)), files.get(p), p);
    assert.ok(!(await listTree(dir)).some((p) => p.endsWith(".partial")));
  } finally {
    await hub.stop();
    await Deno.remove(dir, { recursive: true });
  }
});

// ---------------------------------------------------------------------------------------------------------------
// Hostile servers.

Deno.test("download: the token never leaves the endpoint's origin: listing pages and redirects on another origin get none", async () => {
  const files = pipelineRepo();
  const weights = "transformer/diffusion_pytorch_model.safetensors";
  const vae = "vae/diffusion_pytorch_model.safetensors";
  // Another origin (another port) serving the same repository without gating.
  const foreign = fakeHub({ "acme/klein-gated": { files, pageSize: 4 } });
  const hub = fakeHub(
    { "acme/klein-gated": { files, gated: true, pageSize: 4, linkOrigin: foreign.endpoint } },
    (_req, url) => {
      // The weights are redirected to the other origin (as the Hub does to its storage), the VAE within this one.
      if (url.pathname.endsWith(weights)) {
        return new Response(null, { status: 302, headers: { Location: `${foreign.endpoint}${url.pathname}?signature=secret` } });
      }
      if (url.pathname.endsWith(vae) && !url.searchParams.has("moved")) {
        return new Response(null, { status: 307, headers: { Location: `${url.pathname}?moved=1` } });
      }
    },
  );
  const dir = await tempDir();
  try {
    await downloadPipeline("acme/klein-gated", dir, { endpoint: hub.endpoint, token: TOKEN, ...FAST });
    const expected = [...files.keys()].filter(isPipelineFile).sort();
    assert.deepEqual(await listTree(dir), expected);
    for (const p of expected) assert.deepEqual(await Deno.readFile(join(dir, p)), files.get(p), p);

    // The first listing page came from the endpoint; the rest, linked to the other origin, from there.
    assert.ok(foreign.seen.some((s) => s.path.includes("/tree/") && s.query.includes("cursor=4")), "the next page was fetched there");
    assert.ok(foreign.seen.some((s) => s.path.endsWith(weights)), "the redirect was followed there");
    for (const s of foreign.seen) assert.equal(s.authorization, null, `the other origin saw the token on ${s.path}${s.query}`);
    // Everything on the endpoint's origin had it, the same-origin redirect's target included.
    assert.ok(hub.seen.some((s) => s.path.endsWith(vae) && s.query === "?moved=1"));
    for (const s of hub.seen) assert.equal(s.authorization, `Bearer ${TOKEN}`, s.path);
  } finally {
    await hub.stop();
    await foreign.stop();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("download: redirects are bounded, only to http(s), and a signed query on another origin stays out of messages", async () => {
  const foreign = fakeHub({});
  const hub = fakeHub({}, (_req, url) => {
    const hop = Number(url.searchParams.get("hop") ?? 0);
    if (url.pathname.includes("/tree/")) return new Response(null, { status: 302, headers: { Location: `?hop=${hop + 1}` } });
    if (url.pathname.endsWith("signed.json")) {
      return new Response(null, { status: 302, headers: { Location: `${foreign.endpoint}/store/x?signature=secret` } });
    }
    return new Response(null, { status: 301, headers: { Location: "file:///etc/passwd" } });
  });
  const dir = await tempDir();
  const opts = { endpoint: hub.endpoint, token: TOKEN, ...FAST };
  try {
    await assert.rejects(
      listRepoFiles("acme/loop", { ...opts, maxRedirects: 3 }),
      /^Error: GET http:\/\/127\.0\.0\.1:\d+\/api\/models\/acme\/loop\/tree\/main\?hop=3: more than 3 redirects \(the last to .*\?hop=4\); refusing to follow$/,
    );
    assert.equal(hub.seen.length, 4);
    await assert.rejects(
      downloadRepoFile("acme/loop", { path: "vae/config.json", size: 3 }, dir, opts),
      /HTTP 301 redirect to file:\/\/\/etc\/passwd: only http and https are followed/,
    );
    await assert.rejects(downloadRepoFile("acme/loop", { path: "vae/signed.json", size: 3 }, dir, opts), (e: Error) => {
      assert.match(e.message, /^vae\/signed\.json: not found at this revision \(GET http:\/\/127\.0\.0\.1:\d+\/store\/x\?…: HTTP 404/);
      assert.ok(!e.message.includes("secret"), e.message);
      return true;
    });
    assert.deepEqual(foreign.seen.map((s) => s.authorization), [null]);
    assert.deepEqual(await listTree(dir), []);
  } finally {
    await hub.stop();
    await foreign.stop();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("download: a server that never answers ends in an error naming the request, within the timeout", async () => {
  const silent = silentServer();
  try {
    const t0 = performance.now();
    await assert.rejects(
      listRepoFiles("acme/klein-fake", { endpoint: silent.endpoint, token: TOKEN, ...FAST }),
      (e: Error) => {
        assert.match(
          e.message,
          /^GET http:\/\/127\.0\.0\.1:\d+\/api\/models\/acme\/klein-fake\/tree\/main\?recursive=true&expand=false: no answer within 0\.4 s \(gave up after 3 attempts\)$/,
        );
        assert.ok(!e.message.includes(TOKEN));
        return true;
      },
    );
    const ms = performance.now() - t0;
    // Three attempts of 0.4 s and two short waits; far below the 30 s the testers waited in vain.
    assert.ok(ms >= 1200 && ms < 5000, `${ms} ms`);
    assert.equal(silent.connections(), 3);
  } finally {
    await silent.stop();
  }
});

Deno.test("download: a connection closed at once is retried, then reported", async () => {
  const server = silentServer({ hangUp: true });
  try {
    await assert.rejects(
      listRepoFiles("acme/klein-fake", { endpoint: server.endpoint, token: "", ...FAST }),
      /^Error: GET http:\/\/127\.0\.0\.1:\d+\/api\/models\/acme\/klein-fake\/tree\/main\?recursive=true&expand=false: the request failed: .+ \(gave up after 3 attempts\)$/,
    );
    assert.equal(server.connections(), 3);
  } finally {
    await server.stop();
  }
});

Deno.test("download: a body that stalls is abandoned after the idle timeout and resumed with a Range request", async () => {
  const files = pipelineRepo();
  const path = "vae/diffusion_pytorch_model.safetensors";
  const data = files.get(path)!;
  let stallsLeft = 1;
  const hub = fakeHub({ "acme/klein-fake": { files } }, (req, url) => {
    if (!url.pathname.endsWith(path) || stallsLeft-- <= 0) return;
    const start = Number(/^bytes=(\d+)-$/.exec(req.headers.get("Range") ?? "")?.[1] ?? 0);
    const body = stallingBody(data.slice(start, start + 10_000), hub.release);
    const headers = start ? { "Content-Range": `bytes ${start}-${data.byteLength - 1}/${data.byteLength}` } : undefined;
    return new Response(body, { status: start ? 206 : 200, headers });
  });
  const dir = await tempDir();
  const file: RepoFile = { path, size: data.byteLength, sha256: sha256(data) };
  try {
    const retries: string[] = [];
    const t0 = performance.now();
    const outcome = await downloadRepoFile("acme/klein-fake", file, dir, {
      endpoint: hub.endpoint,
      token: "",
      ...FAST,
      onRetry: (r) => retries.push(r.reason),
    });
    assert.ok(performance.now() - t0 < 5000);
    assert.equal(outcome, "downloaded");
    assert.deepEqual(await Deno.readFile(join(dir, path)), data);
    assert.equal(retries.length, 1);
    assert.match(
      retries[0],
      /GET http:\/\/127\.0\.0\.1:\d+\/acme\/klein-fake\/resolve\/main\/vae\/.*: nothing arrived for 0\.4 s after 10000 bytes/,
    );
    assert.deepEqual(hub.seen.filter((s) => s.path.endsWith(path)).map((s) => s.range), [null, "bytes=10000-"]);

    // A server that stalls every time: an error within the limits, the bytes received kept for the next run.
    await Deno.remove(join(dir, path));
    stallsLeft = 100;
    await assert.rejects(
      downloadRepoFile("acme/klein-fake", file, dir, { endpoint: hub.endpoint, token: "", ...FAST }),
      /nothing arrived for 0\.4 s after 10000 bytes \(gave up after 3 attempts\)$/,
    );
    assert.equal((await Deno.stat(join(dir, `${path}.partial`))).size, 30_000);
    await assert.rejects(Deno.stat(join(dir, path)), Deno.errors.NotFound);
  } finally {
    await hub.stop();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("download: pagination that loops back to a page already fetched, or never ends, is refused", async () => {
  // Two pages linking to each other.
  const hub = fakeHub({}, (_req, url) => {
    const other = url.searchParams.get("cursor") === "b" ? "a" : "b";
    return Response.json([], { headers: { Link: `<${url.origin}${url.pathname}?cursor=${other}>; rel="next"` } });
  });
  // An endless chain of new pages.
  const endless = fakeHub({}, (_req, url) => {
    const n = Number(url.searchParams.get("cursor") ?? 0) + 1;
    return Response.json([], { headers: { Link: `<?cursor=${n}>; rel="next", <?cursor=0>; rel="first"` } });
  });
  try {
    const t0 = performance.now();
    await assert.rejects(
      listRepoFiles("acme/loop", { endpoint: hub.endpoint, token: "", ...FAST }),
      /^Error: listing acme\/loop: the pagination links back to http:\/\/127\.0\.0\.1:\d+\/api\/models\/acme\/loop\/tree\/main\?cursor=b, which was already fetched; refusing to loop$/,
    );
    assert.equal(hub.seen.length, 3); // the first page, a, b; b links to a again
    await assert.rejects(
      listRepoFiles("acme/endless", { endpoint: endless.endpoint, token: "", ...FAST, maxListingPages: 7 }),
      /^Error: listing acme\/endless: more than 7 pages \(the next is .*\?cursor=7\); refusing to go on$/,
    );
    assert.equal(endless.seen.length, 7);
    assert.ok(performance.now() - t0 < 5000);
  } finally {
    await hub.stop();
    await endless.stop();
  }
});

Deno.test("download: wrong bytes of the right size are refused by hash, on download and on resume, removing only that file", async () => {
  const files = pipelineRepo();
  const weights = "transformer/diffusion_pytorch_model.safetensors";
  const tokenizer = "tokenizer/tokenizer.json";
  const hub = fakeHub({ "acme/klein-bad": { files, corrupt: new Set([weights, tokenizer]) }, "acme/klein-fake": { files } });
  const dir = await tempDir();
  const opts = { endpoint: hub.endpoint, token: "", ...FAST };
  try {
    await Deno.writeTextFile(join(dir, "keep.txt"), "mine");
    const listing = await listRepoFiles("acme/klein-bad", opts);
    const w = listing.find((f) => f.path === weights)!;
    const t = listing.find((f) => f.path === tokenizer)!;
    assert.equal(w.sha256, sha256(files.get(weights)!));
    assert.equal(t.gitOid, gitBlobId(files.get(tokenizer)!));
    const bad = files.get(weights)!.slice();
    bad[bad.byteLength >> 1] ^= 0x5a;

    await assert.rejects(downloadRepoFile("acme/klein-bad", w, dir, opts), (e: Error) => {
      assert.match(
        e.message,
        new RegExp(`^${weights}: sha256 mismatch: the listing says ${w.sha256}, the downloaded bytes hash to ${sha256(bad)}`),
      );
      assert.match(
        e.message,
        /GET http:\/\/127\.0\.0\.1:\d+\/acme\/klein-bad\/resolve\/main\/transformer\/.*application\/octet-stream\); the partial file was removed$/,
      );
      return true;
    });
    await assert.rejects(
      downloadRepoFile("acme/klein-bad", t, dir, opts),
      new RegExp(`^Error: ${tokenizer}: git blob id mismatch: the listing says ${t.gitOid}`),
    );
    assert.deepEqual(await listTree(dir), ["keep.txt"]);

    // Found complete on disk (right size, wrong bytes): hashed, removed, and the next run downloads it.
    await Deno.mkdir(join(dir, "transformer"), { recursive: true });
    await Deno.writeFile(join(dir, weights), bad);
    await assert.rejects(
      downloadRepoFile("acme/klein-fake", w, dir, opts),
      new RegExp(
        `^Error: ${weights}: the file on disk has the listed size but the wrong sha256: the listing says ${w.sha256}, the file hashes to ${
          sha256(bad)
        }; it was removed`,
      ),
    );
    assert.deepEqual(await listTree(dir), ["keep.txt"]);
    assert.equal(await downloadRepoFile("acme/klein-fake", w, dir, opts), "downloaded");
    assert.deepEqual(await Deno.readFile(join(dir, weights)), files.get(weights));
    assert.equal(await downloadRepoFile("acme/klein-fake", w, dir, opts), "present");

    // A whole-size .partial with wrong bytes, and a truncated one whose start is wrong (found once the rest arrives).
    await Deno.remove(join(dir, weights));
    await Deno.writeFile(join(dir, `${weights}.partial`), bad);
    await assert.rejects(downloadRepoFile("acme/klein-fake", w, dir, opts), /the partial file has the listed size but the wrong sha256/);
    await Deno.writeFile(join(dir, `${weights}.partial`), bad.slice(0, 200_000));
    await assert.rejects(downloadRepoFile("acme/klein-fake", w, dir, opts), /sha256 mismatch: .*the partial file was removed$/);
    assert.deepEqual(await listTree(dir), ["keep.txt"]);
    assert.equal(hub.seen.filter((s) => s.range === "bytes=200000-").length, 1);
  } finally {
    await hub.stop();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("download: HTTP 503 and 429 are retried with backoff until success; other 4xx fail at once", async () => {
  const files = pipelineRepo();
  const weights = "transformer/diffusion_pytorch_model.safetensors";
  const failures = new Map<string, number>([["tree", 2], [weights, 1]]);
  const hub = fakeHub({ "acme/klein-fake": { files } }, (_req, url) => {
    const key = url.pathname.includes("/tree/") ? "tree" : url.pathname.endsWith(weights) ? weights : "";
    const left = failures.get(key) ?? 0;
    if (left <= 0) return;
    failures.set(key, left - 1);
    return key === "tree"
      ? new Response("<html><body>Service Unavailable</body></html>", { status: 503, headers: { "Content-Type": "text/html" } })
      : new Response("slow down", { status: 429, headers: { "Retry-After": "0" } });
  });
  const dir = await tempDir();
  try {
    const notices: { attempt: number; delayMs: number; reason: string }[] = [];
    await downloadPipeline("acme/klein-fake", dir, { endpoint: hub.endpoint, token: "", ...FAST, onRetry: (r) => notices.push(r) });
    assert.deepEqual(await listTree(dir), [...files.keys()].filter(isPipelineFile).sort());
    assert.deepEqual(notices.map((n) => [n.attempt, n.delayMs]), [[1, 20], [2, 40], [1, 20]]);
    assert.match(
      notices[0].reason,
      /tree\/main\?recursive=true&expand=false: HTTP 503 Service Unavailable, text\/html: "<html><body>Service Unavailable<\/body><\/html>"$/,
    );
    assert.match(
      notices[2].reason,
      /resolve\/main\/transformer\/diffusion_pytorch_model\.safetensors: HTTP 429 Too Many Requests, text\/plain.*: "slow down"$/,
    );

    // Retries are bounded; a 404 is not retried.
    failures.set("tree", 100);
    const t0 = performance.now();
    await assert.rejects(
      listRepoFiles("acme/klein-fake", { endpoint: hub.endpoint, token: "", ...FAST }),
      /HTTP 503 .*\(gave up after 3 attempts\)$/,
    );
    assert.ok(performance.now() - t0 < 3000);
    const before = hub.seen.length;
    await assert.rejects(
      downloadRepoFile("acme/klein-fake", { path: "vae/missing.json", size: 3 }, dir, { endpoint: hub.endpoint, token: "", ...FAST }),
      /^Error: vae\/missing\.json: not found at this revision \(GET http:\/\/127\.0\.0\.1:\d+\/acme\/klein-fake\/resolve\/main\/vae\/missing\.json: HTTP 404 Not Found, application\/json: "\{"error":"Entry not found"\}"\)$/,
    );
    assert.equal(hub.seen.length - before, 1);
  } finally {
    await hub.stop();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("download: an HTML or malformed answer names the request, status, content type and an escaped excerpt", async () => {
  const files = pipelineRepo();
  const page = "<!DOCTYPE html>\n<html><head><title>Sign in \x1b[2J</title></head><body>" + "x".repeat(5000) + "</body></html>";
  let mode = "html";
  const hub = fakeHub({ "acme/klein-fake": { files } }, (_req, url) => {
    if (url.pathname.includes("/tree/")) {
      if (mode === "html") return new Response(page, { headers: { "Content-Type": "text/html; charset=utf-8" } });
      if (mode === "badjson") return new Response('[{"type": "file",', { headers: { "Content-Type": "application/json" } });
      if (mode === "object") return Response.json({ error: "nope" });
    } else if (url.pathname.endsWith(".safetensors")) {
      return new Response(page, { headers: { "Content-Type": "text/html" } });
    }
  });
  const dir = await tempDir();
  const opts = { endpoint: hub.endpoint, token: "", ...FAST };
  try {
    await assert.rejects(listRepoFiles("acme/klein-fake", opts), (e: Error) => {
      assert.match(
        e.message,
        /^GET http:\/\/127\.0\.0\.1:\d+\/api\/models\/acme\/klein-fake\/tree\/main\?recursive=true&expand=false: expected the repository listing as JSON, got HTTP 200 OK, text\/html; charset=utf-8: "<!DOCTYPE html> <html><head><title>Sign in \\x1b\[2J<\/title>.*x…"$/,
      );
      assert.ok(!e.message.includes("\x1b") && !/Unexpected token/.test(e.message), e.message);
      assert.ok(e.message.length < 400);
      return true;
    });
    mode = "badjson";
    await assert.rejects(
      listRepoFiles("acme/klein-fake", opts),
      /tree\/main\?recursive=true&expand=false: the listing is not valid JSON \(.*\): "\[\{"type": "file","$/,
    );
    mode = "object";
    await assert.rejects(
      listRepoFiles("acme/klein-fake", opts),
      /tree\/main\?recursive=true&expand=false: the listing is not a JSON array$/,
    );

    const path = "vae/diffusion_pytorch_model.safetensors";
    await assert.rejects(
      downloadRepoFile("acme/klein-fake", { path, size: 40_000 }, dir, opts),
      /^Error: vae\/diffusion_pytorch_model\.safetensors: the server sent a web page instead of the file \(GET .*\/resolve\/main\/vae\/diffusion_pytorch_model\.safetensors: HTTP 200 OK, text\/html: "<!DOCTYPE html>/,
    );
    assert.deepEqual(await listTree(dir), []);
  } finally {
    await hub.stop();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("download: hostile file names in the listing are refused, escaped in the message, and nothing is written", async () => {
  const root = await tempDir();
  const dir = join(root, "models", "klein");
  const entry = (path: string, extra: Record<string, unknown> = {}) => ({ type: "file", oid: "1", size: 3, path, ...extra });
  const cases: [unknown, RegExp][] = [
    [
      entry("tokenizer/../../../escape.json"),
      /entry \d+: the listing names the file "tokenizer\/\.\.\/\.\.\/\.\.\/escape\.json", which is not a plain relative path; refusing the listing/,
    ],
    [entry("/tmp/escape.json"), /the listing names the file "\/tmp\/escape\.json", which is not a plain relative path/],
    [
      entry("tokenizer/..\\..\\escape.json"),
      /the listing names the file "tokenizer\/\.\.\\\.\.\\escape\.json", which is not a plain relative path; refusing to write it/,
    ],
    [
      entry("tokenizer/\x1b[2Jevil\n.json"),
      /the listing names the file "tokenizer\/\\x1b\[2Jevil\\n\.json", which is not a plain relative path/,
    ],
    [entry("tokenizer/tokenizer.json.partial"), /"tokenizer\/tokenizer\.json\.partial", which is not a plain relative path/],
    [entry("vae/config.json"), /the listing names "vae\/config\.json" twice/],
    [
      entry("vae/x.safetensors", { lfs: { oid: "../../x", size: 3 } }),
      /"vae\/x\.safetensors" is stored in LFS but its oid "\.\.\/\.\.\/x" is not a SHA-256/,
    ],
    [entry("vae/y.safetensors", { size: -1 }), /the listing gives "vae\/y\.safetensors" the size -1/],
  ];
  const repos: Record<string, FakeRepo> = {};
  cases.forEach(([e], i) => repos[`acme/hostile-${i}`] = { files: pipelineRepo(), extraEntries: [e] });
  const hub = fakeHub(repos);
  try {
    for (const [i, [, expected]] of cases.entries()) {
      await assert.rejects(downloadPipeline(`acme/hostile-${i}`, dir, { endpoint: hub.endpoint, token: "", ...FAST }), (e: Error) => {
        assert.match(e.message, expected);
        assert.ok(!e.message.includes("\x1b") && !e.message.includes("\n"), JSON.stringify(e.message));
        return true;
      });
    }
    assert.deepEqual(await listTree(root), []);
    assert.equal(hub.seen.filter((s) => s.path.includes("/resolve/")).length, 0);
  } finally {
    await hub.stop();
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("download: a .partial that is a symbolic link is not written through", async () => {
  const files = pipelineRepo();
  const hub = fakeHub({ "acme/klein-fake": { files } });
  const root = await tempDir();
  const dir = join(root, "model");
  const outside = join(root, "outside.bin");
  try {
    await Deno.writeTextFile(outside, "not yours");
    await Deno.mkdir(join(dir, "vae"), { recursive: true });
    await Deno.symlink(outside, join(dir, "vae/config.json.partial"));
    const file = (await listRepoFiles("acme/klein-fake", { endpoint: hub.endpoint, token: "" })).find((f) => f.path === "vae/config.json")!;
    await assert.rejects(
      downloadRepoFile("acme/klein-fake", file, dir, { endpoint: hub.endpoint, token: "" }),
      /vae\/config\.json\.partial exists and is not a regular file; refusing to write through it/,
    );
    assert.equal(await Deno.readTextFile(outside), "not yours");
    assert.equal(hub.seen.filter((s) => s.path.includes("/resolve/")).length, 0);
  } finally {
    await hub.stop();
    await Deno.remove(root, { recursive: true });
  }
});
