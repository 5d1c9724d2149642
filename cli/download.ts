// `deno task download <repo-id> [--dir DIR] [--revision main] [--endpoint URL] [--connect-timeout S] [--idle-timeout S] [--retries N]`

import { parseArgs } from "node:util";
import { join } from "node:path";
import { printable } from "../runtime/printable.ts";
import { DEFAULT_ENDPOINT, downloadPipeline, type FileProgress, NETWORK_DEFAULTS, resolveEndpoint } from "../model/download.ts";
import {
  displayPath,
  formatBytes,
  formatMs,
  integerOption,
  numberOption,
  parseOrUsageError,
  UsageError,
  withUsageErrors,
} from "./common.ts";

const D = NETWORK_DEFAULTS;
const HELP = `usage: deno task download <repo-id> [--dir DIR] [--revision main] [--endpoint URL]
                          [--connect-timeout S] [--idle-timeout S] [--retries N]

Fetches the files a FLUX.2 klein pipeline needs from a Hugging Face repository laid out for diffusers:
model_index.json, scheduler/, tokenizer/, text_encoder/ (config, shard index, shards), transformer/ (config,
shard index, shards) and vae/. Other files (READMEs, sample images, single-file checkpoints) are left out.

Each file is downloaded to FILE.partial and renamed into place when its size and hash (SHA-256 for LFS files, the
git blob id for others) match the repository listing. Complete files are hashed again and skipped, and .partial
files are resumed (HTTP Range), so after an interruption run the same command again.

  <repo-id>              owner/name, e.g. black-forest-labs/FLUX.2-klein-4B
  --dir DIR              destination folder (default models/<name>)
  --revision REV         branch, tag or commit (default main)
  --endpoint URL         server to use (default $HF_ENDPOINT, else ${DEFAULT_ENDPOINT})
  --connect-timeout S    seconds to wait for an answer's headers, connecting included (default ${D.connectTimeoutMs / 1000})
  --idle-timeout S       seconds without a byte before a transfer is abandoned (default ${D.idleTimeoutMs / 1000})
  --retries N            further attempts after a connection error, timeout, HTTP 429 or 5xx, waiting
                         ${D.retryDelayMs / 1000} s, 2 s, 4 s, … between them (default ${D.retries}); other HTTP errors fail at once
  -h, --help             this text

Redirects (at most ${D.maxRedirects} per request) and listing pages (at most ${D.maxListingPages}, none twice) are followed; the
token is sent only to the endpoint's own origin (scheme, host and port), never to another.

Gated repositories (the FLUX.2 klein ones are) need their license accepted on the website once, and a token:
create one at ${DEFAULT_ENDPOINT}/settings/tokens and set HF_TOKEN=hf_… in the environment.

example: HF_TOKEN=hf_… deno task download black-forest-labs/FLUX.2-klein-4B --dir models/klein-4b`;

export async function main(args: string[]): Promise<number> {
  return await withUsageErrors("download", async () => {
    const { values, positionals } = parseOrUsageError(() =>
      parseArgs({
        args,
        strict: true,
        allowPositionals: true,
        options: {
          dir: { type: "string" },
          revision: { type: "string" },
          endpoint: { type: "string" },
          "connect-timeout": { type: "string" },
          "idle-timeout": { type: "string" },
          retries: { type: "string" },
          help: { type: "boolean", short: "h" },
        },
      })
    );
    if (values.help) {
      console.log(HELP);
      return 0;
    }
    if (positionals.length !== 1) {
      throw new UsageError(positionals.length ? `one repository id expected, got ${positionals.length}` : "the repository id is missing");
    }
    const repo = positionals[0];
    const dir = values.dir ?? join("models", repo.split("/").pop()!);
    const endpoint = resolveEndpoint(values.endpoint);
    const revision = values.revision ?? "main";
    const connectTimeoutMs = secondsOption("connect-timeout", values["connect-timeout"]);
    const idleTimeoutMs = secondsOption("idle-timeout", values["idle-timeout"]);
    const retries = integerOption("retries", values.retries, 0);
    const live = Deno.stdout.isTerminal();
    const encoder = new TextEncoder();
    let count = 0, width = 0, startedAt = 0;
    let current = "", received = 0;

    console.log(
      `${repo} (${printable(revision)}) from ${printable(endpoint)} → ${displayPath(dir)}${
        Deno.env.get("HF_TOKEN") ? " (with HF_TOKEN)" : ""
      }`,
    );
    const t0 = performance.now();
    const files = await downloadPipeline(repo, dir, {
      endpoint,
      revision,
      connectTimeoutMs,
      idleTimeoutMs,
      retries,
      onRetry: (r) => {
        if (live) Deno.stdout.writeSync(encoder.encode("\r\x1b[K"));
        console.log(`  attempt ${r.attempt} of ${r.attempts} failed, retrying in ${formatMs(r.delayMs)}: ${r.reason}`);
      },
      onListed: (files) => {
        count = files.length;
        width = String(count).length;
        console.log(`${count} files, ${formatBytes(files.reduce((a, f) => a + f.size, 0))}`);
      },
      onFileStart: (file, i) => {
        startedAt = performance.now();
        received = 0;
        current = `[${String(i + 1).padStart(width)}/${count}] ${printable(file.path)}  ${formatBytes(file.size)}`;
      },
      onProgress: (p: FileProgress) => {
        received = p.receivedBytes;
        if (!live) return;
        const line = `${current}  ${(100 * p.doneBytes / Math.max(1, p.totalBytes)).toFixed(0)}%  ${speed(p.receivedBytes, p.elapsedMs)}`;
        Deno.stdout.writeSync(encoder.encode(`\r${line}\x1b[K`));
      },
      onFileDone: (_file, _i, outcome) => {
        const ms = performance.now() - startedAt;
        const how = outcome === "present"
          ? "already complete"
          : `${outcome} in ${formatMs(ms)}${received > 0 ? `, ${speed(received, ms)}` : ""}`;
        if (live) Deno.stdout.writeSync(encoder.encode("\r\x1b[K"));
        console.log(`${current}  ${how}`);
      },
    });
    const total = files.reduce((a, f) => a + f.size, 0);
    console.log(`done: ${files.length} files, ${formatBytes(total)} in ${displayPath(dir)} (${formatMs(performance.now() - t0)})`);
    console.log(`next: deno task edit --model ${displayPath(dir)} --prompt "…" --ref photo.png`);
    return 0;
  });
}

/** A positive number of seconds given as an option value, in milliseconds. */
function secondsOption(name: string, value: string | undefined): number | undefined {
  const s = numberOption(name, value);
  if (s === undefined) return undefined;
  if (s <= 0) throw new UsageError(`--${name} ${value} must be a positive number of seconds`);
  return s * 1000;
}

function speed(bytes: number, ms: number): string {
  return ms > 0 ? `${formatBytes(Math.round(bytes / (ms / 1000)))}/s` : "";
}
