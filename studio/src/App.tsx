import { NavLink, Navigate, Route, Routes, useLocation } from "react-router-dom";
import { useAuth } from "./auth";
import { ArtifactPage } from "./pages/Artifact";
import { BatchesPage, BatchPage } from "./pages/Batches";
import { CreatePage } from "./pages/Create";
import { GalleryPage } from "./pages/Gallery";
import { JobPage } from "./pages/Job";
import { PoolPage } from "./pages/Pool";
import { SignInPage } from "./pages/SignIn";
import { TemplatePage, TemplatesPage } from "./pages/Templates";
import { TrainingPage, TrainingRunPage } from "./pages/Training";

export function App() {
  const { me, can, loading, signOut } = useAuth();
  const location = useLocation();
  if (loading) return <p className="centre">Loading…</p>;
  if (!me) {
    return (
      <Routes>
        <Route path="/signin" element={<SignInPage />} />
        <Route path="*" element={<Navigate to="/signin" replace state={{ from: location.pathname + location.search }} />} />
      </Routes>
    );
  }
  const nav: [string, string, boolean][] = [
    ["/create", "Create", can.run], ["/gallery", "Gallery", true], ["/batches", "Batches", true],
    ["/pool", "Pool", true], ["/training", "Training", true], ["/templates", "Templates", true],
  ];
  return (
    <div className="app">
      <header className="top">
        <span className="brand">Media Lab studio</span>
        <nav>
          {nav.filter(([, , show]) => show).map(([to, label]) => (
            <NavLink key={to} to={to} data-testid={`nav-${label.toLowerCase()}`}>{label}</NavLink>
          ))}
          <a href="/docs" data-testid="nav-docs">API docs</a>
        </nav>
        <span className="who" data-testid="whoami">{me.name} <small>({me.roles.join(", ")})</small></span>
        <button type="button" data-testid="signout-button" onClick={signOut}>Sign out</button>
      </header>
      <main>
        <Routes>
          <Route path="/" element={<Navigate to={can.run ? "/create" : "/gallery"} replace />} />
          <Route path="/signin" element={<Navigate to="/" replace />} />
          {can.run && <Route path="/create" element={<CreatePage />} />}
          <Route path="/gallery" element={<GalleryPage />} />
          <Route path="/artifacts/:id" element={<ArtifactPage />} />
          <Route path="/jobs/:id" element={<JobPage />} />
          <Route path="/batches" element={<BatchesPage />} />
          <Route path="/batches/:id" element={<BatchPage />} />
          <Route path="/pool" element={<PoolPage />} />
          <Route path="/training" element={<TrainingPage />} />
          <Route path="/training/:id" element={<TrainingRunPage />} />
          <Route path="/templates" element={<TemplatesPage />} />
          <Route path="/templates/:name" element={<TemplatePage />} />
          <Route path="*" element={<NotFound path={location.pathname} />} />
        </Routes>
      </main>
    </div>
  );
}

/** An unknown route under /studio (a mistyped or stale link): says so, instead of a blank page. */
function NotFound({ path }: { path: string }) {
  return (
    <section className="card" data-testid="not-found">
      <h2>Not found</h2>
      <p>The studio has no page at <code data-testid="not-found-path">{path}</code>.</p>
      <p><NavLink to="/">Home</NavLink> · <NavLink to="/gallery">Gallery</NavLink></p>
    </section>
  );
}
