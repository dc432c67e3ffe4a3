// The service's data as the studio uses it: the generated types of @medialab/client, and the shapes the
// OpenAPI document leaves open (a template's parameter JSON Schema, a server's capabilities).
export type {
  ArtifactOut as Artifact, AttemptOut as Attempt, BatchEventOut as BatchEvent, BatchOut as Batch, EventOut as JobEvent,
  JobOut as Job, JobState, LoraModelOut as LoraModel, MeOut as Me, Problem, TemplateOut as Template,
  TemplateVersionOut as TemplateVersion,
} from "@medialab/client";

/** One property of a template's parameter JSON Schema (pydantic's output plus x-medialab-* hints). */
import type { JobState } from "@medialab/client";

export interface ParamSchema {
  type?: string;
  title?: string;
  description?: string;
  default?: unknown;
  minimum?: number;
  maximum?: number;
  enum?: unknown[];
  const?: unknown;
  anyOf?: ParamSchema[];
  "x-medialab-type"?: string;
  "x-medialab-folder"?: string;
  "x-medialab-artifact"?: string;
}

export interface ParamsSchema {
  title?: string;
  properties?: Record<string, ParamSchema>;
  required?: string[];
}

export interface Server {
  id: string;
  name: string;
  url: string;
  state: string;
  source: string;
  healthy: boolean;
  last_seen: string | null;
  last_error: string | null;
  refreshed_at: string | null;
  current_jobs: string[];
  comfy_version: string | null;
  device: string | null;
  vram_total: number | null;
  vram_free: number | null;
  packs: string[];
  node_classes: number;
  models: Record<string, string[]>;
}

export interface ArtifactFilter {
  template?: string;
  tag?: string;
  role?: string;
  state?: JobState;
  dataset?: string;
  job?: string;
  created_after?: string;
  created_before?: string;
  content_type?: string;
  /** The outputs of the jobs that took this artifact (id or unique prefix) as an input. */
  made_from?: string;
}
