// Fetching a FLUX.2 klein pipeline repository from the Hugging Face Hub (or any server speaking its API): list the
// repository, keep the files the pipeline reads, download each to FILE.partial with HTTP Range resumption, check its
// size and hash against the listing and rename it into place. Complete files are checked and skipped, so running the
// same command again resumes an interrupted download.
//
// The server is not trusted: the token goes only to the endpoint's own origin (redirects and pagination are followed
// hop by hop and drop it elsewhere); every request has a connect and an idle timeout and bounded retries; pagination
// and redirects are bounded; names from the listing must be plain relative paths; and every error names the request.

import { createHash, type Hash } from "node:crypto";
import { dirname, join } from "node:path";
import { printable } from "../runtime/printable.ts";

export const DEFAULT_ENDPOINT = "https://huggingface.co";

/** Defaults of the network limits (see HubOptions). */
export const NETWORK_DEFAULTS = {
  connectTimeoutMs: 30_000,
  idleTimeoutMs: 60_000,
  retries: 5,
  retryDelayMs: 1_000,
  maxRedirects: 10,
  maxListingPages: 100,
} as const;

/** No wait between attempts is longer than this, whatever the server's Retry-After says. */
const MAX_RETRY_DELAY_MS = 30_000;
/** A listing page larger than this is refused rather than held in memory (the Hub's pages are far below it). */
const MAX_LISTING_PAGE_BYTES = 32 << 20;
/** How much of an unexpected answer is read to quote in the error, and how many characters are quoted. */
const EXCERPT_BYTES = 2048, EXCERPT_CHARS = 120;

export interface RetryNotice {
  /** The attempt that failed (1-based) and how many are allowed in all. */
  attempt: number;
  attempts: number;
  delayMs: number;
  /** What went wrong, naming the request. */
  reason: string;
}

export interface HubOptions {
  /** Server base URL (default: $HF_ENDPOINT, else https://huggingface.co). */
  endpoint?: string;
  /** Access token, sent as `Authorization: Bearer …` to the endpoint's origin only (default: $HF_TOKEN). */
  token?: string;
  /** Branch, tag or commit (default "main"). */
  revision?: string;
  /** For tests and proxies. Called with redirect: "manual"; redirects are followed here. */
  fetch?: typeof fetch;
  /** An attempt fails when the answer's status and headers have not arrived this long after the request was sent,
   * connecting included (default 30 s). */
  connectTimeoutMs?: number;
  /** An attempt fails when no byte of the body arrives for this long (default 60 s). */
  idleTimeoutMs?: number;
  /** Further attempts after a connection error, a timeout, HTTP 429 or 5xx (default 5); other 4xx fail at once. */
  retries?: number;
  /** Wait before the first retry, doubled for each further one (default 1 s; a longer Retry-After is honoured up to 30 s). */
  retryDelayMs?: number;
  /** Redirects followed per request (default 10). */
  maxRedirects?: number;
  /** Pages of the repository listing followed through its Link headers (default 100). */
  maxListingPages?: number;
  /** Told before each wait between attempts. */
  onRetry?: (notice: RetryNotice) => void;
}

export interface RepoFile {
  /** Path inside the repository, "/"-separated. */
  path: string;
  /** Size in bytes of the file itself (for LFS files, of the stored object, not the pointer). */
  size: number;
  /** SHA-256 of the content (lowercase hex), given by the listing for LFS files. */
  sha256?: string;
  /** Git blob id (SHA-1 of "blob SIZE\0" + content, lowercase hex), given by the listing for files stored in git. */
  gitOid?: string;
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

const PARTIAL_SUFFIX = ".partial";

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
    throw new Error(`endpoint "${printable(e)}" is not a URL (expected e.g. ${DEFAULT_ENDPOINT})`);
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    throw new Error(`endpoint ${printable(e)}: only http and https are supported`);
  }
  if (url.search || url.hash) throw new Error(`endpoint ${printable(e)}: a base URL has no query or fragment`);
  return e.replace(/\/+$/, "");
}

