"""Host names looked up (DNS): the addresses of a server URL's host, which ``core.server_urls.same_server``
compares to find one ComfyUI registered under two names.

The lookup is the one of the node pack (``custom_nodes.urls.resolve``), which also resolves the media URLs a
graph fetches (``runtime.graph_check``); here a name that does not resolve has no addresses (not an error:
it cannot be another name of a registered server)."""

from __future__ import annotations

from custom_nodes import urls
from orchestrator.core.server_urls import ServerUrl, comparable_addresses


def server_addresses(url: ServerUrl) -> frozenset[str]:
    """The addresses the URL's host resolves to (an IP literal: itself, without a lookup; unresolvable: none)."""
    if url.is_ip:
        return comparable_addresses([url.host])
    try:
        return comparable_addresses(urls.resolve(url.host, url.port))
    except (urls.UrlRefused, OSError):  # no such name, no resolver, a name that is not ASCII/IDNA
        return frozenset()
