// The VLM judge against a local imitation of both APIs on 127.0.0.1: the study's JSON verdicts with their reasons,
// labelled image bundles, retries with backoff on 500/429/timeouts and on nonsense replies (bounded), no retry on
// 401, redirects refused, keys kept out of errors and caches, the on-disk cache, Anthropic's Messages API (headers,
// base64 image blocks, the cached system prompt), the offline stub judge, template files refused line by line, and
// whole runs judged (twice — the second time from the cache — and by a second judge for agreement).

import assert from "node:assert/strict";
import { join } from "node:path";
import {
  ANTHROPIC_DEFAULT_MODEL,
  chatCompletionsUrl,
  JudgeClient,
  type JudgeEndpoint,
  type JudgeQuestion,
  judgeRun,
  messagesUrl,
  parseVerdict,
  readJudgments,
  resolveEndpoint,
} from "../../experiments/judge.ts";
import { BUILTIN_TEMPLATES, isPass, parseTemplateLines, type QuestionTemplate } from "../../experiments/judge_templates.ts";
import { parseExperiment } from "../../experiments/experiment.ts";
import { readRunFolder } from "../../experiments/run_folder.ts";
import { writeColourTasks } from "../../experiments/generators.ts";
import { cellStats, judgeAgreement } from "../../experiments/stats.ts";
import { makeFakeRun } from "./fake_run.ts";
import { startStub, STUB_KEY } from "./stub_judge.ts";

const KEY = STUB_KEY;
const PNG = await Deno.readFile(new URL("../fixtures/klein-tiny/images/ref0_80x64.png", import.meta.url));

Deno.test("judge: verdict parsing and URLs", () => {
  for (
    const [text, want] of [
      ['{"pass": 1, "reason": "red is gone"}', ["yes", "red is gone"]],
      ['{"pass":0,"reason":"still red"}', ["no", "still red"]],
      ['```json\n{"pass": 1, "reason": "x"}\n```', ["yes", "x"]],
      ['<think>is it {"pass": 0}?</think>\n{"pass": true}', ["yes", ""]],
      ['Verdict: {"pass": "0", "reason": "same"}', ["no", "same"]],
      ["Yes", null],
      ['{"pass": 2, "reason": "?"}', null],
      ['{"pass": 1, "reason": 5}', null],
      ['{"verdict": 1}', null],
      ["{pass: 1}", null],
      ["", null],
    ] as const
  ) {
    const v = parseVerdict(text);
    assert.deepEqual(v && [v.answer, v.reason], want, JSON.stringify(text));
  }
  assert.equal(chatCompletionsUrl("http://h:1/v1"), "http://h:1/v1/chat/completions");
  assert.equal(chatCompletionsUrl("http://h:1/v1/"), "http://h:1/v1/chat/completions");
  assert.equal(chatCompletionsUrl("https://api.x.org/v1/chat/completions"), "https://api.x.org/v1/chat/completions");
  assert.equal(messagesUrl("https://api.anthropic.com"), "https://api.anthropic.com/v1/messages");
  assert.equal(messagesUrl("http://h:2/v1"), "http://h:2/v1/messages");
  assert.equal(messagesUrl("http://h:2/v1/messages"), "http://h:2/v1/messages");
  assert.throws(() => chatCompletionsUrl("nope"), /not a URL/);
  assert.throws(() => chatCompletionsUrl("ftp://x/v1"), /http or https/);
  assert.throws(
    () => chatCompletionsUrl("http://me:secret@x/v1"),
    (e: Error) => /carries credentials/.test(e.message) && !e.message.includes("secret"),
  );
  // Polarity: "keep" questions are inverted.
  assert.deepEqual([isPass("yes", "change"), isPass("no", "change"), isPass("yes", "keep"), isPass("no", "keep")], [
    true,
    false,
    false,
    true,
  ]);
});

