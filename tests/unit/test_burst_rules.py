"""The burst decisions (core/burst.py): local first, threshold, allowlist, budgets, capability, tiers, costs."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest

from orchestrator.core import burst
from orchestrator.core.burst import Budget, BurstPolicy, Spend, Tiering, choose
from orchestrator.core.capabilities import Capabilities, Requirements
from orchestrator.core.errors import InvalidInput
from orchestrator.core.placement import ServerView
from orchestrator.settings import Settings

CORE = frozenset({"LoadImage", "SaveImage", "UpscaleModelLoader", "ImageUpscaleWithModel"})
UPSCALE = Requirements(CORE, frozenset({("upscale_models", "x4.pth")}))


def provider(name: str, *, tier: int = 1, rate: float = 0.001, cold: float = 10.0, inflight: int = 0,
             max_inflight: int | None = 2, healthy: bool = True, models: tuple[str, ...] = ("x4.pth",)) -> ServerView:
    caps = Capabilities(node_classes=CORE, models={"upscale_models": frozenset(models)})
    return ServerView(name, f"http://{name}", healthy, True, caps, inflight, name=name, tier=tier, rate=rate,
                      cold_start_s=cold, max_inflight=max_inflight)


def pick(*providers: ServerView, wait: float = 120.0, threshold: float = 60.0, budget: Budget | None = None,
         spend: Spend | None = None, run_s: float = 20.0) -> burst.BurstChoice:
    return choose(UPSCALE, wait, threshold, providers, budget or Budget(), spend or Spend(), "key", run_s,
                  default_inflight=2)


def test_the_local_tier_first_a_wait_within_the_threshold_never_bursts() -> None:
    assert pick(provider("cloud"), wait=60.0).server is None  # within: waits locally
    assert pick(provider("cloud"), wait=0.0, threshold=0.0).server is None
    assert pick(provider("cloud"), wait=60.1).server.id == "cloud"
    assert pick(provider("cloud"), wait=math.inf).server.id == "cloud"  # no local server can run it at all


def test_a_local_wait_is_the_work_ahead_over_the_capable_servers() -> None:
    assert burst.local_wait_s(ahead=4, slots=2, mean_s=30.0) == 60.0
    assert burst.local_wait_s(ahead=0, slots=1, mean_s=30.0) == 0.0
    assert burst.local_wait_s(ahead=3, slots=0, mean_s=30.0) == math.inf


def test_the_allowlist_names_templates_or_versions_and_thresholds_follow_template_and_priority() -> None:
    policy = BurstPolicy(frozenset({"upscale-esrgan", "video-retime@v2"}), wait_s=60.0,
                         template_wait_s={"upscale-esrgan@v2": 5.0, "video-retime": 300.0}, urgent_priority=50,
                         urgent_wait_s=1.0)
    assert policy.allowed("upscale-esrgan", 1) and policy.allowed("upscale-esrgan", 7)
    assert policy.allowed("video-retime", 2) and not policy.allowed("video-retime", 1)
    assert not policy.allowed("blend-faceid", 1)
    assert policy.threshold("upscale-esrgan", 2, 0) == 5.0  # name@vN wins over the name
    assert policy.threshold("upscale-esrgan", 1, 0) == 60.0  # the default
    assert policy.threshold("video-retime", 2, 0) == 300.0
    assert policy.threshold("video-retime", 2, 50) == 1.0  # urgent jobs wait less
    assert policy.threshold("upscale-esrgan", 2, 99) == 1.0
    assert not BurstPolicy().allowed("upscale-esrgan", 1)  # nothing bursts unless named


def test_the_policy_comes_from_the_settings() -> None:
    s = Settings(burst_templates=["upscale-esrgan"], burst_wait_s=30, burst_template_wait_s={"x": 1.0},
                 burst_urgent_priority=10, burst_urgent_wait_s=2)
    assert BurstPolicy.of(s) == BurstPolicy(frozenset({"upscale-esrgan"}), 30.0, {"x": 1.0}, 10, 2.0)


def test_capability_free_slots_and_health_decide_which_providers_can_take_it() -> None:
    choice = pick(provider("nomodel", models=("other.pth",)))
    assert choice.server is None and choice.reason == "no burst provider can run it" and choice.blocked
    full = pick(provider("full", inflight=2), provider("down", healthy=False))
    assert full.server is None and full.blocked and "full full" in full.reason and "down down" in full.reason
    assert pick(provider("any", max_inflight=None, inflight=1)).server.id == "any"  # MEDIALAB_MAX_INFLIGHT: 2
    local = ServerView("l", "http://l", True, True, Capabilities(node_classes=CORE,
                       models={"upscale_models": frozenset({"x4.pth"})}))
    assert pick(local).server is None  # a tier-0 server is never a burst target


def test_lower_tiers_first_then_the_cheaper_estimate() -> None:
    assert pick(provider("tier2", tier=2, rate=0.0001), provider("tier1", tier=1, rate=0.01)).server.id == "tier1"
    cheap_run = provider("slowstart", rate=0.001, cold=100.0)  # 0.001 x (100 + 20) = 0.12
    cheap_rate = provider("fast", rate=0.002, cold=0.0)  # 0.002 x 20 = 0.04
    choice = pick(cheap_run, cheap_rate)
    assert choice.server.id == "fast" and choice.estimate == pytest.approx(0.04)
    assert "estimated cost 0.04" in choice.reason
    assert [burst.money(x) for x in (1.5, 0.2, 0.0029, 0.0)] == ["1.50", "0.20", "0.0029", "0.00"]


def test_budgets_day_month_and_per_key_count_what_running_attempts_are_expected_to_cost() -> None:
    p = provider("cloud", rate=0.01, cold=0.0)  # estimate 0.01 x 20 = 0.2
    assert pick(p, budget=Budget(day=1.0), spend=Spend(day=0.8, month=0.8)).server is not None  # 0.8 + 0.2 fits
    day = pick(p, budget=Budget(day=1.0), spend=Spend(day=0.81, month=0.81))
    assert day.server is None and day.blocked
    assert day.reason == "the daily burst budget (1.00) is reached (spent 0.81, this job ~0.20)"
    month = pick(p, budget=Budget(day=10, month=5.0), spend=Spend(day=0.0, month=4.9))
    assert month.server is None and month.reason.startswith("the monthly burst budget (5.00)")
    key = pick(p, budget=Budget(key_day=0.3), spend=Spend(day=5, month=5, key_day={"key": 0.2, "other": 0.0}))
    assert key.server is None and key.reason.startswith("this API key's daily burst budget (0.30)")
    assert pick(p, budget=Budget(key_day=0.3), spend=Spend(key_day={"other": 0.2})).server is not None
    spend = Spend()
    spend.add("key", 0.5)
    spend.add("other", 0.25)
    assert (spend.day, spend.month, spend.key_day) == (0.75, 0.75, {"key": 0.5, "other": 0.25})


def test_budget_windows_are_the_utc_day_and_month() -> None:
    day, month = burst.windows(datetime(2026, 12, 2, 23, 30, tzinfo=UTC) + timedelta(hours=2))  # 01:30 on the 3rd
    assert (day, month) == (datetime(2026, 12, 3, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC))


def test_costs_and_elapsed_seconds() -> None:
    assert burst.estimate_cost(0.002, 5.0, 20.0) == pytest.approx(0.05)
    assert burst.actual_cost(0.002, 12.5) == pytest.approx(0.025)
    assert burst.actual_cost(0.002, -1.0) == 0.0
    naive, aware = datetime(2026, 12, 2, 10, 0, 0), datetime(2026, 12, 2, 10, 0, 3, tzinfo=UTC)
    assert burst.seconds_between(naive, aware) == 3.0  # SQLite keeps no time zone


@pytest.mark.parametrize("bad, field", [
    (Tiering(kind="lambda"), "server kind 'lambda'"), (Tiering(tier=-1), "tier -1"), (Tiering(tier=10), "tier 10"),
    (Tiering(cost_per_gpu_s=-0.1), "cost_per_gpu_s -0.1"), (Tiering(cold_start_s=float("nan")), "cold_start_s nan"),
    (Tiering(max_inflight=0), "max_inflight 0"),
])
def test_a_tiering_out_of_range_is_refused_naming_the_field(bad: Tiering, field: str) -> None:
    with pytest.raises(InvalidInput, match=field):
        bad.check()
    assert Tiering("comfy_api_v2", 2, 0.0005, 20.0, 8).check().tier == 2
