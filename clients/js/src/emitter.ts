// Handlers are stored untyped; on() and emit() are where the types hold.
type Handler = (...args: any[]) => void;

/** A small typed event emitter that needs nothing from Node or the DOM. */
export class Emitter<Events extends { [E in keyof Events]: unknown[] }> {
  readonly #handlers = new Map<keyof Events, Set<Handler>>();

  /** Adds a handler; returns a function that removes it. */
  on<E extends keyof Events>(event: E, handler: (...args: Events[E]) => void): () => void {
    let handlers = this.#handlers.get(event);
    if (!handlers) this.#handlers.set(event, (handlers = new Set()));
    handlers.add(handler);
    return () => this.off(event, handler);
  }

  off<E extends keyof Events>(event: E, handler: (...args: Events[E]) => void): void {
    this.#handlers.get(event)?.delete(handler);
  }

  /**
   * Calls each handler. One that throws does not stop the others or the
   * caller's bookkeeping: its error is rethrown on its own, where the
   * platform reports uncaught errors.
   */
  protected emit<E extends keyof Events>(event: E, ...args: Events[E]): void {
    for (const handler of [...(this.#handlers.get(event) ?? [])]) {
      try {
        handler(...args);
      } catch (error) {
        queueMicrotask(() => {
          throw error;
        });
      }
    }
  }
}