Deno.test("judge: endpoint from flags, else the environment, else the experiment (never the key)", () => {
  const names = [
    "KLEINSCOPE_JUDGE_URL",
    "KLEINSCOPE_JUDGE_MODEL",
    "KLEINSCOPE_JUDGE_KEY",
    "KLEINSCOPE_JUDGE_PROVIDER",
    "ANTHROPIC_API_KEY",
  ];
  const saved = names.map((k) => Deno.env.get(k));
  try {
    for (const k of names) Deno.env.delete(k);
    assert.throws(() => resolveEndpoint({}), /no judge URL/);
    assert.deepEqual(resolveEndpoint({}, { url: "http://e/v1", model: "m" }), {
      provider: "openai",
      url: "http://e/v1/chat/completions",
      model: "m",
      key: undefined,
      maxTokens: undefined,
    });
    assert.throws(() => resolveEndpoint({ provider: "anthropic" }), /ANTHROPIC_API_KEY/);
    Deno.env.set("ANTHROPIC_API_KEY", "ak");
    const a = resolveEndpoint({}, { provider: "anthropic", maxTokens: 64 });
    assert.deepEqual(a, {
      provider: "anthropic",
      url: "https://api.anthropic.com/v1/messages",
      model: ANTHROPIC_DEFAULT_MODEL,
      key: "ak",
      maxTokens: 64,
    });
    assert.equal(resolveEndpoint({ provider: "stub" }).provider, "stub");
    assert.equal(resolveEndpoint({ provider: "stub" }).key, undefined);
    assert.throws(() => resolveEndpoint({ provider: "gemini" }), /openai, anthropic or stub/);
    Deno.env.set("KLEINSCOPE_JUDGE_URL", "http://env/v1");
    Deno.env.set("KLEINSCOPE_JUDGE_MODEL", "env-model");
    Deno.env.set("KLEINSCOPE_JUDGE_KEY", "env-key");
    assert.deepEqual(resolveEndpoint({}, { url: "http://e/v1", model: "m" }), {
      provider: "openai",
      url: "http://env/v1/chat/completions",
      model: "env-model",
      key: "env-key",
      maxTokens: undefined,
    });
    const f = resolveEndpoint({ url: "http://flag/v1", model: "f", key: "k" });
    assert.deepEqual([f.url, f.model, f.key], ["http://flag/v1/chat/completions", "f", "k"]);
  } finally {
    names.forEach((k, i) => saved[i] === undefined ? Deno.env.delete(k) : Deno.env.set(k, saved[i]!));
  }
});

const TEMPLATE: QuestionTemplate = {
  id: "test.q",
  version: 1,
  images: [{ role: "reference", label: "Image 1 – the reference:" }, { role: "output", label: "Image 2 – the output:" }],
  question: "q",
  polarity: "change",
  passMeans: "",
};

function question(text: string, template = TEMPLATE): JudgeQuestion {
  return { template, text, images: template.images.map((im) => ({ ...im, path: "ref0.png", bytes: PNG })) };
}

async function cacheFiles(dir: string): Promise<string[]> {
  const out: string[] = [];
  for await (const e of Deno.readDir(dir)) {
    if (e.isDirectory) {
      for await (const f of Deno.readDir(join(dir, e.name))) out.push(await Deno.readTextFile(join(dir, e.name, f.name)));
    }
  }
  return out;
}

