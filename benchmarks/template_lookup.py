"""Template lookup, side by side in one run: the old rule (read and parse every version of every template on
each ``get_template``, requirements computed afresh by each of admission, dispatcher and executor) against the
one cache of ``orchestrator/db/templates.py`` (issue 12). SQLite, 50 templates x 5 versions of generate-lora's size.

    .venv/bin/python benchmarks/template_lookup.py
"""
from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from sqlmodel import Session, select  # noqa: E402

from orchestrator.core import requirements as core_reqs  # noqa: E402
from orchestrator.core import templates as tpl  # noqa: E402
from orchestrator.db import templates as template_db  # noqa: E402
from orchestrator.db.engine import Database  # noqa: E402
from orchestrator.db.tables import TemplateVersionRow  # noqa: E402
from orchestrator.runtime.library import scan_library  # noqa: E402
from orchestrator.settings import PROJECT_ROOT  # noqa: E402

LIB = scan_library(PROJECT_ROOT / "comfy_workflows")
src = tpl.pick(LIB, "generate-lora")


def old_get_template(session: Session, name: str,
                     version: int | None = None) -> tuple[TemplateVersionRow, tpl.TemplateVersion]:
    """get_template as it was before the cache."""
    rows = list(session.exec(select(TemplateVersionRow).order_by(TemplateVersionRow.name, TemplateVersionRow.version)))
    t = tpl.pick([template_db._parse(r) for r in rows], name, version)
    row = next(r for r in rows if r.name == t.name and r.version == t.version)
    return row, t


def timeit(fn: Callable[[], object], n: int) -> float:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return statistics.median(out) * 1000


with tempfile.TemporaryDirectory() as d:
    db = Database(f"sqlite:///{Path(d) / 'db.sqlite'}")
    with db.session() as s:
        for i in range(50):
            for v in range(1, 6):
                manifest = src.manifest.model_dump(mode="json") | {"title": f"t{i} v{v}"}
                s.add(TemplateVersionRow(name=f"tpl-{i:02d}", version=v,
                                         content_hash=tpl.content_hash(manifest, src.graph), title=manifest["title"],
                                         kind="image", manifest=manifest, graph=src.graph))
        s.commit()
    with db.session() as s:
        before = timeit(lambda: old_get_template(s, "tpl-25"), 20)
        template_db.clear_cache()
        t0 = time.perf_counter()
        template_db.get_template(s, "tpl-25")
        first = (time.perf_counter() - t0) * 1000
        after = timeit(lambda: template_db.get_template(s, "tpl-25"), 200)
    print("get_template, 50 templates x 5 versions (generate-lora-sized rows), sqlite:")
    print(f"  before (read + parse all 250 rows): {before:.2f} ms median")
    print(f"  after, first call (5 rows read, 5 parsed): {first:.2f} ms")
    print(f"  after, cached (5 rows read, 0 parsed): {after:.3f} ms median  -> x{before / after:.0f}")
    # requirements: a new seed and prompt per job (every job differs), as admission, dispatcher and executor see them
    values = tpl.validate_params(src, {"lora": "m.safetensors", "reference": "art-1"})
    jobs = [{**values, "seed": i, "prompt": f"p{i}"} for i in range(500)]
    t0 = time.perf_counter()
    for v in jobs:
        core_reqs.requirements(src, v)
    uncached = (time.perf_counter() - t0) / len(jobs) * 1e6
    template_db.clear_cache()
    t0 = time.perf_counter()
    for v in jobs:
        template_db.requirements(src, v)
    cached = (time.perf_counter() - t0) / len(jobs) * 1e6
    print(f"requirements of generate-lora, 500 jobs with distinct seeds/prompts: {uncached:.0f} us/job computed "
          f"(x3 per job before: admission, dispatcher (its key held the seed), executor) vs {cached:.0f} us/job cached")
    db.engine.dispose()
