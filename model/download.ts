// Fetching a FLUX.2 klein pipeline repository from the Hugging Face Hub (or any server speaking its API):
// list the repository, keep the files the pipeline reads, download each to FILE.part with HTTP Range resumption,
// check its size against the listing and rename it into place. Complete files are skipped, so running the same
// command again resumes an interrupted download.

import { listFiles } from "@huggingface/hub";
import { dirname, join } from "node:path";

export const DEFAULT_ENDPOINT = "https://huggingface.co";

export interface HubOptions {
  /** Server base URL (default: $HF_ENDPOINT, else https://huggingface.co). */
  endpoint?: string;
  /** Access token, sent as `Authorization: Bearer …` (default: $HF_TOKEN). */
  token?: string;
  /** Branch, tag or commit (default "main"). */
  revision?: string;
  /** For tests and proxies. */
  fetch?: typeof fetch;
}

export interface RepoFile {
  /** Path inside the repository, "/"-separated. */
  path: string;
  /** Size in bytes of the file itself (for LFS files, of the stored object, not the pointer). */
  size: number;
}

export interface FileProgress {
  path: string;
  /** Bytes on disk so far, resumed bytes included. */
  doneBytes: number;
  totalBytes: number;
  /** Bytes received in this session. */
  receivedBytes: number;
  elapsedMs: number;
}

export type FileOutcome = "present" | "downloaded" | "resumed";

export interface DownloadOptions extends HubOptions {
  /** Called a few times a second while a file downloads, and once when it ends. */
  onProgress?: (p: FileProgress) => void;
  /** Abort a download when no byte arrives for this long (default 60 s). */
  idleTimeoutMs?: number;
}

/** Folders of a diffusers FLUX.2 klein pipeline, and which of their files the pipeline reads. */
const PIPELINE_FOLDERS: Record<string, (name: string) => boolean> = {
  scheduler: (n) => n.endsWith(".json"),
  tokenizer: () => true,
  text_encoder: (n) => n.endsWith(".json") || n.endsWith(".safetensors"),
  transformer: (n) => n.endsWith(".json") || n.endsWith(".safetensors"),
  vae: (n) => n.endsWith(".json") || n.endsWith(".safetensors"),
};

/** Files without which the pipeline cannot load. */
const REQUIRED_FILES = [
  "model_index.json",
  "scheduler/scheduler_config.json",
  "tokenizer/tokenizer.json",
  "tokenizer/tokenizer_config.json",
  "text_encoder/config.json",
  "transformer/config.json",
  "vae/config.json",
];

/** Whether the pipeline reads this repository file (model_index.json and the component folders' configs, indexes,
 * weights and tokenizer files; not READMEs, images, single-file checkpoints or other weight formats). */
export function isPipelineFile(path: string): boolean {
  if (path === "model_index.json") return true;
  const parts = path.split("/");
  if (parts.length !== 2) return false;
  const accept = PIPELINE_FOLDERS[parts[0]];
  return accept !== undefined && accept(parts[1]);
}

