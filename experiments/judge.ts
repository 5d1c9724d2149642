// A vision-language judge asked the study's questions: per (task, condition, template) one bundle of labelled images
// — the reference, the anchor run without the intervention, the output — and one question answered as a single-line
// JSON object {"pass": 0|1, "reason": "…"}; the reason is kept with the verdict.
//
// Providers:
//   openai     any OpenAI-compatible chat-completions endpoint; images as base64 data URLs. URL, model and key from
//              flags, else KLEINSCOPE_JUDGE_URL / KLEINSCOPE_JUDGE_MODEL / KLEINSCOPE_JUDGE_KEY, else the experiment's
//              judge settings (never the key).
//   anthropic  Anthropic's Messages API (https://api.anthropic.com/v1/messages by default): x-api-key from --key or
//              ANTHROPIC_API_KEY, the anthropic-version header, images as base64 blocks, the system prompt marked for
//              prompt caching (cache_control). Default model: the study's, claude-opus-4-7.
//   stub       no network: a deterministic verdict from image statistics (the output's change against the bundle's
//              anchor image), labelled "stub" everywhere it appears. For tests and dry runs, never for results.
//
// A request is retried with exponential backoff (backoff · 2^attempt, capped; Retry-After honoured) on 408, 429, 5xx
// (529 included), network errors, timeouts and replies without text; other 4xx fail at once. A reply that is not the
// expected JSON is asked again (bounded); if it stays unusable the verdict is "unparseable" (raw text kept), and a
// request that never succeeded is "failed": both are written, left out of denominators and counted in the report.
// Answers are cached on disk under sha256(protocol, provider, model, template id and version, image hashes, rendered
// labels and question); failures and unparseable replies are not cached.
//
// Keys: sent only to the configured endpoint's origin (redirects are not followed), never written to verdicts,
// caches, manifests or logs (error texts are scrubbed of them).

import { join, relative } from "node:path";
import { canonicalJson, pathExists, readJsonFile, sha256Hex, writeJsonAtomic, writeTextAtomic } from "./files.ts";
import {
  defaultTemplate,
  type ImageRole,
  type InterventionKind,
  isPass,
  JUDGE_SYSTEM_PROMPT,
  type Polarity,
  PROTOCOL_VERSION,
  type QuestionTemplate,
  renderText,
  templateCatalogue,
} from "./judge_templates.ts";
import { type Condition, type JudgeProvider, type JudgeSettings, ruleMatches } from "./experiment.ts";
import { conditionDir, type RunFolder, taskReferences } from "./run_folder.ts";
import type { Task } from "./tasks.ts";
import type { PatchSpecJson, RunSpec } from "../studies/spec.ts";
import { loadImage, type RgbImage } from "../model/images.ts";

export interface JudgeEndpoint {
  provider: JudgeProvider;
  /** Full request URL (chat completions or messages); "stub:" for the stub. */
  url: string;
  model: string;
  key?: string;
  /** Per request (default 120 s). */
  timeoutMs?: number;
  /** Attempts per request (default 5). */
  maxAttempts?: number;
  /** Extra answers asked for when a reply is not the expected JSON (default 2). */
  unparseableRetries?: number;
  /** First backoff (default 1 s), doubled per attempt up to maxBackoffMs (default 60 s). */
  backoffMs?: number;
  maxBackoffMs?: number;
  /** Longest reply (default 200 tokens). */
  maxTokens?: number;
  /** Extra fields merged into each request body. */
  extraBody?: Record<string, unknown>;
}

export const ANTHROPIC_DEFAULT_URL = "https://api.anthropic.com/v1/messages";
export const ANTHROPIC_DEFAULT_MODEL = "claude-opus-4-7";
export const ANTHROPIC_VERSION = "2023-06-01";
export const STUB_MODEL = "stub-image-statistics";

function parseHttpUrl(url: string, example: string): URL {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new Error(`judge URL "${url}" is not a URL (e.g. ${example})`);
  }
  if (u.protocol !== "http:" && u.protocol !== "https:") throw new Error(`judge URL "${url}" must be http or https`);
  if (u.username || u.password) {
    throw new Error(`judge URL "${u.host}…" carries credentials: give the key with --key or the environment instead`);
  }
  return u;
}

