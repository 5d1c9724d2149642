// The VLM judge against a local imitation of the chat-completions API on 127.0.0.1: yes/no parsing, retries with
// backoff on 500/429/timeouts, no retry on 401, garbage kept as unparseable, the on-disk cache, and a whole run judged
// (twice — the second time from the cache — and by a second judge for agreement).

import assert from "node:assert/strict";
import { join } from "node:path";
import {
  chatCompletionsUrl,
  JudgeClient,
  type JudgeEndpoint,
  judgeRun,
  parseVerdict,
  readJudgments,
  resolveEndpoint,
} from "../../experiments/judge.ts";
import { QUESTION_TEMPLATES, type QuestionTemplate } from "../../experiments/judge_templates.ts";
import { readRunFolder } from "../../experiments/run_folder.ts";
import { writeColourTasks } from "../../experiments/generators.ts";
import { cellStats, judgeAgreement } from "../../experiments/stats.ts";
import { makeFakeRun } from "./fake_run.ts";
import { startStub, STUB_KEY } from "./stub_judge.ts";

const KEY = STUB_KEY;

Deno.test("judge: verdict parsing and URLs", () => {
  for (
    const [text, want] of [
      ["Yes", "yes"],
      ["yes.", "yes"],
      ["**No**", "no"],
      ["No, the colour is different.", "no"],
      ["<think>the image is red, so yes... no wait</think>\nYes", "yes"],
      ["Answer: yes", "yes"],
      ["I think the answer is no.", "no"],
      ["Yes and no.", "yes"],
      ["Maybe", null],
      ["", null],
      ["It could be yes or no depending on lighting.", null],
    ] as const
  ) assert.equal(parseVerdict(text), want, JSON.stringify(text));
  assert.equal(chatCompletionsUrl("http://h:1/v1"), "http://h:1/v1/chat/completions");
  assert.equal(chatCompletionsUrl("http://h:1/v1/"), "http://h:1/v1/chat/completions");
  assert.equal(chatCompletionsUrl("https://api.x.org/v1/chat/completions"), "https://api.x.org/v1/chat/completions");
  assert.throws(() => chatCompletionsUrl("nope"), /not a URL/);
  assert.throws(() => chatCompletionsUrl("ftp://x/v1"), /http or https/);
});

Deno.test("judge: endpoint from flags, else the environment, else the experiment (never the key)", () => {
  const saved = ["URL", "MODEL", "KEY"].map((k) => Deno.env.get(`KLEINSCOPE_JUDGE_${k}`));
  try {
    for (const k of ["URL", "MODEL", "KEY"]) Deno.env.delete(`KLEINSCOPE_JUDGE_${k}`);
    assert.throws(() => resolveEndpoint({}), /no judge URL/);
    assert.deepEqual(resolveEndpoint({}, { url: "http://e/v1", model: "m" }), {
      url: "http://e/v1/chat/completions",
      model: "m",
      key: undefined,
    });
    Deno.env.set("KLEINSCOPE_JUDGE_URL", "http://env/v1");
    Deno.env.set("KLEINSCOPE_JUDGE_MODEL", "env-model");
    Deno.env.set("KLEINSCOPE_JUDGE_KEY", "env-key");
    assert.deepEqual(resolveEndpoint({}, { url: "http://e/v1", model: "m" }), {
      url: "http://env/v1/chat/completions",
      model: "env-model",
      key: "env-key",
    });
    assert.deepEqual(resolveEndpoint({ url: "http://flag/v1", model: "f", key: "k" }), {
      url: "http://flag/v1/chat/completions",
      model: "f",
      key: "k",
    });
  } finally {
    ["URL", "MODEL", "KEY"].forEach((k, i) =>
      saved[i] === undefined ? Deno.env.delete(`KLEINSCOPE_JUDGE_${k}`) : Deno.env.set(`KLEINSCOPE_JUDGE_${k}`, saved[i]!)
    );
  }
});

