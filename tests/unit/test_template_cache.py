"""The one cache of parsed template versions and their requirements (``db.templates``), shared by admission,
the dispatcher and the executor; and the rule that keys the requirements (``requirements.relevant_values``)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from orchestrator.app import templates as template_app
from orchestrator.core import requirements as reqs
from orchestrator.core import templates as tpl
from orchestrator.core.errors import NotFound
from orchestrator.db import templates as template_db
from orchestrator.db.engine import Database
from orchestrator.db.tables import TemplateVersionRow
from orchestrator.runtime import library
from orchestrator.settings import PROJECT_ROOT

LIBRARY = library.scan_library(PROJECT_ROOT / "comfy_workflows")


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    with database.session() as s:
        template_app.sync_templates(s, LIBRARY)
    template_db.clear_cache()
    yield database
    database.engine.dispose()


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The refs of the rows parsed from now on."""
    seen: list[str] = []
    parse = template_db._parse

    def counting(row: TemplateVersionRow) -> tpl.TemplateVersion:
        seen.append(f"{row.name}@v{row.version}")
        return parse(row)

    monkeypatch.setattr(template_db, "_parse", counting)
    return seen


@contextmanager
def statements(db: Database) -> Iterator[list[str]]:
    """The SQL statements run on the database inside the block."""
    seen: list[str] = []

    def note(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(statement)

    event.listen(db.engine, "before_cursor_execute", note)
    try:
        yield seen
    finally:
        event.remove(db.engine, "before_cursor_execute", note)


def test_get_template_reads_one_name_and_parses_each_version_once(db: Database, parses: list[str]) -> None:
    with db.session() as s:
        row, t = template_db.get_template(s, "upscale-esrgan")
        assert (row.version, t.ref) == (2, "upscale-esrgan@v2")
        assert sorted(parses) == ["upscale-esrgan@v1", "upscale-esrgan@v2"]  # not the rest of the library
        again_row, again = template_db.get_template(s, "upscale-esrgan", 1)
        assert again.ref == "upscale-esrgan@v1" and again_row.version == 1
    with db.session() as s:
        _row, same = template_db.get_template(s, "upscale-esrgan")
    assert same is t and len(parses) == 2  # versions are immutable: parsed once, shared


def test_get_template_selects_only_the_rows_of_the_name(db: Database) -> None:
    with statements(db) as seen, db.session() as s:
        template_db.get_template(s, "video-retime")
    assert len(seen) == 1 and "WHERE template_versions.name = " in seen[0]


def test_the_errors_and_the_default_keep_their_rule(db: Database) -> None:
    names = ", ".join(sorted({t.name for t in LIBRARY}))
    with db.session() as s:
        with pytest.raises(NotFound, match=rf"^unknown template 'ghost' \(known: {names}\)$"):
            template_db.get_template(s, "ghost")
        with pytest.raises(NotFound, match=r"^template 'upscale-esrgan' has no version 3 \(versions: v1, v2\)$"):
            template_db.get_template(s, "upscale-esrgan", 3)
        template_app.set_deprecated(s, "upscale-esrgan", 2)
        assert template_db.get_template(s, "upscale-esrgan")[1].version == 1  # the newest not deprecated
        deprecated = template_db.get_template(s, "upscale-esrgan", 2)[1]
        assert deprecated.deprecated and deprecated.version == 2  # still there when named
        template_app.set_deprecated(s, "upscale-esrgan", 1)
        with pytest.raises(NotFound, match="every version of template 'upscale-esrgan' is deprecated"):
            template_db.get_template(s, "upscale-esrgan")
        template_app.set_deprecated(s, "upscale-esrgan", 2, False)
        assert template_db.get_template(s, "upscale-esrgan")[1].version == 2
    with pytest.raises(NotFound, match=r"^unknown template 'x' \(known: none\)$"):
        tpl.pick([], "x")


def test_a_version_by_row_id_is_read_lightly_once_parsed(db: Database, parses: list[str]) -> None:
    with db.session() as s:
        row, _t = template_db.get_template(s, "video-retime")
        assert template_db.parsed_versions(s, [row.id, None, 999]) == {row.id: _t}
        assert template_db.template_version(s, 999) is None and template_db.template_version(s, None) is None
        other = template_db.get_template(s, "interpolate-rife")[0].id
    template_db.clear_cache()
    parses.clear()
    with db.session() as s:
        assert template_db.parsed_versions(s, [row.id, other]) == {}  # not parsed by this process yet
        t = template_db.template_version(s, row.id)
        assert t is not None and t.ref == "video-retime@v1" and parses == ["video-retime@v1"]
    with statements(db) as seen, db.session() as s:
        assert template_db.template_version(s, row.id) is t
    assert len(seen) == 1 and "graph" not in seen[0].split("FROM")[0]  # identity columns only
    assert parses == ["video-retime@v1"]


def test_threads_share_one_parse_per_version(db: Database) -> None:
    with db.session() as s:
        rows = template_db.template_rows(s)
    found: list[tpl.TemplateVersion] = []
    lock = threading.Lock()

    def parse_all() -> None:
        mine = [template_db.template_from_row(r) for r in rows]
        with lock:
            found.extend(mine)

    threads = [threading.Thread(target=parse_all) for _ in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len({id(t) for t in found}) == len(rows)


# -- requirements, once per version and relevant values -------------------------------------------------
def _values(t: tpl.TemplateVersion) -> dict[str, Any]:
    given = {p.name: (f"art-{p.name}" if p.type in tpl.ARTIFACT_TYPES else "m.safetensors")
             for p in t.manifest.parameters if p.required}
    return tpl.validate_params(t, given)


def _variants(t: tpl.TemplateVersion, values: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The values with one parameter changed at a time, to every kind of other value it may take."""
    for p in t.manifest.parameters:
        others: list[Any] = []
        if p.type == tpl.ParamType.choice:
            others = [c for c in p.choices or [] if c != values[p.name]]
        elif p.type == tpl.ParamType.bool:
            others = [not values[p.name]]
        elif p.type in (tpl.ParamType.int, tpl.ParamType.float):
            others = [v for v in (p.min, p.max) if v is not None and v != values[p.name]] or [values[p.name] + 1]
        else:  # string, model, artifact
            others = ["other", f"{values[p.name]}-2"]
        if p.optional:
            others.append(None)
        for other in others:
            yield {**values, p.name: other}
        yield {k: v for k, v in values.items() if k != p.name}  # left out of the mapping altogether


@pytest.mark.parametrize("t", LIBRARY, ids=lambda t: t.ref)
def test_equal_relevant_values_mean_equal_requirements(t: tpl.TemplateVersion) -> None:
    values = _values(t)
    by_key: dict[str, Any] = {}
    for v in [values, *_variants(t, values)]:
        req = reqs.requirements(t, v)
        assert by_key.setdefault(reqs.relevant_values(t, v), req) == req, v


def test_what_changes_the_requirements_is_in_the_key() -> None:
    t = tpl.pick(LIBRARY, "generate-lora")
    values = _values(t)
    key = reqs.relevant_values(t, values)
    assert reqs.relevant_values(t, {**values, "seed": 7, "prompt": "a cat"}) == key  # same requirements
    without = {**values, "reference": None}
    with_ref = {**values, "reference": "art-1"}
    assert reqs.relevant_values(t, with_ref) == reqs.relevant_values(t, {**values, "reference": "art-2"})
    assert reqs.relevant_values(t, without) != reqs.relevant_values(t, with_ref)  # its branch goes
    assert reqs.requirements(t, without) != reqs.requirements(t, with_ref)
    assert reqs.relevant_values(t, {**values, "lora": "other.safetensors"}) != key  # a model
    preset = next(c for c in next(p for p in t.manifest.parameters if p.name == "preset").choices or []
                  if c != values["preset"])
    assert reqs.relevant_values(t, {**with_ref, "preset": preset}) != reqs.relevant_values(t, with_ref)
    with pytest.raises(AttributeError):  # a job row whose parameters are no mapping (the dispatcher fails it)
        reqs.relevant_values(t, ["not", "an", "object"])  # type: ignore[arg-type]


def test_requirements_are_computed_once_per_version_and_relevant_values(monkeypatch: pytest.MonkeyPatch) -> None:
    template_db.clear_cache()
    t = tpl.pick(LIBRARY, "generate-lora")
    computed: list[dict[str, Any]] = []
    compute = reqs.requirements

    def counting(t: tpl.TemplateVersion, values: dict[str, Any]) -> Any:
        computed.append(values)
        return compute(t, values)

    monkeypatch.setattr(reqs, "requirements", counting)
    values = {**_values(t), "reference": "art-ref"}
    first = template_db.requirements(t, values)
    assert template_db.requirements(t, {**values, "seed": 99, "reference": None}) != first
    for seed in range(20):
        assert template_db.requirements(t, {**values, "seed": seed, "prompt": f"p{seed}"}) is first
    assert len(computed) == 2