/** Refuse anything but "name" or "owner/name". */
export function checkRepoId(repo: string): void {
  if (!/^[A-Za-z0-9][\w.-]*(\/[A-Za-z0-9][\w.-]*)?$/.test(repo) || repo.includes("..")) {
    throw new Error(`"${printable(repo)}" is not a repository id (expected owner/name, e.g. black-forest-labs/FLUX.2-klein-4B)`);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Requests: one origin for credentials, manual redirects, timeouts, retries.

interface Net {
  endpoint: string;
  /** The only origin the token is sent to. */
  origin: string;
  token: string | undefined;
  revision: string;
  fetch: typeof fetch;
  connectTimeoutMs: number;
  idleTimeoutMs: number;
  retries: number;
  retryDelayMs: number;
  maxRedirects: number;
  maxListingPages: number;
  onRetry?: (notice: RetryNotice) => void;
}

function limit(name: string, value: number | undefined, fallback: number, min: number): number {
  const v = value ?? fallback;
  if (!Number.isFinite(v) || v < min) throw new Error(`download option ${name} is ${value}; it must be a number ≥ ${min}`);
  return v;
}

function network(o: HubOptions): Net {
  const endpoint = resolveEndpoint(o.endpoint);
  const d = NETWORK_DEFAULTS;
  return {
    endpoint,
    origin: new URL(endpoint).origin,
    token: o.token ?? Deno.env.get("HF_TOKEN") ?? undefined,
    revision: o.revision ?? "main",
    fetch: o.fetch ?? fetch,
    connectTimeoutMs: limit("connectTimeoutMs", o.connectTimeoutMs, d.connectTimeoutMs, 1),
    idleTimeoutMs: limit("idleTimeoutMs", o.idleTimeoutMs, d.idleTimeoutMs, 1),
    retries: Math.floor(limit("retries", o.retries, d.retries, 0)),
    retryDelayMs: limit("retryDelayMs", o.retryDelayMs, d.retryDelayMs, 0),
    maxRedirects: Math.floor(limit("maxRedirects", o.maxRedirects, d.maxRedirects, 0)),
    maxListingPages: Math.floor(limit("maxListingPages", o.maxListingPages, d.maxListingPages, 1)),
    onRetry: o.onRetry,
  };
}

/** A URL as it may appear in a message: never its user or password, and, off the endpoint's origin (signed CDN
 * links), never its query. */
function shownUrl(url: URL, net: Net): string {
  const query = url.origin === net.origin ? url.search : url.search ? "?…" : "";
  return printable(`${url.protocol}//${url.host}${url.pathname}${query}`);
}

/** What a failed fetch says went wrong ("connection closed before message completed", "tcp connect error:
 * Connection refused (os error 111)"): the innermost cause's message, after the client's own preamble, which repeats
 * the URL (the request is named already, and a signed query must not appear). */
function errorText(e: unknown): string {
  let c = e;
  for (let depth = 0; c instanceof Error && c.cause !== undefined && depth < 4; depth++) c = c.cause;
  const text = c instanceof Error ? c.message : String(c);
  const tail = /client error \([^)]*\): (.*)$/.exec(text)?.[1] ?? text;
  return tail.replace(/\b[a-z][a-z0-9+.-]*:\/\/[^\s()]+/gi, "…");
}

const seconds = (ms: number) => `${+(ms / 1000).toFixed(3)} s`;

/** A failure another attempt may cure: connection errors, timeouts, HTTP 429 and 5xx. */
class TransientError extends Error {
  constructor(message: string, readonly retryAfterMs?: number) {
    super(message);
  }
}

/** An answer whose status and headers have arrived; its body is read through chunks(), which enforces the idle timeout. */
interface Answer {
  res: Response;
  /** The URL that answered (after redirects). */
  url: URL;
  /** "GET <url>" for messages. */
  label: string;
  chunks(): AsyncGenerator<Uint8Array>;
  cancel(): Promise<void>;
}

/** GET `start`, following redirects one hop at a time: each hop gets the token only if it is on the endpoint's origin. */
async function get(net: Net, start: URL, headers: Record<string, string>): Promise<Answer> {
  let url = start;
  for (let hop = 0;; hop++) {
    const label = `GET ${shownUrl(url, net)}`;
    const h = new Headers(headers);
    if (net.token && url.origin === net.origin) h.set("Authorization", `Bearer ${net.token}`);
    const abort = new AbortController();
    let timedOut = false;
    let timer = setTimeout(() => {
      timedOut = true;
      abort.abort();
    }, net.connectTimeoutMs);
    let res: Response;
    try {
      res = await net.fetch(url, { headers: h, redirect: "manual", signal: abort.signal });
    } catch (e) {
      clearTimeout(timer);
      throw new TransientError(
        timedOut
          ? `${label}: no answer within ${seconds(net.connectTimeoutMs)}`
          : `${label}: the request failed: ${printable(errorText(e))}`,
      );
    }
    clearTimeout(timer);

    if ([301, 302, 303, 307, 308].includes(res.status)) {
      await res.body?.cancel().catch(() => {});
      const location = res.headers.get("Location");
      if (location === null) throw new Error(`${label}: HTTP ${res.status} redirect without a Location header`);
      let next: URL;
      try {
        next = new URL(location, url);
      } catch {
        throw new Error(`${label}: HTTP ${res.status} redirect to "${printable(location)}", which is not a URL`);
      }
      if (next.protocol !== "http:" && next.protocol !== "https:") {
        throw new Error(`${label}: HTTP ${res.status} redirect to ${shownUrl(next, net)}: only http and https are followed`);
      }
      if (hop >= net.maxRedirects) {
        throw new Error(`${label}: more than ${net.maxRedirects} redirects (the last to ${shownUrl(next, net)}); refusing to follow`);
      }
      url = next;
      continue;
    }

    const body = res.body;
    const idleMs = net.idleTimeoutMs;
    let received = 0;
    return {
      res,
      url,
      label,
      async *chunks() {
        if (!body) return;
        const reader = body.getReader();
        try {
          for (;;) {
            timedOut = false;
            timer = setTimeout(() => {
              timedOut = true;
              abort.abort();
            }, idleMs);
            let r: ReadableStreamReadResult<Uint8Array>;
            try {
              r = await reader.read();
            } catch (e) {
              throw new TransientError(
                timedOut
                  ? `${label}: nothing arrived for ${seconds(idleMs)} after ${received} bytes`
                  : `${label}: the connection broke after ${received} bytes: ${printable(errorText(e))}`,
              );
            } finally {
              clearTimeout(timer);
            }
            if (r.done) return;
            received += r.value.byteLength;
            yield r.value;
          }
        } finally {
          await reader.cancel().catch(() => {});
        }
      },
      cancel: async () => {
        await body?.cancel().catch(() => {});
      },
    };
  }
}

/** Up to EXCERPT_BYTES of the body, as a short quoted, escaped string for a message ("" when none could be read). */
async function excerpt(answer: Answer): Promise<string> {
  const parts: Uint8Array[] = [];
  let n = 0;
  try {
    for await (const c of answer.chunks()) {
      parts.push(c);
      n += c.byteLength;
      if (n >= EXCERPT_BYTES) break;
    }
  } catch {
    // The excerpt only illustrates the error being reported.
  }
  const text = new TextDecoder().decode(concat(parts, n).subarray(0, EXCERPT_BYTES)).replace(/\s+/g, " ").trim();
  if (!text) return "";
  const cut = text.length > EXCERPT_CHARS ? `${text.slice(0, EXCERPT_CHARS)}…` : text;
  return `: "${printable(cut)}"`;
}

function concat(parts: Uint8Array[], n: number): Uint8Array {
  const out = new Uint8Array(n);
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.byteLength;
  }
  return out;
}