Deno.test("judge client: retries on 500, 429 and timeouts; 401 fails at once; garbage is unparseable; answers cached", async () => {
  const stub = startStub();
  const cache = await Deno.makeTempDir({ prefix: "ks-judge-cache-" });
  const png = await Deno.readFile(new URL("../fixtures/klein-tiny/images/ref0_80x64.png", import.meta.url));
  const endpoint: JudgeEndpoint = {
    url: chatCompletionsUrl(stub.url),
    model: "stub-a",
    key: KEY,
    backoffMs: 5,
    maxAttempts: 3,
    timeoutMs: 150,
  };
  const client = new JudgeClient(endpoint, cache);
  const template: QuestionTemplate = { ...QUESTION_TEMPLATES["color.reference_colour"] };
  const ask = (text: string, c = client) =>
    c.ask({ template, text, images: [{ path: "ref0.png", bytes: png }, { path: "ref0.png", bytes: png }] });
  try {
    const yes = await ask("plain #yes");
    assert.deepEqual([yes.answer, yes.status, yes.attempts, yes.cached], ["yes", "ok", 1, false]);
    const body = stub.bodies.at(-1) as { model: string; temperature: number; messages: { role: string; content: unknown }[] };
    assert.equal(body.model, "stub-a");
    assert.equal(body.temperature, 0);
    assert.equal(body.messages[0].role, "system");
    const parts = body.messages[1].content as { type: string; image_url?: { url: string } }[];
    assert.deepEqual(parts.map((p) => p.type), ["text", "image_url", "image_url"]);
    assert.ok(parts[1].image_url!.url.startsWith("data:image/png;base64,iVBORw0KGgo"));

    const r500 = await ask("flaky #500");
    assert.deepEqual([r500.answer, r500.status, r500.attempts], ["no", "ok", 2]);
    const r429 = await ask("busy #429 #yes");
    assert.deepEqual([r429.answer, r429.attempts], ["yes", 2]);
    const slow = await ask("sleepy #slow #yes");
    assert.deepEqual([slow.answer, slow.attempts], ["yes", 2]);
    const parts2 = await ask("array content #parts");
    assert.equal(parts2.answer, "no");
    const garbage = await ask("hmm #garbage");
    assert.deepEqual([garbage.answer, garbage.status, garbage.raw], [null, "unparseable", "It is hard to say from these pictures."]);
    const down = await ask("server #always500");
    assert.equal(down.status, "failed");
    assert.equal(down.attempts, 3);
    assert.match(down.error!, /HTTP 503/);

    const badKey = new JudgeClient({ ...endpoint, key: "wrong" }, cache);
    const before = stub.requests;
    const denied = await ask("denied #yes", badKey);
    assert.equal(denied.status, "failed");
    assert.match(denied.error!, /HTTP 401/);
    assert.equal(stub.requests - before, 1, "a 401 is not retried");

    // Re-asking: answered questions (garbage included) come from the cache; the failed one is asked again.
    const requests = stub.requests;
    for (const t of ["plain #yes", "flaky #500", "hmm #garbage"]) assert.equal((await ask(t)).cached, true);
    assert.equal(stub.requests, requests);
    assert.equal((await ask("server #always500")).cached, false);
    assert.equal(stub.requests, requests + 3);
    // The key covers model, template version, question and image bytes.
    const other = new JudgeClient({ ...endpoint, model: "stub-b" }, cache);
    assert.equal((await ask("plain #yes", other)).cached, false);
    const v2 = await client.ask({
      template: { ...template, version: 2 },
      text: "plain #yes",
      images: [{ path: "a", bytes: png }, { path: "b", bytes: png }],
    });
    assert.equal(v2.cached, false);
    // --retry-unparseable asks garbage again.
    assert.equal((await ask("hmm #garbage", new JudgeClient(endpoint, cache, { retryUnparseable: true }))).cached, false);
  } finally {
    await stub.close();
    await Deno.remove(cache, { recursive: true });
  }
});

