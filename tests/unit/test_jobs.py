import pytest

from orchestrator.core.errors import Conflict
from orchestrator.core.states import TERMINAL, TRANSITIONS, JobState, check_transition


def test_lifecycle() -> None:
    check_transition(JobState.QUEUED, JobState.RUNNING)
    check_transition(JobState.QUEUED, JobState.CANCELLED)
    for end in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED):
        check_transition(JobState.RUNNING, end)


@pytest.mark.parametrize("state", sorted(TERMINAL))
def test_terminal_states_are_final(state: JobState) -> None:
    assert state.terminal and not TRANSITIONS[state]
    for new in JobState:
        with pytest.raises(Conflict, match=f"a {state.value} job cannot become"):
            check_transition(state, new)


def test_queued_cannot_finish_without_running() -> None:
    with pytest.raises(Conflict):
        check_transition(JobState.QUEUED, JobState.SUCCEEDED)
