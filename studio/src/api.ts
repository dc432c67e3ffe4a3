// The studio's one door to the service: every call goes through @medialab/client's generated SDK functions
// and its typed SSE streams; the pages import only from here.
import {
  artifactsContent, artifactsDelete, artifactsGet, artifactsListArtifacts, artifactsPreview, artifactsUpload,
  batchEvents as streamBatchEvents, batchesCancel, batchesGet, batchesJobs, batchesListBatches, createMediaLab,
  jobEvents as streamJobEvents, jobsCancel, jobsGet, jobsListJobs, jobsSubmit, meGet, modelsApprove,
  modelsDistribute, modelsListModels, modelsWithdraw, ProblemError, serversActivate, serversDrain,
  serversListServers, serversRefresh, templatesDeprecate, templatesDiff, templatesGetLatest, templatesGetVersion,
  templatesListTemplates, trainingListDatasets, trainingListTrainings, type Client, type JobState,
} from "@medialab/client";
import type { Artifact, ArtifactFilter, Server } from "./types";

export { ProblemError };

const KEY = "medialab.apiKey";

export const session = {
  get key(): string | null { return sessionStorage.getItem(KEY); },
  set(key: string): void { sessionStorage.setItem(KEY, key); },
  /** Signs out: forgets the key and the pictures fetched with it. */
  clear(): void {
    sessionStorage.removeItem(KEY);
    cached = null;
    for (const p of previews.values()) p.then((u) => URL.revokeObjectURL(u), () => undefined);
    previews.clear();
  },
};

let cached: { key: string | null; client: Client } | null = null;

/** The client for the signed-in key (the service is the page's origin: the studio is served under /studio). */
function ml(): Client {
  const key = session.key;
  if (!cached || cached.key !== key) {
    cached = { key, client: createMediaLab({ baseUrl: window.location.origin, apiKey: key ?? undefined }) };
  }
  return cached.client;
}

/** What an error says, for a person: a problem's detail and the fields it names. */
export function describe(err: unknown): string {
  if (err instanceof ProblemError) {
    const fields = err.errors.map((e) => `${e.loc.filter((x) => x !== "body").join(".")}: ${e.message}`);
    return [err.title + (err.detail ? `: ${err.detail}` : ""), ...fields].join("\n");
  }
  return err instanceof Error ? err.message : String(err);
}

// -- the key ----------------------------------------------------------------------------------------
export const getMe = async () => (await meGet({ client: ml() })).data;

// -- templates --------------------------------------------------------------------------------------
export const listTemplates = async () => (await templatesListTemplates({ client: ml() })).data;
export const getTemplate = async (name: string) => (await templatesGetLatest({ client: ml(), path: { name } })).data;
export const getTemplateVersion = async (name: string, version: number) =>
  (await templatesGetVersion({ client: ml(), path: { name, version } })).data;
export const diffTemplate = async (name: string, a: number, b: number) =>
  (await templatesDiff({ client: ml(), path: { name }, query: { a, b } })).data as Record<string, unknown>;
export const deprecateTemplate = async (name: string, version: number, undo = false) =>
  (await templatesDeprecate({ client: ml(), path: { name, version }, query: { undo } })).data;

// -- jobs -------------------------------------------------------------------------------------------
export const submitJob = async (template: string, params: Record<string, unknown>, version?: number) =>
  (await jobsSubmit({ client: ml(), body: { template, params, ...(version ? { version } : {}) } })).data;
export const getJob = async (id: string) => (await jobsGet({ client: ml(), path: { job_id: id } })).data;
export const listJobs = async (query: { state?: JobState; template?: string; limit?: number; offset?: number } = {}) =>
  (await jobsListJobs({ client: ml(), query })).data;
export const cancelJob = async (id: string) => (await jobsCancel({ client: ml(), path: { job_id: id } })).data;

/** The job's events as they happen (resumed with Last-Event-ID after a drop); ends after the final state. */
export const jobEvents = (id: string, signal: AbortSignal) => streamJobEvents(ml(), id, { signal });
export const batchEvents = (id: string, signal: AbortSignal) => streamBatchEvents(ml(), id, { signal });

// -- artifacts --------------------------------------------------------------------------------------
export const uploadArtifact = async (file: File, tags: string[] = []) =>
  (await artifactsUpload({ client: ml(), body: { file, ...(tags.length ? { tags: tags.join(",") } : {}) } })).data;

