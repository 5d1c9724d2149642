// A vision-language judge behind any OpenAI-compatible chat-completions endpoint: one yes/no question per
// (task, condition, template), images attached as base64 data URLs.
//
// Endpoint, model and key come from flags, else the environment (KLEINSCOPE_JUDGE_URL, KLEINSCOPE_JUDGE_MODEL,
// KLEINSCOPE_JUDGE_KEY), else the experiment's "judge" settings (never the key). The URL may be the full
// …/chat/completions address or its base (…/v1), to which /chat/completions is appended.
//
// Requests are retried with exponential backoff (backoff · 2^attempt, capped; a 429's Retry-After is honoured) on
// 408, 429, 5xx, network errors, timeouts and replies without a message. Other 4xx fail at once. An answer that is not
// recognisably yes or no is kept as "unparseable" with its raw text; a request that never succeeded is "failed";
// both are written to the judgments file and left out of denominators. Answers (parseable or not) are cached on
// disk under sha256(template id, template version, model, image hashes, question), so a re-run pays only for what it
// has not asked yet; failures are not cached.

import { join, relative } from "node:path";
import { canonicalJson, pathExists, readJsonFile, sha256Hex, writeJsonAtomic, writeTextAtomic } from "./files.ts";
import {
  defaultTemplate,
  findTemplate,
  type ImageRole,
  JUDGE_SYSTEM_PROMPT,
  type QuestionTemplate,
  renderQuestion,
} from "./judge_templates.ts";
import type { JudgeSettings } from "./experiment.ts";
import { conditionDir, type RunFolder, taskReferences } from "./run_folder.ts";
import type { Task } from "./tasks.ts";
import type { PatchSpecJson, RunSpec } from "../studies/spec.ts";

export interface JudgeEndpoint {
  /** Full chat-completions URL. */
  url: string;
  model: string;
  key?: string;
  /** Per request (default 120 s). */
  timeoutMs?: number;
  /** Attempts per question (default 5). */
  maxAttempts?: number;
  /** First backoff (default 1 s), doubled per attempt up to maxBackoffMs (default 60 s). */
  backoffMs?: number;
  maxBackoffMs?: number;
  /** Extra fields merged into each request body (e.g. {"max_tokens": 8}). */
  extraBody?: Record<string, unknown>;
}

/** Complete a chat-completions URL given as a base (…/v1) or in full. */
export function chatCompletionsUrl(url: string): string {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new Error(`judge URL "${url}" is not a URL (e.g. http://127.0.0.1:8000/v1)`);
  }
  if (u.protocol !== "http:" && u.protocol !== "https:") throw new Error(`judge URL "${url}" must be http or https`);
  const path = u.pathname.replace(/\/+$/, "");
  if (!path.endsWith("/chat/completions")) u.pathname = `${path}/chat/completions`;
  return u.toString();
}

/** Flags, else environment, else the experiment's settings. */
export function resolveEndpoint(flags: { url?: string; model?: string; key?: string }, settings?: JudgeSettings): JudgeEndpoint {
  const url = flags.url ?? Deno.env.get("KLEINSCOPE_JUDGE_URL") ?? settings?.url;
  const model = flags.model ?? Deno.env.get("KLEINSCOPE_JUDGE_MODEL") ?? settings?.model;
  if (!url) throw new Error("no judge URL: pass --url, set KLEINSCOPE_JUDGE_URL, or give judge.url in the experiment");
  if (!model) throw new Error("no judge model: pass --model, set KLEINSCOPE_JUDGE_MODEL, or give judge.model in the experiment");
  const key = flags.key ?? Deno.env.get("KLEINSCOPE_JUDGE_KEY") ?? undefined;
  return { url: chatCompletionsUrl(url), model, key: key || undefined };
}

/** "yes", "no", or null. Reads the first word (markdown and reasoning blocks removed); a short reply that holds only
 * one of the two words also counts. */
