/**
 * src/sse.ts against a local HTTP server that drops the connection in the middle of a stream: the iterator
 * reconnects with Last-Event-ID, loses and repeats nothing, and ends when the server ends the stream.
 */
import * as assert from 'node:assert/strict';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { test } from 'node:test';

import { createMediaLab, type EventOut, jobEvents, ProblemError } from '../src/index';

const event = (id: number, state: string | null): EventOut => ({
  id, job_id: 'j'.repeat(32), at: '2026-01-01T00:00:00Z', kind: state ? 'state' : 'progress', state: state as EventOut['state'],
  reason: '', data: null,
});
const frame = (e: EventOut) => `id: ${e.id}\r\nevent: ${e.kind}\r\ndata: ${JSON.stringify(e)}\r\n\r\n`;

async function serve(handler: (req: IncomingMessage, res: ServerResponse) => void): Promise<{ url: string; close: () => Promise<void> }> {
  const server = createServer(handler);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    close: () => new Promise<void>((resolve) => { server.closeAllConnections(); server.close(() => resolve()); }),
  };
}

test('a dropped stream is resumed with Last-Event-ID and ends with the server', async () => {
  const seen: Array<{ key?: string; lastEventId?: string }> = [];
  const service = await serve((req, res) => {
    seen.push({ key: req.headers['x-api-key'] as string, lastEventId: req.headers['last-event-id'] as string | undefined });
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    if (seen.length === 1) {
      res.write(': ping\r\n\r\nretry: 10\r\n\r\n');
      res.write(frame(event(1, 'QUEUED')) + frame(event(2, 'RUNNING')));
      res.write('id: 3\r\ndata: {"unfinished'); // then the connection drops mid-message
      setTimeout(() => res.socket?.destroy(), 20);
    } else {
      res.end(frame(event(3, null)) + frame(event(4, 'SUCCEEDED')));
    }
  });
  try {
    const ml = createMediaLab({ baseUrl: `${service.url}/`, apiKey: 'mlk_test' });
    const got: EventOut[] = [];
    for await (const e of jobEvents(ml, 'j'.repeat(32))) got.push(e);
    assert.deepEqual(got.map((e) => [e.id, e.state]), [[1, 'QUEUED'], [2, 'RUNNING'], [3, null], [4, 'SUCCEEDED']]);
    assert.deepEqual(seen, [{ key: 'mlk_test', lastEventId: undefined }, { key: 'mlk_test', lastEventId: '2' }]);
  } finally {
    await service.close();
  }
});

test('a problem answer throws at once; an abort ends the stream quietly', async () => {
  let calls = 0;
  const service = await serve((req, res) => {
    calls += 1;
    if (req.url?.includes('missing')) {
      res.writeHead(404, { 'content-type': 'application/problem+json' });
      res.end(JSON.stringify({ type: 'about:blank', title: 'Not found', status: 404, detail: "no job 'missing'" }));
      return;
    }
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    res.write(frame(event(1, 'RUNNING'))); // and never ends
  });
  try {
    const ml = createMediaLab({ baseUrl: service.url, apiKey: 'mlk_test' });
    await assert.rejects(async () => {
      for await (const _ of jobEvents(ml, 'missing')) assert.fail('no events of a missing job');
    }, (e: unknown) => e instanceof ProblemError && e.status === 404 && e.detail === "no job 'missing'");
    assert.equal(calls, 1, 'a 404 is not retried');
    const stop = new AbortController();
    const got: number[] = [];
    for await (const e of jobEvents(ml, 'j'.repeat(32), { signal: stop.signal })) {
      got.push(e.id);
      stop.abort();
    }
    assert.deepEqual(got, [1]);
  } finally {
    await service.close();
  }
});
