// The whole harness on the bundled tiny checkpoint, run as a user runs it (subprocesses of cli.ts): a solid-colour
// experiment (2 colours × 2 objects = 4 tasks, 64×64, 1 step, prompts padded to 64 text rows) under baseline, knockout ref->text on all
// blocks, the T2I lens and padding patching;
//   1. killed with SIGKILL in the middle of a run, leaving a partial folder, then resumed: nothing finished is redone;
//   2. run again as shards 1/2 and 2/2 into separate folders and merged: the same bytes as the unsharded run;
//   3. judged by a local imitation of a chat-completions API (garbage and 500s included), then again from the cache;
//   4. reported as HTML and rendered by headless Chromium (skipped with a message when chromium is absent).

import assert from "node:assert/strict";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { listNames, pathExists } from "../../experiments/files.ts";
import { readRunFolder } from "../../experiments/run_folder.ts";
import { shardOfTask } from "../../experiments/runner.ts";
import { readJudgments } from "../../experiments/judge.ts";
import { findChromium, screenshot } from "./chromium.ts";
import { startStub, STUB_KEY } from "./stub_judge.ts";

const CLI = fileURLToPath(new URL("../../cli.ts", import.meta.url));
const MODEL = fileURLToPath(new URL("../fixtures/klein-tiny/model", import.meta.url));
const CONDITIONS = ["baseline", "ko_ref_text", "lens_single0", "patch_padding"];
const ENV = { XDG_RUNTIME_DIR: "/tmp", KLEINSCOPE_DEBUG: "" };

interface Run {
  code: number;
  stdout: string;
  stderr: string;
  ms: number;
}

async function cli(args: string[], env: Record<string, string> = {}): Promise<Run> {
  const t0 = performance.now();
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", CLI, ...args],
    env: { ...ENV, ...env },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr), ms: performance.now() - t0 };
}

/** Complete condition folders (task/condition) and partial ones under <run>/tasks. */
async function scan(run: string): Promise<{ complete: string[]; partial: string[] }> {
  const complete: string[] = [], partial: string[] = [];
  for (const task of await listNames(join(run, "tasks"))) {
    for (const name of await listNames(join(run, "tasks", task))) {
      if (name.includes(".partial-")) partial.push(`${task}/${name}`);
      else if (
        (await pathExists(join(run, "tasks", task, name, "spec.json"))) && (await pathExists(join(run, "tasks", task, name, "image.png")))
      ) {
        complete.push(`${task}/${name}`);
      }
    }
  }
  return { complete: complete.sort(), partial };
}

async function sameFile(a: string, b: string): Promise<boolean> {
  const [x, y] = await Promise.all([Deno.readFile(a), Deno.readFile(b)]);
  return x.length === y.length && x.every((v, i) => v === y[i]);
}