/** "HTTP 503 Service Unavailable, text/html: "<html>…"" — status, content type and the start of the body. */
async function describeAnswer(answer: Answer): Promise<string> {
  const { res } = answer;
  const status = `HTTP ${res.status}${res.statusText ? ` ${printable(res.statusText)}` : ""}`;
  const type = res.headers.get("Content-Type");
  return `${status}, ${type ? printable(type) : "no content type"}${await excerpt(answer)}`;
}

/** Retry-After in ms (seconds or an HTTP date), if given. */
function retryAfterMs(res: Response): number | undefined {
  const v = res.headers.get("Retry-After");
  if (v === null) return undefined;
  if (/^\d+$/.test(v.trim())) return Number(v) * 1000;
  const t = Date.parse(v);
  return Number.isNaN(t) ? undefined : Math.max(0, t - Date.now());
}

/** Throws a TransientError for 429 and 5xx answers (with their description), else returns. */
async function throwIfTransient(answer: Answer): Promise<void> {
  const s = answer.res.status;
  if (s === 429 || (s >= 500 && s <= 599)) {
    throw new TransientError(`${answer.label}: ${await describeAnswer(answer)}`, retryAfterMs(answer.res));
  }
}

/** Runs `attempt` until it succeeds, fails with an error that is not transient, or the retries are spent. */
async function withRetries<T>(net: Net, attempt: () => Promise<T>): Promise<T> {
  const attempts = net.retries + 1;
  for (let i = 1;; i++) {
    try {
      return await attempt();
    } catch (e) {
      if (!(e instanceof TransientError)) throw e;
      if (i >= attempts) throw new Error(`${e.message} (gave up after ${attempts} attempt${attempts > 1 ? "s" : ""})`);
      const delayMs = Math.min(Math.max(net.retryDelayMs * 2 ** (i - 1), e.retryAfterMs ?? 0), MAX_RETRY_DELAY_MS);
      net.onRetry?.({ attempt: i, attempts, delayMs, reason: e.message });
      await new Promise((r) => setTimeout(r, delayMs));
    }
  }
}

