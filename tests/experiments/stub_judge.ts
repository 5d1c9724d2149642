// An imitation of the judge APIs on 127.0.0.1 (port chosen by the system), for the judge's tests: OpenAI-compatible
// chat completions (POST /v1/chat/completions, Bearer key) and Anthropic's Messages API (POST /v1/messages, x-api-key
// and anthropic-version headers). Both answer the study's JSON verdict {"pass": 0|1, "reason": "…"}.
//
// Markers in the question ("#500", "#429", "#slow", "#garbage", "#garbage-once", "#parts", "#yes", "#always500",
// "#redirect") pick a behaviour; other questions get a deterministic mix (by a hash of question and images) of passes,
// fails, persistent garbage, garbage once then an answer, and a 500 before the first answer. The second judge model
// ("stub-b") disagrees on a quarter of the items. Requests for edit-object proposals (experiments/sun397.ts) get one of
// five fixed replies by the image's hash.

import { sha256Hex } from "../../experiments/files.ts";

export const STUB_KEY = "test-key";

export interface Stub {
  url: string;
  requests: number;
  bodies: unknown[];
  /** Request headers, lower-cased names. */
  headers: Record<string, string>[];
  close: () => Promise<void>;
}

const verdict = (pass: 0 | 1, reason = pass ? "The prediction holds." : "It does not.") => JSON.stringify({ pass, reason });

/** Both APIs: markers in the question pick a behaviour, else the answer is a hash of the content. */
export function startStub(): Stub {
  const seen = new Map<string, number>();
  const stub = { requests: 0, bodies: [] as unknown[], headers: [] as Record<string, string>[] } as Stub;
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, async (req) => {
    stub.requests++;
    stub.headers.push(Object.fromEntries(req.headers.entries()));
    const path = new URL(req.url).pathname;
    const anthropic = path === "/v1/messages";
    if (req.method !== "POST" || (!anthropic && path !== "/v1/chat/completions")) return new Response("not found", { status: 404 });
    const authorised = anthropic
      ? req.headers.get("x-api-key") === STUB_KEY && req.headers.get("anthropic-version") === "2023-06-01"
      : req.headers.get("authorization") === `Bearer ${STUB_KEY}`;
    // The refusal quotes the key it got (some servers do): the client must keep it out of its errors.
    const presented = req.headers.get("x-api-key") ?? req.headers.get("authorization");
    if (!authorised) return new Response(JSON.stringify({ error: "bad key", presented }), { status: 401 });
    const body = await req.json();
    stub.bodies.push(body);
    const user = body.messages.find((m: { role: string }) => m.role === "user");
    const texts: string[] = user.content.filter((p: { type: string }) => p.type === "text").map((p: { text: string }) => p.text);
    const text = texts.at(-1)!;
    const images: string[] = user.content.filter((p: { type: string }) => p.type === "image_url" || p.type === "image").map((
      p: { image_url?: { url: string }; source?: { data: string } },
    ) => p.image_url?.url ?? p.source!.data);
    const key = await sha256Hex(`${body.model}|${texts.join("|")}|${images.join("|")}`);
    const n = (seen.get(key) ?? 0) + 1;
    seen.set(key, n);
    const reply = (content: string) =>
      anthropic
        ? Response.json({
          id: "msg",
          type: "message",
          role: "assistant",
          content: [{ type: "text", text: content }],
          usage: { input_tokens: 1000 + images.length, output_tokens: 20 },
        })
        : Response.json({
          id: "x",
          object: "chat.completion",
          choices: [{ index: 0, message: { role: "assistant", content } }],
          usage: { prompt_tokens: 900, completion_tokens: 15 },
        });
    // Edit-object proposals (experiments/sun397.ts), recognised by their system prompt: one of five replies by the
    // image's hash — both objects, an addition only, a refusal of both, prose, an invalid name.
    const system = anthropic ? body.system?.[0]?.text : body.messages.find((m: { role: string }) => m.role === "system")?.content;
    if (typeof system === "string" && system.includes('"add_object"')) {
      const kind = parseInt((await sha256Hex(images.join("|"))).slice(0, 8), 16) % 5;
      const proposals = [
        '{"add_object": "floor lamp", "remove_object": "chair"}',
        '{"add_object": "umbrella", "remove_object": null}',
        '{"add_object": null, "remove_object": null}',
        "I would add a lamp.",
        '{"add_object": "Lamp!", "remove_object": "rug"}',
      ];
      return reply(proposals[kind]);
    }
    if (text.includes("#redirect")) return new Response(null, { status: 307, headers: { location: "http://127.0.0.2:9/v1/messages" } });
    if (text.includes("#always500")) return new Response("down", { status: 503 });
    if (text.includes("#500") && n === 1) return new Response("oops", { status: 500 });
    if (text.includes("#429") && n === 1) return new Response("slow down", { status: 429, headers: { "retry-after": "0" } });
    if (text.includes("#slow") && n === 1) {
      await new Promise((r) => setTimeout(r, 400));
      return reply(verdict(1));
    }
    if (text.includes("#garbage-once") && n === 1) return reply("Yes, I think so.");
    if (text.includes("#garbage") && !text.includes("#garbage-once")) return reply("It is hard to say from these pictures.");
    if (text.includes("#parts") && !anthropic) {
      return Response.json({ choices: [{ message: { content: [{ type: "text", text: '```json\n{"pass": 0, "reason": "no"}\n```' }] } }] });
    }
    if (text.includes("#")) return reply(verdict(text.includes("#yes") ? 1 : 0));
    // A run's questions: a deterministic mix of passes, fails, garbage, and a 500 before the first answer.
    const h = parseInt((await sha256Hex(`${texts.join("|")}|${images.join("|")}`)).slice(0, 8), 16);
    if (h % 5 === 0 && n === 1) return new Response("flaky", { status: 500 });
    if ((h >>> 12) % 4 === 0) return reply("Could you clarify what you mean?");
    if ((h >>> 16) % 4 === 0 && n === 1) return reply("pass: maybe");
    // The second judge disagrees on a quarter of the items.
    const yes = (h >>> 4) % 2 === 0;
    return reply(verdict((body.model === "stub-b" && (h >>> 8) % 4 === 0) !== yes ? 1 : 0));
  });
  stub.url = `http://127.0.0.1:${server.addr.port}/v1`;
  stub.close = () => server.shutdown();
  return stub;
}
