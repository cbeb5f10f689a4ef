// Stand-ins for fetch and WebSocket that the tests drive by hand.
import type { FetchLike, WebSocketLike } from "../dist/index.js";

export interface SentRequest {
  url: string;
  method: string;
  headers: Record<string, string>;
  body: string | Uint8Array | undefined;
  redirect: string | undefined;
}

/** An answer, a thrown error (no answer), or a function of the request giving either. */
export type Answer = Response | Error | ((request: SentRequest) => Response | Error);

/** A fetch that answers from a script, one entry per call, and records each request. */
export function scriptedFetch(answers: Answer[]): { fetch: FetchLike; requests: SentRequest[] } {
  const requests: SentRequest[] = [];
  const fetch: FetchLike = async (url, init) => {
    const request: SentRequest = {
      url,
      method: init.method ?? "GET",
      headers: { ...(init.headers as Record<string, string>) },
      body: init.body as string | Uint8Array | undefined,
      redirect: init.redirect,
    };
    requests.push(request);
    const next = answers.shift();
    if (next === undefined) throw new Error(`unscripted request ${request.method} ${url}`);
    const answer = typeof next === "function" ? next(request) : next;
    if (answer instanceof Error) throw answer;
    return answer;
  };
  return { fetch, requests };
}

export function json(status: number, body: unknown, headers: Record<string, string> = {}): Response {
  return new Response(JSON.stringify(body), { status, headers: { "content-type": "application/json", ...headers } });
}

export function apiError(status: number, code: string, headers: Record<string, string> = {}): Response {
  return json(status, { error: { code, message: `${code} happened` } }, headers);
}

/** What a fetch rejects with when the connection fails. */
export function networkError(): TypeError {
  return new TypeError("fetch failed");
}

export interface FakeSocket extends WebSocketLike {
  url: string;
  /** Frames the client sent, parsed. */
  sent: Array<Record<string, unknown>>;
  open(): void;
  receive(frame: Record<string, unknown>): void;
  /** The connection ends from the server's side (or the network's). */
  drop(code?: number, reason?: string): void;
}

/** A WebSocket class whose instances (in creation order) the test opens, feeds and drops. */
export function fakeSockets(): { WebSocket: new (url: string) => FakeSocket; sockets: FakeSocket[] } {
  const sockets: FakeSocket[] = [];
  class Fake implements FakeSocket {
    readyState = 0;
    sent: Array<Record<string, unknown>> = [];
    onopen: ((event: unknown) => void) | null = null;
    onmessage: ((event: { data: string }) => void) | null = null;
    onclose: ((event: { code: number; reason: string }) => void) | null = null;
    onerror: ((event: unknown) => void) | null = null;

    constructor(readonly url: string) {
      sockets.push(this);
    }

    send(data: string): void {
      this.sent.push(JSON.parse(data));
    }

    close(code = 1005, reason = ""): void {
      if (this.readyState === 3) return;
      this.readyState = 3;
      queueMicrotask(() => this.onclose?.({ code, reason }));
    }

    open(): void {
      this.readyState = 1;
      this.onopen?.({});
    }

    receive(frame: Record<string, unknown>): void {
      this.onmessage?.({ data: JSON.stringify(frame) });
    }

    drop(code = 1006, reason = ""): void {
      this.readyState = 3;
      this.onclose?.({ code, reason });
    }
  }
  return { WebSocket: Fake, sockets };
}

/** Waits until `check` holds, polling; fails naming `what` after `timeoutMs`. */
export async function until(check: () => boolean, what: string, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

export function envelope(
  conversationId: string,
  seq: number,
  extra: Record<string, unknown> = {},
): Record<string, unknown> {
  return {
    v: 1,
    id: `id-${seq}`,
    conversation_id: conversationId,
    seq,
    ts: 1_700_000_000_000 + seq,
    sender: { kind: "user", id: "alice" },
    payload: { n: seq },
    attachments: [],
    ...extra,
  };
}