Deno.test("judge client (OpenAI-compatible): labelled bundle, retries, nonsense retried then excluded, 401, cache", async () => {
  const stub = startStub();
  const cache = await Deno.makeTempDir({ prefix: "ks-judge-cache-" });
  const endpoint: JudgeEndpoint = {
    provider: "openai",
    url: chatCompletionsUrl(stub.url),
    model: "stub-a",
    key: KEY,
    backoffMs: 5,
    maxAttempts: 3,
    timeoutMs: 150,
  };
  const client = new JudgeClient(endpoint, cache);
  const ask = (text: string, c = client) => c.ask(question(text));
  try {
    const yes = await ask("plain #yes");
    assert.deepEqual([yes.answer, yes.reason, yes.status, yes.attempts, yes.cached], ["yes", "The prediction holds.", "ok", 1, false]);
    assert.deepEqual(yes.tokens, { input: 900, output: 15 });
    const body = stub.bodies.at(-1) as { model: string; temperature: number; messages: { role: string; content: any }[] };
    assert.equal(body.model, "stub-a");
    assert.equal(body.temperature, 0);
    assert.equal(body.messages[0].role, "system");
    assert.match(body.messages[0].content, /"pass": 1 or 0/);
    const parts = body.messages[1].content as { type: string; text?: string; image_url?: { url: string } }[];
    assert.deepEqual(parts.map((p) => p.type), ["text", "image_url", "text", "image_url", "text"]);
    assert.deepEqual([parts[0].text, parts[2].text, parts[4].text], ["Image 1 – the reference:", "Image 2 – the output:", "plain #yes"]);
    assert.ok(parts[1].image_url!.url.startsWith("data:image/png;base64,iVBORw0KGgo"));
    assert.equal(stub.headers.at(-1)!.authorization, `Bearer ${KEY}`);

    const r500 = await ask("flaky #500");
    assert.deepEqual([r500.answer, r500.status, r500.attempts], ["no", "ok", 2]);
    const r429 = await ask("busy #429 #yes");
    assert.deepEqual([r429.answer, r429.attempts], ["yes", 2]);
    const slow = await ask("sleepy #slow #yes");
    assert.deepEqual([slow.answer, slow.attempts], ["yes", 2]);
    const fenced = await ask("array content #parts");
    assert.deepEqual([fenced.answer, fenced.reason], ["no", "no"]);
    // Nonsense once, then a verdict: asked again within the bound.
    const once = await ask("first a word #garbage-once #yes");
    assert.deepEqual([once.answer, once.status, once.attempts], ["yes", "ok", 2]);
    // Nonsense every time: asked 1 + 2 times, then unparseable (raw kept, no verdict).
    const before = stub.requests;
    const garbage = await ask("hmm #garbage");
    assert.deepEqual([garbage.answer, garbage.status, garbage.raw], [null, "unparseable", "It is hard to say from these pictures."]);
    assert.equal(stub.requests - before, 3);
    const down = await ask("server #always500");
    assert.deepEqual([down.status, down.attempts], ["failed", 3]);
    assert.match(down.error!, /HTTP 503/);

    const badKey = new JudgeClient({ ...endpoint, key: "wrong" }, cache);
    const b = stub.requests;
    const denied = await ask("denied #yes", badKey);
    assert.equal(denied.status, "failed");
    assert.match(denied.error!, /HTTP 401/);
    assert.equal(stub.requests - b, 1, "a 401 is not retried");

    // Re-asking: answered questions come from the cache; unparseable and failed ones are asked again.
    const requests = stub.requests;
    for (const t of ["plain #yes", "flaky #500", "first a word #garbage-once #yes"]) assert.equal((await ask(t)).cached, true);
    assert.equal(stub.requests, requests);
    assert.equal((await ask("hmm #garbage")).cached, false);
    assert.equal((await ask("server #always500")).cached, false);
    // The key covers model, template version, labels, question and image bytes.
    assert.equal((await ask("plain #yes", new JudgeClient({ ...endpoint, model: "stub-b" }, cache))).cached, false);
    assert.equal((await client.ask(question("plain #yes", { ...TEMPLATE, version: 2 }))).cached, false);
    const relabelled = { ...TEMPLATE, images: [TEMPLATE.images[0], { role: "output" as const, label: "Image 2 – something else:" }] };
    assert.equal((await client.ask(question("plain #yes", relabelled))).cached, false);
    // No key in the cache.
    for (const text of await cacheFiles(cache)) assert.equal(text.includes(KEY), false);
  } finally {
    await stub.close();
    await Deno.remove(cache, { recursive: true });
  }
});

Deno.test("judge client (Anthropic Messages API): headers, base64 image blocks, cached system prompt, no redirects", async () => {
  const stub = startStub();
  const cache = await Deno.makeTempDir({ prefix: "ks-judge-cache-" });
  const endpoint: JudgeEndpoint = {
    provider: "anthropic",
    url: messagesUrl(stub.url),
    model: "claude-x",
    key: KEY,
    backoffMs: 5,
    maxAttempts: 3,
  };
  const client = new JudgeClient(endpoint, cache);
  try {
    const a = await client.ask(question("anthropic #yes"));
    assert.deepEqual([a.answer, a.status, a.tokens], ["yes", "ok", { input: 1002, output: 20 }]);
    const h = stub.headers.at(-1)!;
    assert.equal(h["x-api-key"], KEY);
    assert.equal(h["anthropic-version"], "2023-06-01");
    assert.equal(h.authorization, undefined);
    const body = stub.bodies.at(-1) as any;
    assert.equal(body.model, "claude-x");
    assert.equal(body.max_tokens, 200);
    assert.deepEqual(body.system[0].cache_control, { type: "ephemeral" });
    assert.match(body.system[0].text, /single JSON object/);
    assert.deepEqual(body.messages[0].content.map((p: any) => p.type), ["text", "image", "text", "image", "text"]);
    assert.deepEqual(body.messages[0].content[1].source.media_type, "image/png");
    assert.equal(body.messages[0].content[1].source.type, "base64");
    assert.ok(body.messages[0].content[1].source.data.startsWith("iVBORw0KGgo"));
    const busy = await client.ask(question("overloaded #500 #yes"));
    assert.deepEqual([busy.answer, busy.attempts], ["yes", 2]);
    // A redirect is an error, and the key is not carried to the other origin.
    const before = stub.requests;
    const moved = await client.ask(question("moved #redirect"));
    assert.equal(moved.status, "failed");
    assert.match(moved.error!, /redirects; the key is sent only to http:\/\/127\.0\.0\.1/);
    assert.equal(stub.requests - before, 1);
    // A wrong key: the server's reply never brings a key into the error text.
    const denied = await new JudgeClient({ ...endpoint, key: "wrong-secret" }, cache).ask(question("denied #yes"));
    assert.match(denied.error!, /HTTP 401/);
    assert.equal(denied.error!.includes("wrong-secret"), false);
  } finally {
    await stub.close();
    await Deno.remove(cache, { recursive: true });
  }
});

