// Lock files of a run folder: one process at a time works on a given part of an experiment's output. A runner of
// the whole task set holds <output>/locks/all.lock, a runner of shard k of n holds shard-k-of-n.lock (shards of one
// split work side by side in one shared folder), a merge holds all.lock of its destination. A lock whose part
// overlaps another live lock's is refused.
//
// A lock file is created whole (written under a temporary name, then hard-linked to its name, which fails when the
// name exists) and holds {pid, host, started, nonce}. A lock left by a process that is gone (same host, pid no longer
// running, or running since another time) is stale: it is taken over with a warning. A lock from another host cannot
// be checked: it is refused, and the message says how to remove it by hand.

import { dirname, join } from "node:path";
import { printable } from "../runtime/printable.ts";
import { tempPathFor, writeFileAtomic } from "../studies/output_folder.ts";
import { locksDir } from "./run_folder.ts";

export interface LockHolder {
  pid: number;
  host: string;
  started: string;
  /** The process's start time as the kernel counts it (Linux), to tell a reused pid from the holder. */
  processStart?: string;
  nonce: string;
  /** What holds it ("experiment run", "merge"). */
  purpose: string;
}

/** The part of a run folder a lock covers. */
export type LockScope = { kind: "all" } | { kind: "shard"; index: number; count: number };

export class RunLockError extends Error {}

function scopeName(s: LockScope): string {
  return s.kind === "all" ? "all" : `shard-${s.index}-of-${s.count}`;
}

function parseScope(name: string): LockScope | undefined {
  if (name === "all.lock") return { kind: "all" };
  const m = /^shard-(\d+)-of-(\d+)\.lock$/.exec(name);
  return m ? { kind: "shard", index: Number(m[1]), count: Number(m[2]) } : undefined;
}

/** Two scopes may touch the same task folders. */
function overlaps(a: LockScope, b: LockScope): boolean {
  if (a.kind === "all" || b.kind === "all") return true;
  return a.count !== b.count || a.index === b.index;
}

function hostname(): string {
  try {
    return Deno.hostname();
  } catch {
    return "unknown-host";
  }
}

/** Field 22 of /proc/<pid>/stat: when the process started, in clock ticks since boot (Linux only). */
function processStart(pid: number | "self"): string | undefined {
  try {
    const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
    return stat.slice(stat.lastIndexOf(")") + 2).split(" ")[19];
  } catch {
    return undefined;
  }
}

/** Whether the holder of a lock is still running: "alive", "gone", or "unknown" (another host, or no /proc). */
export function holderState(h: LockHolder): "alive" | "gone" | "unknown" {
  if (h.host !== hostname()) return "unknown";
  if (h.pid === Deno.pid && h.processStart === processStart("self")) return "alive";
  let hasProc = false;
  try {
    Deno.statSync("/proc/self/stat");
    hasProc = true;
  } catch { /* not Linux */ }
  if (!hasProc) {
    try {
      const r = new Deno.Command("kill", { args: ["-0", String(h.pid)], stdout: "null", stderr: "null" }).outputSync();
      return r.success ? "alive" : "gone";
    } catch {
      return "unknown";
    }
  }
  const start = processStart(h.pid);
  if (start === undefined) return "gone";
  return h.processStart === undefined || h.processStart === start ? "alive" : "gone";
}

export function describeHolder(h: LockHolder): string {
  return `pid ${h.pid} on host ${printable(h.host)}, started ${printable(h.started)}${h.purpose ? ` (${printable(h.purpose)})` : ""}`;
}

async function readHolder(path: string): Promise<LockHolder | "unreadable" | null> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null;
    return "unreadable";
  }
  try {
    const h = JSON.parse(text) as LockHolder;
    return Number.isSafeInteger(h.pid) && typeof h.host === "string" && typeof h.nonce === "string" ? h : "unreadable";
  } catch {
    return "unreadable";
  }
}

/** Every lock held (by this process) and not yet released: released on a hard exit. */
const held = new Set<RunLock>();

export class RunLock {
  constructor(readonly path: string, readonly holder: LockHolder) {}

