/** Bounded exponential backoff, shared by HTTP retries and WebSocket reconnects. */
export interface BackoffOptions {
  /** The first delay's ceiling, in ms. */
  baseDelayMs?: number;
  /** No delay is longer than this, in ms. */
  maxDelayMs?: number;
}

/**
 * The delay before retry number `attempt` (0 for the first): the ceiling
 * doubles per attempt up to `maxDelayMs`, and the delay is drawn from its
 * upper half ("equal jitter"), so clients that failed together do not all
 * come back at the same instant, yet none retries almost at once.
 */
export function backoffDelay(
  attempt: number,
  { baseDelayMs, maxDelayMs }: Required<BackoffOptions>,
  random: () => number = Math.random,
): number {
  const ceiling = Math.min(maxDelayMs, baseDelayMs * 2 ** attempt);
  return ceiling / 2 + (random() * ceiling) / 2;
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