Deno.test("template files: one template a line, every malformed line refused as file:line", () => {
  const good = JSON.stringify({
    id: "mine.colour",
    version: 1,
    images: [{ role: "reference", label: "Image 1 – {metadata.colour} swatch:" }, { role: "condition:t2i_clean", label: "Image 2:" }, {
      role: "output",
      label: "Image 3:",
    }],
    question: "Is Image 3 {metadata.colour}?",
    polarity: "change",
    passMeans: "turned the colour",
  });
  const [t] = parseTemplateLines(`# mine\n\n${good}\n`, "t.jsonl");
  assert.deepEqual([t.id, t.images[1].role, t.origin], ["mine.colour", "condition:t2i_clean", "t.jsonl:3"]);
  const bad = [
    good,
    "{not json",
    JSON.stringify({ ...JSON.parse(good), id: "x2", polarity: "inverted" }),
    JSON.stringify({ ...JSON.parse(good), id: "x3", images: [{ role: "reference", label: "a" }] }),
    JSON.stringify({ ...JSON.parse(good), id: "x4", images: [{ role: "elsewhere", label: "a" }] }),
    JSON.stringify({ ...JSON.parse(good), id: "x5", question: "{task_id}?" }),
    JSON.stringify({ ...JSON.parse(good), id: "color.lens" }),
    JSON.stringify({ ...JSON.parse(good), extra: 1, id: "x7" }),
    good,
  ].join("\n");
  assert.throws(() => parseTemplateLines(bad, "t.jsonl"), (e: Error) => {
    const lines = e.message.split("\n");
    assert.match(lines[0], /^t\.jsonl: 8 malformed template line\(s\), file refused:$/);
    for (
      const [n, re] of [
        [2, /not valid JSON/],
        [3, /polarity: expected "change"/],
        [4, /no image has the role "output"/],
        [5, /images\[0\]\.role: expected one of/],
        [6, /unknown placeholder \{task_id\}/],
        [7, /"color\.lens" is a built-in template/],
        [8, /unknown field "extra"/],
        [9, /already defined on line 1/],
      ] as const
    ) assert.ok(lines.some((l) => l.trim().startsWith(`t.jsonl:${n}`) && re.test(l)), `line ${n}: ${e.message}`);
    return true;
  });
  assert.throws(() => parseTemplateLines("\n# nothing\n", "e.jsonl"), /e\.jsonl: no templates/);
});

async function colourRun(root: string, conditions: Parameters<typeof makeFakeRun>[0]["conditions"], judge?: any) {
  const set = await writeColourTasks({
    out: join(root, "colours"),
    colours: ["red", "blue"],
    objects: ["couch", "vase"],
    seeds: [0, 1],
    width: 64,
    height: 64,
    swatchSize: 64,
  });
  const names = conditions.map((c) => c.name);
  const run = join(root, "run");
  await makeFakeRun({
    dir: run,
    tasks: set.tasks,
    conditions,
    judge,
    include: (t, c) => !(t.task_id === "color_blue_vase_s1" && c === "ko_ref_text"),
    // The baseline in the task's colour; ko_ref_image keeps it (nearly); everything else differs per folder.
    colour: (t, c) => {
      const rgb = t.metadata.rgb as number[];
      if (c === "baseline") return rgb;
      if (c === "ko_ref_image") return rgb.map((v) => Math.max(0, v - 3));
      const i = set.tasks.indexOf(t) * names.length + names.indexOf(c);
      return [(i * 37) % 256, (i * 91) % 256, (i * 53) % 256];
    },
  });
  return { run, set };
}

