"""A graph checked against the sandbox before it is admitted and again before it runs: the path rule and the URL
rule of ``core.sandbox`` with the configured URL policy, and (when admitting) the URLs' addresses resolved."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from custom_nodes import urls
from orchestrator.core import sandbox
from orchestrator.core.errors import InvalidInput
from orchestrator.core.graph import node_errors
from orchestrator.settings import Settings, get_settings


def url_policy(settings: Settings | None = None) -> urls.UrlPolicy:
    st = settings or get_settings()
    try:
        return sandbox.url_policy(st.url_allowlist, st.s3_endpoint if st.storage == "s3" else None, st.s3_secure,
                                  st.url_private_ok, st.url_max_bytes, st.url_timeout_s, st.s3_bucket)
    except urls.UrlRefused as exc:
        raise InvalidInput(f"setting url_allowlist (MEDIALAB_URL_ALLOWLIST): {exc}") from exc


def check_sandbox(graph: dict[str, Any], defs: sandbox.Definitions, settings: Settings | None = None,
                  skip: Iterable[tuple[str, str]] = (), resolve: bool = True) -> None:
    """Refuse (422, naming node, input and rule) a graph that would read outside ComfyUI's folders or fetch
    a URL the rule refuses; with ``resolve`` the URLs' host names are looked up and every address checked."""
    policy = url_policy(settings)
    found = sandbox.check_graph(graph, defs, policy, skip)
    problems = list(found.problems)
    for where, target in found.urls if resolve else ():
        try:
            urls.check_addresses(target, urls.resolve(target.host, target.port), policy)
        except urls.UrlRefused as exc:
            problems.append(where.extend(str(exc)))
    if problems:
        raise InvalidInput("the graph leaves the sandbox: " + "; ".join(problems), problems=problems,
                           nodes=node_errors(problems))