/** Complete a chat-completions URL given as a base (…/v1) or in full. */
export function chatCompletionsUrl(url: string): string {
  const u = parseHttpUrl(url, "http://127.0.0.1:8000/v1");
  const path = u.pathname.replace(/\/+$/, "");
  if (!path.endsWith("/chat/completions")) u.pathname = `${path}/chat/completions`;
  return u.toString();
}

/** Complete a Messages API URL given as the host, a base (…/v1) or in full. */
export function messagesUrl(url: string): string {
  const u = parseHttpUrl(url, "https://api.anthropic.com");
  const path = u.pathname.replace(/\/+$/, "");
  if (!path.endsWith("/messages")) u.pathname = path.endsWith("/v1") ? `${path}/messages` : `${path}/v1/messages`;
  return u.toString();
}

export interface EndpointFlags {
  provider?: string;
  url?: string;
  model?: string;
  key?: string;
}

/** Flags, else environment, else the experiment's settings (the key never comes from a file). */
export function resolveEndpoint(flags: EndpointFlags, settings?: JudgeSettings): JudgeEndpoint {
  const provider = flags.provider ?? Deno.env.get("KLEINSCOPE_JUDGE_PROVIDER") ?? settings?.provider ?? "openai";
  if (provider !== "openai" && provider !== "anthropic" && provider !== "stub") {
    throw new Error(`judge "${provider}": expected openai, anthropic or stub`);
  }
  const maxTokens = settings?.maxTokens;
  if (provider === "stub") return { provider, url: "stub:", model: STUB_MODEL, maxTokens };
  const url = flags.url ?? Deno.env.get("KLEINSCOPE_JUDGE_URL") ?? settings?.url;
  const model = flags.model ?? Deno.env.get("KLEINSCOPE_JUDGE_MODEL") ?? settings?.model;
  if (provider === "anthropic") {
    const key = flags.key ?? Deno.env.get("ANTHROPIC_API_KEY");
    if (!key) throw new Error("no Anthropic key: set ANTHROPIC_API_KEY (or pass --key)");
    return { provider, url: messagesUrl(url ?? ANTHROPIC_DEFAULT_URL), model: model ?? ANTHROPIC_DEFAULT_MODEL, key, maxTokens };
  }
  if (!url) throw new Error("no judge URL: pass --url, set KLEINSCOPE_JUDGE_URL, or give judge.url in the experiment");
  if (!model) throw new Error("no judge model: pass --model, set KLEINSCOPE_JUDGE_MODEL, or give judge.model in the experiment");
  const key = flags.key ?? Deno.env.get("KLEINSCOPE_JUDGE_KEY") ?? undefined;
  return { provider, url: chatCompletionsUrl(url), model, key: key || undefined, maxTokens };
}

export interface ParsedVerdict {
  answer: "yes" | "no";
  reason: string;
}

/** The verdict of a reply: one JSON object with "pass" 0 or 1 (true/false accepted) and an optional "reason";
 * markdown fences and reasoning blocks around it are tolerated. Anything else is null. */
