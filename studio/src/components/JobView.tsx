import { useEffect, useState } from "react";
import { Link, useNavigate } from "react-router-dom";
import { cancelJob, contentUrl, getJob, getTemplate, jobEvents, listTemplates, previewUrl, submitJob } from "../api";
import { useAuth } from "../auth";
import type { Artifact, Job, JobEvent, ParamsSchema } from "../types";
import { BeforeAfter } from "./BeforeAfter";
import { artifactParams } from "./ParamForm";

const FINAL = new Set(["SUCCEEDED", "FAILED", "CANCELLED"]);

/** A job, live: its state and progress from the job's SSE stream, then its result. */
export function JobView({ jobId, onRunAgain }: { jobId: string; onRunAgain?(job: Job): void }) {
  const [job, setJob] = useState<Job | null>(null);
  const [events, setEvents] = useState<JobEvent[]>([]);
  const [error, setError] = useState<string | null>(null);

  useEffect(() => {
    const abort = new AbortController();
    setEvents([]);
    setError(null);
    (async () => {
      let current = await getJob(jobId);
      setJob(current);
      for await (const e of jobEvents(jobId, abort.signal)) {
        setEvents((es) => [...es.slice(-199), e]);
        if (e.state || e.kind === "progress") {
          const progress = typeof e.data?.fraction === "number" ? e.data.fraction as number
            : typeof e.data?.progress === "number" ? e.data.progress as number : undefined;
          current = { ...current, state: e.state ?? current.state, progress: progress ?? current.progress };
          setJob(current);
        }
        if (e.state && FINAL.has(e.state)) setJob(current = await getJob(jobId)); // outputs are in
      }
      if (!abort.signal.aborted) setJob(await getJob(jobId));
    })().catch((err: Error) => { if (!abort.signal.aborted) setError(err.message); });
    return () => abort.abort();
  }, [jobId]);

  if (error) return <p className="error" data-testid="job-error">{error}</p>;
  if (!job) return <p>Loading job…</p>;
  const last = events[events.length - 1];
  return (
    <section className="job card" data-testid="job-view" data-job={job.id}>
      <header className="row">
        <h3>Job <Link to={`/jobs/${job.id}`}>{job.id}</Link></h3>
        <span className={`state ${job.state}`} data-testid="job-state">{job.state}</span>
        {!FINAL.has(job.state) && <button type="button" onClick={() => void cancelJob(job.id)} data-testid="cancel-button">Cancel</button>}
      </header>
      <progress max={1} value={job.state === "SUCCEEDED" ? 1 : job.progress} data-testid="job-progress" />
      {last && <p className="hint" data-testid="job-last-event">{last.kind}: {last.reason}</p>}
      {job.state === "FAILED" && job.error && <pre className="error" data-testid="job-failure">{JSON.stringify(job.error, null, 2)}</pre>}
      {(job.outputs ?? []).length > 0 && <Result job={job} onRunAgain={onRunAgain} />}
    </section>
  );
}

/** The image the output was made from (its lineage names its inputs). */
const inputOf = (out: Artifact): string | undefined => out.input_artifacts?.[0];

function Result({ job, onRunAgain }: { job: Job; onRunAgain?(job: Job): void }) {
  const { can } = useAuth();
  const navigate = useNavigate();
  const [target, setTarget] = useState("");
  const [templates, setTemplates] = useState<{ name: string; param: string }[]>([]);
  useEffect(() => {
    // the list leaves parameter schemas out: each template's latest version names its image/video inputs
    listTemplates()
      .then((ts) => Promise.all(ts.filter((t) => !t.latest.deprecated).map((t) => getTemplate(t.name))))
      .then((vs) => setTemplates(vs.flatMap((v) => {
        const ps = artifactParams(v.params_schema as ParamsSchema | null);
        return ps.length ? [{ name: v.name, param: ps[0] }] : [];
      })), () => undefined);
  }, []);
  const outputs = job.outputs ?? [];
  const out = outputs[0];
  const input = inputOf(out);
  async function again() {
    if (onRunAgain) onRunAgain(job);
    else navigate(`/jobs/${(await submitJob(job.template, job.params, job.version)).id}`);
  }
  function send() {
    const t = templates.find((x) => x.name === target);
    if (t) navigate(`/create?template=${encodeURIComponent(t.name)}&${encodeURIComponent(t.param)}=${encodeURIComponent(out.id)}`);
  }
  return (
    <div className="result" data-testid="job-result">
      {out.content_type.startsWith("video/") ? <Clip art={out} canExport={can.export} />
        : input && out.content_type.startsWith("image/") ? <BeforeAfter before={input} after={out.id} />
          : <Preview id={out.id} />}
      <div className="row">
        <Link to={`/artifacts/${out.id}`} data-testid="result-lineage-link">Lineage</Link>
        {can.run && <button type="button" onClick={() => void again()} data-testid="run-again-button">Run again</button>}
        {can.run && templates.length > 0 && <>
          <select value={target} onChange={(e) => setTarget(e.target.value)} data-testid="send-to-select">
            <option value="">Send to another template…</option>
            {templates.map((t) => <option key={t.name} value={t.name}>{t.name}</option>)}
          </select>
          <button type="button" disabled={!target} onClick={send} data-testid="send-to-button">Send</button>
        </>}
      </div>
      {outputs.length > 1 && <ul className="links">{outputs.slice(1).map((a) => (
        <li key={a.id}><Link to={`/artifacts/${a.id}`}>{a.output_name ?? a.filename}</Link></li>))}</ul>}
    </div>
  );
}

function Preview({ id }: { id: string }) {
  const [src, setSrc] = useState<string | null>(null);
  useEffect(() => { previewUrl(id, 1024).then(setSrc, () => undefined); }, [id]);
  return src ? <img className="result-img" src={src} alt="result" data-testid="result-image" data-artifact={id} /> : <p>…</p>;
}

/** A clip: played from its bytes for export keys; others see its first frame (a preview is not a download). */
function Clip({ art, canExport }: { art: Artifact; canExport: boolean }) {
  const [src, setSrc] = useState<string | null>(null);
  const [poster, setPoster] = useState<string | undefined>();
  useEffect(() => {
    previewUrl(art.id, 1024).then(setPoster, () => undefined);
    if (canExport) contentUrl(art.id).then(setSrc, () => undefined);
  }, [art.id, canExport]);
  if (!canExport) return poster ? <img className="result-img" src={poster} alt="first frame" data-testid="result-image" /> : null;
  return <video className="result-video" controls src={src ?? undefined} poster={poster} data-testid="result-video" />;
}
