import type { ParamSchema, ParamsSchema } from "../types";
import { ArtifactInput } from "./ArtifactInput";

export type Values = Record<string, unknown>;

/** A property's own schema: pydantic writes an optional one as anyOf [schema, {type: null}]. */
export function base(p: ParamSchema): ParamSchema {
  const inner = p.anyOf?.find((s) => s.type !== "null");
  return inner ? { ...inner, ...p, anyOf: undefined, type: inner.type } : p;
}

export function kindOf(p: ParamSchema): string {
  const b = base(p);
  if (b["x-medialab-type"]) return b["x-medialab-type"];
  if (b.enum) return "choice";
  return b.type === "integer" ? "int" : b.type === "number" ? "float" : b.type === "boolean" ? "bool" : "string";
}

/** The parameters a template takes images or videos on (the "send to another template" targets). */
export function artifactParams(schema: ParamsSchema | null | undefined): string[] {
  return Object.entries(schema?.properties ?? {}).filter(([, p]) => ["image", "video"].includes(kindOf(p))).map(([k]) => k);
}

/** Default values of the schema (what the service would fill in). */
export function defaults(schema: ParamsSchema | null | undefined): Values {
  const out: Values = {};
  for (const [k, p] of Object.entries(schema?.properties ?? {})) if (p.default !== undefined && p.default !== null) out[k] = p.default;
  return out;
}

/** A form drawn from a template's parameter JSON Schema. */
export function ParamForm({ schema, values, onChange, models }: { schema: ParamsSchema; values: Values;
  onChange(v: Values): void; models: Record<string, string[]> }) {
  const required = new Set(schema.required ?? []);
  const set = (k: string, v: unknown) => {
    const next = { ...values };
    if (v === undefined || v === "") delete next[k]; else next[k] = v;
    onChange(next);
  };
  return (
    <div className="param-form" data-testid="param-form">
      {Object.entries(schema.properties ?? {}).map(([name, raw]) => {
        const p = base(raw);
        const kind = kindOf(raw);
        const label = <span className="label">{p.title ?? name}{required.has(name) ? " *" : ""}</span>;
        const help = p.description ? <small className="hint">{p.description}</small> : null;
        const v = values[name];
        let field;
        if (kind === "image" || kind === "video") {
          field = <ArtifactInput name={name} kind={kind} value={v as string | undefined} onChange={(id) => set(name, id)} />;
        } else if (kind === "choice") {
          field = (
            <select value={v === undefined ? "" : String(v)} data-testid={`param-${name}`}
              onChange={(e) => set(name, p.enum?.find((x) => String(x) === e.target.value))}>
              {!required.has(name) && <option value="">—</option>}
              {p.enum?.map((x) => <option key={String(x)} value={String(x)}>{String(x)}</option>)}
            </select>
          );
        } else if (kind === "model") {
          const folder = p["x-medialab-folder"] ?? "";
          const files = models[folder] ?? [];
          const options = v && !files.includes(String(v)) ? [String(v), ...files] : files;
          field = (
            <select value={v === undefined ? "" : String(v)} data-testid={`param-${name}`} onChange={(e) => set(name, e.target.value)}>
              <option value="">{files.length ? "— pick a model —" : `no ${folder} on a healthy server`}</option>
              {options.map((f) => <option key={f} value={f}>{f}</option>)}
            </select>
          );
        } else if (kind === "bool") {
          field = <input type="checkbox" checked={Boolean(v)} data-testid={`param-${name}`} onChange={(e) => set(name, e.target.checked)} />;
        } else if (kind === "int" || kind === "float") {
          // a float takes any value in range: a computed step would make the form refuse a default off its grid
          const step = kind === "int" ? 1 : "any";
          const num = (s: string) => (s === "" ? undefined : kind === "int" ? Math.round(Number(s)) : Number(s));
          const ranged = p.minimum !== undefined && p.maximum !== undefined;
          field = (
            <span className="row">
              {ranged && <input type="range" min={p.minimum} max={p.maximum} step={step}
                value={v === undefined ? String(p.minimum) : String(v)} onChange={(e) => set(name, num(e.target.value))}
                data-testid={`param-${name}-slider`} />}
              <input type="number" min={p.minimum} max={p.maximum} step={step} value={v === undefined ? "" : String(v)}
                onChange={(e) => set(name, num(e.target.value))} data-testid={`param-${name}`} />
            </span>
          );
        } else {
          const long = name.includes("prompt");
          field = long
            ? <textarea rows={3} value={(v as string) ?? ""} onChange={(e) => set(name, e.target.value)} data-testid={`param-${name}`} />
            : <input type="text" value={(v as string) ?? ""} onChange={(e) => set(name, e.target.value)} data-testid={`param-${name}`} />;
        }
        // an upload field holds buttons: a <label> around it would send their clicks to the file input
        return kind === "image" || kind === "video"
          ? <div key={name} className="field">{label}{field}{help}</div>
          : <label key={name} className="field">{label}{field}{help}</label>;
      })}
    </div>
  );
}
