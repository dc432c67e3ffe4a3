"""What a job needs from the server that runs it (pure, no I/O)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from orchestrator.core import templates as tpl
from orchestrator.core.capabilities import Requirements

if TYPE_CHECKING:
    pass


def requirements(t: tpl.TemplateVersion, values: dict[str, Any]) -> Requirements:
    """The node classes and model files a job needs from the server that runs it."""
    graph = tpl.bind(t, values)
    refs = tpl.model_refs(graph)
    refs |= {(p.folder, values[p.name]) for p in t.manifest.parameters
             if p.type == tpl.ParamType.model and p.folder and values.get(p.name)}
    return Requirements.of_graph(graph, refs, tpl.model_patterns(graph))
