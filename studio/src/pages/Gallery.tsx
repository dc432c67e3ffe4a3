import { useEffect, useState } from "react";
import { Link, useSearchParams } from "react-router-dom";
import { listArtifacts, listDatasets, listTemplates } from "../api";
import { Thumb } from "../components/Thumb";
import { useLoad } from "../hooks";
import type { Artifact, ArtifactFilter } from "../types";

export const PAGE_SIZE = 60;
const FILTERS = ["template", "tag", "role", "state", "dataset", "content_type", "created_after", "created_before",
  "made_from"] as const;
/** A date input's day as an instant: its start, or (for "to", inclusive) the next day's start. */
function dayStart(day: string, next: boolean): string {
  const d = new Date(`${day}T00:00:00`);
  if (next) d.setDate(d.getDate() + 1);
  return Number.isNaN(d.getTime()) ? day : d.toISOString();
}
const STATES = ["QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"];

/** Thumbnails, one page per request (limit/offset), filters in the URL so a view can be linked. */
export function GalleryPage() {
  const [search, setSearch] = useSearchParams();
  const page = Math.max(0, Number(search.get("page") ?? 0) || 0);
  const filter: Record<string, string> = {};
  for (const k of FILTERS) { const v = search.get(k); if (v) filter[k] = k.startsWith("created_") ? dayStart(v, k === "created_before") : v; }
  const key = JSON.stringify(filter);
  const [result, setResult] = useState<{ items: Artifact[]; total: number | null } | null>(null);
  const [error, setError] = useState<string | null>(null);
  const templates = useLoad(listTemplates);
  const datasets = useLoad(listDatasets);

  useEffect(() => {
    const abort = new AbortController();
    setError(null);
    listArtifacts(filter as ArtifactFilter, PAGE_SIZE, page * PAGE_SIZE, abort.signal).then(setResult, (e: Error) => {
      if (!abort.signal.aborted) setError(e.message);
    });
    return () => abort.abort();
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [key, page]);

  const set = (k: string, v: string) => setSearch((s) => {
    if (v) s.set(k, v); else s.delete(k);
    s.delete("page");
    return s;
  });
  const go = (p: number) => setSearch((s) => { s.set("page", String(p)); return s; });
  const items = result?.items ?? [];
  const pages = result?.total != null ? Math.max(1, Math.ceil(result.total / PAGE_SIZE)) : null;

  return (
    <div className="gallery">
      <form className="filters card" data-testid="gallery-filters" onSubmit={(e) => e.preventDefault()}>
        <select value={search.get("template") ?? ""} onChange={(e) => set("template", e.target.value)} data-testid="filter-template">
          <option value="">any template</option>
          {templates.data?.map((t) => <option key={t.name} value={t.name}>{t.name}</option>)}
        </select>
        <input placeholder="tag" defaultValue={search.get("tag") ?? ""} data-testid="filter-tag"
          onKeyDown={(e) => { if (e.key === "Enter") set("tag", e.currentTarget.value.trim()); }}
          onBlur={(e) => set("tag", e.target.value.trim())} />
        <select value={search.get("role") ?? ""} onChange={(e) => set("role", e.target.value)} data-testid="filter-role">
          <option value="">any role</option>
          {["input", "output", "dataset"].map((r) => <option key={r}>{r}</option>)}
        </select>
        <select value={search.get("state") ?? ""} onChange={(e) => set("state", e.target.value)} data-testid="filter-state">
          <option value="">any job state</option>
          {STATES.map((s) => <option key={s}>{s}</option>)}
        </select>
        <select value={search.get("dataset") ?? ""} onChange={(e) => set("dataset", e.target.value)} data-testid="filter-dataset">
          <option value="">any dataset</option>
          {datasets.data?.map((d) => <option key={d.id} value={d.id}>{d.filename}</option>)}
        </select>
        <select value={search.get("content_type") ?? ""} onChange={(e) => set("content_type", e.target.value)} data-testid="filter-type">
          <option value="">images and videos</option>
          <option value="image/">images</option>
          <option value="video/">videos</option>
        </select>
        <label>from <input type="date" value={search.get("created_after") ?? ""} onChange={(e) => set("created_after", e.target.value)} data-testid="filter-after" /></label>
        <label>to <input type="date" value={search.get("created_before") ?? ""} onChange={(e) => set("created_before", e.target.value)} data-testid="filter-before" /></label>
      </form>
      {search.get("made_from") && <p className="row" data-testid="filter-made-from">Made from{" "}
        <Link to={`/artifacts/${search.get("made_from")}`}>{search.get("made_from")}</Link>
        <button type="button" onClick={() => set("made_from", "")}>clear</button></p>}
      {error && <p className="error" data-testid="gallery-error">{error}</p>}
      <div className="grid" data-testid="gallery-grid">
        {items.map((a) => (
          <Link key={a.id} to={`/artifacts/${a.id}`} className="tile" data-testid="gallery-item" data-artifact={a.id}>
            <Thumb art={a} />
            <span className="caption">{a.template ?? a.role} · {a.filename}</span>
          </Link>
        ))}
        {result && items.length === 0 && <p className="hint" data-testid="gallery-empty">No artifacts match.</p>}
      </div>
      <div className="pager row" data-testid="gallery-pager">
        <button type="button" disabled={page === 0} onClick={() => go(page - 1)} data-testid="page-prev">Previous</button>
        <span data-testid="page-number">page {page + 1}{pages ? ` of ${pages}` : ""}{result?.total != null ? ` · ${result.total} artifacts` : ""}</span>
        <button type="button" disabled={pages !== null ? page + 1 >= pages : items.length < PAGE_SIZE}
          onClick={() => go(page + 1)} data-testid="page-next">Next</button>
      </div>
    </div>
  );
}
