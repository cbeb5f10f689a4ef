import { backoffDelay, sleep, type BackoffOptions } from "./backoff.js";
import { errorFromResponse, MsgdError } from "./errors.js";

/** A user token, or a function that gives the current one (called per request and per connection). */
export type AccessToken = string | (() => string | Promise<string>);

export type FetchLike = (input: string, init: RequestInit) => Promise<Response>;

export interface RetryOptions extends BackoffOptions {
  /** Retries after the first attempt (default 4; 0 turns retrying off). */
  retries?: number;
  /**
   * A `Retry-After` longer than this (ms, default 60 000) is not slept
   * through: the error is thrown, with its `retryAfter`, for the caller to decide.
   */
  maxRetryAfterMs?: number;
}

export interface TransportOptions {
  baseUrl: string;
  apiKey: string;
  accessToken?: AccessToken;
  fetch?: FetchLike;
  retry?: RetryOptions;
  /** One attempt's deadline, response body included (ms, default 30 000). */
  timeoutMs?: number;
}

/** One HTTP call, described once so that every retry sends exactly the same request. */
export interface Call {
  method: "GET" | "POST" | "PUT" | "PATCH" | "DELETE";
  /** Under the base URL, already encoded; or an absolute URL (an S3 upload or download). */
  path: string;
  query?: Record<string, string | number | undefined>;
  /** A JSON body, serialised once. */
  json?: unknown;
  /** A raw body (upload bytes). */
  bytes?: Uint8Array;
  headers?: Record<string, string>;
  /** Whether to send the API key and token (default true; false for presigned URLs). */
  credentials?: boolean;
  /**
   * Whether repeating the call after an unknown outcome (no answer, a 5xx)
   * is safe. A 429 is retried either way: the server refused before acting.
   */
  idempotent: boolean;
  /** Hand 3xx answers to the reader instead of following them. */
  manualRedirect?: boolean;
}

export type Reader<T> = (response: Response) => Promise<T>;

const DEFAULT_RETRY: Required<RetryOptions> = {
  retries: 4,
  baseDelayMs: 200,
  maxDelayMs: 5_000,
  maxRetryAfterMs: 60_000,
};

/** Sends calls to msgd: credentials, timeouts, retries, and errors as MsgdError. */
export class Transport {
  readonly baseUrl: string;
  readonly apiKey: string;
  readonly #accessToken: AccessToken | undefined;
  readonly #fetch: FetchLike;
  readonly #retry: Required<RetryOptions>;
  readonly #timeoutMs: number;

  constructor(options: TransportOptions) {
    this.baseUrl = options.baseUrl.replace(/\/+$/, "");
    this.apiKey = options.apiKey;
    this.#accessToken = options.accessToken;
    const fetch = options.fetch ?? (globalThis.fetch as FetchLike | undefined)?.bind(globalThis);
    if (!fetch) throw new TypeError("no fetch here: pass options.fetch");
    this.#fetch = fetch;
    this.#retry = { ...DEFAULT_RETRY, ...options.retry };
    this.#timeoutMs = options.timeoutMs ?? 30_000;
  }

  /** Whether the token can change between calls (it is a function). */
  get renewableToken(): boolean {
    return typeof this.#accessToken === "function";
  }

  async accessToken(): Promise<string | undefined> {
    const token = this.#accessToken;
    return typeof token === "function" ? await token() : token;
  }

  /** The call's JSON answer (undefined for a 204). */
  json<T>(call: Call): Promise<T> {
    return this.request(call, readJson<T>);
  }

  /** Makes the call, retrying what may be retried, and reads a successful answer with `read`. */
  async request<T>(call: Call, read: Reader<T>): Promise<T> {
    const body = call.json === undefined ? call.bytes : JSON.stringify(call.json);
    for (let attempt = 0; ; attempt++) {
      try {
        return await this.#attempt(call, body, read);
      } catch (error) {
        const failure = asMsgdError(error);
        const delay = this.#retryDelay(failure, call.idempotent, attempt);
        if (delay === undefined) throw failure;
        await sleep(delay);
      }
    }
  }

  async #attempt<T>(call: Call, body: string | Uint8Array | undefined, read: Reader<T>): Promise<T> {
    const headers = await this.#headers(call);
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), this.#timeoutMs);
    try {
      const response = await this.#fetch(this.#url(call), {
        method: call.method,
        headers,
        // Typed arrays over a SharedArrayBuffer are not bodies; the SDK's are never that.
        body: body as string | Uint8Array<ArrayBuffer> | undefined,
        signal: controller.signal,
        redirect: call.manualRedirect ? "manual" : "follow",
      });
      const handOver = response.ok || (call.manualRedirect === true && isRedirect(response));
      if (!handOver) throw await errorFromResponse(response);
      return await read(response);
    } catch (error) {
      if (controller.signal.aborted && !(error instanceof MsgdError)) {
        throw new MsgdError(0, "timeout", `no answer within ${this.#timeoutMs} ms`, { cause: error });
      }
      throw error;
    } finally {
      clearTimeout(timer);
    }
  }

  /** How long to wait before retrying, or undefined when the failure is final. */
  #retryDelay(error: MsgdError, idempotent: boolean, attempt: number): number | undefined {
    if (attempt >= this.#retry.retries || !isRetryable(error, idempotent)) return undefined;
    if (error.retryAfter === undefined) return backoffDelay(attempt, this.#retry);
    const wait = error.retryAfter * 1000;
    return wait <= this.#retry.maxRetryAfterMs ? wait : undefined;
  }

  #url(call: Call): string {
    const base = /^https?:\/\//i.test(call.path) ? call.path : this.baseUrl + call.path;
    const query = new URLSearchParams();
    for (const [name, value] of Object.entries(call.query ?? {})) {
      if (value !== undefined) query.set(name, String(value));
    }
    const search = query.toString();
    return search === "" ? base : `${base}?${search}`;
  }

  async #headers(call: Call): Promise<Record<string, string>> {
    const headers: Record<string, string> = { ...call.headers };
    if (call.json !== undefined) headers["content-type"] = "application/json";
    if (call.credentials === false) return headers;
    headers["x-api-key"] = this.apiKey;
    const token = await this.accessToken().catch((cause: unknown) => {
      throw new MsgdError(0, "token_error", "accessToken() failed", { cause });
    });
    if (token !== undefined) headers["authorization"] = `Bearer ${token}`;
    return headers;
  }
}

/**
 * Network failures, timeouts and 5xx leave it unknown whether the server
 * acted, so only idempotent calls repeat them; 408 is the server saying it
 * gave up on the request.
 */
function isRetryable(error: MsgdError, idempotent: boolean): boolean {
  if (error.status === 429) return true;
  if (!idempotent) return false;
  if (error.status === 0) return error.code === "network_error" || error.code === "timeout";
  return error.status === 408 || error.status >= 500;
}

function isRedirect(response: Response): boolean {
  return response.type === "opaqueredirect" || (response.status >= 300 && response.status < 400);
}

function asMsgdError(error: unknown): MsgdError {
  if (error instanceof MsgdError) return error;
  const message = error instanceof Error ? error.message : String(error);
  return new MsgdError(0, "network_error", message, { cause: error });
}

async function readJson<T>(response: Response): Promise<T> {
  if (response.status === 204) return undefined as T;
  const text = await response.text();
  try {
    return JSON.parse(text) as T;
  } catch (cause) {
    throw new MsgdError(response.status, "unexpected_response", `not JSON: ${text.slice(0, 200)}`, { cause });
  }
}
