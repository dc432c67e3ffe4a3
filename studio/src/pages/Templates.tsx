import { useState } from "react";
import { Link, useParams } from "react-router-dom";
import { deprecateTemplate, diffTemplate, getTemplateVersion, listTemplates } from "../api";
import { useAuth } from "../auth";
import { fmtDate, useLoad } from "../hooks";

export function TemplatesPage() {
  const { data, error } = useLoad(listTemplates);
  return (
    <section className="card" data-testid="templates-page">
      <h2>Templates</h2>
      {error && <p className="error">{error}</p>}
      <table><thead><tr><th>Name</th><th>Title</th><th>Kind</th><th>Latest</th><th>Versions</th><th>Source</th></tr></thead>
        <tbody>{data?.map((t) => (
          <tr key={t.name} data-testid="template-row">
            <td><Link to={`/templates/${t.name}`}>{t.name}</Link></td><td>{t.latest.title}</td><td>{t.latest.kind}</td>
            <td>v{t.latest.version}{t.latest.deprecated ? " (deprecated)" : ""}</td><td>{t.versions.length}</td><td>{t.latest.source}</td>
          </tr>))}</tbody></table>
    </section>
  );
}

/** A template's versions, a diff between two of them, deprecate / undo for publish keys. */
export function TemplatePage() {
  const { name = "" } = useParams();
  const { can } = useAuth();
  const list = useLoad(listTemplates);
  const t = list.data?.find((x) => x.name === name);
  const versions = [...(t?.versions ?? [])].sort((a, b) => a - b);
  const [sel, setSel] = useState<number | null>(null);
  const shown = sel ?? t?.latest.version ?? null;
  const version = useLoad(async () => (shown ? getTemplateVersion(name, shown) : null), [name, shown]);
  const [a, setA] = useState<number | "">("");
  const [b, setB] = useState<number | "">("");
  const diff = useLoad(async () => (a && b ? diffTemplate(name, a, b) : null), [name, a, b]);
  const [msg, setMsg] = useState<string | null>(null);

  if (list.error) return <p className="error">{list.error}</p>;
  if (!t) return <p>Loading…</p>;
  const v = version.data;
  return (
    <div className="two-col" data-testid="template-page">
      <section className="card">
        <h2>{t.latest.title} <small>({name})</small></h2>
        <p>{t.latest.description}</p>
        <div className="row">{versions.map((n) => (
          <button type="button" key={n} className={n === shown ? "active" : ""} onClick={() => setSel(n)} data-testid="template-version">v{n}</button>))}
        </div>
        {v && <>
          <dl>
            <dt>Version</dt><dd>v{v.version}{v.deprecated ? " · deprecated" : ""}</dd>
            <dt>Hash</dt><dd><code className="wrap">{v.content_hash}</code></dd>
            <dt>Published</dt><dd>{fmtDate(v.created_at)} ({v.source})</dd>
          </dl>
          {can.publish && <button type="button" data-testid="deprecate-button" onClick={() =>
            deprecateTemplate(name, v.version, v.deprecated).then(() => { version.reload(); list.reload(); }, (e: Error) => setMsg(e.message))}>
            {v.deprecated ? "Undo deprecation" : "Deprecate"}</button>}
          {can.run && !v.deprecated && <Link to={`/create?template=${name}`}>Run it…</Link>}
          {msg && <p className="error">{msg}</p>}
          <h4>Parameters</h4>
          <pre>{JSON.stringify(v.params_schema?.properties ?? {}, null, 2)}</pre>
        </>}
      </section>
      <section className="card" data-testid="template-diff">
        <h3>Diff</h3>
        <div className="row">
          <select value={a} onChange={(e) => setA(e.target.value ? Number(e.target.value) : "")} data-testid="diff-a">
            <option value="">from…</option>{versions.map((n) => <option key={n} value={n}>v{n}</option>)}
          </select>
          <select value={b} onChange={(e) => setB(e.target.value ? Number(e.target.value) : "")} data-testid="diff-b">
            <option value="">to…</option>{versions.map((n) => <option key={n} value={n}>v{n}</option>)}
          </select>
        </div>
        {diff.error && <p className="error">{diff.error}</p>}
        {diff.data && <pre data-testid="diff-result">{JSON.stringify(diff.data, null, 2)}</pre>}
      </section>
    </div>
  );
}
