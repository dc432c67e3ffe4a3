import { useState, type DragEvent } from "react";
import { listArtifacts, uploadArtifact } from "../api";
import { useLoad } from "../hooks";
import type { Artifact } from "../types";
import { Thumb } from "./Thumb";

/** An image or video parameter: upload by file picker or drag-and-drop, or pick from the gallery. */
export function ArtifactInput({ name, kind, value, onChange }: { name: string; kind: "image" | "video";
  value: string | undefined; onChange(id: string | undefined): void }) {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const [over, setOver] = useState(false);
  const [picking, setPicking] = useState(false);

  async function upload(file: File | undefined) {
    if (!file) return;
    setBusy(true);
    setError(null);
    try {
      onChange((await uploadArtifact(file)).id);
    } catch (err) {
      setError((err as Error).message);
    } finally {
      setBusy(false);
    }
  }
  function drop(e: DragEvent) {
    e.preventDefault();
    setOver(false);
    void upload(e.dataTransfer.files[0]);
  }

  return (
    <div className={`artifact-input ${over ? "over" : ""}`} onDragOver={(e) => { e.preventDefault(); setOver(true); }}
      onDragLeave={() => setOver(false)} onDrop={drop} data-testid={`dropzone-${name}`}>
      {value ? <Thumb art={value} eager testid={`input-preview-${name}`} /> : <p className="hint">Drop a {kind} here, or</p>}
      <div className="row">
        <input type="file" accept={`${kind}/*`} disabled={busy} onChange={(e) => void upload(e.target.files?.[0])}
          data-testid={name === "image" || name === "video" ? "file-input" : `file-input-${name}`}
          data-param={name} />
        <button type="button" onClick={() => setPicking(true)} data-testid={`pick-${name}`}>From the gallery…</button>
        {value && <button type="button" onClick={() => onChange(undefined)}>Clear</button>}
      </div>
      {busy && <p className="hint">Uploading…</p>}
      {value && <p className="hint" data-testid={`input-id-${name}`}>{value}</p>}
      {error && <p className="error">{error}</p>}
      {picking && <Picker kind={kind} onPick={(a) => { onChange(a.id); setPicking(false); }} onClose={() => setPicking(false)} />}
    </div>
  );
}

const PAGE = 48;

function Picker({ kind, onPick, onClose }: { kind: string; onPick(a: Artifact): void; onClose(): void }) {
  const [offset, setOffset] = useState(0);
  const { data, error } = useLoad(() => listArtifacts({ content_type: `${kind}/` }, PAGE, offset), [kind, offset]);
  return (
    <div className="modal" role="dialog" data-testid="gallery-picker">
      <div className="card">
        <header className="row"><h3>Pick a {kind}</h3><button type="button" onClick={onClose}>Close</button></header>
        {error && <p className="error">{error}</p>}
        <div className="grid">
          {data?.items.map((a) => (
            <button type="button" key={a.id} className="tile" onClick={() => onPick(a)} data-testid="picker-item">
              <Thumb art={a} /><span>{a.filename}</span>
            </button>
          ))}
        </div>
        <div className="row">
          <button type="button" disabled={offset === 0} onClick={() => setOffset(Math.max(0, offset - PAGE))}>Previous</button>
          <button type="button" disabled={(data?.items.length ?? 0) < PAGE} onClick={() => setOffset(offset + PAGE)}>Next</button>
        </div>
      </div>
    </div>
  );
}
