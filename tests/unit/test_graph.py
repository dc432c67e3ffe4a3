"""The graph rules every module shares: what a link is, a node's title, the nodes that feed a node."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.core import editor, sandbox, validation
from orchestrator.core import templates as tpl
from orchestrator.core.graph import inputs_of, is_link, links_into, nodes_by_title, sources, title_of


@pytest.mark.parametrize("value", [["1", 0], ["node-a", 3], [7, 0], [12, 1]])
def test_a_link_is_a_node_id_and_an_output_index(value: list[Any]) -> None:
    assert is_link(value)


@pytest.mark.parametrize("value", [
    ["1"], ["1", 0, 2], [], ("1", 0),  # exactly two items, in a list
    ["1", True], ["1", False], [True, 0],  # a bool is neither an index nor an id
    ["1", 0.0], ["1", "0"], [1.5, 0], [None, 0], [["1"], 0],  # the index is an int, the id a str or int
    "1", 1, None, {"0": "1", "1": 0},
])
def test_anything_else_is_no_link(value: Any) -> None:
    assert not is_link(value)


def test_every_module_uses_the_one_rule() -> None:
    """The three copies (templates, editor, sandbox) are gone; validation and templates take the shared one."""
    assert tpl.is_link is is_link and validation.is_link is is_link
    assert editor.is_link is is_link and sandbox.is_link is is_link
    assert not hasattr(editor, "_is_link") and not hasattr(sandbox, "_is_link")


def test_titles_come_from_meta_and_malformed_nodes_have_none() -> None:
    assert title_of({"class_type": "X", "_meta": {"title": "Scale"}}) == "Scale"
    for node in [{"class_type": "X"}, {"_meta": None}, {"_meta": "t"}, {"_meta": {"title": ""}},
                 {"_meta": {"title": 5}}, {"_meta": {}}, "not a node", None, [1, 2]]:
        assert title_of(node) is None


def test_nodes_by_title_leaves_out_titles_used_twice() -> None:
    graph = {"1": {"class_type": "A", "_meta": {"title": "In"}}, "2": {"class_type": "B", "_meta": {"title": "Out"}},
             "3": {"class_type": "C", "_meta": {"title": "Out"}}, "4": {"class_type": "D"}, "5": "not a node"}
    assert nodes_by_title(graph) == {"In": "1"}


def test_links_into_a_node_and_their_sources() -> None:
    node = {"class_type": "KSampler", "inputs": {"model": ["4", 0], "seed": 5, "positive": [6, 0],
                                                 "negative": ["4", 1], "steps": ["1", True], "cfg": [1, 2, 3]}}
    assert links_into(node) == {"model": ["4", 0], "positive": [6, 0], "negative": ["4", 1]}
    assert sources(node) == ["4", "6", "4"]  # as strings, in input order, repeats kept
    for malformed in [{"class_type": "X", "inputs": [1, 2]}, {"class_type": "X"}, "not a node"]:
        assert inputs_of(malformed) == {} and links_into(malformed) == {} and sources(malformed) == []


def test_bind_prunes_by_links_whatever_their_id_type() -> None:
    """An optional branch left out disappears with the nodes that only fed it (``tpl.bind``)."""
    graph = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "a.png"}, "_meta": {"title": "In"}},
        "2": {"class_type": "LoadImage", "inputs": {"image": "ref.png"}, "_meta": {"title": "Ref"}},
        "3": {"class_type": "Blend", "inputs": {"a": ["1", 0], "b": ["2", 0]}, "_meta": {"title": "Blend"}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0]}, "_meta": {"title": "Out"}},
    }
    manifest = {"title": "t", "kind": "image", "outputs": [{"node": "Out", "name": "output"}], "parameters": [
        {"name": "ref", "type": "image", "optional": True, "bind": {"node": "Ref", "input": "image"},
         "bypass": {"Blend": "a"}}]}
    t = tpl.from_dicts("blend", 1, manifest, graph)
    assert set(tpl.bind(t, {"ref": None})) == {"1", "4"} and tpl.bind(t, {"ref": None})["4"]["inputs"] == {
        "images": ["1", 0]}
    assert set(tpl.bind(t, {"ref": "x.png"})) == {"1", "2", "3", "4"}