/** The message for a refused request. */
function accessRefused(repo: string, answer: Answer, net: Net): Error {
  const page = `${net.endpoint}/${repo}`;
  const status = answer.res.status;
  if (answer.url.origin !== net.origin) {
    // Redirected elsewhere (a storage server, which gets no token): the repository's gating is not the question.
    return new Error(`${repo}: access refused (HTTP ${status}) by ${answer.label}, where the endpoint redirected the request`);
  }
  return new Error(
    net.token
      ? `${repo}: access refused (HTTP ${status}) although HF_TOKEN was sent: this repository is gated: accept its license on ` +
        `the website (${page}) with the account the token belongs to, or check that the token is valid (${answer.label})`
      : `${repo}: access refused (HTTP ${status}): this repository is gated: accept its license on the website (${page}) and ` +
        `set HF_TOKEN (or the repository is private, or its name is misspelled) (${answer.label})`,
  );
}

// ---------------------------------------------------------------------------------------------------------------
// The listing.

/** Every file of the repository at the revision, with its size and hash. Follows the listing's pagination (Link
 * rel="next") up to maxListingPages pages, refusing a page URL already fetched. */
export async function listRepoFiles(repo: string, options: HubOptions = {}): Promise<RepoFile[]> {
  checkRepoId(repo);
  const net = network(options);
  const files: RepoFile[] = [];
  const paths = new Set<string>();
  const fetched = new Set<string>();
  let page: URL | null = new URL(`${net.endpoint}/api/models/${repo}/tree/${encodeURIComponent(net.revision)}?recursive=true&expand=false`);
  while (page) {
    if (fetched.has(page.href)) {
      throw new Error(`listing ${repo}: the pagination links back to ${shownUrl(page, net)}, which was already fetched; refusing to loop`);
    }
    if (fetched.size >= net.maxListingPages) {
      throw new Error(`listing ${repo}: more than ${net.maxListingPages} pages (the next is ${shownUrl(page, net)}); refusing to go on`);
    }
    fetched.add(page.href);
    const url: URL = page;
    const { entries, next, label } = await withRetries(net, () => listingPage(repo, url, net));
    for (const [i, entry] of entries.entries()) {
      const file = listedFile(entry, `${label}: entry ${i}`);
      if (!file) continue;
      if (paths.has(file.path)) throw new Error(`${label}: the listing names "${printable(file.path)}" twice`);
      paths.add(file.path);
      files.push(file);
    }
    page = next;
  }
  return files;
}