/** One page of artifacts (never more: limit/offset), and the total when the service sends X-Total-Count. */
export async function listArtifacts(filter: ArtifactFilter, limit: number, offset: number,
  signal?: AbortSignal): Promise<{ items: Artifact[]; total: number | null }> {
  const { data, response } = await artifactsListArtifacts({ client: ml(), query: { ...filter, limit, offset }, signal });
  const total = response.headers.get("X-Total-Count");
  return { items: data, total: total === null ? null : Number(total) };
}
export const getArtifact = async (id: string) => (await artifactsGet({ client: ml(), path: { artifact_id: id } })).data;
export const deleteArtifact = async (id: string) => (await artifactsDelete({ client: ml(), path: { artifact_id: id } })).data;

// Previews are immutable (sha256 + size): one object URL per (artifact, size) for the page's lifetime,
// bounded so a long gallery session does not hold every thumbnail.
const previews = new Map<string, Promise<string>>();
const MAX_PREVIEWS = 600;

/** An object URL of the service's cached preview (size 256 or 1024); an <img> cannot send the key. */
export function previewUrl(id: string, size: 256 | 1024 = 256): Promise<string> {
  const k = `${id}:${size}`;
  let p = previews.get(k);
  if (!p) {
    if (previews.size >= MAX_PREVIEWS) {
      const [oldest, old] = previews.entries().next().value as [string, Promise<string>];
      previews.delete(oldest);
      old.then((u) => URL.revokeObjectURL(u), () => undefined);
    }
    p = artifactsPreview({ client: ml(), path: { artifact_id: id }, query: { size }, parseAs: "blob" })
      .then((r) => URL.createObjectURL(r.data as unknown as Blob));
    p.catch(() => previews.delete(k));
    previews.set(k, p);
  }
  return p;
}

/** The artifact's bytes as an object URL (export keys only; the service refuses others). */
export const contentUrl = async (id: string) =>
  URL.createObjectURL((await artifactsContent({ client: ml(), path: { artifact_id: id }, parseAs: "blob" })).data as unknown as Blob);

/** Saves the artifact's bytes as a file (export keys only). */
export async function download(art: Artifact): Promise<void> {
  const href = await contentUrl(art.id);
  const a = document.createElement("a");
  a.href = href;
  a.download = art.filename;
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(href), 10000);
}

// -- batches ----------------------------------------------------------------------------------------
export const listBatches = async (limit = 50, offset = 0) => (await batchesListBatches({ client: ml(), query: { limit, offset } })).data;
export const getBatch = async (id: string) => (await batchesGet({ client: ml(), path: { batch_id: id } })).data;
export const batchJobs = async (id: string, limit = 100, offset = 0) =>
  (await batchesJobs({ client: ml(), path: { batch_id: id }, query: { limit, offset } })).data;
export const cancelBatch = async (id: string) => (await batchesCancel({ client: ml(), path: { batch_id: id } })).data;

// -- pool (the servers' answers are untyped in the OpenAPI document: typed here) ------------------
export const listServers = async () => (await serversListServers({ client: ml() })).data as unknown as Server[];
export const drainServer = async (ref: string) => (await serversDrain({ client: ml(), path: { ref } })).data;
export const activateServer = async (ref: string) => (await serversActivate({ client: ml(), path: { ref } })).data;
export const refreshServer = async (ref: string) => (await serversRefresh({ client: ml(), path: { ref } })).data;

/** Model files per folder over the healthy servers (the union of their capabilities). */
export async function availableModels(): Promise<Record<string, string[]>> {
  const out: Record<string, Set<string>> = {};
  for (const s of await listServers()) {
    if (!s.healthy) continue;
    for (const [folder, files] of Object.entries(s.models ?? {})) for (const f of files) (out[folder] ??= new Set()).add(f);
  }
  return Object.fromEntries(Object.entries(out).map(([k, v]) => [k, [...v].sort()]));
}

// -- training ---------------------------------------------------------------------------------------
export const listDatasets = async () => (await trainingListDatasets({ client: ml() })).data;
export const listTrainings = async (limit = 50) => (await trainingListTrainings({ client: ml(), query: { limit } })).data;
export const listModels = async () => (await modelsListModels({ client: ml() })).data;
export const approveModel = async (ref: string) => (await modelsApprove({ client: ml(), path: { ref } })).data;
export const withdrawModel = async (ref: string) => (await modelsWithdraw({ client: ml(), path: { ref } })).data;
export const distributeModel = async (ref: string) => (await modelsDistribute({ client: ml(), path: { ref } })).data;
