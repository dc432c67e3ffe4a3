/**
 * @medialab/client: the typed client of the Media Lab orchestrator API.
 *
 * ```ts
 * const ml = createMediaLab({ baseUrl: 'http://127.0.0.1:8000', apiKey: 'mlk_...' });
 * const { data: job } = await jobsSubmit({ client: ml, body: { template: 'upscale-esrgan', params: {...} } });
 * for await (const event of jobEvents(ml, job.id)) console.log(event.kind, event.state);
 * ```
 * The SDK functions (`jobsSubmit`, `artifactsUpload`, ...) and the types (`JobOut`, `EventOut`, ...) are generated
 * from `openapi.json` into `src/gen/` (`npm run generate`); this file and `errors.ts`, `sse.ts` are written by hand.
 */
import { type Client, createClient, createConfig } from './gen/client';
import type { ClientOptions } from './gen/types.gen';
import { ProblemError } from './errors';

export * from './gen/sdk.gen';
export type * from './gen/types.gen';
export { client as defaultClient } from './gen/client.gen';
export { type Client, type Config, createClient, createConfig } from './gen/client';
export { isProblem, isProblemError, ProblemError, type ProblemFieldError } from './errors';
export { batchEvents, jobEvents, parseSse, type SseMessage, type StreamOptions, streamEvents } from './sse';

/** Where the service is and the key to call it with. */
export interface MediaLabOptions {
  /** The service's URL, e.g. `http://127.0.0.1:8000` (no `/v1`: the operations' paths carry it). */
  baseUrl: string;
  /** An API key (`mlk_...`), sent as `X-API-Key`; omit it only for a browser session that adds its own. */
  apiKey?: string;
  /** A fetch to use instead of `globalThis.fetch` (tests, proxies). */
  fetch?: typeof fetch;
  /** More headers for every request. */
  headers?: Record<string, string>;
}

/** A client for one service: every SDK function takes it as `client`; a failed call throws a `ProblemError`. */
export function createMediaLab(options: MediaLabOptions): Client {
  const headers: Record<string, string> = { ...options.headers };
  if (options.apiKey) headers['X-API-Key'] = options.apiKey;
  const client = createClient(
    createConfig<ClientOptions>({
      baseUrl: options.baseUrl.replace(/\/+$/, ''),
      fetch: options.fetch,
      headers,
      throwOnError: true,
    }),
  );
  client.interceptors.error.use((error, response) => ProblemError.from(error, response));
  return client;
}