/** One page of the listing: its entries and the next page's URL. */
async function listingPage(repo: string, url: URL, net: Net): Promise<{ entries: unknown[]; next: URL | null; label: string }> {
  const answer = await get(net, url, { Accept: "application/json" });
  const { res, label } = answer;
  if (res.status === 401 || res.status === 403) {
    await answer.cancel();
    throw accessRefused(repo, answer, net);
  }
  if (res.status === 404) {
    throw new Error(
      `${repo}: no such repository or revision "${printable(net.revision)}" at ${printable(net.endpoint)} (${label}: ${await describeAnswer(
        answer,
      )})`,
    );
  }
  await throwIfTransient(answer);
  if (res.status !== 200) throw new Error(`${label}: expected the repository listing, got ${await describeAnswer(answer)}`);
  const type = res.headers.get("Content-Type") ?? "";
  if (!/^application\/([\w.+-]+\+)?json\s*(;|$)/i.test(type)) {
    throw new Error(`${label}: expected the repository listing as JSON, got ${await describeAnswer(answer)}`);
  }

  const parts: Uint8Array[] = [];
  let n = 0;
  for await (const c of answer.chunks()) {
    n += c.byteLength;
    if (n > MAX_LISTING_PAGE_BYTES) throw new Error(`${label}: the listing page is larger than ${MAX_LISTING_PAGE_BYTES >> 20} MiB`);
    parts.push(c);
  }
  const text = new TextDecoder().decode(concat(parts, n));
  let entries: unknown;
  try {
    entries = JSON.parse(text);
  } catch (e) {
    const start = text.replace(/\s+/g, " ").trim().slice(0, EXCERPT_CHARS);
    throw new Error(`${label}: the listing is not valid JSON (${printable((e as Error).message)}): "${printable(start)}"`);
  }
  if (!Array.isArray(entries)) throw new Error(`${label}: the listing is not a JSON array`);
  return { entries, next: nextPage(answer, net), label };
}

/** The rel="next" target of the answer's Link header, resolved against the URL that answered. */
function nextPage(answer: Answer, net: Net): URL | null {
  const link = answer.res.headers.get("Link");
  if (!link) return null;
  for (const m of link.matchAll(/<([^>]*)>((?:\s*;\s*[^;,]+)*)/g)) {
    const rel = /;\s*rel\s*=\s*"?([^";,]+)"?/i.exec(m[2])?.[1];
    if (!rel || !rel.toLowerCase().split(/\s+/).includes("next")) continue;
    let next: URL;
    try {
      next = new URL(m[1], answer.url);
    } catch {
      throw new Error(`${answer.label}: the Link header's next page "${printable(m[1])}" is not a URL`);
    }
    if (next.protocol !== "http:" && next.protocol !== "https:") {
      throw new Error(`${answer.label}: the Link header's next page ${shownUrl(next, net)} is not http or https`);
    }
    return next;
  }
  return null;
}

/** A listing entry as a RepoFile (null for directories); refuses malformed entries and paths a git tree cannot hold. */
function listedFile(entry: unknown, where: string): RepoFile | null {
  const e = entry as Record<string, unknown>;
  if (typeof e !== "object" || e === null || typeof e.type !== "string") throw new Error(`${where} is not a file or directory entry`);
  if (e.type !== "file") return null;
  if (typeof e.path !== "string") throw new Error(`${where}: the file has no path`);
  const path = e.path;
  const name = `"${printable(path)}"`;
  if (path.split("/").some((p) => p === "" || p === "." || p === "..") || path.includes("\0")) {
    throw new Error(`${where}: the listing names the file ${name}, which is not a plain relative path; refusing the listing`);
  }
  const lfs = e.lfs as Record<string, unknown> | undefined;
  if (lfs !== undefined && (typeof lfs !== "object" || lfs === null)) throw new Error(`${where}: ${name} has a malformed lfs field`);
  const size = lfs?.size ?? e.size;
  if (typeof size !== "number" || !Number.isSafeInteger(size) || size < 0) {
    throw new Error(`${where}: the listing gives ${name} the size ${printable(String(size))}`);
  }
  const file: RepoFile = { path, size };
  if (lfs) {
    if (typeof lfs.oid !== "string" || !/^[0-9a-f]{64}$/i.test(lfs.oid)) {
      throw new Error(`${where}: ${name} is stored in LFS but its oid "${printable(String(lfs.oid))}" is not a SHA-256`);
    }
    file.sha256 = lfs.oid.toLowerCase();
  } else if (typeof e.oid === "string" && /^[0-9a-f]{40}$/i.test(e.oid)) {
    file.gitOid = e.oid.toLowerCase();
  }
  return file;
}

