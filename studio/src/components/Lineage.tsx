import { Link } from "react-router-dom";
import type { Artifact } from "../types";
import { fmtDate, fmtBytes } from "../hooks";

/** Where an artifact came from: template version and hash, parameters, inputs, server, ComfyUI version; and
 * down the chain, `madeFrom`: what was made from it (the outputs of jobs that took it as an input), null while
 * loading; `more`: there are more than those (the gallery's `made_from` filter lists them all). */
export function Lineage({ art, madeFrom = null, more = false, madeFromError = null }: { art: Artifact;
  madeFrom?: Artifact[] | null; more?: boolean; madeFromError?: string | null }) {
  const models = Object.entries(art.params ?? {}).filter(([, v]) => typeof v === "string" && /\.(safetensors|pth|pt|ckpt|bin)$/i.test(v));
  return (
    <section className="lineage card" data-testid="lineage-panel">
      <h3>Lineage</h3>
      <dl>
        <dt>Artifact</dt><dd><code>{art.id}</code> · {art.filename} · {art.content_type} · {fmtBytes(art.size)}
          {art.width ? ` · ${art.width}×${art.height}` : ""}</dd>
        <dt>Role</dt><dd>{art.role}</dd>
        <dt>Created</dt><dd>{fmtDate(art.created_at)}</dd>
        <dt>SHA-256</dt><dd><code className="wrap">{art.sha256}</code></dd>
        {art.template && <>
          <dt>Template</dt>
          <dd data-testid="lineage-template"><Link to={`/templates/${art.template}`}>{art.template}</Link>
            {art.template_version ? ` v${art.template_version}` : ""}</dd>
          <dt>Template hash</dt><dd><code className="wrap" data-testid="lineage-template-hash">{art.template_hash ?? "—"}</code></dd>
        </>}
        {art.job_id && <><dt>Job</dt><dd><Link to={`/jobs/${art.job_id}`} data-testid="lineage-job">{art.job_id}</Link>
          {art.output_name ? ` (output ${art.output_name})` : ""}</dd></>}
        {art.server && <><dt>Server</dt><dd data-testid="lineage-server">{art.server}</dd></>}
        {art.comfy_version && <><dt>ComfyUI</dt><dd data-testid="lineage-comfy">{art.comfy_version}</dd></>}
        {models.length > 0 && <><dt>Models</dt><dd>{models.map(([k, v]) => <div key={k}>{k}: <code>{String(v)}</code></div>)}</dd></>}
        {(art.tags ?? []).length > 0 && <><dt>Tags</dt><dd>{art.tags?.join(", ")}</dd></>}
      </dl>
      {art.input_artifacts && art.input_artifacts.length > 0 && <>
        <h4>Inputs</h4>
        <ul className="links" data-testid="lineage-inputs">
          {art.input_artifacts.map((id) => <li key={id}><Link to={`/artifacts/${id}`}>{id}</Link></li>)}
        </ul>
      </>}
      <h4>Made from this</h4>
      {madeFromError ? <p className="error">{madeFromError}</p>
        : madeFrom === null ? <p className="hint">Loading…</p> : madeFrom.length === 0
        ? <p className="hint" data-testid="lineage-children-none">Nothing made from it yet.</p>
        : <ul className="links" data-testid="lineage-children">
          {madeFrom.map((c) => <li key={c.id}><Link to={`/artifacts/${c.id}`}>{c.output_name ?? c.filename}</Link>
            {c.template ? ` · ${c.template}` : ""} · <small>{fmtDate(c.created_at)}</small></li>)}
          {more && <li><Link to={`/gallery?made_from=${art.id}`} data-testid="lineage-children-more">All of them…</Link></li>}
        </ul>}
      {art.params && <>
        <h4>Parameters</h4>
        <pre data-testid="lineage-params">{JSON.stringify(art.params, null, 2)}</pre>
      </>}
    </section>
  );
}