/** The endpoint to use: the option, else $HF_ENDPOINT, else the public Hub; without a trailing slash. */
export function resolveEndpoint(endpoint?: string): string {
  const e = endpoint ?? Deno.env.get("HF_ENDPOINT") ?? DEFAULT_ENDPOINT;
  let url: URL;
  try {
    url = new URL(e);
  } catch {
    throw new Error(`endpoint ${JSON.stringify(e)} is not a URL (expected e.g. ${DEFAULT_ENDPOINT})`);
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") throw new Error(`endpoint ${e}: only http and https are supported`);
  return e.replace(/\/+$/, "");
}

/** Refuse anything but "name" or "owner/name". */
export function checkRepoId(repo: string): void {
  if (!/^[A-Za-z0-9][\w.-]*(\/[A-Za-z0-9][\w.-]*)?$/.test(repo) || repo.includes("..")) {
    throw new Error(`"${repo}" is not a repository id (expected owner/name, e.g. black-forest-labs/FLUX.2-klein-4B)`);
  }
}

function settings(o: HubOptions) {
  return {
    endpoint: resolveEndpoint(o.endpoint),
    token: o.token ?? Deno.env.get("HF_TOKEN") ?? undefined,
    revision: o.revision ?? "main",
    fetch: o.fetch ?? fetch,
  };
}

/** Adds the token to every request; done here rather than through the library's accessToken so that tokens of any
 * form are passed through unchanged. */
function authorisedFetch(base: typeof fetch, token: string | undefined): typeof fetch {
  if (!token) return base;
  return (input, init) => {
    const headers = new Headers(init?.headers);
    headers.set("Authorization", `Bearer ${token}`);
    return base(input, { ...init, headers });
  };
}

/** The message for a refused request. */
function accessRefused(repo: string, status: number, endpoint: string, tokenSent: boolean): Error {
  const page = `${endpoint}/${repo}`;
  return new Error(
    tokenSent
      ? `${repo}: access refused (HTTP ${status}) although HF_TOKEN was sent: this repository is gated: accept its license on ` +
        `the website (${page}) with the account the token belongs to, or check that the token is valid`
      : `${repo}: access refused (HTTP ${status}): this repository is gated: accept its license on the website (${page}) and ` +
        `set HF_TOKEN (or the repository is private, or its name is misspelled)`,
  );
}

/** Every file of the repository at the revision, with its size. */
export async function listRepoFiles(repo: string, options: HubOptions = {}): Promise<RepoFile[]> {
  checkRepoId(repo);
  const s = settings(options);
  const files: RepoFile[] = [];
  try {
    for await (
      const e of listFiles({ repo, revision: s.revision, recursive: true, hubUrl: s.endpoint, fetch: authorisedFetch(s.fetch, s.token) })
    ) {
      if (e.type !== "file") continue;
      const size = e.lfs?.size ?? e.size;
      if (!Number.isSafeInteger(size) || size < 0) throw new Error(`${repo}: the listing gives ${e.path} the size ${size}`);
      files.push({ path: e.path, size });
    }
  } catch (e) {
    const status = (e as { statusCode?: unknown }).statusCode;
    if (status === 401 || status === 403) throw accessRefused(repo, status, s.endpoint, !!s.token);
    if (status === 404) throw new Error(`${repo}: no such repository or revision "${s.revision}" at ${s.endpoint}`);
    if (typeof status === "number") throw new Error(`${repo}: listing the repository failed with HTTP ${status}`);
    if (e instanceof TypeError) throw new Error(`cannot reach ${s.endpoint}: ${e.message}`);
    throw e;
  }
  return files;
}

/** The repository files a FLUX.2 klein pipeline needs; throws when the repository is not such a pipeline. */
export function selectPipelineFiles(repo: string, files: RepoFile[]): RepoFile[] {
  const selected = files.filter((f) => isPipelineFile(f.path));
  for (const f of selected) localPath(".", f.path); // Refuse a hostile listing before anything is written.
  const have = new Set(selected.map((f) => f.path));
  const missing = REQUIRED_FILES.filter((p) => !have.has(p));
  for (const folder of ["text_encoder", "transformer", "vae"]) {
    if (!selected.some((f) => f.path.startsWith(`${folder}/`) && f.path.endsWith(".safetensors"))) missing.push(`${folder}/*.safetensors`);
  }
  if (missing.length) {
    throw new Error(`${repo} is not a diffusers FLUX.2 klein pipeline repository: it lacks ${missing.join(", ")}`);
  }
  return selected;
}

/** Where a repository file goes under `dir`; refuses paths that would leave it. */
export function localPath(dir: string, path: string): string {
  const parts = path.split("/");
  if (path.includes("\\") || parts.some((p) => p === "" || p === "." || p === "..")) {
    throw new Error(`the listing names the file "${path}", which is not a plain relative path; refusing to write it`);
  }
  return join(dir, ...parts);
}

async function fileSize(path: string): Promise<number | null> {
  try {
    const st = await Deno.stat(path);
    return st.isFile ? st.size : null;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null;
    throw e;
  }
}

/** Download one repository file to `dir` (skipped when already complete; resumed from FILE.part when one exists). */
export async function downloadRepoFile(repo: string, file: RepoFile, dir: string, options: DownloadOptions = {}): Promise<FileOutcome> {
  checkRepoId(repo);
  const s = settings(options);
  const dest = localPath(dir, file.path);
  if ((await fileSize(dest)) === file.size) return "present";
  const part = `${dest}.part`;
  await Deno.mkdir(dirname(dest), { recursive: true });

  let start = (await fileSize(part)) ?? 0;
  if (start > file.size) {
    // Longer than the file can be: not a prefix of it.
    await Deno.remove(part);
    start = 0;
  }
  // Where the bytes written in this call started (the server may ignore the range and send everything).
  const resumedFrom = start < file.size ? await fetchInto(repo, file, part, start, s, options) : start;
  const got = (await fileSize(part)) ?? 0;
  if (got !== file.size) {
    if (got > file.size) await Deno.remove(part).catch(() => {});
    throw new Error(
      got < file.size
        ? `${file.path}: the download stopped at ${got} of ${file.size} bytes; run the command again to resume it`
        : `${file.path}: size mismatch: received ${got} bytes, the listing says ${file.size}; the partial file was removed`,
    );
  }
  await Deno.rename(part, dest);
  return resumedFrom > 0 ? "resumed" : "downloaded";
}

/** GET the file from byte `start` (Range) and append it to `part`; returns the offset the server's bytes started at. */
async function fetchInto(
  repo: string,
  file: RepoFile,
  part: string,
  start: number,
  s: ReturnType<typeof settings>,
  options: DownloadOptions,
): Promise<number> {
  const url = `${s.endpoint}/${repo}/resolve/${encodeURIComponent(s.revision)}/${file.path.split("/").map(encodeURIComponent).join("/")}`;
  const headers: Record<string, string> = {};
  if (s.token) headers.Authorization = `Bearer ${s.token}`;
  if (start > 0) headers.Range = `bytes=${start}-`;
  const abort = new AbortController();
  const idleMs = options.idleTimeoutMs ?? 60_000;
  let idle = setTimeout(() => abort.abort(), idleMs);
  const rearm = () => {
    clearTimeout(idle);
    idle = setTimeout(() => abort.abort(), idleMs);
  };
  try {
    let res: Response;
    try {
      res = await s.fetch(url, { headers, signal: abort.signal });
    } catch (e) {
      throw new Error(
        `${file.path}: cannot reach ${s.endpoint}: ${abort.signal.aborted ? `no answer in ${idleMs / 1000} s` : (e as Error).message}`,
      );
    }
    if (res.status === 401 || res.status === 403) {
      await res.body?.cancel();
      throw accessRefused(repo, res.status, s.endpoint, !!s.token);
    }
    if (res.status === 416) {
      // The server's file ends before `start`, though the listing says it is longer: resuming cannot help.
      await res.body?.cancel();
      await Deno.remove(part).catch(() => {});
      throw new Error(
        `${file.path}: size mismatch: the server has no byte ${start}, the listing says ${file.size} bytes; the partial file was removed`,
      );
    }
    if (res.status !== 200 && res.status !== 206) {
      await res.body?.cancel();
      throw new Error(`${file.path}: download failed with HTTP ${res.status}${res.status === 404 ? " (not found at this revision)" : ""}`);
    }
    let from = start;
    if (res.status === 200) {
      from = 0; // The server ignored the range and sends the whole file.
    } else {
      const m = /^bytes (\d+)-\d+\/(\d+|\*)$/.exec(res.headers.get("Content-Range") ?? "");
      if (!m || Number(m[1]) !== start) {
        await res.body?.cancel();
        throw new Error(
          `${file.path}: the server answered the range request from byte ${start} with Content-Range ${res.headers.get("Content-Range")}`,
        );
      }
      if (m[2] !== "*" && Number(m[2]) !== file.size) {
        await res.body?.cancel();
        throw new Error(`${file.path}: size mismatch: the server's file has ${m[2]} bytes, the listing says ${file.size}`);
      }
    }
    const length = res.headers.get("Content-Length");
    if (length !== null && res.headers.get("Content-Encoding") === null && from + Number(length) !== file.size) {
      await res.body?.cancel();
      throw new Error(`${file.path}: size mismatch: the server sends ${from + Number(length)} bytes, the listing says ${file.size}`);
    }
    if (!res.body) throw new Error(`${file.path}: the server sent no body`);

    const out = await Deno.open(part, { write: true, create: true, truncate: from === 0, append: from > 0 });
    const t0 = performance.now();
    let done = from, received = 0, lastReport = 0;
    const report = () =>
      options.onProgress?.({
        path: file.path,
        doneBytes: done,
        totalBytes: file.size,
        receivedBytes: received,
        elapsedMs: performance.now() - t0,
      });
    try {
      const reader = res.body.getReader();
      for (;;) {
        let chunk: ReadableStreamReadResult<Uint8Array>;
        try {
          chunk = await reader.read();
        } catch (e) {
          throw new Error(
            `${file.path}: the connection broke after ${done} of ${file.size} bytes ` +
              `(${
                abort.signal.aborted ? `nothing arrived for ${idleMs / 1000} s` : (e as Error).message
              }); run the command again to resume`,
          );
        }
        if (chunk.done) break;
        rearm();
        if (done + chunk.value.byteLength > file.size) {
          await reader.cancel();
          done += chunk.value.byteLength;
          break; // The size check after the loop reports it.
        }
        for (let o = 0; o < chunk.value.byteLength;) o += await out.write(chunk.value.subarray(o));
        done += chunk.value.byteLength;
        received += chunk.value.byteLength;
        if (performance.now() - lastReport > 250) {
          lastReport = performance.now();
          report();
        }
      }
    } finally {
      out.close();
    }
    report();
    if (done > file.size) {
      await Deno.remove(part).catch(() => {});
      throw new Error(
        `${file.path}: size mismatch: the server sent more than the ${file.size} bytes the listing gives; the partial file was removed`,
      );
    }
    return from;
  } finally {
    clearTimeout(idle);
  }
}

export interface PipelineDownloadOptions extends DownloadOptions {
  /** The selected files, before any download. */
  onListed?: (files: RepoFile[]) => void;
  onFileStart?: (file: RepoFile, index: number) => void;
  onFileDone?: (file: RepoFile, index: number, outcome: FileOutcome) => void;
}

/** List `repo`, select the pipeline's files and download each into `dir`, in listing order. Stops at the first
 * failure (what was complete stays; a partial file stays as FILE.part to be resumed). */
export async function downloadPipeline(repo: string, dir: string, options: PipelineDownloadOptions = {}): Promise<RepoFile[]> {
  const files = selectPipelineFiles(repo, await listRepoFiles(repo, options));
  options.onListed?.(files);
  for (const [i, file] of files.entries()) {
    options.onFileStart?.(file, i);
    const outcome = await downloadRepoFile(repo, file, dir, options);
    options.onFileDone?.(file, i, outcome);
  }
  return files;
}
