/** The parts of Web Crypto the SDK uses; `globalThis.crypto` where there is one. */
export interface CryptoLike {
  randomUUID?(): string;
  getRandomValues?(array: Uint8Array): unknown;
  subtle?: { digest(algorithm: "SHA-256", data: Uint8Array): Promise<ArrayBuffer> };
}

/**
 * A random UUIDv4 for `client_msg_id`. Node 18 has no global `crypto`
 * unless one is passed in, so this falls back to Math.random: an idempotency
 * key only has to be unique per sender and conversation, not secret.
 */
export function randomUuid(crypto: CryptoLike | undefined): string {
  if (crypto?.randomUUID) return crypto.randomUUID();
  const bytes = new Uint8Array(16);
  if (crypto?.getRandomValues) crypto.getRandomValues(bytes);
  else for (let i = 0; i < 16; i++) bytes[i] = Math.floor(Math.random() * 256);
  bytes[6] = (bytes[6]! & 0x0f) | 0x40;
  bytes[8] = (bytes[8]! & 0x3f) | 0x80;
  const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/**
 * A conversation id in the server's canonical form (lowercase, hyphenated),
 * so a subscription made with `{ID}` or `urn:uuid:id` matches the frames the
 * server sends for it. Anything that is no UUID is kept as given.
 */
export function canonicalConversationId(id: string): string {
  const bare = id
    .toLowerCase()
    .replace(/^urn:uuid:/, "")
    .replace(/^\{(.*)\}$/, "$1");
  const hyphenated = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/.test(bare);
  if (!hyphenated && !/^[0-9a-f]{32}$/.test(bare)) return id;
  const hex = bare.replaceAll("-", "");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/** Lowercase hex SHA-256 of `bytes`, as attachments declare it. */
export async function sha256Hex(crypto: CryptoLike | undefined, bytes: Uint8Array): Promise<string> {
  if (!crypto?.subtle) {
    throw new TypeError(
      "no Web Crypto here: pass options.crypto (on Node 18: webcrypto from node:crypto) or the sha256",
    );
  }
  const digest = await crypto.subtle.digest("SHA-256", bytes);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}
