import { useState } from "react";
import { Link, useNavigate, useParams } from "react-router-dom";
import { deleteArtifact, download, getArtifact, listArtifacts } from "../api";
import { useAuth } from "../auth";
import { Lineage } from "../components/Lineage";
import { Thumb } from "../components/Thumb";
import { useLoad } from "../hooks";

/** How many of "Made from this" the lineage panel lists (one page; the gallery pages through the rest). */
const CHILDREN = 20;

/** One artifact: its preview, lineage (links up the chain: its inputs and job; across: the job's other outputs;
 * down: what was made from it). */
export function ArtifactPage() {
  const { id = "" } = useParams();
  return <ArtifactView key={id} id={id} />;  // a fresh view per artifact: nothing of the previous one shows
}

function ArtifactView({ id }: { id: string }) {
  const { can } = useAuth();
  const navigate = useNavigate();
  const { data: art, error } = useLoad(() => getArtifact(id), [id]);
  const siblings = useLoad(async () => (art?.job_id ? (await listArtifacts({ job: art.job_id }, 50, 0)).items : []), [art?.job_id]);
  const madeFrom = useLoad(async () => (art ? (await listArtifacts({ made_from: art.id }, CHILDREN + 1, 0)).items : null), [art?.id]);
  const [msg, setMsg] = useState<string | null>(null);
  if (error) return <p className="error" data-testid="artifact-error">{error}</p>;
  if (!art) return <p>Loading…</p>;
  const picture = art.content_type.startsWith("image/") || art.content_type.startsWith("video/");
  return (
    <div className="two-col" data-testid="artifact-page">
      <section className="card">
        <h2>{art.filename}</h2>
        {picture && <Thumb art={art} size={1024} eager testid="artifact-preview" />}
        <div className="row">
          {can.export && <button type="button" data-testid="download-button"
            onClick={() => download(art).catch((e: Error) => setMsg(e.message))}>Download</button>}
          {can.run && art.content_type.startsWith("image/") &&
            <button type="button" onClick={() => navigate(`/create?image=${art.id}`)} data-testid="use-as-input">Use as input…</button>}
          {can.admin && <button type="button" className="danger" data-testid="delete-artifact" onClick={() => {
            if (confirm(`Delete ${art.filename}?`)) deleteArtifact(art.id).then(() => navigate("/gallery"), (e: Error) => setMsg(e.message));
          }}>Delete</button>}
        </div>
        {msg && <p className="error" data-testid="artifact-message">{msg}</p>}
        {(siblings.data?.length ?? 0) > 1 && <>
          <h4>Other outputs of the job</h4>
          <div className="grid small">{siblings.data!.filter((s) => s.id !== art.id).map((s) => (
            <Link key={s.id} to={`/artifacts/${s.id}`} className="tile"><Thumb art={s} /><span>{s.output_name ?? s.filename}</span></Link>))}
          </div>
        </>}
      </section>
      <Lineage art={art} madeFrom={madeFrom.data?.slice(0, CHILDREN) ?? null} madeFromError={madeFrom.error}
        more={(madeFrom.data?.length ?? 0) > CHILDREN} />
    </div>
  );
}