Deno.test("experiment end to end on the tiny checkpoint: kill and resume, shards and merge, judge, report", async (t) => {
  const root = await Deno.makeTempDir({ prefix: "ks-e2e-" });
  const stub = startStub();
  const t0 = performance.now();
  try {
    const experiment = join(root, "experiment.json");
    const run = join(root, "run");
    let taskIds: string[] = [];

    await t.step("colour tasks and the experiment file", async () => {
      const r = await cli([
        "experiment",
        "colors",
        "--out",
        join(root, "colours"),
        "--colors",
        "red,blue",
        "--objects",
        "couch,vase",
        "--seeds",
        "0",
        "--size",
        "64",
        "--swatch",
        "64",
      ]);
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, /\(4 task\(s\)\) and 2 swatch\(es\)/, r.stderr);
      taskIds = (await Deno.readTextFile(join(root, "colours", "tasks.jsonl"))).trim().split("\n").map((l) => JSON.parse(l).task_id);
      await Deno.writeTextFile(
        experiment,
        JSON.stringify({
          model: MODEL,
          tasks: "colours/tasks.jsonl",
          output: "run",
          steps: 1,
          maxSequenceLength: 64,
          conditions: [
            { name: "baseline" },
            { name: "ko_ref_text", interventions: [{ type: "knockout", setting: "ref->text", blocks: "all" }] },
            { name: "lens_single0", interventions: [{ type: "lens", block: "single.0", mode: "diagonal" }] },
            { name: "patch_padding", patch: { block: "double.1", mode: "padding_only", pairing: "shift" } },
          ],
        }),
      );
    });
    const all = taskIds.flatMap((id) => CONDITIONS.map((c) => `${id}/${c}`)).sort();

    await t.step("killed in the middle of a run, then resumed without redoing finished folders", async () => {
      const child = new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", CLI, "experiment", experiment],
        env: ENV,
        stdout: "null",
        stderr: "null",
      }).spawn();
      let state = { complete: [] as string[], partial: [] as string[] };
      const deadline = performance.now() + 300_000;
      let exited = false;
      child.status.then(() => exited = true);
      while (!exited && performance.now() < deadline) {
        state = await scan(run);
        if (state.complete.length >= 3 && state.partial.length > 0) break;
        await new Promise((r) => setTimeout(r, 50));
      }
      assert.equal(exited, false, "the run ended before it could be killed");
      child.kill("SIGKILL");
      await child.status;
      const afterKill = await scan(run);
      assert.ok(afterKill.partial.length > 0, "a partial folder is left behind");
      assert.ok(afterKill.complete.length >= 3 && afterKill.complete.length < all.length, `${afterKill.complete.length} complete`);
      const mtimes = new Map<string, number>();
      for (const f of afterKill.complete) mtimes.set(f, (await Deno.stat(join(run, "tasks", f, "image.png"))).mtime!.getTime());

      const resumed = await cli(["experiment", experiment]);
      assert.equal(resumed.code, 0, resumed.stderr);
      assert.match(resumed.stderr, new RegExp(`${afterKill.complete.length} complete, ${all.length - afterKill.complete.length} to run`));
      assert.match(resumed.stderr, /ETA/);
      const done = await scan(run);
      assert.deepEqual(done.complete, all);
      assert.deepEqual(done.partial, [], "stale partial folders are removed");
      for (const [f, m] of mtimes) {
        assert.equal((await Deno.stat(join(run, "tasks", f, "image.png"))).mtime!.getTime(), m, `${f} was redone`);
      }
      const manifest = JSON.parse(await Deno.readTextFile(join(run, "manifest.json")));
      assert.equal(manifest.finished, true);
      assert.equal(manifest.counts.complete, all.length);
      assert.deepEqual(manifest.tasks, taskIds);
      // The experiment's text length reaches every run's spec.
      const spec = JSON.parse(await Deno.readTextFile(join(run, "tasks", all[0], "spec.json")));
      assert.equal(spec.maxSequenceLength, 64);
      // A third invocation finds everything complete and loads no model.
      const idle = await cli(["experiment", experiment]);
      assert.equal(idle.code, 0, idle.stderr);
      assert.match(idle.stdout, new RegExp(`0 run now, ${all.length} already complete`));
      assert.equal(/loading/.test(idle.stderr), false);
    });

    await t.step("shards 1/2 and 2/2 into separate folders, merged, equal the unsharded run byte for byte", async () => {
      for (const k of [1, 2]) {
        const out = join(root, `shard${k}`);
        const r = await cli(["experiment", experiment, "--shard", `${k}/2`, "--output", out]);
        assert.equal(r.code, 0, r.stderr);
        assert.ok(await pathExists(join(out, "shards", `shard-${k}-of-2.json`)));
        const own = taskIds.filter((id) => shardOfTask(id, 2) === k);
        assert.deepEqual(await listNames(join(out, "tasks")), [...own].sort(), `shard ${k} wrote only its own tasks`);
      }
      const merged = join(root, "merged");
      const m = await cli(["experiment", "merge", join(root, "shard1"), join(root, "shard2"), "--into", merged]);
      assert.equal(m.code, 0, m.stderr);
      assert.match(m.stderr, /coverage complete/);
      assert.deepEqual((await scan(merged)).complete, all);
      for (const f of all) {
        for (const file of ["image.png", "spec.json"]) {
          assert.ok(await sameFile(join(run, "tasks", f, file), join(merged, "tasks", f, file)), `${f}/${file} differs between the runs`);
        }
        if (f.endsWith("patch_padding") || f.endsWith("lens_single0")) {
          assert.ok(await sameFile(join(run, "tasks", f, "source.png"), join(merged, "tasks", f, "source.png")), `${f}/source.png`);
        }
      }
    });

    await t.step("judged by a local stub API, then again from the cache", async () => {
      const args = ["experiment", "judge", run, "--url", stub.url, "--model", "stub-vlm", "--concurrency", "4"];
      const r = await cli(args, { KLEINSCOPE_JUDGE_KEY: STUB_KEY });
      assert.equal(r.code, 0, r.stderr);
      const verdicts = (await readJudgments(run)).get("stub-vlm")!;
      // The baseline is the anchor and is not judged; the lens's question needs a t2i_clean condition, absent here.
      const judged = all.filter((f) => f.endsWith("/ko_ref_text") || f.endsWith("/patch_padding"));
      assert.equal(verdicts.length, judged.length);
      assert.ok(verdicts.every((v) => v.status !== "failed"), "500s were retried");
      assert.ok(
        verdicts.some((v) => v.status === "unparseable") && verdicts.some((v) => v.answer === "yes") &&
          verdicts.some((v) => v.answer === "no"),
      );
      assert.deepEqual(new Set(verdicts.filter((v) => v.condition === "patch_padding").map((v) => v.template)), new Set(["color.patch"]));
      const unparseable = verdicts.filter((v) => v.status === "unparseable").length;
      const requests = stub.requests;
      const again = await cli(args, { KLEINSCOPE_JUDGE_KEY: STUB_KEY });
      assert.equal(again.code, 0, again.stderr);
      // Answered questions come from the cache; unparseable ones are asked again (three answers each).
      assert.equal(stub.requests - requests, 3 * unparseable, "the second pass is answered from the cache");
      assert.match(again.stderr, new RegExp(`${judged.length - unparseable} from the cache`));
    });

    await t.step("report written and rendered by headless Chromium", async () => {
      const r = await cli(["report", run]);
      assert.equal(r.code, 0, r.stderr);
      const page = join(run, "report.html");
      const html = await Deno.readTextFile(page);
      assert.ok(html.includes("Judge stub-vlm"));
      assert.equal((html.match(/<div class="task"/g) ?? []).length, taskIds.length);
      const folder = await readRunFolder(run);
      assert.equal(folder.tasks.length, taskIds.length);
      const chromium = await findChromium();
      if (!chromium) {
        console.warn("SKIPPED rendering: chromium is not installed (apt-get install -y chromium)");
        return;
      }
      const png = join(root, "report.png");
      await screenshot(chromium, page, png);
      assert.ok((await Deno.stat(png)).size > 20_000);
      const keep = Deno.env.get("KLEINSCOPE_KEEP_SCREENSHOT");
      if (keep) await Deno.copyFile(png, keep);
    });
    console.log(`end to end: ${((performance.now() - t0) / 1000).toFixed(0)} s`);
  } finally {
    await stub.close();
    await Deno.remove(root, { recursive: true });
  }
});
