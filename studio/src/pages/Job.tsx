import { useParams } from "react-router-dom";
import { JobView } from "../components/JobView";
import { getJob } from "../api";
import { fmtDate, useLoad } from "../hooks";

export function JobPage() {
  const { id = "" } = useParams();
  const { data: job } = useLoad(() => getJob(id), [id]);
  return (
    <div className="two-col">
      <JobView key={id} jobId={id} />
      {job && <section className="card" data-testid="job-details">
        <h3>{job.template} v{job.version}</h3>
        <dl>
          <dt>Created</dt><dd>{fmtDate(job.created_at)}</dd>
          <dt>Started</dt><dd>{fmtDate(job.started_at)}</dd>
          <dt>Finished</dt><dd>{fmtDate(job.finished_at)}</dd>
          <dt>Priority</dt><dd>{job.priority}</dd>
        </dl>
        <h4>Parameters</h4><pre>{JSON.stringify(job.params, null, 2)}</pre>
        <h4>Attempts</h4>
        <table><thead><tr><th>#</th><th>Server</th><th>State</th><th>ComfyUI</th><th>Started</th></tr></thead>
          <tbody>{(job.attempts ?? []).map((a) => <tr key={a.id}><td>{a.number}</td><td>{a.server}</td><td>{a.state}</td>
            <td>{a.comfy_version ?? "—"}</td><td>{fmtDate(a.started_at)}</td></tr>)}</tbody></table>
      </section>}
    </div>
  );
}
