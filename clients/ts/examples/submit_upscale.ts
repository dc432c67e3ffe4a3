/**
 * Upload a picture, submit an ESRGAN upscale of it, follow the job's events to the end, save the output.
 *
 *   MEDIALAB_URL=http://127.0.0.1:8000 MEDIALAB_API_KEY=mlk_... <run this> frame.png [model.safetensors]
 *
 * (The key needs the `run` role to submit and `export` to download.)
 */
import { readFile, writeFile } from 'node:fs/promises';
import { basename } from 'node:path';

import {
  artifactsContent,
  artifactsUpload,
  createMediaLab,
  type EventOut,
  isProblemError,
  jobEvents,
  jobsGet,
  jobsSubmit,
  type JobOut,
} from '../src/index';

async function main(): Promise<void> {
  const [input, model = 'RealESRGAN_x4plus.pth'] = process.argv.slice(2);
  if (!input) throw new Error('usage: submit_upscale FRAME.png [MODEL]');
  const ml = createMediaLab({
    baseUrl: process.env.MEDIALAB_URL ?? 'http://127.0.0.1:8000',
    apiKey: process.env.MEDIALAB_API_KEY,
  });

  const bytes = await readFile(input);
  const { data: artifact } = await artifactsUpload({
    client: ml,
    body: { file: new File([bytes], basename(input), { type: 'image/png' }), tags: 'example' },
  });
  console.log(`uploaded ${artifact.filename} as ${artifact.id}`);

  const { data: job } = await jobsSubmit({
    client: ml,
    body: { template: 'upscale-esrgan', params: { image: artifact.id, model } },
  });
  console.log(`queued job ${job.id}`);

  let last: EventOut | undefined;
  for await (const event of jobEvents(ml, job.id)) {
    last = event;
    console.log(`${event.at} ${event.kind}${event.state ? ` ${event.state}` : ''}${event.reason ? `: ${event.reason}` : ''}`);
  }
  const { data: done }: { data: JobOut } = await jobsGet({ client: ml, path: { job_id: job.id } });
  if (done.state !== 'SUCCEEDED') throw new Error(`job ${job.id} ended ${done.state} (last event: ${last?.kind})`);

  for (const output of done.outputs ?? []) {
    const { data } = await artifactsContent({ client: ml, path: { artifact_id: output.id }, parseAs: 'arrayBuffer' });
    const target = `${output.id}-${output.filename}`;
    await writeFile(target, new Uint8Array(data as ArrayBuffer));
    console.log(`saved ${target} (${output.content_type}, ${output.size} bytes)`);
  }
}

main().catch((error: unknown) => {
  if (isProblemError(error)) {
    console.error(`${error.status} ${error.title}: ${error.detail}`);
    for (const field of error.errors) console.error(`  ${field.loc.join('.')}: ${field.message}`);
  } else {
    console.error(error);
  }
  process.exitCode = 1;
});
