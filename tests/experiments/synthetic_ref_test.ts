// Tasks in the published layout whose reference is synthetic (ref_seed + source_caption), on the tiny checkpoint:
// each reference is generated once into <output>/refs/, used by the task and, as a patch source, by its partner —
// also when the partner belongs to the other shard — and merged shards agree byte for byte.

import assert from "node:assert/strict";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { loadImage } from "../../model/images.ts";
import { listNames } from "../../experiments/files.ts";
import { shardOfTask } from "../../experiments/runner.ts";

const CLI = fileURLToPath(new URL("../../cli.ts", import.meta.url));
const MODEL = fileURLToPath(new URL("../fixtures/klein-tiny/model", import.meta.url));

async function cli(...args: string[]) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", CLI, ...args],
    env: { XDG_RUNTIME_DIR: "/tmp" },
    stdout: "piped",
    stderr: "piped",
  })
    .output();
  return { code: out.code, stdout: new TextDecoder().decode(out.stdout), stderr: new TextDecoder().decode(out.stderr) };
}

Deno.test("synthetic references: generated once per output, used by the task and its patch partner, sharded and merged", async () => {
  const root = await Deno.makeTempDir({ prefix: "ks-synth-" });
  try {
    // Two ids that fall in different shards of 2, so each shard needs the other's reference as its patch source.
    const ids = ["syn_a", "syn_b", "syn_c", "syn_d"];
    const [first, second] = [ids.find((id) => shardOfTask(id, 2) === 1)!, ids.find((id) => shardOfTask(id, 2) === 2)!];
    const line = (id: string, caption: string, seed: number) =>
      JSON.stringify({
        task_id: id,
        edit_type: "customize",
        source: "manual",
        instruction: "draw a cat like this",
        ref_seed: seed,
        source_caption: caption,
        noise_seed: 0,
        width: 64,
        height: 64,
      });
    await Deno.writeTextFile(join(root, "tasks.jsonl"), [line(first, "a red ball", 5), line(second, "a blue cube", 6)].join("\n") + "\n");
    await Deno.writeTextFile(
      join(root, "exp.json"),
      JSON.stringify({
        model: MODEL,
        tasks: "tasks.jsonl",
        output: "run",
        steps: 1,
        maxSequenceLength: 64,
        conditions: [{ name: "baseline" }, { name: "patch", patch: { block: "double.0" } }],
      }),
    );
    for (const k of [1, 2]) {
      const r = await cli("experiment", join(root, "exp.json"), "--shard", `${k}/2`, "--output", join(root, `s${k}`));
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stderr, /generating the synthetic reference/);
      assert.deepEqual(await listNames(join(root, `s${k}`, "tasks")), [k === 1 ? first : second]);
      // Both references: its own, and its partner's for the patch source.
      assert.deepEqual(await listNames(join(root, `s${k}`, "refs")), [`${first}.png`, `${second}.png`].sort());
    }
    const own = join(root, "s1", "tasks", first);
    const spec = JSON.parse(await Deno.readTextFile(join(own, "patch", "spec.json")));
    assert.deepEqual(spec.refs, [join(root, "s1", "refs", `${first}.png`)]);
    assert.deepEqual(spec.interventions[0].source.refs, [join(root, "s1", "refs", `${second}.png`)]);
    assert.equal(spec.interventions[0].source.prompt, "draw a cat like this");
    const ref = await loadImage(join(root, "s1", "refs", `${first}.png`));
    assert.deepEqual([ref.width, ref.height], [64, 64]);
    // The same reference made by both shards, byte for byte: the merge accepts them.
    const m = await cli("experiment", "merge", join(root, "s1"), join(root, "s2"), "--into", join(root, "merged"));
    assert.equal(m.code, 0, m.stderr);
    assert.match(m.stderr, /coverage complete: 4 folder\(s\)/);
    assert.deepEqual(await listNames(join(root, "merged", "refs")), [`${first}.png`, `${second}.png`].sort());
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});