/** The repository files a FLUX.2 klein pipeline needs; throws when the repository is not such a pipeline. */
export function selectPipelineFiles(repo: string, files: RepoFile[]): RepoFile[] {
  const selected = files.filter((f) => isPipelineFile(f.path));
  const paths = new Set<string>();
  for (const f of selected) {
    localPath(".", f.path); // Refuse a hostile listing before anything is written.
    if (paths.has(f.path)) throw new Error(`${repo}: the listing names "${printable(f.path)}" twice`);
    paths.add(f.path);
  }
  const missing = REQUIRED_FILES.filter((p) => !paths.has(p));
  for (const folder of ["text_encoder", "transformer", "vae"]) {
    if (!selected.some((f) => f.path.startsWith(`${folder}/`) && f.path.endsWith(".safetensors"))) missing.push(`${folder}/*.safetensors`);
  }
  if (missing.length) {
    throw new Error(`${repo} is not a diffusers FLUX.2 klein pipeline repository: it lacks ${missing.join(", ")}`);
  }
  return selected;
}

/** Where a repository file goes under `dir`; refuses paths that would leave it or that are not plain names (absolute
 * paths, "." or ".." parts, backslashes, control characters, names ending in the partial-download suffix). */
export function localPath(dir: string, path: string): string {
  const parts = path.split("/");
  if (
    path.includes("\\") || parts.some((p) => p === "" || p === "." || p === "..") || printable(path) !== path ||
    path.endsWith(PARTIAL_SUFFIX)
  ) {
    throw new Error(`the listing names the file "${printable(path)}", which is not a plain relative path; refusing to write it`);
  }
  return join(dir, ...parts);
}

// ---------------------------------------------------------------------------------------------------------------
// Files.

/** The size of a regular file (symbolic links followed), null when there is none. */
async function fileSize(path: string): Promise<number | null> {
  try {
    const st = await Deno.stat(path);
    return st.isFile ? st.size : null;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null;
    throw e;
  }
}

/** The hash the listing gives for the file, and a fresh hasher for it; null when the listing gives none. */
function digestOf(file: RepoFile): { name: string; expected: string; start(): Hash } | null {
  if (file.sha256) return { name: "sha256", expected: file.sha256, start: () => createHash("sha256") };
  if (file.gitOid) {
    return { name: "git blob id", expected: file.gitOid, start: () => createHash("sha1").update(`blob ${file.size}\0`) };
  }
  return null;
}

/** Feeds the first `bytes` bytes of `path` to `hash`, a few MiB at a time. */
async function hashFromDisk(path: string, bytes: number, hash: Hash): Promise<void> {
  const f = await Deno.open(path, { read: true });
  try {
    const buf = new Uint8Array(4 << 20);
    for (let left = bytes; left > 0;) {
      const n = await f.read(buf.subarray(0, Math.min(buf.byteLength, left)));
      if (n === null) throw new Error(`${printable(path)} ended after ${bytes - left} of ${bytes} bytes while being hashed`);
      hash.update(buf.subarray(0, n));
      left -= n;
    }
  } finally {
    f.close();
  }
}

/** Hashes a complete file on disk; on a mismatch removes it and throws, naming the file and both hashes. */
async function verifyOnDisk(file: RepoFile, path: string, what: string): Promise<void> {
  const digest = digestOf(file);
  if (!digest) return;
  const hash = digest.start();
  await hashFromDisk(path, file.size, hash);
  const got = hash.digest("hex");
  if (got !== digest.expected) {
    await Deno.remove(path);
    throw new Error(
      `${printable(file.path)}: ${what} has the listed size but the wrong ${digest.name}: the listing says ${digest.expected}, ` +
        `the file hashes to ${got}; it was removed, run the command again to download it`,
    );
  }
}

