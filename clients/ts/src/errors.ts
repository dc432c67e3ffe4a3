/**
 * The service's errors: every 4xx/5xx answer is RFC 9457 problem+json (`Problem` in the OpenAPI document).
 * A client made by `createMediaLab` throws a `ProblemError` for each of them.
 */
import type { Problem } from './gen/types.gen';

/** One entry of a validation problem's `errors`: where (`loc`, e.g. `["body", "params", "resize"]`) and what. */
export interface ProblemFieldError {
  loc: Array<string | number>;
  message: string;
  [key: string]: unknown;
}

/** A problem+json answer of the service, thrown. `detail` names what was wrong. */
export class ProblemError extends Error {
  readonly status: number;
  readonly title: string;
  readonly detail: string;
  readonly type: string;
  /** Validation problems name each refused field; empty for other problems. */
  readonly errors: ProblemFieldError[];
  /** The whole body: limits add `limit` and `value`, conflicts may name what is in the way. */
  readonly problem: Problem;
  /** The HTTP response, when there was one. */
  readonly response?: Response;

  constructor(problem: Problem, response?: Response) {
    super(`${problem.status} ${problem.title}: ${problem.detail}`);
    this.name = 'ProblemError';
    this.problem = problem;
    this.status = problem.status;
    this.title = problem.title;
    this.detail = problem.detail;
    this.type = problem.type ?? 'about:blank';
    this.errors = (problem.errors ?? []).map((e) => ({
      ...e,
      loc: Array.isArray(e.loc) ? (e.loc as Array<string | number>) : [],
      message: typeof e.message === 'string' ? e.message : String(e.message ?? ''),
    }));
    this.response = response;
  }

  /** The names of the refused fields (the last part of each error's `loc`), e.g. `["resize"]`. */
  get fields(): string[] {
    return this.errors.map((e) => String(e.loc[e.loc.length - 1] ?? '')).filter(Boolean);
  }

  /** A ProblemError from any error body: a problem+json body as it is, anything else (a proxy's HTML page,
   * an empty body) as a problem made from the response's status. */
  static from(body: unknown, response: Response): ProblemError {
    if (isProblem(body)) return new ProblemError(body, response);
    const text = typeof body === 'string' ? body.slice(0, 500) : body == null ? '' : JSON.stringify(body).slice(0, 500);
    return new ProblemError(
      { type: 'about:blank', status: response.status, title: response.statusText || 'Error', detail: text || `HTTP ${response.status}` },
      response,
    );
  }

  /** A ProblemError from an error response not yet read (the event streams read their own responses). */
  static async fromResponse(response: Response): Promise<ProblemError> {
    const text = await response.text();
    let body: unknown = text;
    try {
      body = JSON.parse(text);
    } catch {
      // not JSON: kept as text
    }
    return ProblemError.from(body, response);
  }
}

/** Whether a value has the shape of a problem+json body. */
export function isProblem(value: unknown): value is Problem {
  if (typeof value !== 'object' || value === null) return false;
  const v = value as Record<string, unknown>;
  return typeof v.status === 'number' && typeof v.title === 'string' && typeof v.detail === 'string';
}

/** Whether an error thrown by the client is a problem of the service (optionally: with this status). */
export function isProblemError(error: unknown, status?: number): error is ProblemError {
  return error instanceof ProblemError && (status === undefined || error.status === status);
}
