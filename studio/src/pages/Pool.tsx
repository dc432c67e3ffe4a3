import { Link } from "react-router-dom";
import { activateServer, drainServer, listJobs, listServers, refreshServer } from "../api";
import { useAuth } from "../auth";
import { fmtBytes, fmtDate, useInterval, useLoad } from "../hooks";

/** The ComfyUI servers: health, models, current jobs; and the queue. */
export function PoolPage() {
  const { can } = useAuth();
  const servers = useLoad(listServers);
  const queue = useLoad(() => listJobs({ state: "QUEUED", limit: 50 }));
  useInterval(() => { servers.reload(); queue.reload(); }, 5000);
  const act = (fn: (ref: string) => Promise<unknown>, ref: string) => fn(ref).then(servers.reload, (e: Error) => alert(e.message));
  return (
    <div data-testid="pool-page">
      <section className="card">
        <h2>Servers</h2>
        {servers.error && <p className="error">{servers.error}</p>}
        {servers.data?.length === 0 && <p className="hint">No servers in the pool.</p>}
        <div className="servers">
          {servers.data?.map((s) => (
            <article key={s.id} className="server card" data-testid="server-card" data-server={s.name}>
              <header className="row">
                <h3>{s.name}</h3>
                <span className={`state ${s.healthy ? "SUCCEEDED" : "FAILED"}`} data-testid="server-health">{s.healthy ? "healthy" : "unhealthy"}</span>
                <span className="state">{s.state}</span>
              </header>
              <dl>
                <dt>URL</dt><dd>{s.url}</dd>
                <dt>ComfyUI</dt><dd>{s.comfy_version ?? "—"}</dd>
                <dt>Device</dt><dd>{s.device ?? "—"} {s.vram_total ? `· VRAM ${fmtBytes(s.vram_free)} free of ${fmtBytes(s.vram_total)}` : ""}</dd>
                <dt>Last seen</dt><dd>{fmtDate(s.last_seen)}</dd>
                {s.last_error && <><dt>Last error</dt><dd className="error">{s.last_error}</dd></>}
                <dt>Current job</dt><dd data-testid="server-current-job">{s.current_jobs.length ? s.current_jobs.map((j) => <Link key={j} to={`/jobs/${j}`}>{j} </Link>) : "idle"}</dd>
                <dt>Packs</dt><dd>{s.packs.join(", ") || "—"} · {s.node_classes} node classes</dd>
              </dl>
              <details data-testid="server-models"><summary>Models ({Object.values(s.models).reduce((n, v) => n + v.length, 0)})</summary>
                {Object.entries(s.models).map(([folder, files]) => <div key={folder}><b>{folder}</b>: {files.join(", ")}</div>)}
              </details>
              {can.admin && <div className="row">
                {s.state === "active" ? <button type="button" onClick={() => act(drainServer, s.id)}>Drain</button>
                  : <button type="button" onClick={() => act(activateServer, s.id)}>Activate</button>}
                <button type="button" onClick={() => act(refreshServer, s.id)}>Refresh</button>
              </div>}
            </article>
          ))}
        </div>
      </section>
      <section className="card">
        <h2>Queue</h2>
        <table data-testid="queue-table"><thead><tr><th>Job</th><th>Template</th><th>Priority</th><th>Queued</th></tr></thead>
          <tbody>{queue.data?.map((j) => <tr key={j.id}><td><Link to={`/jobs/${j.id}`}>{j.id}</Link></td><td>{j.template}</td>
            <td>{j.priority}</td><td>{fmtDate(j.created_at)}</td></tr>)}</tbody></table>
        {queue.data?.length === 0 && <p className="hint">Nothing waiting.</p>}
      </section>
    </div>
  );
}
