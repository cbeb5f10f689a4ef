import assert from "node:assert/strict";
import { webcrypto } from "node:crypto";
import { describe, it } from "node:test";

import { backoffDelay, MsgdClient, MsgdError, parseRetryAfter, type MsgdClientOptions } from "../dist/index.js";
import { apiError, json, networkError, scriptedFetch, type Answer } from "./fakes.js";

const CONV = "0190c0de-0000-7000-8000-000000000002";
const BASE = "http://msgd.test";

function client(answers: Answer[], options: Partial<MsgdClientOptions> = {}) {
  const { fetch, requests } = scriptedFetch(answers);
  const msgd = new MsgdClient({
    baseUrl: `${BASE}/`,
    apiKey: "msgd_pk_test",
    accessToken: "token-1",
    fetch,
    crypto: webcrypto,
    retry: { baseDelayMs: 1, maxDelayMs: 4 },
    ...options,
  });
  return { msgd, requests };
}

const sent = {
  v: 1,
  id: "m1",
  conversation_id: CONV,
  seq: 7,
  ts: 1,
  sender: { kind: "user", id: "a" },
  attachments: [],
};

describe("sendMessage", () => {
  it("makes a client_msg_id and retries the same body after no answer, a 5xx and a 429", async () => {
    const { msgd, requests } = client([
      networkError(),
      apiError(503, "dependency_unavailable"),
      apiError(429, "rate_limited", { "retry-after": "0" }),
      json(200, sent),
    ]);
    const message = await msgd.sendMessage(CONV, { payload: { text: "hi" } });
    assert.equal(message.seq, 7);
    assert.equal(requests.length, 4);
    const body = JSON.parse(requests[0]!.body as string);
    assert.match(body.client_msg_id, /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    assert.deepEqual(body.payload, { text: "hi" });
    for (const request of requests) assert.equal(request.body, requests[0]!.body);
    assert.equal(requests[0]!.url, `${BASE}/v1/conversations/${CONV}/messages`);
  });

  it("keeps a client_msg_id it is given", async () => {
    const { msgd, requests } = client([json(201, sent)]);
    await msgd.sendMessage(CONV, { payload: 1, client_msg_id: "mine-1" });
    assert.equal(JSON.parse(requests[0]!.body as string).client_msg_id, "mine-1");
  });

  it("waits as long as Retry-After says", async () => {
    const { msgd } = client([apiError(429, "rate_limited", { "retry-after": "1" }), json(201, sent)]);
    const started = Date.now();
    await msgd.sendMessage(CONV, { payload: 1 });
    assert.ok(Date.now() - started >= 990, "retried before Retry-After");
  });

  it("gives up on a Retry-After longer than maxRetryAfterMs and says how long", async () => {
    const { msgd, requests } = client([apiError(429, "rate_limited", { "retry-after": "120" })], {
      retry: { maxRetryAfterMs: 60_000 },
    });
    const error = await rejection(msgd.sendMessage(CONV, { payload: 1 }));
    assert.equal(error.code, "rate_limited");
    assert.equal(error.retryAfter, 120);
    assert.equal(requests.length, 1);
  });

  it("throws the last failure once the retries are spent", async () => {
    const failures = Array.from({ length: 3 }, () => apiError(500, "internal"));
    const { msgd, requests } = client(failures, { retry: { retries: 2, baseDelayMs: 1 } });
    const error = await rejection(msgd.sendMessage(CONV, { payload: 1 }));
    assert.equal(error.status, 500);
    assert.equal(error.code, "internal");
    assert.equal(requests.length, 3);
  });

  it("does not retry a refusal", async () => {
    const { msgd, requests } = client([apiError(403, "not_member")]);
    const error = await rejection(msgd.sendMessage(CONV, { payload: 1 }));
    assert.equal(error.status, 403);
    assert.equal(error.code, "not_member");
    assert.equal(error.message, "not_member happened");
    assert.equal(requests.length, 1);
  });
});

describe("sendBatch", () => {
  it("gives every item its own client_msg_id, keeping those given", async () => {
    const { msgd, requests } = client([networkError(), json(200, { results: [] })]);
    await msgd.sendBatch(CONV, [{ payload: 1 }, { payload: 2, client_msg_id: "two" }]);
    const [first, second] = requests.map((r) => JSON.parse(r.body as string).messages);
    assert.equal(first[1].client_msg_id, "two");
    assert.ok(first[0].client_msg_id.length > 0);
    assert.deepEqual(second, first);
  });
});

describe("requests", () => {
  it("carries the key, the token from a function, and JSON", async () => {
    let calls = 0;
    const accessToken = async () => `token-${++calls}`;
    const { msgd, requests } = client([json(201, {}), json(200, { conversations: [] })], { accessToken });
    await msgd.createConversation({ members: ["bob"] });
    await msgd.listConversations({ limit: 5 });
    assert.equal(requests[0]!.headers["x-api-key"], "msgd_pk_test");
    assert.equal(requests[0]!.headers["authorization"], "Bearer token-1");
    assert.equal(requests[0]!.headers["content-type"], "application/json");
    assert.equal(requests[1]!.headers["authorization"], "Bearer token-2");
    assert.equal(requests[1]!.url, `${BASE}/v1/conversations?limit=5`);
    assert.equal(requests[1]!.method, "GET");
  });

  it("sends no Authorization without a token (an admin key acting as the app)", async () => {
    const { msgd, requests } = client([json(200, { access_token: "t", expires_in: 1, token_type: "Bearer" })], {
      accessToken: undefined,
    });
    await msgd.devToken("alice");
    assert.equal(requests[0]!.headers["authorization"], undefined);
    assert.deepEqual(JSON.parse(requests[0]!.body as string), { user_id: "alice" });
  });

  it("encodes path segments", async () => {
    const change = { seq: 3, reaction: "👍", changed: true, count: 1 };
    const { msgd, requests } = client([json(201, change), json(201, { user_id: "café x", added: true })]);
    await msgd.addReaction(CONV, 3, "👍");
    await msgd.addMember(CONV, "café x");
    assert.equal(requests[0]!.url, `${BASE}/v1/conversations/${CONV}/messages/3/reactions/%F0%9F%91%8D`);
    assert.equal(requests[0]!.method, "PUT");
    assert.equal(requests[1]!.url, `${BASE}/v1/conversations/${CONV}/members/caf%C3%A9%20x`);
  });

  it("answers undefined for a 204", async () => {
    const { msgd } = client([new Response(null, { status: 204 })]);
    assert.equal(await msgd.deleteMessage(CONV, 4), undefined);
  });

  it("does not repeat a call that is not idempotent after an unknown outcome, but does after a 429", async () => {
    const first = client([apiError(502, "internal")]);
    assert.equal((await rejection(first.msgd.createConversation())).status, 502);
    assert.equal(first.requests.length, 1);
    const second = client([apiError(429, "rate_limited", { "retry-after": "0" }), json(201, {})]);
    await second.msgd.editMessage(CONV, 1, { payload: 2 });
    assert.equal(second.requests.length, 2);
  });

  it("reports an answer that is not msgd's error shape", async () => {
    const { msgd } = client([new Response("<html>bad gateway</html>", { status: 502 })], { retry: { retries: 0 } });
    const error = await rejection(msgd.getConversation(CONV));
    assert.equal(error.status, 502);
    assert.equal(error.code, "unexpected_response");
  });

  it("times out an attempt that gets no answer", async () => {
    const hang = (_url: string, init: RequestInit) =>
      new Promise<Response>((_, reject) => init.signal?.addEventListener("abort", () => reject(new Error("aborted"))));
    const msgd = new MsgdClient({ baseUrl: BASE, apiKey: "k", fetch: hang, timeoutMs: 20, retry: { retries: 0 } });
    const error = await rejection(msgd.getReceipts(CONV));
    assert.equal(error.status, 0);
    assert.equal(error.code, "timeout");
  });
});

describe("history and threads", () => {
  it("follow next_cursor until it is null, passing the cursor alone", async () => {
    const page = (seqs: number[], next: string | null) =>
      json(200, { messages: seqs.map((seq) => ({ ...sent, seq })), next_cursor: next });
    const { msgd, requests } = client([page([9, 8], "c1"), page([7, 6], "c2"), page([5], null)]);
    const seqs: number[] = [];
    for await (const message of msgd.history(CONV, { order: "desc", limit: 2 })) seqs.push(message.seq);
    assert.deepEqual(seqs, [9, 8, 7, 6, 5]);
    assert.deepEqual(
      requests.map((r) => new URL(r.url).search),
      ["?order=desc&limit=2", "?cursor=c1", "?cursor=c2"],
    );
  });

  it("yields a thread's replies across pages", async () => {
    const page = (seqs: number[], next: string | null) =>
      json(200, { parent: sent, replies: seqs.map((seq) => ({ ...sent, seq, reply_to: 7 })), next_cursor: next });
    const { msgd, requests } = client([page([8], "t1"), page([9], null)]);
    const seqs: number[] = [];
    for await (const reply of msgd.thread(CONV, 7, { limit: 1 })) seqs.push(reply.seq);
    assert.deepEqual(seqs, [8, 9]);
    assert.equal(new URL(requests[0]!.url).pathname, `/v1/conversations/${CONV}/messages/7/thread`);
  });
});

describe("attachments", () => {
  const bytes = new TextEncoder().encode("hello");
  const sha256 = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
  const target = (url: string) =>
    json(201, {
      id: "att-1",
      key: "attachments/k",
      upload: { method: "PUT", url, headers: { "content-type": "text/plain" } },
      expires_at: 1,
    });

  it("declares, then PUTs exactly the bytes with exactly the upload headers and no API key", async () => {
    const { msgd, requests } = client([target("/v1/uploads/tok"), new Response(null, { status: 204 })]);
    const uploaded = await msgd.uploadAttachment(CONV, bytes, { contentType: "text/plain", filename: "h.txt" });
    assert.deepEqual(JSON.parse(requests[0]!.body as string), {
      content_type: "text/plain",
      size: 5,
      sha256,
      filename: "h.txt",
    });
    assert.equal(requests[1]!.url, `${BASE}/v1/uploads/tok`);
    assert.equal(requests[1]!.method, "PUT");
    assert.deepEqual(requests[1]!.headers, { "content-type": "text/plain" });
    assert.equal(requests[1]!.body, bytes);
    assert.deepEqual(uploaded, {
      id: "att-1",
      attachment: { key: "attachments/k", content_type: "text/plain", size: 5, sha256 },
    });
  });

  it("PUTs to a presigned URL as given (and reads S3's empty 200)", async () => {
    const s3 = "https://s3.test/bucket/k?X-Amz-Signature=abc";
    const { msgd, requests } = client([target(s3), new Response("", { status: 200 })]);
    await msgd.uploadAttachment(CONV, bytes, { contentType: "text/plain", sha256 });
    assert.equal(requests[1]!.url, s3);
  });

  it("follows a download redirect without msgd's credentials", async () => {
    const s3 = "https://s3.test/bucket/k?X-Amz-Signature=abc";
    const { msgd, requests } = client([
      new Response(null, { status: 307, headers: { location: s3 } }),
      new Response("hello", { status: 200 }),
    ]);
    const response = await msgd.downloadAttachment(CONV, "att-1");
    assert.equal(await response.text(), "hello");
    assert.equal(requests[0]!.redirect, "manual");
    assert.equal(requests[0]!.headers["x-api-key"], "msgd_pk_test");
    assert.equal(requests[1]!.url, s3);
    assert.deepEqual(requests[1]!.headers, {});
  });
});

describe("retry timing", () => {
  it("backs off exponentially, jittered within the upper half, up to the cap", () => {
    const options = { baseDelayMs: 100, maxDelayMs: 1_000 };
    for (const [attempt, ceiling] of [
      [0, 100],
      [1, 200],
      [3, 800],
      [4, 1_000],
      [9, 1_000],
    ] as const) {
      assert.equal(
        backoffDelay(attempt, options, () => 0),
        ceiling / 2,
      );
      assert.equal(
        backoffDelay(attempt, options, () => 1),
        ceiling,
      );
    }
  });

  it("reads Retry-After as seconds or as an HTTP date", () => {
    assert.equal(parseRetryAfter("3"), 3);
    assert.equal(parseRetryAfter(new Date(10_000).toUTCString(), 4_000), 6);
    assert.equal(parseRetryAfter(null), undefined);
    assert.equal(parseRetryAfter("soon"), undefined);
  });
});

async function rejection(promise: Promise<unknown>): Promise<MsgdError> {
  try {
    await promise;
  } catch (error) {
    assert.ok(error instanceof MsgdError, `not a MsgdError: ${error}`);
    return error;
  }
  assert.fail("it did not fail");
}