/** Download one repository file to `dir`: skipped when already complete (its hash checked), resumed from
 * FILE.partial when one exists, retried within the limits, verified, then renamed into place. */
export async function downloadRepoFile(repo: string, file: RepoFile, dir: string, options: DownloadOptions = {}): Promise<FileOutcome> {
  checkRepoId(repo);
  const net = network(options);
  const dest = localPath(dir, file.path);
  const name = printable(file.path);
  if ((await fileSize(dest)) === file.size) {
    await verifyOnDisk(file, dest, "the file on disk");
    return "present";
  }
  const part = `${dest}${PARTIAL_SUFFIX}`;
  await Deno.mkdir(dirname(dest), { recursive: true });
  const partStat = await Deno.lstat(part).catch((e) => {
    if (e instanceof Deno.errors.NotFound) return null;
    throw e;
  });
  if (partStat && !partStat.isFile) throw new Error(`${printable(part)} exists and is not a regular file; refusing to write through it`);

  let start = partStat?.size ?? 0;
  if (start > file.size) {
    // Longer than the file can be: not a prefix of it.
    await Deno.remove(part);
    start = 0;
  }
  if (file.size === 0) await Deno.writeFile(part, new Uint8Array());

  const state: Transfer = { done: start, hash: null, hashed: 0, fromZero: start === 0, received: 0, t0: performance.now() };
  if (start < file.size) {
    const url = new URL(
      `${net.endpoint}/${repo}/resolve/${encodeURIComponent(net.revision)}/${file.path.split("/").map(encodeURIComponent).join("/")}`,
    );
    await withRetries(net, () => fetchInto(repo, file, url, part, state, net, options));
  }
  if (state.done === file.size && state.hash) {
    const digest = digestOf(file)!;
    const got = state.hash.digest("hex");
    if (got !== digest.expected) {
      await Deno.remove(part);
      throw new Error(
        `${name}: ${digest.name} mismatch: the listing says ${digest.expected}, the downloaded bytes hash to ${got}` +
          `${state.source ? ` (${state.source})` : ""}; the partial file was removed`,
      );
    }
  } else {
    // The whole file was on disk already as FILE.partial (interrupted before the rename).
    await verifyOnDisk(file, part, "the partial file");
  }
  const f = await Deno.open(part, { read: true });
  try {
    await f.syncData(); // The rename must not be on disk before the bytes.
  } finally {
    f.close();
  }
  await Deno.rename(part, dest);
  return state.fromZero ? "downloaded" : "resumed";
}

/** What a file's download has got so far, across attempts. */
interface Transfer {
  /** Bytes in FILE.partial. */
  done: number;
  /** Hash of the first `hashed` bytes of FILE.partial (null before the first write of this session). */
  hash: Hash | null;
  hashed: number;
  /** Whether FILE.partial was (re)started from its first byte in this session. */
  fromZero: boolean;
  received: number;
  t0: number;
  /** The request and content type the bytes came from, for messages. */
  source?: string;
}

