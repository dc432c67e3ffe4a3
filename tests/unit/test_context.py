from pathlib import Path

import pytest

from orchestrator.bootstrap import Context, configured_servers
from orchestrator.core.errors import InvalidInput
from orchestrator.db import servers as server_db
from orchestrator.settings import Settings


def test_servers_from_env_and_file_land_in_the_registry(tmp_path: Path) -> None:
    servers_file = tmp_path / "servers.toml"
    servers_file.write_text('[[server]]\nname = "gpu1"\nurl = "http://gpu1:8188/"\n\n'
                            '[[server]]\nurl = "http://gpu2:8188"\n')
    settings = Settings(home=tmp_path / "home", servers_file=servers_file, comfy_servers=["http://gpu0:8188"])
    assert [(c.name, c.url) for c in configured_servers(settings)] == [
        (None, "http://gpu0:8188"), ("gpu1", "http://gpu1:8188/"), (None, "http://gpu2:8188")]
    for _ in range(2):  # a restart registers nothing twice
        ctx = Context(settings)
        with ctx.db.session() as s:
            rows = server_db.server_rows(s)
        ctx.close()
        assert [(r.name, r.url, r.source) for r in rows] == [
            ("gpu0:8188", "http://gpu0:8188", "config"), ("gpu1", "http://gpu1:8188", "config"),
            ("gpu2:8188", "http://gpu2:8188", "config")]


def test_bad_servers_file_names_the_problem(tmp_path: Path) -> None:
    bad = tmp_path / "servers.toml"
    bad.write_text('[[server]]\nname = "gpu1"\n')
    with pytest.raises(InvalidInput, match=r"servers.toml: \[\[server\]\] #1 has no url"):
        configured_servers(Settings(home=tmp_path, servers_file=bad))
    bad.write_text("[[server]\n")
    with pytest.raises(InvalidInput, match="servers.toml"):
        configured_servers(Settings(home=tmp_path, servers_file=bad))
