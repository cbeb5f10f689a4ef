import type { ErrorBody } from "./types.js";

/**
 * Every failure the SDK reports. `code` is the server's stable `error.code`
 * (branch on it, never on `message`), or one of the SDK's own:
 * `network_error` and `timeout` (no answer: `status` 0), `token_error`
 * (the accessToken function threw; the error is the `cause`) and
 * `unexpected_response` (an answer that is not msgd's, such as a proxy's
 * HTML page).
 */
export class MsgdError extends Error {
  override readonly name = "MsgdError";
  /** The HTTP status; 0 when there was none (network, WebSocket frame). */
  readonly status: number;
  readonly code: string;
  /** Seconds the server asked to wait (`Retry-After`), when it did. */
  readonly retryAfter: number | undefined;
  /** The conversation an error frame concerns, when the server named one. */
  readonly conversationId: string | undefined;

  constructor(
    status: number,
    code: string,
    message: string,
    extra: { retryAfter?: number; conversationId?: string; cause?: unknown } = {},
  ) {
    super(message, extra.cause === undefined ? undefined : { cause: extra.cause });
    this.status = status;
    this.code = code;
    this.retryAfter = extra.retryAfter;
    this.conversationId = extra.conversationId;
  }
}

/** Reads a refused HTTP response into a MsgdError. */
export async function errorFromResponse(response: Response): Promise<MsgdError> {
  const retryAfter = parseRetryAfter(response.headers.get("retry-after"));
  const text = await response.text().catch(() => "");
  const body = parseErrorBody(text);
  if (body === undefined) {
    const message = `HTTP ${response.status} without msgd's error body: ${text.slice(0, 200)}`;
    return new MsgdError(response.status, "unexpected_response", message, { retryAfter });
  }
  return new MsgdError(response.status, body.code, body.message, { retryAfter });
}

function parseErrorBody(text: string): ErrorBody | undefined {
  try {
    const error = (JSON.parse(text) as { error?: Partial<ErrorBody> }).error;
    if (typeof error?.code === "string") {
      return { code: error.code, message: String(error.message ?? "") };
    }
  } catch {
    // Not JSON: the caller reports it as unexpected_response.
  }
  return undefined;
}

/**
 * `Retry-After` in seconds: delta-seconds (what msgd sends) or an HTTP-date
 * (what a proxy in front of it may send). Undefined when absent or unreadable.
 */
export function parseRetryAfter(value: string | null, now = Date.now()): number | undefined {
  if (value === null || value.trim() === "") return undefined;
  if (/^\d+$/.test(value.trim())) return Number(value.trim());
  const date = Date.parse(value);
  return Number.isNaN(date) ? undefined : Math.max(0, Math.ceil((date - now) / 1000));
}
