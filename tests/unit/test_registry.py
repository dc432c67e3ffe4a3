"""The model registry: state machine, usable-model rule, safetensors metadata, registration by sha256."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from sqlalchemy import update as sa_update

from orchestrator.app import artifacts as artifact_app
from orchestrator.core import limits
from orchestrator.core.errors import Conflict, InvalidInput, NotFound
from orchestrator.db.engine import Database
from orchestrator.db.tables import Artifact
from orchestrator.training.app import registry
from orchestrator.training.app.registry import LoraState
from storage import LocalDiskStore


def lora_file(path: Path, seed: int = 0, **meta: str) -> Path:
    """A real LoRA-shaped safetensors file with sd-scripts-style metadata."""
    g = torch.Generator().manual_seed(seed)
    tensors = {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.randn(4, 320, generator=g),
               "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(320, 4),
               "lora_unet_down_blocks_0_attentions_0_proj_in.alpha": torch.tensor(2.0)}
    metadata = {"ss_network_dim": "4", "ss_network_alpha": "2.0", "ss_steps": "2",
                "ss_network_module": "networks.lora", "ss_base_model_version": "sd_v1",
                "ss_tag_frequency": json.dumps({"1_mlchar": {"mlchar": 3, "red coat": 1}}),
                "modelspec.architecture": "stable-diffusion-v1/lora", "other": "ignored", **meta}
    save_file(tensors, str(path), metadata=metadata)
    return path


@pytest.mark.parametrize(("current", "new", "ok"), [
    ("candidate", "approved", True), ("candidate", "withdrawn", True), ("approved", "withdrawn", True),
    ("withdrawn", "approved", True), ("approved", "candidate", False), ("withdrawn", "candidate", False),
    ("approved", "approved", False),
])
def test_state_machine(current: str, new: str, ok: bool) -> None:
    if ok:
        assert registry.check_state_change(current, new) == LoraState(new)
    else:
        with pytest.raises(Conflict, match=f"a {current} model cannot become {new}"):
            registry.check_state_change(current, new)


def test_unknown_state_is_invalid() -> None:
    with pytest.raises(InvalidInput, match="unknown model state 'gone'"):
        registry.check_state_change("approved", "gone")


def test_only_approved_registered_loras_are_usable() -> None:
    states = {"a-v1.safetensors": "approved", "b-v1.safetensors": "withdrawn", "c-v1.safetensors": "candidate"}
    refs = {("loras", "a-v1.safetensors"), ("loras", "b-v1.safetensors"), ("loras", "c-v1.safetensors"),
            ("loras", "unregistered.safetensors"), ("checkpoints", "b-v1.safetensors")}
    problems = registry.unusable(refs, states)
    assert problems == ["LoRA b-v1.safetensors is withdrawn: only approved models may be used "
                        "(medialab models approve b-v1.safetensors)",
                        "LoRA c-v1.safetensors is candidate: only approved models may be used "
                        "(medialab models approve c-v1.safetensors)"]


def test_names() -> None:
    def check(name: str) -> str:  # the one name rule, with the registry's pattern and length
        return limits.check_name(name, "model name", registry.MAX_NAME_LENGTH, registry.NAME_LIMIT,
                                 pattern=registry.NAME, rule=registry.NAME_RULE)

    assert check("hero-2") == "hero-2" and check("x" * 64) == "x" * 64
    assert registry.lora_filename("hero", 3) == "hero-v3.safetensors"
    for bad in ("Hero", "-x", "a/b", ""):
        with pytest.raises(InvalidInput, match="model name .*: use lower-case letters"):
            check(bad)
    with pytest.raises(InvalidInput, match="over the limit registry.MAX_NAME_LENGTH=64") as exc:
        check("x" * 65)
    assert exc.value.extra == {"limit": "registry.MAX_NAME_LENGTH", "value": 64}


def test_metadata_read_from_a_generated_safetensors_file(tmp_path: Path) -> None:
    path = lora_file(tmp_path / "l.safetensors")
    with path.open("rb") as f:
        header = registry.read_header(f)
    meta = registry.training_metadata(header)
    assert meta["ss_network_dim"] == "4" and meta["ss_base_model_version"] == "sd_v1"
    assert meta["ss_tag_frequency"] == {"1_mlchar": {"mlchar": 3, "red coat": 1}}  # JSON values decoded
    assert meta["modelspec.architecture"] == "stable-diffusion-v1/lora"
    assert "other" not in meta
    assert len(registry.lora_keys(header)) == 3


@pytest.mark.parametrize("data", [b"", b"\x01\x00", (2**40).to_bytes(8, "little") + b"{}",
                                  (4).to_bytes(8, "little") + b"nope", (2).to_bytes(8, "little") + b"[]"])
def test_not_a_safetensors_file(data: bytes) -> None:
    with pytest.raises(InvalidInput, match="not a safetensors file"):
        registry.read_header(io.BytesIO(data))


def test_register_by_sha256_with_versions_and_states(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    store = LocalDiskStore(tmp_path / "objects")
    with db.session() as s:
        a1 = artifact_app.store_input(s, store, lora_file(tmp_path / "1.safetensors", 1), "1.safetensors")
        a2 = artifact_app.store_input(s, store, lora_file(tmp_path / "2.safetensors", 2), "2.safetensors")
        m1 = registry.register(s, store, a1, "hero", base_model="sd15.safetensors", trigger_words=["mlchar"],
                               training={"network_dim": 4})
        again = registry.register(s, store, a1, "hero", base_model=None, trigger_words=[])
        m2 = registry.register(s, store, a2, "hero", base_model="sd15.safetensors", trigger_words=["mlchar"],
                               initial_state="candidate")
        s.commit()  # register never commits: the caller does
        assert again.id == m1.id
        assert (m1.version, m1.filename, m1.state) == (1, "hero-v1.safetensors", "approved")
        assert (m2.version, m2.filename, m2.state) == (2, "hero-v2.safetensors", "candidate")
        assert m1.ss_metadata["ss_network_dim"] == "4"
        assert registry.get_model(s, "hero").id == m2.id  # newest version
        assert registry.get_model(s, "hero@v1").id == m1.id
        assert registry.get_model(s, a1.sha256[:12]).id == m1.id
        assert registry.get_model(s, "hero-v2.safetensors").id == m2.id
        with pytest.raises(NotFound):
            registry.get_model(s, "villain")
        with pytest.raises(InvalidInput, match="hero-v2.safetensors is candidate"):
            registry.check_usable(s, {("loras", "hero-v2.safetensors")})
        registry.check_usable(s, {("loras", "hero-v1.safetensors"), ("loras", "other.safetensors")})
        registry.set_state(s, "hero@v2", "approved")
        registry.set_state(s, "hero@v1", "withdrawn")
        registry.check_usable(s, {("loras", "hero-v2.safetensors")})
        with pytest.raises(InvalidInput, match="hero-v1.safetensors is withdrawn"):
            registry.check_usable(s, {("loras", "hero-v1.safetensors")})
        assert [m.version for m in registry.list_models(s, state="approved")] == [2]
        not_lora = artifact_app.store_input(s, store, b"\x02\x00\x00\x00\x00\x00\x00\x00{}", "x.safetensors")
        with pytest.raises(InvalidInput, match="holds no tensors"):
            registry.register(s, store, not_lora, "hero", base_model=None, trigger_words=[])
    db.engine.dispose()


def test_distribution_targets(tmp_path: Path) -> None:
    from orchestrator.db.tables import ServerRow
    from orchestrator.settings import Settings

    st = Settings(home=tmp_path, models_dir=tmp_path / "local-models")
    local, remote = ServerRow(name="local", url="http://a", source="local"), ServerRow(name="g", url="http://b")
    assert registry.target_folder(local, st) == tmp_path / "local-models" / "loras"  # the worker's own folder
    assert registry.target_folder(remote, st) is None  # nowhere to put it: reported, not guessed
    st.shared_models_dir = tmp_path / "shared"
    assert registry.target_folder(remote, st) == tmp_path / "shared" / "loras"


def test_register_never_commits(any_db: Database, tmp_path: Path) -> None:
    """The caller owns the transaction: rolled back, nothing is registered; committed, it is. On SQLite too,
    where a savepoint taken before any write would be the whole transaction and releasing it a commit."""
    store = LocalDiskStore(tmp_path / "objects")
    with any_db.session() as s:
        art = artifact_app.store_input(s, store, lora_file(tmp_path / "1.safetensors", 1), "1.safetensors")
        assert registry.register(s, store, art, "hero", base_model=None, trigger_words=[]).version == 1
        with any_db.session() as other:
            assert registry.list_models(other) == []  # not committed
        s.rollback()
        assert registry.list_models(s) == []
        registry.register(s, store, art, "hero", base_model=None, trigger_words=[])
        s.commit()
    with any_db.session() as other:
        assert [(m.name, m.version) for m in registry.list_models(other)] == [("hero", 1)]


def test_register_in_the_callers_transaction_retries_a_taken_version(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Another registration took the version number meanwhile: the next one, and the caller's own writes stay."""
    db = Database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    store = LocalDiskStore(tmp_path / "objects")
    with db.session() as s:
        a1 = artifact_app.store_input(s, store, lora_file(tmp_path / "1.safetensors", 1), "1.safetensors")
        a2 = artifact_app.store_input(s, store, lora_file(tmp_path / "2.safetensors", 2), "2.safetensors")
        registry.register(s, store, a1, "hero", base_model=None, trigger_words=[])
        stale = iter([1])  # the first read of the next version misses v1 (a concurrent registration)
        real = registry.next_version
        monkeypatch.setattr(registry, "next_version", lambda session, name: next(stale, None) or real(session, name))
        s.execute(sa_update(Artifact).where(Artifact.id == a2.id).values(filename="renamed.safetensors"))
        m2 = registry.register(s, store, a2, "hero", base_model=None, trigger_words=[])
        s.commit()
        assert (m2.version, m2.filename) == (2, "hero-v2.safetensors")
        assert s.get(Artifact, a2.id).filename == "renamed.safetensors"
        assert [m.version for m in registry.list_models(s, "hero")] == [1, 2]
    db.engine.dispose()
