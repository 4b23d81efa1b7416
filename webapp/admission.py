"""Which live runs and alpha sweeps the server takes: a bounded line, one run per session.

Training is slow and the server small. :class:`LiveRuns` admits runs (a bounded number,
one per browser session), lines them up and keeps the stop event of each: a new run from
the same session stops the old one, and the Stop button sets the event, which the run
checks before every step. (A closed tab needs nothing from us: Gradio stops iterating a
run whose client has gone.)
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from issp import IsspError


@dataclass(frozen=True)
class Admission:
    """One admitted live run or sweep: its session and the event that stops it."""

    session: str
    stop: threading.Event


class LiveRuns:
    """The live runs and alpha sweeps the server has admitted, in the order they run.

    Training is slow and the server small, so admission is bounded: at most ``capacity``
    runs are admitted at once (running or waiting), ``slots`` of them run at a time and the
    rest wait their turn here rather than in Gradio's queue, which so always has room for
    upscaling. Past ``capacity`` a new run is refused at once. A session has one run at a
    time: a new one stops the session's old one and takes its place in the line. A run
    leaves the line when its ``with`` block ends, however it ends. Thread-safe.
    """

    def __init__(self, capacity: int = 4, slots: int = 1) -> None:
        if not 1 <= slots <= capacity:
            raise IsspError(f"need 1 <= slots <= capacity, got {slots} and {capacity}")
        self.capacity = capacity
        self.slots = slots
        self._changed = threading.Condition()
        # Admitted runs, oldest first; the first `slots` of them run.
        self._line: list[Admission] = []

    @contextmanager
    def admitted(self, session: str) -> Iterator[Admission]:
        """A place in the line for a run of ``session`` while the ``with`` block lasts.

        Raises IsspError at once, taking no place, when ``capacity`` other sessions have
        runs admitted already. (A session's replaced run, still ending, does not count
        twice.)
        """
        with self._changed:
            earlier = [run for run in self._line if run.session == session]
            if not earlier and len({run.session for run in self._line}) >= self.capacity:
                raise IsspError(
                    f"the server is busy training: {self.capacity} runs are running or "
                    "waiting, the most it takes at once; try again when one has finished"
                )
            run = Admission(session, threading.Event())
            for old in earlier:
                old.stop.set()
            # The session keeps its place: its stopped run ends at its next step.
            place = self._line.index(earlier[-1]) + 1 if earlier else len(self._line)
            self._line.insert(place, run)
            self._changed.notify_all()
        try:
            yield run
        finally:
            with self._changed:
                self._line.remove(run)
                self._changed.notify_all()

    def _ahead(self, run: Admission) -> int:
        return max(self._line.index(run) - self.slots + 1, 0)

    def wait(self, run: Admission, every: float = 5.0) -> Iterator[str]:
        """Until ``run`` may start or is stopped, yield a status saying how many runs are
        ahead of it: at once, whenever that changes, and at least every ``every`` seconds
        (a stream that yields now and then notices a client that has gone)."""
        with self._changed:
            ahead = self._ahead(run)
        while ahead and not run.stop.is_set():
            yield (
                f"**Waiting:** {ahead} run{'s' if ahead > 1 else ''} ahead of yours (runs go "
                f"{self.slots} at a time; at most {self.capacity} running or waiting)."
            )
            with self._changed:
                self._changed.wait_for(
                    lambda seen=ahead: self._ahead(run) != seen or run.stop.is_set(),
                    timeout=every,
                )
                ahead = self._ahead(run)

    def stop(self, session: str) -> bool:
        """Ask the session's run to stop (a waiting one stops waiting); False if none."""
        with self._changed:
            runs = [run for run in self._line if run.session == session]
            for run in runs:
                run.stop.set()
            self._changed.notify_all()
        return bool(runs)

    def describe(self) -> str:
        """The line's rules in a sentence, for a page to show beside its Train button."""
        return (
            f"Live runs and sweeps run {self.slots} at a time server-wide; at most "
            f"{self.capacity} run or wait at once, one per user (a new one replaces yours), "
            "and past that a new one is refused until one ends."
        )

    def active(self) -> int:
        """How many runs are admitted now, running or waiting."""
        with self._changed:
            return len(self._line)
