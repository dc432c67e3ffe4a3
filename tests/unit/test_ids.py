"""Ids given by a person: the full id or a unique prefix (``db/ids.py``), on both databases, through every
lookup that takes one (jobs, artifacts, keys, servers)."""

from __future__ import annotations

import pytest

from orchestrator.core.errors import Conflict, NotFound
from orchestrator.db import artifacts as artifact_db
from orchestrator.db import jobs as job_db
from orchestrator.db import keys as key_db
from orchestrator.db import servers as server_db
from orchestrator.db.engine import Database
from orchestrator.db.ids import escape_like, get_by_id
from orchestrator.db.tables import ApiKey, Artifact, Job, ServerRow


def key(id: str, name: str = "k") -> ApiKey:
    return ApiKey(id=id, name=name, key_hash=f"hash-{id}", roles=["run"])


def test_full_id_or_unique_prefix(any_db: Database) -> None:
    with any_db.session() as s:
        s.add_all([key("abcd1111"), key("abcd2222"), key("abce3333")])
        s.commit()
        assert get_by_id(s, ApiKey, "abcd1111", "API key").id == "abcd1111"  # the full id
        assert get_by_id(s, ApiKey, "abcd1", "API key").id == "abcd1111"
        assert get_by_id(s, ApiKey, "abce", "API key").id == "abce3333"  # 4 characters are enough
        with pytest.raises(Conflict, match=r"'abcd' is ambiguous: abcd1111, abcd2222; give more") as info:
            get_by_id(s, ApiKey, "abcd", "API key")
        assert info.value.status == 409 and info.value.extra["candidates"] == ["abcd1111", "abcd2222"]
        with pytest.raises(NotFound, match="unknown API key abc$"):  # under 4 characters: no prefix lookup
            get_by_id(s, ApiKey, "abc", "API key")
        with pytest.raises(NotFound, match="unknown API key zzzz"):
            get_by_id(s, ApiKey, "zzzz", "API key")


def test_like_wildcards_in_a_prefix_are_literal(any_db: Database) -> None:
    assert escape_like("a%b_c\\") == "a\\%b\\_c\\\\"
    with any_db.session() as s:
        s.add_all([key("ab_x1111"), key("abyx2222"), key("a%cd3333"), key("azcd4444")])
        s.commit()
        assert get_by_id(s, ApiKey, "ab_x", "API key").id == "ab_x1111"  # '_' is no single-character wildcard
        assert get_by_id(s, ApiKey, "a%cd", "API key").id == "a%cd3333"  # '%' is no wildcard
        with pytest.raises(NotFound):
            get_by_id(s, ApiKey, "a%%%", "API key")


def test_an_ambiguous_prefix_names_a_few_candidates(any_db: Database) -> None:
    with any_db.session() as s:
        s.add_all([key(f"ffff{i:04d}") for i in range(8)])
        s.commit()
        with pytest.raises(Conflict) as info:
            get_by_id(s, ApiKey, "ffff", "API key")
        assert info.value.extra["candidates"] == [f"ffff{i:04d}" for i in range(5)]
        assert info.value.message.endswith("ffff0004, ...; give more characters")


def test_every_lookup_takes_a_prefix(any_db: Database) -> None:
    with any_db.session() as s:
        s.add(Job(id="0123456789abcdef", template="t", version=1, params={}))
        s.add(Artifact(id="fedcba9876543210", origin="input:x", key="k", sha256="x", size=1, content_type="image/png",
                       filename="f.png", role="input"))
        s.add(key("5555aaaa", name="ops"))
        s.add(ServerRow(id="7777bbbb", name="gpu-1", url="http://127.0.0.1:8188"))
        s.commit()
        assert job_db.get_job(s, "01234567").id == "0123456789abcdef"
        assert artifact_db.get_artifact(s, "fedcba98").id == "fedcba9876543210"
        assert key_db.get_key(s, "5555").id == "5555aaaa"
        assert key_db.get_key(s, "ops").id == "5555aaaa"  # names still work
        assert server_db.get_server(s, "7777b").id == "7777bbbb"
        assert server_db.get_server(s, "gpu-1").id == "7777bbbb"
        with pytest.raises(NotFound, match="unknown job 9999"):
            job_db.get_job(s, "9999")


def test_cancel_by_prefix_moves_the_job_itself(any_db: Database) -> None:
    from orchestrator.app import jobs as job_app
    from orchestrator.core.states import JobState
    with any_db.session() as s:
        s.add(Job(id="cafe0000000000000000000000000001", template="t", version=1, params={}))
        s.commit()
        assert job_app.cancel_job(s, "cafe0000").state == JobState.CANCELLED
        assert [e.state for e in job_db.events_after(s, "cafe0000000000000000000000000001")] == [JobState.CANCELLED]
