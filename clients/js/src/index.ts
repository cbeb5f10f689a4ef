export { MsgdClient, type MsgdClientOptions, type UploadOptions, type UploadedAttachment } from "./client.js";
export {
  LiveClient,
  type LiveEvents,
  type LiveOptions,
  type WebSocketConstructor,
  type WebSocketLike,
} from "./live.js";
export { MsgdError, parseRetryAfter } from "./errors.js";
export { backoffDelay, type BackoffOptions } from "./backoff.js";
export type { AccessToken, FetchLike, RetryOptions } from "./http.js";
export type { CryptoLike } from "./ids.js";
export { OPERATIONS, type OperationEntry } from "./operations.js";
export type * from "./frames.js";
export type * from "./types.js";
export type { components, operations, paths } from "./generated/openapi.js";
