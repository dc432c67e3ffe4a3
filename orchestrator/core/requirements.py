"""What a job needs from the server that runs it (pure, no I/O)."""

from __future__ import annotations

import json
from typing import Any

from orchestrator.core import templates as tpl
from orchestrator.core.capabilities import Requirements
from orchestrator.core.graph import is_link, nodes_by_title


def requirements(t: tpl.TemplateVersion, values: dict[str, Any]) -> Requirements:
    """The node classes and model files a job needs from the server that runs it."""
    graph = tpl.bind(t, values)
    refs = tpl.model_refs(graph)
    refs |= {(p.folder, values[p.name]) for p in t.manifest.parameters
             if p.type == tpl.ParamType.model and p.folder and values.get(p.name)}
    return Requirements.of_graph(graph, refs, tpl.model_patterns(graph))


_GIVEN = "<given>"  # stands for a value whose content cannot change the requirements


def values_that_count(t: tpl.TemplateVersion) -> frozenset[str]:
    """The parameters whose whole value :func:`requirements` depends on: a model parameter, and one bound to a
    model loader's file input or an IP-Adapter preset (``MODEL_INPUTS``, ``PRESET_NODES``)."""
    titles = nodes_by_title(t.graph)
    found = set()
    for p in t.manifest.parameters:
        cls = str(t.graph.get(titles.get(p.bind.node, ""), {}).get("class_type"))
        if (p.type == tpl.ParamType.model
                or any(p.bind.input == name for name, _folder in tpl.MODEL_INPUTS.get(cls, []))
                or (cls in tpl.PRESET_NODES and p.bind.input == "preset")):
            found.add(p.name)
    return frozenset(found)


def relevant_values(t: tpl.TemplateVersion, values: dict[str, Any], counting: frozenset[str] | None = None) -> str:
    """What of ``values`` :func:`requirements` depends on, as a canonical string (a cache key: equal strings,
    equal requirements, for one version): the whole value of the parameters in ``counting`` (by default
    :func:`values_that_count`); of any other (a seed, a prompt, an input artifact) only whether it is given,
    left out (None: its branch may be bypassed) or a link (which keeps its source node in the graph). Keep
    both in step with :func:`requirements`."""
    given = dict(values.items())  # a job's parameters are a mapping (AttributeError otherwise, as requirements)
    counting = values_that_count(t) if counting is None else counting
    key: dict[str, Any] = {}
    for p in t.manifest.parameters:
        if p.name in given:
            value = given[p.name]
            key[p.name] = value if p.name in counting or value is None or is_link(value) else _GIVEN
    return json.dumps(key, sort_keys=True, default=repr)
