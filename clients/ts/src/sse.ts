/**
 * Typed Server-Sent Events over `fetch` (EventSource cannot send the X-API-Key header).
 *
 * `jobEvents(client, id)` yields the job's `EventOut`s and `batchEvents(client, id)` the batch's `BatchEventOut`s,
 * as an async iterator that ends when the service ends the stream (after the final state). A dropped connection
 * is resumed with `Last-Event-ID`, so no event is lost or repeated; an `AbortSignal` stops it (the iterator then
 * ends quietly), and so does leaving a `for await` loop early.
 */
import type { Client } from './gen/client';
import type { BatchEventOut, EventOut } from './gen/types.gen';
import { ProblemError } from './errors';

/** One message of a stream, as the service sent it. */
export interface SseMessage {
  id?: string;
  event: string;
  data: string;
  retry?: number;
}

export interface StreamOptions {
  /** Stops the stream: the iterator ends without an error. */
  signal?: AbortSignal;
  /** Resume after this event id (the events up to it are not sent again). */
  lastEventId?: number | string;
  /** Consecutive failed (re)connections before the iterator throws; default 5. */
  maxRetries?: number;
  /** Wait before reconnecting, in ms, unless the service sent `retry:`; default 1000. */
  retryDelayMs?: number;
}

/** The messages of an event stream body (the text/event-stream format: `field: value` lines, a blank line ends
 * a message, `:` lines are comments, e.g. the service's pings). `onRetry` hears each `retry:` field at once, as
 * EventSource does, whether or not a message follows it. */
export async function* parseSse(
  body: ReadableStream<Uint8Array>,
  onRetry?: (ms: number) => void,
): AsyncGenerator<SseMessage> {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = '';
  let data: string[] = [];
  let event = '';
  let id: string | undefined;
  let retry: number | undefined;
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) return; // an unfinished message at the end is dropped, as EventSource does
      buffer += decoder.decode(value, { stream: true });
      for (;;) {
        const match = /\r\n|\r|\n/.exec(buffer);
        // a lone '\r' at the end may be the first half of '\r\n': wait for more
        if (!match || (match[0] === '\r' && match.index === buffer.length - 1)) break;
        const line = buffer.slice(0, match.index);
        buffer = buffer.slice(match.index + match[0].length);
        if (line === '') {
          if (data.length) yield { id, event: event || 'message', data: data.join('\n'), retry };
          data = [];
          event = '';
          retry = undefined;
          continue;
        }
        if (line.startsWith(':')) continue;
        const colon = line.indexOf(':');
        const field = colon < 0 ? line : line.slice(0, colon);
        let value_ = colon < 0 ? '' : line.slice(colon + 1);
        if (value_.startsWith(' ')) value_ = value_.slice(1);
        if (field === 'data') data.push(value_);
        else if (field === 'event') event = value_;
        else if (field === 'id' && !value_.includes('\0')) id = value_;
        else if (field === 'retry' && /^\d+$/.test(value_)) {
          retry = Number(value_);
          onRetry?.(retry);
        }
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

const sleep = (ms: number, signal?: AbortSignal) =>
  new Promise<void>((resolve) => {
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      signal?.removeEventListener('abort', done);
      resolve();
    }
    signal?.addEventListener('abort', done, { once: true });
  });

/**
 * The parsed `data` of every message of the stream at `url` (a path of the API, with `path` parameters),
 * reconnecting with `Last-Event-ID` after a dropped connection. A problem answer (404, 401, ...) throws a
 * `ProblemError`; a 5xx or a network error is retried up to `maxRetries` times in a row.
 */
export async function* streamEvents<T>(
  client: Client,
  url: string,
  path: Record<string, string>,
  options: StreamOptions = {},
  parse: (message: SseMessage) => T = (m) => JSON.parse(m.data) as T,
): AsyncGenerator<T> {
  const config = client.getConfig();
  const doFetch = config.fetch ?? globalThis.fetch;
  const target = client.buildUrl({ baseUrl: config.baseUrl, url, path });
  const maxRetries = options.maxRetries ?? 5;
  let delay = options.retryDelayMs ?? 1000;
  let lastId = options.lastEventId === undefined ? undefined : String(options.lastEventId);
  let failures = 0;
  const signal = options.signal;
  while (!signal?.aborted) {
    const headers = new Headers(config.headers as HeadersInit | undefined);
    headers.set('Accept', 'text/event-stream');
    headers.delete('Content-Type');
    if (lastId !== undefined) headers.set('Last-Event-ID', lastId);
    let response: Response;
    try {
      response = await doFetch(target, { method: 'GET', headers, signal, cache: 'no-store' });
    } catch (error) {
      if (signal?.aborted) return;
      if (++failures > maxRetries) throw error;
      await sleep(delay, signal);
      continue;
    }
    if (!response.ok) {
      const problem = await ProblemError.fromResponse(response);
      if (response.status < 500 || ++failures > maxRetries) throw problem;
      await sleep(delay, signal);
      continue;
    }
    if (!response.body) throw new ProblemError({ status: 502, title: 'Bad Gateway', detail: 'an event stream with no body' }, response);
    try {
      for await (const message of parseSse(response.body, (ms) => (delay = ms))) {
        if (message.id !== undefined) lastId = message.id;
        failures = 0;
        yield parse(message);
      }
      return; // the service ended the stream: the job (or batch) is over
    } catch (error) {
      if (signal?.aborted) return;
      if (++failures > maxRetries) throw error;
      await sleep(delay, signal);
    }
  }
}

/** Every event of a job (state, progress, info) until it has ended: `GET /v1/jobs/{job_id}/events`. */
export function jobEvents(client: Client, jobId: string, options?: StreamOptions): AsyncGenerator<EventOut> {
  return streamEvents<EventOut>(client, '/v1/jobs/{job_id}/events', { job_id: jobId }, options);
}

/** The state events of a batch's jobs, each with the batch's counts, until every job has ended:
 * `GET /v1/batches/{batch_id}/events`. */
export function batchEvents(client: Client, batchId: string, options?: StreamOptions): AsyncGenerator<BatchEventOut> {
  return streamEvents<BatchEventOut>(client, '/v1/batches/{batch_id}/events', { batch_id: batchId }, options);
}
