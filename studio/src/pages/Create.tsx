import { useEffect, useMemo, useState, type FormEvent } from "react";
import { useSearchParams } from "react-router-dom";
import { availableModels, describe, getTemplate, listTemplates, submitJob } from "../api";
import { JobView } from "../components/JobView";
import { ParamForm, defaults, type Values } from "../components/ParamForm";
import { useLoad } from "../hooks";
import type { Job, TemplateVersion } from "../types";

/** Pick a template, fill its form, submit, watch it run; ?template=name&<param>=<artifact id> preselects. */
export function CreatePage() {
  const [search, setSearch] = useSearchParams();
  const templates = useLoad(listTemplates);
  const models = useLoad(availableModels);
  const name = search.get("template") ?? "";
  const [tpl, setTpl] = useState<TemplateVersion | null>(null);
  const [values, setValues] = useState<Values>({});
  const jobId = search.get("job"); // in the URL: a reload or a shared link shows the same run
  // what the URL presets (template and inputs, not the job): a change (e.g. "send to another template",
  // even to the same template) draws the form again
  const preset = (() => { const p = new URLSearchParams(search); p.delete("job"); return p.toString(); })();
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);

  useEffect(() => {
    if (!name) { setTpl(null); return; }
    let live = true;
    getTemplate(name).then((t) => {
      if (!live) return;
      setTpl(t);
      const v = defaults(t.params_schema);
      for (const k of Object.keys(t.params_schema?.properties ?? {})) { const x = search.get(k); if (x !== null) v[k] = x; }
      setValues(v);
    }, (e: Error) => live && setError(e.message));
    return () => { live = false; };
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [preset]);

  const usable = useMemo(() => (templates.data ?? []).filter((t) => !t.latest.deprecated), [templates.data]);

  async function submit(e?: FormEvent, params: Values = values, template = name, version?: number) {
    e?.preventDefault();
    setBusy(true);
    setError(null);
    try {
      const job = await submitJob(template, params, version);
      setSearch((s) => { s.set("job", job.id); return s; }, { replace: true });
    } catch (err) {
      setError(describe(err));
    } finally {
      setBusy(false);
    }
  }

  return (
    <div className="create two-col">
      <form className="card" onSubmit={submit} data-testid="create-form">
        <h2>Create</h2>
        {templates.error && <p className="error">{templates.error}</p>}
        <label className="field"><span className="label">Template</span>
          <select value={name} data-testid="template-select"
            onChange={(e) => {
              const v = e.target.value;
              // keep an input picked before the template (?image=<id> from an artifact's page)
              setSearch((s) => { s.delete("job"); if (v) s.set("template", v); else s.delete("template"); return s; });
            }}>
            <option value="">— pick a template —</option>
            {usable.map((t) => <option key={t.name} value={t.name}>{t.latest.title || t.name} ({t.name} v{t.latest.version})</option>)}
          </select>
        </label>
        {tpl && <>
          {tpl.description && <p className="hint">{tpl.description}</p>}
          {tpl.params_schema && <ParamForm schema={tpl.params_schema} values={values} onChange={setValues} models={models.data ?? {}} />}
          <button type="submit" disabled={busy} data-testid="submit-button">{busy ? "Submitting…" : "Run"}</button>
        </>}
        {error && <p className="error" data-testid="submit-error">{error}</p>}
      </form>
      <div>
        {jobId ? <JobView key={jobId} jobId={jobId} onRunAgain={(job: Job) => void submit(undefined, job.params, job.template, job.version)} />
          : <p className="hint">The result appears here.</p>}
      </div>
    </div>
  );
}