/** One attempt: GET the file from byte `state.done` (Range) and append what arrives to `part`, hashing it. */
async function fetchInto(
  repo: string,
  file: RepoFile,
  url: URL,
  part: string,
  state: Transfer,
  net: Net,
  options: DownloadOptions,
): Promise<void> {
  const name = printable(file.path);
  const start = state.done;
  const headers: Record<string, string> = { "Accept-Encoding": "identity" };
  if (start > 0) headers.Range = `bytes=${start}-`;
  const answer = await get(net, url, headers);
  const { res, label } = answer;
  const fail = async (what: string) => new Error(`${name}: ${what} (${label}: ${await describeAnswer(answer)})`);

  if (res.status === 401 || res.status === 403) {
    await answer.cancel();
    throw accessRefused(repo, answer, net);
  }
  if (res.status === 416) {
    // The server's file ends before `start`, though the listing says it is longer: resuming cannot help.
    await answer.cancel();
    await Deno.remove(part).catch(() => {});
    throw new Error(
      `${name}: size mismatch: the server has no byte ${start}, the listing says ${file.size} bytes (${label}: HTTP 416); ` +
        `the partial file was removed`,
    );
  }
  await throwIfTransient(answer);
  if (res.status === 404) throw await fail("not found at this revision");
  if (res.status !== 200 && res.status !== 206) throw await fail("download failed");

  const type = res.headers.get("Content-Type");
  if (type && /^text\/html/i.test(type) && !/\.html?$/i.test(file.path)) throw await fail("the server sent a web page instead of the file");
  const contentRange = res.headers.get("Content-Range");
  let from = start;
  if (res.status === 200) {
    from = 0; // The server ignored the range (or none was asked) and sends the whole file.
  } else {
    const m = /^bytes (\d+)-\d+\/(\d+|\*)$/.exec(contentRange ?? "");
    if (!m || Number(m[1]) !== start) {
      await answer.cancel();
      throw new Error(
        `${name}: the server answered the range request from byte ${start} with Content-Range "${
          printable(String(contentRange))
        }" (${label})`,
      );
    }
    if (m[2] !== "*" && Number(m[2]) !== file.size) {
      await answer.cancel();
      throw new Error(`${name}: size mismatch: the server's file has ${m[2]} bytes, the listing says ${file.size} (${label})`);
    }
  }
  const length = res.headers.get("Content-Length");
  if (length !== null && res.headers.get("Content-Encoding") === null && from + Number(length) !== file.size) {
    await answer.cancel();
    throw new Error(`${name}: size mismatch: the server sends ${from + Number(length)} bytes, the listing says ${file.size} (${label})`);
  }
  state.source = `${label}, ${type ? printable(type) : "no content type"}`;

  const digest = digestOf(file);
  if (from === 0) {
    state.hash = digest?.start() ?? null;
    state.hashed = 0;
    state.fromZero = true;
  } else if (digest && (state.hash === null || state.hashed !== from)) {
    // Resuming: the bytes already on disk go into the hash first.
    state.hash = digest.start();
    await hashFromDisk(part, from, state.hash);
    state.hashed = from;
  }
  state.done = from;

  const out = from === 0 ? await Deno.open(part, { write: true, create: true, truncate: true }) : await Deno.open(part, { append: true });
  let lastReport = 0;
  const report = () =>
    options.onProgress?.({
      path: file.path,
      doneBytes: state.done,
      totalBytes: file.size,
      receivedBytes: state.received,
      elapsedMs: performance.now() - state.t0,
    });
  let tooLong = false;
  try {
    for await (const chunk of answer.chunks()) {
      if (state.done + chunk.byteLength > file.size) {
        tooLong = true;
        break;
      }
      for (let o = 0; o < chunk.byteLength;) o += await out.write(chunk.subarray(o));
      state.hash?.update(chunk);
      state.hashed += chunk.byteLength;
      state.done += chunk.byteLength;
      state.received += chunk.byteLength;
      if (performance.now() - lastReport > 250) {
        lastReport = performance.now();
        report();
      }
    }
  } finally {
    out.close();
  }
  if (tooLong) {
    await Deno.remove(part);
    throw new Error(
      `${name}: size mismatch: the server sent more than the ${file.size} bytes the listing gives (${label}); the partial file was removed`,
    );
  }
  report();
  if (state.done < file.size) {
    throw new TransientError(
      `${name}: the download stopped at ${state.done} of ${file.size} bytes (${label}); the partial file is kept, run the command again to resume`,
    );
  }
}

// ---------------------------------------------------------------------------------------------------------------

export interface PipelineDownloadOptions extends DownloadOptions {
  /** The selected files, before any download. */
  onListed?: (files: RepoFile[]) => void;
  onFileStart?: (file: RepoFile, index: number) => void;
  onFileDone?: (file: RepoFile, index: number, outcome: FileOutcome) => void;
}

/** List `repo`, select the pipeline's files and download each into `dir`, in listing order. Stops at the first
 * failure (what was complete stays; a partial file stays as FILE.partial to be resumed). */
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