export function parseVerdict(text: string): ParsedVerdict | null {
  const cleaned = text.replace(/<think>[\s\S]*?<\/think>/gi, " ").replace(/```(?:json)?/gi, " ").trim();
  const start = cleaned.indexOf("{"), end = cleaned.lastIndexOf("}");
  if (start < 0 || end < start) return null;
  let o: unknown;
  try {
    o = JSON.parse(cleaned.slice(start, end + 1));
  } catch {
    return null;
  }
  if (!o || typeof o !== "object" || Array.isArray(o)) return null;
  const { pass, reason } = o as { pass?: unknown; reason?: unknown };
  const yes = pass === 1 || pass === true || pass === "1";
  const no = pass === 0 || pass === false || pass === "0";
  if (!yes && !no) return null;
  if (reason !== undefined && typeof reason !== "string") return null;
  return { answer: yes ? "yes" : "no", reason: (reason ?? "").slice(0, 300) };
}

function mimeOf(bytes: Uint8Array, path: string): string {
  if (bytes[0] === 0x89 && bytes[1] === 0x50 && bytes[2] === 0x4e && bytes[3] === 0x47) return "image/png";
  if (bytes[0] === 0xff && bytes[1] === 0xd8) return "image/jpeg";
  if (bytes[0] === 0x52 && bytes[1] === 0x49 && bytes[8] === 0x57 && bytes[9] === 0x45) return "image/webp";
  throw new Error(`image ${path}: not a PNG, JPEG or WebP file`);
}

function base64(bytes: Uint8Array): string {
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(s);
}

export interface JudgeImage {
  role: ImageRole;
  /** The rendered label shown before the image. */
  label: string;
  path: string;
  bytes: Uint8Array;
}

export interface JudgeQuestion {
  template: QuestionTemplate;
  /** The rendered question. */
  text: string;
  images: JudgeImage[];
  /** A system prompt other than the judge's (requests that are not verdicts, e.g. experiments/sun397.ts). */
  system?: string;
}

export interface JudgeAnswer {
  answer: "yes" | "no" | null;
  reason: string | null;
  status: "ok" | "unparseable" | "failed";
  raw: string;
  error?: string;
  cached: boolean;
  key: string;
  attempts: number;
  tokens: { input: number; output: number } | null;
}

class RetryableError extends Error {
  constructor(message: string, readonly retryAfterMs?: number) {
    super(message);
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface Reply {
  text: string;
  tokens: { input: number; output: number } | null;
}

/** The request body of a question for the endpoint's provider. */
export function requestBody(endpoint: JudgeEndpoint, q: JudgeQuestion): Record<string, unknown> {
  const maxTokens = endpoint.maxTokens ?? 200;
  if (endpoint.provider === "anthropic") {
    const content: unknown[] = [];
    for (const im of q.images) {
      content.push({ type: "text", text: im.label });
      content.push({ type: "image", source: { type: "base64", media_type: mimeOf(im.bytes, im.path), data: base64(im.bytes) } });
    }
    content.push({ type: "text", text: q.text });
    return {
      model: endpoint.model,
      max_tokens: maxTokens,
      temperature: 0,
      ...endpoint.extraBody,
      system: [{ type: "text", text: q.system ?? JUDGE_SYSTEM_PROMPT, cache_control: { type: "ephemeral" } }],
      messages: [{ role: "user", content }],
    };
  }
  const content: unknown[] = [];
  for (const im of q.images) {
    content.push({ type: "text", text: im.label });
    content.push({ type: "image_url", image_url: { url: `data:${mimeOf(im.bytes, im.path)};base64,${base64(im.bytes)}` } });
  }
  content.push({ type: "text", text: q.text });
  return {
    model: endpoint.model,
    temperature: 0,
    max_tokens: maxTokens,
    ...endpoint.extraBody,
    messages: [{ role: "system", content: q.system ?? JUDGE_SYSTEM_PROMPT }, { role: "user", content }],
  };
}

/** Mean colour of each cell of a grid × grid partition of an image. */
function cellMeans(img: RgbImage, grid = 8): Float64Array {
  const out = new Float64Array(grid * grid * 3);
  const counts = new Float64Array(grid * grid);
  for (let y = 0; y < img.height; y++) {
    const gy = Math.min(grid - 1, Math.floor((y * grid) / img.height));
    for (let x = 0; x < img.width; x++) {
      const g = gy * grid + Math.min(grid - 1, Math.floor((x * grid) / img.width));
      const i = (y * img.width + x) * 3;
      out[g * 3] += img.data[i];
      out[g * 3 + 1] += img.data[i + 1];
      out[g * 3 + 2] += img.data[i + 2];
      counts[g]++;
    }
  }
  for (let g = 0; g < grid * grid; g++) for (let c = 0; c < 3; c++) out[g * 3 + c] /= Math.max(1, counts[g]);
  return out;
}

/** The stub's threshold: a mean change of the 8 × 8 cell colours above this many 8-bit levels counts as a change. */
export const STUB_CHANGE_LEVELS = 12;

/** The stub judge's reply: the output (last image) against the anchor (the baseline or t2i_clean image, else the
 * image before the output), as the mean absolute change of 8 × 8 cell colours. A "change" question gets a 1 when the
 * change exceeds STUB_CHANGE_LEVELS; a "keep" question gets a 1 when it does not. */
export async function stubReply(q: JudgeQuestion): Promise<string> {
  const out = q.images.findIndex((im) => im.role === "output");
  let anchor = q.images.findIndex((im) => im.role === "baseline" || im.role === "t2i_clean");
  if (anchor < 0) anchor = out > 0 ? out - 1 : q.images.length > 1 ? 1 : -1;
  if (out < 0 || anchor < 0) return JSON.stringify({ pass: 0, reason: "stub: no anchor image to compare with" });
  const [a, b] = await Promise.all([loadImage(q.images[out].path), loadImage(q.images[anchor].path)]);
  const ca = cellMeans(a), cb = cellMeans(b);
  let sum = 0;
  for (let i = 0; i < ca.length; i++) sum += Math.abs(ca[i] - cb[i]);
  const change = sum / ca.length;
  const changed = change > STUB_CHANGE_LEVELS;
  const pass = (changed === (q.template.polarity === "change")) ? 1 : 0;
  return JSON.stringify({
    pass,
    reason: `stub: output vs image ${anchor + 1} changed by ${change.toFixed(1)} levels (threshold ${STUB_CHANGE_LEVELS})`,
  });
}

/** Asks questions, with retries and an on-disk cache. */
export class JudgeClient {
  /** Requests sent (not counting cache hits). */
  requests = 0;

  constructor(readonly endpoint: JudgeEndpoint, readonly cacheDir: string) {}

  /** A text with the key removed (errors may quote request details). */
  private scrub(s: string): string {
    return this.endpoint.key ? s.split(this.endpoint.key).join("[key]") : s;
  }

  async cacheKey(q: JudgeQuestion): Promise<string> {
    const hashes = await Promise.all(q.images.map((i) => sha256Hex(i.bytes)));
    return sha256Hex(canonicalJson({
      protocol: PROTOCOL_VERSION,
      provider: this.endpoint.provider,
      model: this.endpoint.model,
      template: q.template.id,
      version: q.template.version,
      images: hashes,
      labels: q.images.map((i) => i.label),
      question: q.text,
      ...(q.system === undefined ? {} : { system: q.system }),
    }));
  }

  /** One reply to a question that is not a verdict (its own system prompt): the raw text, from the cache when it was
   * asked before; transport failures are retried as for verdicts and thrown at the end. */
  async complete(q: JudgeQuestion): Promise<{ text: string; cached: boolean; tokens: JudgeAnswer["tokens"] }> {
    if (this.endpoint.provider === "stub") throw new Error("the stub judge only answers verdicts; give an endpoint (--url/--model)");
    const key = await this.cacheKey(q);
    const cachePath = join(this.cacheDir, key.slice(0, 2), `${key}.json`);
    if (await pathExists(cachePath)) {
      const hit = await readJsonFile<{ raw: string; tokens?: JudgeAnswer["tokens"] }>(cachePath);
      return { text: hit.raw, cached: true, tokens: hit.tokens ?? null };
    }
    const { reply, error } = await this.send(JSON.stringify(requestBody(this.endpoint, q)), q);
    if (!reply) throw new Error(`judge request failed: ${error}`);
    const raw = this.scrub(reply.text);
    await writeJsonAtomic(cachePath, {
      raw,
      tokens: reply.tokens,
      model: this.endpoint.model,
      question: q.text,
      at: new Date().toISOString(),
    });
    return { text: raw, cached: false, tokens: reply.tokens };
  }

  /** One reply, with transport retries and backoff. */
  private async send(body: string, q: JudgeQuestion): Promise<{ reply?: Reply; attempts: number; error: string }> {
    const maxAttempts = this.endpoint.maxAttempts ?? 5;
    let error = "", attempts = 0;
    for (let attempt = 1; attempt <= maxAttempts; attempt++) {
      attempts++;
      try {
        const reply = this.endpoint.provider === "stub" ? { text: await stubReply(q), tokens: null } : await this.post(body);
        return { reply, attempts, error };
      } catch (e) {
        error = this.scrub((e as Error).message);
        if (!(e instanceof RetryableError) || attempt === maxAttempts) break;
        const cap = this.endpoint.maxBackoffMs ?? 60_000;
        const backoff = Math.min((this.endpoint.backoffMs ?? 1000) * 2 ** (attempt - 1), cap);
        await sleep(Math.max(backoff, Math.min(e.retryAfterMs ?? 0, cap)));
      }
    }
    return { attempts, error };
  }

  async ask(q: JudgeQuestion): Promise<JudgeAnswer> {
    const key = await this.cacheKey(q);
    const cachePath = join(this.cacheDir, key.slice(0, 2), `${key}.json`);
    if (this.endpoint.provider !== "stub" && await pathExists(cachePath)) {
      const hit = await readJsonFile<{ answer: "yes" | "no"; reason: string; raw: string; tokens?: JudgeAnswer["tokens"] }>(cachePath);
      return {
        answer: hit.answer,
        reason: hit.reason,
        status: "ok",
        raw: hit.raw,
        cached: true,
        key,
        attempts: 0,
        tokens: hit.tokens ?? null,
      };
    }
    const body = this.endpoint.provider === "stub" ? "" : JSON.stringify(requestBody(this.endpoint, q));
    const answers = 1 + (this.endpoint.unparseableRetries ?? 2);
    let lastError = "", lastRaw = "", attempts = 0;
    for (let asked = 0; asked < answers; asked++) {
      const sent = await this.send(body, q);
      const reply = sent.reply;
      attempts += sent.attempts;
      lastError = sent.error;
      if (!reply) {
        return { answer: null, reason: null, status: "failed", raw: "", error: lastError, cached: false, key, attempts, tokens: null };
      }
      lastRaw = this.scrub(reply.text);
      const verdict = parseVerdict(lastRaw);
      if (verdict) {
        if (this.endpoint.provider !== "stub") {
          await writeJsonAtomic(cachePath, {
            ...verdict,
            raw: lastRaw,
            tokens: reply.tokens,
            template: q.template.id,
            version: q.template.version,
            provider: this.endpoint.provider,
            model: this.endpoint.model,
            question: q.text,
            at: new Date().toISOString(),
          });
        }
        return { ...verdict, status: "ok", raw: lastRaw, cached: false, key, attempts, tokens: reply.tokens };
      }
    }
    return { answer: null, reason: null, status: "unparseable", raw: lastRaw, cached: false, key, attempts, tokens: null };
  }

  private async post(body: string): Promise<Reply> {
    this.requests++;
    const headers: Record<string, string> = { "content-type": "application/json" };
    if (this.endpoint.provider === "anthropic") {
      headers["x-api-key"] = this.endpoint.key ?? "";
      headers["anthropic-version"] = ANTHROPIC_VERSION;
    } else if (this.endpoint.key) headers.authorization = `Bearer ${this.endpoint.key}`;
    let res: Response;
    try {
      // Redirects are not followed: the key goes to the configured origin only.
      res = await fetch(this.endpoint.url, {
        method: "POST",
        headers,
        body,
        redirect: "manual",
        signal: AbortSignal.timeout(this.endpoint.timeoutMs ?? 120_000),
      });
    } catch (e) {
      const name = (e as Error).name;
      throw new RetryableError(name === "TimeoutError" ? "request timed out" : `network error: ${(e as Error).message}`);
    }
    const text = await res.text();
    if (res.status >= 300 && res.status < 400) {
      throw new Error(`HTTP ${res.status}: the judge endpoint redirects; the key is sent only to ${new URL(this.endpoint.url).origin}`);
    }
    if (res.status === 408 || res.status === 429 || res.status >= 500) {
      const ra = Number(res.headers.get("retry-after"));
      throw new RetryableError(`HTTP ${res.status}: ${text.slice(0, 200)}`, Number.isFinite(ra) && ra >= 0 ? ra * 1000 : undefined);
    }
    if (!res.ok) throw new Error(`HTTP ${res.status}: ${text.slice(0, 300)}`);
    let json: Record<string, any>;
    try {
      json = JSON.parse(text);
    } catch {
      throw new RetryableError(`the reply is not JSON: ${text.slice(0, 200)}`);
    }
    if (this.endpoint.provider === "anthropic") {
      const blocks = Array.isArray(json.content) ? json.content : [];
      const out = blocks.filter((b: any) => b?.type === "text" && typeof b.text === "string").map((b: any) => b.text).join("");
      if (!blocks.length) throw new RetryableError(`the reply has no content: ${text.slice(0, 200)}`);
      const u = json.usage;
      return { text: out, tokens: u ? { input: Number(u.input_tokens ?? 0), output: Number(u.output_tokens ?? 0) } : null };
    }
    const content = json.choices?.[0]?.message?.content;
    const u = json.usage;
    const tokens = u ? { input: Number(u.prompt_tokens ?? 0), output: Number(u.completion_tokens ?? 0) } : null;
    if (typeof content === "string") return { text: content, tokens };
    if (Array.isArray(content)) {
      return { text: content.map((p) => (p && typeof p === "object" && "text" in p ? String(p.text) : "")).join(""), tokens };
    }
    throw new RetryableError(`the reply has no message content: ${text.slice(0, 200)}`);
  }
}

// ---- judging a run -----------------------------------------------------------------------------------------------

export interface Judgment {
  task_id: string;
  condition: string;
  family: string;
  edit_type: string;
  template: string;
  template_version: number;
  polarity: Polarity;
  question: string;
  /** The bundle in order: role, rendered label, path relative to the run folder (or absolute outside it). */
  images: { role: ImageRole; label: string; path: string }[];
  judge: string;
  provider: JudgeProvider;
  model: string;
  /** The judge's answer: "yes" = 1 (the question's prediction holds). */
  answer: "yes" | "no" | null;
  /** The judge's one-sentence reason. */
  reason: string | null;
  status: "ok" | "unparseable" | "failed";
  /** The intervention worked: the answer under the template's polarity. */
  pass: boolean | null;
  raw: string;
  error?: string;
  cached: boolean;
  tokens: { input: number; output: number } | null;
}

export interface JudgeRunOptions {
  endpoint: JudgeEndpoint;
  /** Names the judgments file (default: the model; "stub" for the stub). */
  name?: string;
  /** Default <run>/judge-cache. */
  cacheDir?: string;
  concurrency?: number;
  /** The condition behind the "baseline" role (default: the experiment's judge.baseline, else "baseline"). */
  baseline?: string;
  log?: (line: string) => void;
}

export interface JudgeRunSummary {
  path: string;
  judgments: Judgment[];
  asked: number;
  cached: number;
  unparseable: number;
  failed: number;
  requests: number;
}

export const judgmentsDir = (run: string) => join(run, "judgments");

export function judgeFileName(name: string): string {
  const safe = name.replace(/[^A-Za-z0-9._-]+/g, "_").replace(/^[._]+/, "");
  if (!safe) throw new Error(`judge name "${name}" gives an empty file name`);
  return `${safe}.jsonl`;
}

/** What a condition's intervention does, for the default questions. */
export function interventionKind(cond: Condition | undefined): InterventionKind | undefined {
  if (!cond) return undefined;
  if (cond.patch || cond.interventions?.some((i) => i.type === "patch")) return "patch";
  if (cond.interventions?.some((i) => i.type === "lens")) return "lens";
  const ko = cond.interventions?.find((i) => i.type === "knockout");
  if (ko && ko.type === "knockout") {
    // Several settings together: the "lost" question when any of them cuts a path into the text.
    const settings = [ko.setting, ...(ko.settings ?? []).map((s) => s.setting)].filter((s): s is string => !!s);
    return settings.some((s) => /text/.test(s.split("->")[1] ?? "")) ? "knockout_to_text" : "knockout_to_image";
  }
  return undefined;
}

interface RoleContext {
  run: RunFolder;
  task: Task;
  condition: string;
  spec: RunSpec;
  baseline: string;
  t2iClean: string;
}

/** The image of a role for one folder, or undefined when the folder has none. */
function imagePath(c: RoleContext, role: ImageRole): string | undefined {
  const other = (name: string) =>
    c.run.complete.get(c.task.task_id)?.has(name) ? join(conditionDir(c.run.dir, c.task.task_id, name), "image.png") : undefined;
  const dir = conditionDir(c.run.dir, c.task.task_id, c.condition);
  switch (role) {
    case "reference":
      return taskReferences(c.run.dir, c.task)[0];
    case "output":
      return join(dir, "image.png");
    case "baseline":
      return other(c.baseline);
    case "t2i_clean":
      return other(c.t2iClean);
    case "source_output":
      return join(dir, "source.png");
    case "source_reference":
      return (c.spec.interventions?.find((i) => i.type === "patch") as PatchSpecJson | undefined)?.source.refs?.[0];
    default:
      return other(role.slice("condition:".length));
  }
}

/** The questions of one folder: the experiment's rules, else the family's default for the condition's intervention. */
function templatesFor(run: RunFolder, catalogue: Map<string, QuestionTemplate>, task: Task, condition: string): QuestionTemplate[] {
  const rules = run.experiment.judge?.questions;
  if (!rules) {
    const t = defaultTemplate(task.family, interventionKind(run.experiment.conditions.find((c) => c.name === condition)));
    return t ? [t] : [];
  }
  return rules
    .filter((r) =>
      (!r.conditions || r.conditions.some((e) => ruleMatches(e, condition))) && (!r.families || r.families.includes(task.family))
    )
    .map((r) => {
      const t = catalogue.get(r.template);
      if (!t) throw new Error(`experiment.judge: unknown question template "${r.template}"`);
      return t;
    });
}

/** Ask every question of every complete folder; write <run>/judgments/<name>.jsonl. */
export async function judgeRun(run: RunFolder, options: JudgeRunOptions): Promise<JudgeRunSummary> {
  const log = options.log ?? ((l: string) => console.error(l));
  const endpoint = options.endpoint;
  const name = options.name ?? (endpoint.provider === "stub" ? "stub" : endpoint.model);
  const client = new JudgeClient(endpoint, options.cacheDir ?? join(run.dir, "judge-cache"));
  const settings = run.experiment.judge;
  const catalogue = templateCatalogue((settings?.templates ?? []).map((t, i) => ({ ...t, origin: `judge.templates[${i}]` })));
  const baseline = options.baseline ?? settings?.baseline ?? "baseline";
  const t2iClean = settings?.t2iClean ?? "t2i_clean";
  const rel = (p: string) => {
    const r = relative(run.dir, p);
    return r.startsWith("..") ? p : r;
  };
  interface Item {
    base: Omit<Judgment, "answer" | "reason" | "status" | "pass" | "raw" | "cached" | "error" | "tokens">;
    template: QuestionTemplate;
    paths: string[];
  }
  const items: Item[] = [];
  const skipped = new Map<string, number>();
  for (const task of run.tasks) {
    for (const condition of run.conditions) {
      if (!run.complete.get(task.task_id)?.has(condition)) continue;
      const spec = await readJsonFile<RunSpec>(join(conditionDir(run.dir, task.task_id, condition), "spec.json"));
      const ctx: RoleContext = { run, task, condition, spec, baseline, t2iClean };
      for (const template of templatesFor(run, catalogue, task, condition)) {
        const paths = template.images.map((im) => imagePath(ctx, im.role));
        const missing = template.images.filter((_, i) => !paths[i] || !existsSync(paths[i]!)).map((im) => im.role);
        if (missing.length) {
          const why = `${template.id} on ${condition}: no ${missing.join(", ")} image`;
          skipped.set(why, (skipped.get(why) ?? 0) + 1);
          continue;
        }
        items.push({
          template,
          paths: paths as string[],
          base: {
            task_id: task.task_id,
            condition,
            family: task.family,
            edit_type: task.edit_type,
            template: template.id,
            template_version: template.version,
            polarity: template.polarity,
            question: renderText(template.question, template.id, task),
            images: template.images.map((im, i) => ({
              role: im.role,
              label: renderText(im.label, template.id, task),
              path: rel(paths[i]!),
            })),
            judge: name,
            provider: endpoint.provider,
            model: endpoint.model,
          },
        });
      }
    }
  }
  for (const [why, n] of skipped) log(`warning: skipped ${n} question(s): ${why}`);
  log(
    endpoint.provider === "stub"
      ? `judge ${name} (STUB: verdicts from image statistics, not a vision-language model): ${items.length} question(s)`
      : `judge ${name} (${endpoint.provider}: ${endpoint.model} at ${endpoint.url}): ${items.length} question(s)`,
  );
  const judgments: Judgment[] = new Array(items.length);
  let next = 0, done = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      const item = items[i];
      let answer: JudgeAnswer;
      try {
        const images = await Promise.all(
          item.paths.map(async (path, k) => ({
            ...item.template.images[k],
            label: item.base.images[k].label,
            path,
            bytes: await Deno.readFile(path),
          })),
        );
        answer = await client.ask({ template: item.template, text: item.base.question, images });
      } catch (e) {
        answer = {
          answer: null,
          reason: null,
          status: "failed",
          raw: "",
          error: (e as Error).message,
          cached: false,
          key: "",
          attempts: 0,
          tokens: null,
        };
      }
      judgments[i] = {
        ...item.base,
        answer: answer.answer,
        reason: answer.reason,
        status: answer.status,
        pass: answer.answer === null ? null : isPass(answer.answer, item.template.polarity),
        raw: answer.raw,
        ...(answer.error ? { error: answer.error } : {}),
        cached: answer.cached,
        tokens: answer.tokens,
      };
      done++;
      if (answer.status !== "ok") {
        log(
          `  ${item.base.task_id} / ${item.base.condition} / ${item.template.id}: ${answer.status}${
            answer.error ? ` (${answer.error})` : ` ("${answer.raw.slice(0, 60)}")`
          }`,
        );
      }
      if (done % 50 === 0) log(`  ${done}/${items.length}`);
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, options.concurrency ?? 4) }, worker));
  const path = join(judgmentsDir(run.dir), judgeFileName(name));
  await writeTextAtomic(path, judgments.map((j) => JSON.stringify(j)).join("\n") + (judgments.length ? "\n" : ""));
  const summary = {
    path,
    judgments,
    asked: judgments.filter((j) => !j.cached && j.status !== "failed").length,
    cached: judgments.filter((j) => j.cached).length,
    unparseable: judgments.filter((j) => j.status === "unparseable").length,
    failed: judgments.filter((j) => j.status === "failed").length,
    requests: client.requests,
  };
  log(
    `wrote ${path}: ${judgments.length} verdict(s), ${summary.cached} from the cache, ${summary.asked} asked now ` +
      `(${summary.requests} request(s)), ${summary.unparseable} unparseable and ${summary.failed} failed (both left out of the rates)`,
  );
  return summary;
}

function existsSync(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch {
    return false;
  }
}

/** Every judgments file of a run: judge name → verdicts. */
export async function readJudgments(run: string): Promise<Map<string, Judgment[]>> {
  const out = new Map<string, Judgment[]>();
  const dir = judgmentsDir(run);
  if (!(await pathExists(dir))) return out;
  const names: string[] = [];
  for await (const e of Deno.readDir(dir)) if (e.isFile && e.name.endsWith(".jsonl")) names.push(e.name);
  for (const file of names.sort()) {
    const text = await Deno.readTextFile(join(dir, file));
    const rows = text.split("\n").filter((l) => l.trim()).map((l, i) => {
      try {
        return JSON.parse(l) as Judgment;
      } catch (e) {
        throw new Error(`${join(dir, file)}:${i + 1}: not valid JSON (${(e as Error).message})`);
      }
    });
    out.set(rows[0]?.judge ?? file.replace(/\.jsonl$/, ""), rows);
  }
  return out;
}