const CONDITIONS = [
  { name: "baseline" },
  { name: "ko_ref_text", interventions: [{ type: "knockout" as const, setting: "ref->text", blocks: "all" }] },
  { name: "ko_ref_image", interventions: [{ type: "knockout" as const, setting: "ref->image", blocks: "all" }] },
  { name: "patch_padding", patch: { block: "double.1", mode: "padding_only" as const } },
];

Deno.test("judge a run: default bundles per intervention, pass polarity, exclusions, cache on re-run, two judges", async () => {
  const stub = startStub();
  const root = await Deno.makeTempDir({ prefix: "ks-judge-run-" });
  try {
    const { run } = await colourRun(root, CONDITIONS);
    const folder = await readRunFolder(run);
    const endpoint = { ...resolveEndpoint({ url: stub.url, model: "stub-a", key: KEY }), backoffMs: 5 };
    const logs: string[] = [];
    const first = await judgeRun(folder, { endpoint, log: (l) => logs.push(l), concurrency: 3 });
    // The baseline is the anchor, not judged: 3 conditions × 8 tasks, one folder missing.
    assert.equal(first.judgments.length, 8 * 3 - 1);
    assert.equal(first.failed, 0);
    assert.ok(first.unparseable > 0 && first.unparseable < first.judgments.length / 2, `unparseable ${first.unparseable}`);
    assert.ok(first.requests > first.judgments.length, "some first answers were 500s or nonsense, asked again");
    const want: Record<string, string> = {
      ko_ref_text: "color.knockout_lost",
      ko_ref_image: "color.knockout_kept",
      patch_padding: "color.patch",
    };
    for (const j of first.judgments) {
      assert.equal(j.template, want[j.condition]);
      const t = BUILTIN_TEMPLATES[j.template];
      assert.equal(j.polarity, t.polarity);
      assert.equal(j.pass, j.answer === null ? null : (j.answer === "yes") === (t.polarity === "change"));
      if (j.status === "ok") assert.ok(j.reason && j.reason.length > 0);
      assert.deepEqual(j.images.map((im) => im.role), t.images.map((im) => im.role));
      assert.equal(j.images.find((im) => im.role === "output")!.path, `tasks/${j.task_id}/${j.condition}/image.png`);
      assert.equal(j.images.find((im) => im.role === "baseline")!.path, `tasks/${j.task_id}/baseline/image.png`);
      if (j.condition === "patch_padding") {
        // Image 1 is the patch source's swatch: the other colour.
        const own = j.task_id.includes("red") ? "red" : "blue";
        assert.ok(!j.images[0].path.endsWith(`${own}.png`) && j.images[1].path.endsWith(`${own}.png`), JSON.stringify(j.images));
        assert.match(j.images[3].label, /^Image 4 /);
      }
    }
    const stats = cellStats(first.judgments);
    assert.equal(stats.reduce((a, c) => a + c.n + c.excluded, 0), first.judgments.length);
    assert.equal(stats.reduce((a, c) => a + c.excluded, 0), first.unparseable);
    assert.ok(logs.some((l) => /unparseable and 0 failed \(both left out of the rates\)/.test(l)));

    // Again: nothing answered is asked twice (the unparseable ones are).
    const before = stub.requests;
    const again = await judgeRun(folder, { endpoint, log: () => {} });
    assert.equal(again.cached, again.judgments.length - first.unparseable);
    assert.equal(stub.requests - before, 3 * first.unparseable);
    assert.deepEqual(again.judgments.map((j) => j.answer), first.judgments.map((j) => j.answer));

    // A second judge, and agreement between the two.
    await judgeRun(folder, { endpoint: { ...endpoint, model: "stub-b" }, name: "second judge", log: () => {} });
    const all = await readJudgments(run);
    assert.deepEqual([...all.keys()].sort(), ["second judge", "stub-a"]);
    const agreement = judgeAgreement(all.get("stub-a")!, all.get("second judge")!);
    assert.ok(agreement.n >= 10 && agreement.agreement < 1 && agreement.agreement > 0.5, JSON.stringify(agreement));
    // Nothing of the key in what was written.
    for await (const e of Deno.readDir(join(run, "judgments"))) {
      assert.equal((await Deno.readTextFile(join(run, "judgments", e.name))).includes(KEY), false);
    }
  } finally {
    await stub.close();
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("the stub judge: offline, deterministic verdicts from image statistics, labelled stub", async () => {
  const root = await Deno.makeTempDir({ prefix: "ks-judge-stub-" });
  try {
    const { run } = await colourRun(root, CONDITIONS);
    const folder = await readRunFolder(run);
    const s = await judgeRun(folder, { endpoint: resolveEndpoint({ provider: "stub" }), log: () => {} });
    assert.ok(s.path.endsWith("judgments/stub.jsonl"));
    assert.equal(s.requests, 0);
    for (const j of s.judgments) {
      assert.deepEqual([j.judge, j.provider, j.status], ["stub", "stub", "ok"]);
      assert.match(j.reason!, /^stub: output vs image \d changed by [\d.]+ levels/);
      // ko_ref_image kept the baseline's colour: "still there?" yes → no pass; the others changed → pass.
      assert.equal(j.pass, j.condition !== "ko_ref_image", `${j.task_id}/${j.condition}: ${j.reason}`);
    }
    const again = await judgeRun(folder, { endpoint: resolveEndpoint({ provider: "stub" }), log: () => {} });
    assert.deepEqual(again.judgments.map((j) => [j.answer, j.reason]), s.judgments.map((j) => [j.answer, j.reason]));
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("the experiment's own templates and question rules (sweep prefixes, condition roles)", async () => {
  const root = await Deno.makeTempDir({ prefix: "ks-judge-own-" });
  try {
    const file = join(root, "judges.jsonl");
    await Deno.writeTextFile(
      file,
      JSON.stringify({
        id: "mine.vs_clean",
        version: 1,
        images: [{ role: "condition:t2i_clean", label: "Image 1 – t2i clean:" }, { role: "output", label: "Image 2 – {metadata.object}:" }],
        question: "Is Image 2 different from Image 1?",
        polarity: "change",
        passMeans: "changed",
      }) + "\n",
    );
    const conditions = [
      { name: "baseline" },
      { name: "t2i_clean", textOnly: true },
      { name: "ko_suffix_0", interventions: [{ type: "knockout" as const, setting: "ref->text", blocks: "0..31" }] },
      { name: "ko_suffix_1", interventions: [{ type: "knockout" as const, setting: "ref->text", blocks: "1..31" }] },
    ];
    const exp = parseExperiment({
      model: "m",
      tasks: "t.jsonl",
      output: "o",
      conditions,
      judge: { provider: "stub", templateFiles: ["judges.jsonl"], questions: [{ template: "mine.vs_clean", conditions: ["ko_*"] }] },
    }, root);
    assert.equal(exp.judge!.templates![0].id, "mine.vs_clean");
    assert.throws(
      () => parseExperiment({ model: "m", tasks: "t", output: "o", conditions, judge: { questions: [{ template: "nope" }] } }, root),
      /judge\.questions\[0\]\.template: unknown question template "nope"/,
    );
    assert.throws(
      () =>
        parseExperiment({
          model: "m",
          tasks: "t",
          output: "o",
          conditions,
          judge: { questions: [{ template: "color.lens", conditions: ["zz*"] }] },
        }, root),
      /no condition is named "zz\*"/,
    );
    assert.throws(
      () =>
        parseExperiment({
          model: "m",
          tasks: "t",
          output: "o",
          conditions: [{ name: "baseline" }],
          judge: { templateFiles: ["judges.jsonl"] },
        }, root),
      /mine\.vs_clean\.images\[0\]\.role: no condition is named "t2i_clean"/,
    );
    await Deno.writeTextFile(join(root, "bad.jsonl"), '{"id": "a"}\n');
    assert.throws(
      () => parseExperiment({ model: "m", tasks: "t", output: "o", conditions, judge: { templateFiles: ["bad.jsonl"] } }, root),
      /bad\.jsonl: 1 malformed template line\(s\), file refused:\n {2}.*bad\.jsonl:1: /,
    );
    const { run } = await colourRun(root, conditions, exp.judge);
    const s = await judgeRun(await readRunFolder(run), { endpoint: resolveEndpoint({ provider: "stub" }), log: () => {} });
    assert.equal(s.judgments.length, 2 * 8);
    assert.ok(s.judgments.every((j) => j.template === "mine.vs_clean" && j.condition.startsWith("ko_suffix_")));
    assert.match(s.judgments[0].images[1].label, /^Image 2 – (couch|vase):$/);
    assert.equal(s.judgments[0].images[0].path, `tasks/${s.judgments[0].task_id}/t2i_clean/image.png`);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});
