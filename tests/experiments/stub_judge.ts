// An imitation of an OpenAI-compatible chat-completions endpoint on 127.0.0.1 (port chosen by the system), for the
// judge's tests: markers in the question ("#500", "#429", "#slow", "#garbage", "#parts", "#yes", "#always500") pick a
// behaviour; other questions get a deterministic mix (by a hash of question and images) of yes, no, garbage, and a
// 500 before the first answer. The second judge model ("stub-b") disagrees on a quarter of the items.

import { sha256Hex } from "../../experiments/files.ts";

export const STUB_KEY = "test-key";

export interface Stub {
  url: string;
  requests: number;
  bodies: unknown[];
  close: () => Promise<void>;
}

/** An OpenAI-compatible endpoint: markers in the question pick a behaviour, else the answer is a hash of the content. */
export function startStub(): Stub {
  const seen = new Map<string, number>();
  const stub = { requests: 0, bodies: [] as unknown[] } as Stub;
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, async (req) => {
    stub.requests++;
    if (req.method !== "POST" || new URL(req.url).pathname !== "/v1/chat/completions") return new Response("not found", { status: 404 });
    if (req.headers.get("authorization") !== `Bearer ${STUB_KEY}`) {
      return new Response(JSON.stringify({ error: "bad key" }), { status: 401 });
    }
    const body = await req.json();
    stub.bodies.push(body);
    const user = body.messages.find((m: { role: string }) => m.role === "user");
    const text: string = user.content.find((p: { type: string }) => p.type === "text").text;
    const images: string[] = user.content.filter((p: { type: string }) => p.type === "image_url").map((p: { image_url: { url: string } }) =>
      p.image_url.url
    );
    const key = await sha256Hex(`${body.model}|${text}|${images.join("|")}`);
    const n = (seen.get(key) ?? 0) + 1;
    seen.set(key, n);
    const reply = (content: string) =>
      Response.json({ id: "x", object: "chat.completion", choices: [{ index: 0, message: { role: "assistant", content } }] });
    if (text.includes("#always500")) return new Response("down", { status: 503 });
    if (text.includes("#500") && n === 1) return new Response("oops", { status: 500 });
    if (text.includes("#429") && n === 1) return new Response("slow down", { status: 429, headers: { "retry-after": "0" } });
    if (text.includes("#slow") && n === 1) {
      await new Promise((r) => setTimeout(r, 400));
      return reply("yes");
    }
    if (text.includes("#garbage")) return reply("It is hard to say from these pictures.");
    if (text.includes("#parts")) return Response.json({ choices: [{ message: { content: [{ type: "text", text: "No." }] } }] });
    if (text.includes("#")) return reply(text.includes("#yes") ? "Yes." : "**No**");
    // A run's questions: a deterministic mix of yes, no, garbage, and a 500 before the first answer.
    const h = parseInt((await sha256Hex(`${text}|${images.join("|")}`)).slice(0, 8), 16);
    if (h % 5 === 0 && n === 1) return new Response("flaky", { status: 500 });
    if ((h >>> 12) % 4 === 0) return reply("Could you clarify what you mean?");
    // The second judge disagrees on a quarter of the items.
    const yes = (h >>> 4) % 2 === 0;
    return reply((body.model === "stub-b" && (h >>> 8) % 4 === 0) !== yes ? "Yes" : "No, it does not.");
  });
  stub.url = `http://127.0.0.1:${server.addr.port}/v1`;
  stub.close = () => server.shutdown();
  return stub;
}
