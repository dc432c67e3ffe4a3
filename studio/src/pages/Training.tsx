import { useEffect, useState } from "react";
import { Link, useParams } from "react-router-dom";
import { approveModel, distributeModel, getJob, jobEvents, listArtifacts, listDatasets, listModels, listTrainings,
  withdrawModel } from "../api";
import { useAuth } from "../auth";
import { LossPlot } from "../components/LossPlot";
import { Thumb } from "../components/Thumb";
import { fmtBytes, fmtDate, useInterval, useLoad } from "../hooks";
import type { Artifact, Job, LoraModel } from "../types";

/** Datasets, training runs and the LoRA registry. */
export function TrainingPage() {
  const { can } = useAuth();
  const datasets = useLoad(listDatasets);
  const runs = useLoad(() => listTrainings(50));
  const models = useLoad(listModels);
  useInterval(() => { runs.reload(); models.reload(); }, 10000);
  const act = (fn: (ref: string) => Promise<LoraModel>, m: LoraModel) =>
    fn(m.id).then(models.reload, (e: Error) => alert(e.message));
  return (
    <div data-testid="training-page">
      <section className="card">
        <h2>Training runs</h2>
        {runs.error && <p className="error">{runs.error}</p>}
        <table data-testid="training-runs"><thead><tr><th>Run</th><th>Dataset</th><th>Base</th><th>State</th><th>Progress</th><th>Created</th></tr></thead>
          <tbody>{runs.data?.map((j) => (
            <tr key={j.id} data-testid="training-run">
              <td><Link to={`/training/${j.id}`}>{String(j.params.name ?? j.id)}</Link></td>
              <td>{String(j.params.dataset ?? "—")}</td><td>{String(j.params.base_model ?? "—")}</td>
              <td className={`state ${j.state}`}>{j.state}</td><td>{Math.round(j.progress * 100)}%</td><td>{fmtDate(j.created_at)}</td>
            </tr>))}</tbody></table>
        {runs.data?.length === 0 && <p className="hint">No training runs yet.</p>}
      </section>
      <section className="card">
        <h2>Datasets</h2>
        <table data-testid="datasets-table"><thead><tr><th>Dataset</th><th>Size</th><th>Tags</th><th>Created</th></tr></thead>
          <tbody>{datasets.data?.map((d) => <tr key={d.id}><td><Link to={`/artifacts/${d.id}`}>{d.filename}</Link></td>
            <td>{fmtBytes(d.size)}</td><td>{(d.tags ?? []).join(", ")}</td><td>{fmtDate(d.created_at)}</td></tr>)}</tbody></table>
      </section>
      <section className="card">
        <h2>Model registry</h2>
        <table data-testid="model-registry"><thead><tr><th>Name</th><th>Version</th><th>State</th><th>Base</th><th>Triggers</th><th>Distribution</th><th /></tr></thead>
          <tbody>{models.data?.map((m) => (
            <tr key={m.id} data-testid="model-row">
              <td>{m.name}</td><td>v{m.version}</td><td className={`state ${m.state}`}>{m.state}</td><td>{m.base_model ?? "—"}</td>
              <td>{m.trigger_words.join(", ")}</td><td>{m.distribution ? Object.keys(m.distribution).length + " servers" : "—"}</td>
              <td className="row">
                {(can.publish || can.admin) && m.state !== "approved" && <button type="button" onClick={() => act(approveModel, m)} data-testid="model-approve">Approve</button>}
                {(can.publish || can.admin) && m.state !== "withdrawn" && <button type="button" onClick={() => act(withdrawModel, m)} data-testid="model-withdraw">Withdraw</button>}
                {can.admin && m.state === "approved" && <button type="button" onClick={() => act(distributeModel, m)} data-testid="model-distribute">Distribute</button>}
                {m.job_id && <Link to={`/training/${m.job_id}`}>run</Link>}
              </td>
            </tr>))}</tbody></table>
        {models.data?.length === 0 && <p className="hint">No trained models yet.</p>}
      </section>
    </div>
  );
}

/** A run: the loss plot (inline SVG) from its events, live; samples as they arrive. */
export function TrainingRunPage() {
  const { id = "" } = useParams();
  const [job, setJob] = useState<Job | null>(null);
  const [loss, setLoss] = useState<{ step: number; loss: number }[]>([]);
  const [last, setLast] = useState<string>("");
  const [samples, setSamples] = useState<Artifact[]>([]);
  const [error, setError] = useState<string | null>(null);

  const loadSamples = () => listArtifacts({ job: id }, 100, 0)
    .then((r) => setSamples(r.items.filter((a) => a.output_name === "sample" || a.content_type.startsWith("image/"))), () => undefined);

  useEffect(() => {
    const abort = new AbortController();
    setLoss([]);
    (async () => {
      setJob(await getJob(id));
      void loadSamples();
      for await (const e of jobEvents(id, abort.signal)) {
        const d = e.data ?? {};
        if (e.kind === "progress" && typeof d.step === "number" && typeof d.loss === "number") {
          setLoss((ps) => [...ps, { step: d.step as number, loss: d.loss as number }]);
        }
        if (e.kind === "info" && (d.kind === "sample" || /sample/i.test(e.reason ?? ""))) void loadSamples();
        if (e.state) setJob(await getJob(id));
        setLast(`${e.kind}: ${e.reason}`);
      }
      if (!abort.signal.aborted) { setJob(await getJob(id)); void loadSamples(); }
    })().catch((err: Error) => { if (!abort.signal.aborted) setError(err.message); });
    return () => abort.abort();
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [id]);
  useInterval(() => { if (job && !["SUCCEEDED", "FAILED", "CANCELLED"].includes(job.state)) void loadSamples(); }, 15000);

  if (error) return <p className="error">{error}</p>;
  if (!job) return <p>Loading…</p>;
  return (
    <div data-testid="training-run-page">
      <section className="card">
        <header className="row"><h2>{String(job.params.name ?? job.id)}</h2><span className={`state ${job.state}`} data-testid="job-state">{job.state}</span></header>
        <progress max={1} value={job.progress} />
        <p className="hint">{last}</p>
        <LossPlot points={loss} />
        <details><summary>Parameters</summary><pre>{JSON.stringify(job.params, null, 2)}</pre></details>
      </section>
      <section className="card">
        <h3>Samples</h3>
        <div className="grid" data-testid="training-samples">{samples.map((a) => (
          <Link key={a.id} to={`/artifacts/${a.id}`} className="tile" data-testid="training-sample"><Thumb art={a} /><span>{a.filename}</span></Link>))}
        </div>
        {samples.length === 0 && <p className="hint">No samples yet.</p>}
      </section>
    </div>
  );
}
