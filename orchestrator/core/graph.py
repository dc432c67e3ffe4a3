"""ComfyUI graphs: what a link is, a node's title, the nodes that feed a node (pure, no I/O).

An API-format graph maps node id -> ``{"class_type", "inputs", "_meta": {"title"}}``; an input is either a
literal value or a link ``[source node id, output index]``. The editor format numbers its nodes, so a link
read from it may carry an integer node id.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


class NodeProblem(str):
    """A problem line that concerns one node (and one of its inputs): a ``str`` everywhere (joined, compared, sent
    as it is) that also carries the node's id and the input's name, so that the editor can show it on the node."""

    node: str
    input: str | None

    def __new__(cls, text: str, node: str | int, input: str | None = None) -> NodeProblem:  # noqa: A002
        made = super().__new__(cls, text)
        made.node, made.input = str(node), input
        return made

    def extend(self, text: str) -> NodeProblem:
        """The same node and input, with ``text`` said after this line."""
        return NodeProblem(f"{self}: {text}", self.node, self.input)


def node_errors(problems: Iterable[str]) -> list[dict[str, Any]]:
    """``{node, input, message}`` of each problem that names a node (the others are left out)."""
    return [{"node": p.node, "input": p.input, "message": str(p)} for p in problems if isinstance(p, NodeProblem)]


def is_link(value: Any) -> bool:
    """A link is a list of exactly two items: a node id (str, or int from the editor format) and an output
    index (int; a bool is no index)."""
    return (isinstance(value, list) and len(value) == 2
            and isinstance(value[0], str | int) and not isinstance(value[0], bool)
            and isinstance(value[1], int) and not isinstance(value[1], bool))


def title_of(node: Any) -> str | None:
    """The node's own title (``_meta.title``), or None when it has none (or the node is malformed)."""
    meta = node.get("_meta") if isinstance(node, Mapping) else None
    found = meta.get("title") if isinstance(meta, Mapping) else None
    return found if isinstance(found, str) and found else None


def nodes_by_title(graph: Mapping[str, Any]) -> dict[str, str]:
    """Map node title -> node id; a title used twice cannot be bound and is left out."""
    seen: dict[str, list[str]] = {}
    for node_id, node in graph.items():
        found = title_of(node)
        if found:
            seen.setdefault(found, []).append(node_id)
    return {t: ids[0] for t, ids in seen.items() if len(ids) == 1}


def inputs_of(node: Any) -> dict[str, Any]:
    """The node's inputs ({} when it has none, or they are not a mapping)."""
    inputs = node.get("inputs") if isinstance(node, Mapping) else None
    return inputs if isinstance(inputs, dict) else {}


def links_into(node: Any) -> dict[str, list[Any]]:
    """Input name -> link, for the node's inputs that are links."""
    return {name: value for name, value in inputs_of(node).items() if is_link(value)}


def sources(node: Any) -> list[str]:
    """The ids (as strings) of the nodes the node's links come from, in input order (repeats kept)."""
    return [str(link[0]) for link in links_into(node).values()]