Deno.test("judge a run: every complete folder, default questions by family, pass polarity, cache on re-run, two judges", async () => {
  const stub = startStub();
  const root = await Deno.makeTempDir({ prefix: "ks-judge-run-" });
  try {
    const set = await writeColourTasks({
      out: join(root, "colours"),
      colours: ["red", "blue"],
      objects: ["couch", "vase"],
      seeds: [0, 1],
      width: 64,
      height: 64,
      swatchSize: 64,
    });
    const run = join(root, "run");
    await makeFakeRun({
      dir: run,
      tasks: set.tasks,
      conditions: [{ name: "baseline" }, { name: "ko_ref_text" }, {
        name: "patch_padding",
        patch: { block: "double.1", mode: "padding_only" },
      }],
      include: (t, c) => !(t.task_id === "color_blue_vase_s1" && c === "ko_ref_text"),
      // A different image in every folder, so every question is a different request.
      colour: (t, c) => {
        const i = set.tasks.indexOf(t) * 3 + ["baseline", "ko_ref_text", "patch_padding"].indexOf(c);
        return [(i * 37) % 256, (i * 91) % 256, (i * 53) % 256];
      },
    });
    const folder = await readRunFolder(run);
    const endpoint = { ...resolveEndpoint({ url: stub.url, model: "stub-a", key: KEY }), backoffMs: 5 };
    const logs: string[] = [];
    const first = await judgeRun(folder, { endpoint, log: (l) => logs.push(l), concurrency: 3 });
    assert.equal(first.judgments.length, 8 * 3 - 1);
    assert.equal(first.failed, 0);
    assert.ok(first.unparseable > 0 && first.unparseable < first.judgments.length / 2, `unparseable ${first.unparseable}`);
    assert.ok(first.requests > first.judgments.length, "some first answers were 500s, retried");
    for (const j of first.judgments) {
      const t = j.condition === "patch_padding" ? "color.source_colour" : "color.reference_colour";
      assert.equal(j.template, t);
      assert.equal(j.pass, j.answer === null ? null : (j.answer === "yes") !== QUESTION_TEMPLATES[t].invert);
      if (j.condition === "patch_padding") {
        // The patch source's swatch is the other colour.
        const own = j.task_id.includes("red") ? "red" : "blue";
        assert.ok(!j.images.source_reference!.endsWith(`${own}.png`), JSON.stringify(j.images));
        assert.equal(j.images.output, `tasks/${j.task_id}/patch_padding/image.png`);
      } else assert.ok(j.images.reference!.endsWith(".png"));
      assert.ok(j.question.includes(j.condition === "patch_padding" ? "swatch" : `"draw a `));
    }
    const stats = cellStats(first.judgments);
    const unparseable = first.judgments.filter((j) => j.status === "unparseable").length;
    assert.equal(stats.reduce((a, c) => a + c.n + c.excluded, 0), first.judgments.length);
    assert.equal(stats.reduce((a, c) => a + c.excluded, 0), unparseable);

    // Again: nothing is asked twice.
    const before = stub.requests;
    const again = await judgeRun(folder, { endpoint, log: () => {} });
    assert.equal(stub.requests, before);
    assert.equal(again.cached, again.judgments.length);
    assert.deepEqual(again.judgments.map((j) => j.answer), first.judgments.map((j) => j.answer));

    // A second judge, and agreement between the two.
    await judgeRun(folder, { endpoint: { ...endpoint, model: "stub-b" }, name: "second judge", log: () => {} });
    const all = await readJudgments(run);
    assert.deepEqual([...all.keys()].sort(), ["second judge", "stub-a"]);
    const agreement = judgeAgreement(all.get("stub-a")!, all.get("second judge")!);
    assert.ok(agreement.n >= 10 && agreement.agreement < 1 && agreement.agreement > 0.5, JSON.stringify(agreement));
    assert.ok(Number.isFinite(agreement.kappa));
  } finally {
    await stub.close();
    await Deno.remove(root, { recursive: true });
  }
});
