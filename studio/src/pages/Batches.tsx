import { useEffect, useState } from "react";
import { Link, useParams } from "react-router-dom";
import { batchEvents, batchJobs, cancelBatch, getBatch, listBatches } from "../api";
import { useAuth } from "../auth";
import { Thumb } from "../components/Thumb";
import { fmtDate, useInterval, useLoad } from "../hooks";
import type { Batch } from "../types";

const PAGE = 50;

function Counts({ counts }: { counts: Record<string, number> }) {
  return <span className="counts">{Object.entries(counts).map(([k, v]) => <span key={k} className={`state ${k}`}>{k} {v}</span>)}</span>;
}

export function BatchesPage() {
  const [offset, setOffset] = useState(0);
  const { data, error, reload } = useLoad(() => listBatches(PAGE, offset), [offset]);
  useInterval(reload, 5000);
  return (
    <section className="card" data-testid="batches-page">
      <h2>Batches</h2>
      {error && <p className="error">{error}</p>}
      <table data-testid="batches-table">
        <thead><tr><th>Batch</th><th>Template</th><th>Progress</th><th>Jobs</th><th>Created</th></tr></thead>
        <tbody>{data?.map((b) => (
          <tr key={b.id} data-testid="batch-row">
            <td><Link to={`/batches/${b.id}`}>{b.label ?? b.id}</Link></td><td>{b.template ?? "mixed"}</td>
            <td><progress max={1} value={b.progress ?? 0} /> {Math.round((b.progress ?? 0) * 100)}%{b.finished ? " ✓" : ""}</td>
            <td><Counts counts={b.counts ?? {}} /></td><td>{fmtDate(b.created_at)}</td>
          </tr>))}
        </tbody>
      </table>
      {data?.length === 0 && <p className="hint">No batches yet (`medialab batch` or POST /v1/batches makes one).</p>}
      <div className="row">
        <button type="button" disabled={offset === 0} onClick={() => setOffset(Math.max(0, offset - PAGE))}>Previous</button>
        <button type="button" disabled={(data?.length ?? 0) < PAGE} onClick={() => setOffset(offset + PAGE)}>Next</button>
      </div>
    </section>
  );
}

/** A batch: live counts from its SSE stream, its jobs (one page), its outputs. */
export function BatchPage() {
  const { id = "" } = useParams();
  const { can } = useAuth();
  const [batch, setBatch] = useState<Batch | null>(null);
  const [error, setError] = useState<string | null>(null);
  const jobs = useLoad(() => batchJobs(id, 100, 0), [id]);

  useEffect(() => {
    const abort = new AbortController();
    (async () => {
      let b = await getBatch(id);
      setBatch(b);
      if (b.finished) return;
      let n = 0;
      for await (const e of batchEvents(id, abort.signal)) {
        b = { ...b, counts: e.counts };
        setBatch(b);
        if (e.event.state && ++n % 10 === 0) setBatch(b = await getBatch(id)); // progress, ETA, outputs
      }
      if (!abort.signal.aborted) { setBatch(await getBatch(id)); jobs.reload(); }
    })().catch((e: Error) => { if (!abort.signal.aborted) setError(e.message); });
    return () => abort.abort();
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [id]);

  if (error) return <p className="error">{error}</p>;
  if (!batch) return <p>Loading…</p>;
  return (
    <div data-testid="batch-page">
      <section className="card">
        <header className="row"><h2>{batch.label ?? batch.id}</h2>
          {can.run && !batch.finished && <button type="button" onClick={() => void cancelBatch(batch.id).then(setBatch)}>Cancel</button>}
        </header>
        <progress max={1} value={batch.progress ?? 0} data-testid="batch-progress" />
        <p><Counts counts={batch.counts ?? {}} /> {batch.eta_s != null && !batch.finished ? ` · about ${Math.round(batch.eta_s)} s left` : ""}</p>
      </section>
      <section className="card">
        <h3>Outputs</h3>
        <div className="grid">{(batch.outputs ?? []).map((a) => (
          <Link key={a.id} to={`/artifacts/${a.id}`} className="tile" data-testid="batch-output"><Thumb art={a} /></Link>))}
        </div>
      </section>
      <section className="card">
        <h3>Jobs</h3>
        <table><thead><tr><th>Job</th><th>State</th><th>Progress</th></tr></thead>
          <tbody>{jobs.data?.map((j) => <tr key={j.id}><td><Link to={`/jobs/${j.id}`}>{j.id}</Link></td>
            <td className={`state ${j.state}`}>{j.state}</td><td>{Math.round(j.progress * 100)}%</td></tr>)}</tbody></table>
      </section>
    </div>
  );
}
