/**
 * The client against a real `medialab serve` (started by tests/integration/test_ts_client.py, which sets
 * MEDIALAB_URL, MEDIALAB_API_KEY and MEDIALAB_TEST_PNG): upload, submit an upscale, follow its events to the
 * end, download the output; and the problems the service answers, typed.
 *
 * Run: npm test -w @medialab/client (compiles with tsc, then node --test).
 */
import * as assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { test } from 'node:test';

import {
  artifactsContent,
  artifactsUpload,
  createMediaLab,
  type EventOut,
  isProblemError,
  jobEvents,
  jobsGet,
  jobsSubmit,
  ProblemError,
} from '../src/index';

const url = process.env.MEDIALAB_URL;
const apiKey = process.env.MEDIALAB_API_KEY;
const png = process.env.MEDIALAB_TEST_PNG;
const model = process.env.MEDIALAB_TEST_MODEL ?? 'tiny_x4.safetensors';
const PNG_SIGNATURE = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];

test('upload, submit an upscale, stream its events to SUCCEEDED, fetch the output', { skip: !url && 'MEDIALAB_URL unset' }, async () => {
  const ml = createMediaLab({ baseUrl: url!, apiKey });
  const bytes = await readFile(png!);
  const { data: artifact } = await artifactsUpload({
    client: ml,
    body: { file: new File([bytes], 'frame.png', { type: 'image/png' }), tags: 'ts-client' },
  });
  assert.equal(artifact.role, 'input');
  assert.equal(artifact.size, bytes.length);
  assert.deepEqual(artifact.tags, ['ts-client']);

  const { data: job } = await jobsSubmit({
    client: ml,
    body: { template: 'upscale-esrgan', params: { image: artifact.id, model } },
  });
  assert.match(job.id, /^\w{32}$/);

  const events: EventOut[] = [];
  const timeout = AbortSignal.timeout(240_000);
  for await (const event of jobEvents(ml, job.id, { signal: timeout })) events.push(event);
  assert.ok(!timeout.aborted, 'the stream did not end within 240 s');
  const states = events.filter((e) => e.state).map((e) => e.state);
  assert.equal(states.at(-1), 'SUCCEEDED', JSON.stringify(events));
  assert.ok(states.includes('RUNNING'), `states: ${states}`);
  const ids = events.map((e) => e.id);
  assert.deepEqual(ids, [...ids].sort((a, b) => a - b), 'event ids in order');
  assert.equal(new Set(ids).size, ids.length, 'no event twice');
  assert.ok(events.every((e) => e.job_id === job.id));

  // Resuming after an event (what a reconnection sends as Last-Event-ID) gives exactly the events after it.
  const resumed: EventOut[] = [];
  for await (const event of jobEvents(ml, job.id, { lastEventId: ids[0] })) resumed.push(event);
  assert.deepEqual(resumed.map((e) => e.id), ids.slice(1));

  const { data: done } = await jobsGet({ client: ml, path: { job_id: job.id } });
  assert.equal(done.state, 'SUCCEEDED');
  assert.equal(done.outputs?.length, 1);
  const output = done.outputs![0];
  assert.equal(output.content_type, 'image/png');
  const { data } = await artifactsContent({ client: ml, path: { artifact_id: output.id }, parseAs: 'arrayBuffer' });
  const content = new Uint8Array(data as ArrayBuffer);
  assert.equal(content.length, output.size);
  assert.deepEqual([...content.slice(0, 8)], PNG_SIGNATURE);
  assert.equal(output.width, 4 * (artifact.width ?? 0), 'an x4 model');
});

test('a refused parameter is a ProblemError naming it', { skip: !url && 'MEDIALAB_URL unset' }, async () => {
  const ml = createMediaLab({ baseUrl: url!, apiKey });
  const refused = await jobsSubmit({
    client: ml,
    body: { template: 'upscale-esrgan', params: { image: 'x'.repeat(32), model, resize: 99 } },
  }).then(
    () => assert.fail('a resize of 99 was accepted'),
    (error: unknown) => error,
  );
  assert.ok(refused instanceof ProblemError, String(refused));
  assert.equal(refused.status, 422);
  assert.match(refused.detail, /resize/, refused.detail);
  assert.equal(refused.response?.headers.get('content-type'), 'application/problem+json');

  await assert.rejects(
    async () => {
      for await (const _ of jobEvents(ml, 'f'.repeat(32))) assert.fail('events of a job that does not exist');
    },
    (error: unknown) => isProblemError(error, 404),
  );
  const anonymous = createMediaLab({ baseUrl: url! });
  await assert.rejects(jobsGet({ client: anonymous, path: { job_id: 'f'.repeat(32) } }), (error: unknown) =>
    isProblemError(error, 401),
  );
});