  /** Remove the lock file if it is still this one's. */
  async release(): Promise<void> {
    held.delete(this);
    const h = await readHolder(this.path);
    if (h && h !== "unreadable" && h.nonce === this.holder.nonce) await Deno.remove(this.path).catch(() => {});
    await Deno.remove(dirname(this.path)).catch(() => {}); // the locks folder, when no other lock is in it
  }

  releaseSync(): void {
    held.delete(this);
    try {
      const h = JSON.parse(Deno.readTextFileSync(this.path)) as LockHolder;
      if (h.nonce === this.holder.nonce) Deno.removeSync(this.path);
    } catch { /* gone already */ }
  }
}

/** Release every lock this process holds (before Deno.exit). */
export function releaseHeldLocksSync(): void {
  for (const lock of [...held]) lock.releaseSync();
}

function inUse(path: string, h: LockHolder | "unreadable", out: string): RunLockError {
  if (h === "unreadable") {
    return new RunLockError(
      `run folder ${printable(out)} is locked: ${printable(path)} is unreadable; remove it if no run is working there`,
    );
  }
  const remote = holderState(h) === "unknown" ? "; if that process is gone, remove the lock file" : "";
  return new RunLockError(
    `run folder ${printable(out)} is in use: lock ${printable(path)} is held by ${describeHolder(h)}; ` +
      `wait for it to finish${remote}`,
  );
}

/** Take the lock of `scope` in run folder `out`, or throw a RunLockError naming the lock file and its holder. */
export async function acquireRunLock(
  out: string,
  scope: LockScope,
  purpose: string,
  warn: (line: string) => void,
): Promise<RunLock> {
  const dir = locksDir(out);
  const path = join(dir, `${scopeName(scope)}.lock`);
  const holder: LockHolder = {
    pid: Deno.pid,
    host: hostname(),
    started: new Date().toISOString(),
    processStart: processStart("self"),
    nonce: crypto.randomUUID(),
    purpose,
  };
  const body = JSON.stringify(holder, null, 1) + "\n";
  let tookOver: LockHolder | undefined;
  for (let attempt = 0;; attempt++) {
    // The lock appears whole: written under a temporary name, then linked to its name (which fails if it exists).
    const tmp = tempPathFor(path);
    await writeFileAtomic(tmp, body); // (creates the locks folder)
    try {
      await Deno.link(tmp, path);
      break;
    } catch (e) {
      if (!(e instanceof Deno.errors.AlreadyExists)) throw new Error(`cannot create lock ${printable(path)}: ${(e as Error).message}`);
    } finally {
      await Deno.remove(tmp).catch(() => {});
    }
    const current = await readHolder(path);
    if (current === null) continue; // released meanwhile
    if (current === "unreadable" || holderState(current) !== "gone" || attempt >= 3) throw inUse(path, current, out);
    // Stale: move it aside, and make sure what was moved is the lock judged stale (another process may have taken
    // it over meanwhile; then it goes back).
    const aside = `${path}.stale-${Deno.pid}-${crypto.randomUUID().slice(0, 8)}`;
    try {
      await Deno.rename(path, aside);
    } catch {
      continue;
    }
    const moved = await readHolder(aside);
    if (moved && moved !== "unreadable" && moved.nonce !== current.nonce) {
      await Deno.link(aside, path).catch(() => {});
      await Deno.remove(aside).catch(() => {});
      continue;
    }
    await Deno.remove(aside).catch(() => {});
    tookOver = current;
  }
  if (tookOver) warn(`warning: took over the stale lock ${printable(path)} of ${describeHolder(tookOver)}: that process is gone`);
  const lock = new RunLock(path, holder);
  held.add(lock);
  // Another live lock on an overlapping part (a whole run beside a shard, shards of different splits) refuses too.
  for (const name of await listLockNames(dir)) {
    const other = parseScope(name);
    if (!other || join(dir, name) === path || !overlaps(scope, other)) continue;
    const h = await readHolder(join(dir, name));
    if (h === null || (h !== "unreadable" && holderState(h) === "gone")) continue;
    await lock.release();
    throw inUse(join(dir, name), h, out);
  }
  return lock;
}

async function listLockNames(dir: string): Promise<string[]> {
  const names: string[] = [];
  for await (const e of Deno.readDir(dir)) if (e.isFile && e.name.endsWith(".lock")) names.push(e.name);
  return names.sort();
}
