"""Placer: a dispatch round's jobs placed together (warm-model affinity within a bound, round-robin)."""

import pytest

from orchestrator.core.capabilities import Capabilities, Requirements
from orchestrator.core.placement import Placer, ServerView

NODES = frozenset({"CheckpointLoaderSimple", "KSampler", "SaveImage"})
MODELS = ("a.safetensors", "b.safetensors", "c.safetensors")


def req(model: str) -> Requirements:
    return Requirements(NODES, frozenset({("checkpoints", model)}))


def server(name: str, warm: str | None = None, inflight: int = 0, models: tuple = MODELS) -> ServerView:
    caps = Capabilities(node_classes=NODES, models={"checkpoints": frozenset(models)})
    return ServerView(name, f"http://{name}", True, True, caps, inflight,
                      frozenset({("checkpoints", warm)}) if warm else frozenset())


def names(plan: list) -> list[tuple[str, str]]:
    return [(job, view.id) for job, view in plan]


def test_a_warm_server_takes_a_later_job_of_its_model_before_an_older_cold_one() -> None:
    servers = [server("s1", warm="b.safetensors", inflight=1)]  # busy, one free slot, holds b
    plan = Placer().plan([("j1", 0, req("a.safetensors")), ("j2", 0, req("b.safetensors"))], servers)
    assert names(plan) == [("j2", "s1")]
    assert servers[0].inflight == 2


def test_round_robin_ignores_warm_models() -> None:
    servers = [server("s1", warm="b.safetensors", inflight=1)]
    plan = Placer("round_robin").plan([("j1", 0, req("a.safetensors")), ("j2", 0, req("b.safetensors"))], servers)
    assert names(plan) == [("j1", "s1")]


def test_an_idle_server_takes_the_oldest_job_it_can_run_even_cold() -> None:
    servers = [server("s1", warm="c.safetensors"), server("s2", warm="b.safetensors", inflight=1)]
    plan = Placer().plan([("j1", 0, req("a.safetensors")), ("j2", 0, req("b.safetensors"))], servers)
    assert names(plan) == [("j1", "s1"), ("j2", "s2")]
    assert servers[0].warm == frozenset({("checkpoints", "a.safetensors")})  # what it will hold next


def test_a_job_passed_over_max_bypass_times_takes_the_next_free_slot() -> None:
    placer = Placer(max_bypass=2)
    jobs = [("old", 0, req("a.safetensors")), ("new", 0, req("b.safetensors"))]
    for _ in range(2):  # each round one later job of its priority starts ahead of "old"
        assert names(placer.plan(jobs, [server("s1", warm="b.safetensors", inflight=1)])) == [("new", "s1")]
    assert placer.passed == {"old": 2}
    assert names(placer.plan(jobs, [server("s1", warm="b.safetensors", inflight=1)])) == [("old", "s1")]
    assert placer.passed == {"new": 0}


def test_a_lower_priority_job_does_not_overtake_a_higher_one_that_could_use_the_server() -> None:
    placer = Placer()
    jobs = [("urgent", 5, req("a.safetensors")), ("low", 0, req("b.safetensors"))]
    assert placer.plan(jobs, [server("s1", warm="b.safetensors", inflight=1)]) == []
    assert placer.passed == {"urgent": 0, "low": 0}  # higher-priority jobs never count as passing
    # the urgent job cannot run there (the server lacks its model): the low one may use the slot
    lacking = [server("s1", warm="b.safetensors", inflight=1, models=("b.safetensors",))]
    assert names(placer.plan(jobs, lacking)) == [("low", "s1")]


def test_round_robin_takes_servers_in_turn_idle_first() -> None:
    placer = Placer("round_robin")
    servers = [server("s1"), server("s2"), server("s3", inflight=1)]
    jobs = [(f"j{i}", 0, req("a.safetensors")) for i in range(4)]
    assert names(placer.plan(jobs, servers)) == [("j0", "s1"), ("j1", "s2"), ("j2", "s3"), ("j3", "s1")]


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="round_robin"):
        Placer("random")


def test_fair_order_matches_the_plain_definition_on_random_queues() -> None:
    """The heap-based fair_order gives the order of its definition: priority, then the key with the fewest
    running jobs, then the oldest job (checked against a direct O(n^2) transcription)."""
    import random
    from collections import Counter

    from orchestrator.core.placement import Candidate, fair_order

    def reference(cands: list[Candidate], running_by_key: dict) -> list[Candidate]:
        running, left, out = Counter(running_by_key), sorted(cands, key=lambda c: (-c.priority, c.order)), []
        while left:
            top = left[0].priority
            best = min((c for c in left if c.priority == top), key=lambda c: (running[c.key], c.order))
            out.append(best)
            running[best.key] += 1
            left.remove(best)
        return out

    rnd = random.Random(7)
    for _ in range(200):
        cands = [Candidate(f"j{i}", rnd.choice([0, 0, 5]), rnd.choice(["a", "b", "c", None]), rnd.random())
                 for i in range(rnd.randint(0, 40))]
        running = {k: rnd.randint(0, 4) for k in ("a", "b", None) if rnd.random() < 0.7}
        assert [c.id for c in fair_order(cands, running)] == [c.id for c in reference(cands, running)]


def test_a_lone_job_goes_to_an_idle_server_rather_than_queue_behind_a_warm_busy_one() -> None:
    servers = [server("s1", warm="a.safetensors", inflight=1), server("s2")]
    assert names(Placer().plan([("j1", 0, req("a.safetensors"))], servers)) == [("j1", "s2")]
    # with more work waiting, the idle server takes the job no warm server could queue
    servers = [server("s1", warm="a.safetensors", inflight=1), server("s2")]
    plan = Placer().plan([("j1", 0, req("a.safetensors")), ("j2", 0, req("b.safetensors"))], servers)
    assert names(plan) == [("j1", "s1"), ("j2", "s2")]


def test_a_job_without_models_does_not_overtake_a_higher_priority_job_for_ever() -> None:
    """A stream of model-less low-priority jobs must not starve an older high-priority job that needs a model
    (found in review: step 1 placed the model-less job first on every round)."""
    placer = Placer()
    upscale = Requirements(NODES, frozenset())
    for n in range(3):
        servers = [server("s1", warm="c.safetensors")]  # idle, can run both
        plan = placer.plan([("high", 10, req("a.safetensors")), (f"low{n}", 0, upscale)], servers)
        assert names(plan) == [("high", "s1")]