export function parseVerdict(text: string): "yes" | "no" | null {
  const cleaned = text.replace(/<think>[\s\S]*?<\/think>/gi, " ").replace(/[*_`#>"'“”]/g, " ").toLowerCase().trim();
  const words = cleaned.split(/[^a-z]+/).filter(Boolean);
  if (!words.length) return null;
  if (words[0] === "yes" || words[0] === "no") return words[0];
  if (words.length <= 12) {
    const yes = words.includes("yes"), no = words.includes("no");
    if (yes !== no) return yes ? "yes" : "no";
  }
  return null;
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
  path: string;
  bytes: Uint8Array;
}

export interface JudgeQuestion {
  template: QuestionTemplate;
  text: string;
  images: JudgeImage[];
}

export interface JudgeAnswer {
  answer: "yes" | "no" | null;
  status: "ok" | "unparseable" | "failed";
  raw: string;
  error?: string;
  cached: boolean;
  key: string;
  attempts: number;
}

class RetryableError extends Error {
  constructor(message: string, readonly retryAfterMs?: number) {
    super(message);
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Asks questions, with retries and an on-disk cache. */
export class JudgeClient {
  /** Requests sent (not counting cache hits). */
  requests = 0;

  constructor(readonly endpoint: JudgeEndpoint, readonly cacheDir: string, readonly options: { retryUnparseable?: boolean } = {}) {}

  async cacheKey(q: JudgeQuestion): Promise<string> {
    const hashes = await Promise.all(q.images.map((i) => sha256Hex(i.bytes)));
    return sha256Hex(
      canonicalJson({ template: q.template.id, version: q.template.version, model: this.endpoint.model, images: hashes, question: q.text }),
    );
  }

  async ask(q: JudgeQuestion): Promise<JudgeAnswer> {
    const key = await this.cacheKey(q);
    const cachePath = join(this.cacheDir, key.slice(0, 2), `${key}.json`);
    if (await pathExists(cachePath)) {
      const hit = await readJsonFile<{ answer: "yes" | "no" | null; raw: string }>(cachePath);
      if (hit.answer !== null || !this.options.retryUnparseable) {
        return { answer: hit.answer, status: hit.answer ? "ok" : "unparseable", raw: hit.raw, cached: true, key, attempts: 0 };
      }
    }
    const body = JSON.stringify({
      model: this.endpoint.model,
      temperature: 0,
      ...this.endpoint.extraBody,
      messages: [
        { role: "system", content: JUDGE_SYSTEM_PROMPT },
        {
          role: "user",
          content: [
            { type: "text", text: q.text },
            ...q.images.map((i) => ({
              type: "image_url",
              image_url: { url: `data:${mimeOf(i.bytes, i.path)};base64,${base64(i.bytes)}` },
            })),
          ],
        },
      ],
    });
    const maxAttempts = this.endpoint.maxAttempts ?? 5;
    let lastError = "";
    for (let attempt = 1; attempt <= maxAttempts; attempt++) {
      try {
        const raw = await this.post(body);
        const answer = parseVerdict(raw);
        await writeJsonAtomic(cachePath, {
          answer,
          raw,
          template: q.template.id,
          version: q.template.version,
          model: this.endpoint.model,
          question: q.text,
          at: new Date().toISOString(),
        });
        return { answer, status: answer ? "ok" : "unparseable", raw, cached: false, key, attempts: attempt };
      } catch (e) {
        lastError = (e as Error).message;
        if (!(e instanceof RetryableError) || attempt === maxAttempts) break;
        const backoff = Math.min((this.endpoint.backoffMs ?? 1000) * 2 ** (attempt - 1), this.endpoint.maxBackoffMs ?? 60_000);
        await sleep(Math.max(backoff, Math.min(e.retryAfterMs ?? 0, this.endpoint.maxBackoffMs ?? 60_000)));
      }
    }
    return { answer: null, status: "failed", raw: "", error: lastError, cached: false, key, attempts: maxAttempts };
  }

  private async post(body: string): Promise<string> {
    this.requests++;
    const headers: Record<string, string> = { "content-type": "application/json" };
    if (this.endpoint.key) headers.authorization = `Bearer ${this.endpoint.key}`;
    let res: Response;
    try {
      res = await fetch(this.endpoint.url, {
        method: "POST",
        headers,
        body,
        signal: AbortSignal.timeout(this.endpoint.timeoutMs ?? 120_000),
      });
    } catch (e) {
      const name = (e as Error).name;
      throw new RetryableError(name === "TimeoutError" ? "request timed out" : `network error: ${(e as Error).message}`);
    }
    const text = await res.text();
    if (res.status === 408 || res.status === 429 || res.status >= 500) {
      const ra = Number(res.headers.get("retry-after"));
      throw new RetryableError(`HTTP ${res.status}: ${text.slice(0, 200)}`, Number.isFinite(ra) && ra >= 0 ? ra * 1000 : undefined);
    }
    if (!res.ok) throw new Error(`HTTP ${res.status}: ${text.slice(0, 300)}`);
    let json: { choices?: { message?: { content?: unknown } }[] };
    try {
      json = JSON.parse(text);
    } catch {
      throw new RetryableError(`the reply is not JSON: ${text.slice(0, 200)}`);
    }
    const content = json.choices?.[0]?.message?.content;
    if (typeof content === "string") return content;
    if (Array.isArray(content)) return content.map((p) => (p && typeof p === "object" && "text" in p ? String(p.text) : "")).join("");
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
  question: string;
  /** Image role → path relative to the run folder (or absolute outside it). */
  images: Partial<Record<ImageRole, string>>;
  judge: string;
  model: string;
  answer: "yes" | "no" | null;
  status: "ok" | "unparseable" | "failed";
  pass: boolean | null;
  raw: string;
  error?: string;
  cached: boolean;
}

export interface JudgeRunOptions {
  endpoint: JudgeEndpoint;
  /** Names the judgments file (default: the model, made file-safe). */
  name?: string;
  /** Default <run>/judge-cache. */
  cacheDir?: string;
  concurrency?: number;
  retryUnparseable?: boolean;
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

/** The image of a role for one folder, or undefined when the folder has none. */
function imagePath(run: RunFolder, task: Task, condition: string, role: ImageRole, baseline: string, spec: RunSpec): string | undefined {
  const dir = conditionDir(run.dir, task.task_id, condition);
  switch (role) {
    case "reference":
      return taskReferences(run.dir, task)[0];
    case "output":
      return join(dir, "image.png");
    case "baseline":
      return run.complete.get(task.task_id)?.has(baseline) ? join(conditionDir(run.dir, task.task_id, baseline), "image.png") : undefined;
    case "source_output":
      return join(dir, "source.png");
    case "source_reference":
      return (spec.interventions?.find((i) => i.type === "patch") as PatchSpecJson | undefined)?.source.refs?.[0];
  }
}

/** The questions of one folder: the experiment's rules, else the family's default. */
function templatesFor(run: RunFolder, task: Task, condition: string): QuestionTemplate[] {
  const rules = run.experiment.judge?.questions;
  const cond = run.experiment.conditions.find((c) => c.name === condition);
  if (!rules) {
    const t = defaultTemplate(task.family, cond?.patch !== undefined);
    return t ? [t] : [];
  }
  return rules
    .filter((r) => (!r.conditions || r.conditions.includes(condition)) && (!r.families || r.families.includes(task.family)))
    .map((r) => findTemplate(r.template, "experiment.judge"));
}

/** Ask every question of every complete folder; write <run>/judgments/<name>.jsonl. */
export async function judgeRun(run: RunFolder, options: JudgeRunOptions): Promise<JudgeRunSummary> {
  const log = options.log ?? ((l: string) => console.error(l));
  const name = options.name ?? options.endpoint.model;
  const client = new JudgeClient(options.endpoint, options.cacheDir ?? join(run.dir, "judge-cache"), {
    retryUnparseable: options.retryUnparseable,
  });
  const baseline = options.baseline ?? "baseline";
  const rel = (p: string) => {
    const r = relative(run.dir, p);
    return r.startsWith("..") ? p : r;
  };
  interface Item {
    base: Omit<Judgment, "answer" | "status" | "pass" | "raw" | "cached" | "error">;
    template: QuestionTemplate;
    paths: string[];
  }
  const items: Item[] = [];
  const skipped = new Map<string, number>();
  for (const task of run.tasks) {
    for (const condition of run.conditions) {
      if (!run.complete.get(task.task_id)?.has(condition)) continue;
      const spec = await readJsonFile<RunSpec>(join(conditionDir(run.dir, task.task_id, condition), "spec.json"));
      for (const template of templatesFor(run, task, condition)) {
        const paths = template.images.map((role) => imagePath(run, task, condition, role, baseline, spec));
        if (paths.some((p) => p === undefined)) {
          const why = `${template.id} on ${condition}: no ${template.images.filter((_, i) => !paths[i]).join(", ")} image`;
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
            question: renderQuestion(template, task),
            images: Object.fromEntries(template.images.map((role, i) => [role, rel(paths[i]!)])),
            judge: name,
            model: options.endpoint.model,
          },
        });
      }
    }
  }
  for (const [why, n] of skipped) log(`warning: skipped ${n} question(s): ${why}`);
  log(`judge ${name} (${options.endpoint.model} at ${options.endpoint.url}): ${items.length} question(s)`);
  const judgments: Judgment[] = new Array(items.length);
  let next = 0, done = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      const item = items[i];
      let answer: JudgeAnswer;
      try {
        const images = await Promise.all(item.paths.map(async (path) => ({ path, bytes: await Deno.readFile(path) })));
        answer = await client.ask({ template: item.template, text: item.base.question, images });
      } catch (e) {
        answer = { answer: null, status: "failed", raw: "", error: (e as Error).message, cached: false, key: "", attempts: 0 };
      }
      judgments[i] = {
        ...item.base,
        answer: answer.answer,
        status: answer.status,
        pass: answer.answer === null ? null : (answer.answer === "yes") !== item.template.invert,
        raw: answer.raw,
        ...(answer.error ? { error: answer.error } : {}),
        cached: answer.cached,
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
      `(${summary.requests} request(s)), ${summary.unparseable} unparseable, ${summary.failed} failed`,
  );
  return summary;
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
