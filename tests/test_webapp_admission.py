"""Which live runs the server takes (webapp.admission): a bounded line, one run per session."""

import pytest
from fixtures import live_request

from analysis.lockstep import MAX_STEPS
from analysis.plots import FIGURES
from issp import IsspError
from webapp import live
from webapp.admission import LiveRuns
from webapp.files import ResultFolders

pytestmark = pytest.mark.usefixtures("one_thread")


def session_run(runs, session, run_config, folders, every=3):
    """What the app's Train handler does, minus the UI: wait in line, then run."""
    with runs.admitted(session) as run:
        for status in runs.wait(run, every=0.05):
            yield live.LiveView((None,) * len(FIGURES), status)
        yield from live.live_run(run_config, run.stop, folders.new, every)


def test_a_second_run_from_the_same_session_stops_the_first(live_base, tmp_path):
    runs, folders = LiveRuns(capacity=2, slots=1), ResultFolders(tmp_path)
    first = session_run(runs, "alice", live_request(live_base, steps=MAX_STEPS), folders)
    assert "Running" in next(first).status
    second = session_run(runs, "alice", live_request(live_base), folders)
    # It waits only for the first to end at its next step, and takes its place.
    assert next(second).status.startswith("**Waiting:** 1 run ahead of yours")
    assert list(first)[-1].status.startswith("**Stopped**")
    assert list(second)[-1].status.startswith("**Finished**")
    assert runs.active() == 0, "finished runs leave nothing behind"


def test_runs_wait_their_turn_and_past_the_bound_are_refused_at_once(live_base, tmp_path):
    runs, folders = LiveRuns(capacity=2, slots=1), ResultFolders(tmp_path)
    alice = session_run(runs, "alice", live_request(live_base, steps=MAX_STEPS), folders)
    bob = session_run(runs, "bob", live_request(live_base), folders)
    next(alice)
    assert next(bob).status.startswith("**Waiting:** 1 run ahead of yours")
    carol = session_run(runs, "carol", live_request(live_base), folders)
    with pytest.raises(IsspError, match="the server is busy training: 2 runs"):
        next(carol)
    assert runs.active() == 2, "a refused run takes no place"
    # A session already in line may replace its run while the line is full.
    again = session_run(runs, "alice", live_request(live_base, steps=MAX_STEPS), folders)
    assert "Waiting" in next(again).status
    alice.close(), again.close()
    assert list(bob)[-1].status.startswith("**Finished**"), "bob's turn came"
    assert runs.active() == 0


def test_stop_reaches_a_waiting_run_and_a_closed_one_leaves_the_line(live_base, tmp_path):
    runs, folders = LiveRuns(capacity=3, slots=1), ResultFolders(tmp_path)
    alice = session_run(runs, "alice", live_request(live_base, steps=MAX_STEPS), folders)
    next(alice)
    bob = session_run(runs, "bob", live_request(live_base), folders)
    carol = session_run(runs, "carol", live_request(live_base), folders)
    next(bob), next(carol)
    assert runs.stop("bob")
    views = list(bob)
    assert views[-1].status == "**Stopped** before the first snapshot."
    assert views[-1].figures == (None,) * len(FIGURES)
    # A client that goes while its run waits: Gradio drops the stream, closing it.
    assert next(carol).status.startswith("**Waiting:** 1 run ahead")
    carol.close()
    assert runs.active() == 1 and not runs.stop("carol")
    alice.close()
    assert runs.active() == 0
