"""How a long step of the editing core (converting or loading a model, building C₀) talks to
whoever called it: it says when a stage begins and how far it got, and asks whether to stop.

The caller passes a Monitor as a plain argument; the core knows nothing of who listens (a web
service's start-up, a CLI, nobody). The base class listens to nothing and never stops.
"""

from __future__ import annotations


class Cancelled(Exception):
    """The caller asked the computation to stop (e.g. the process is shutting down)."""


class Monitor:
    def begin(
        self, stage: str, detail: str = "", *, total: int | None = None, unit: str = "", expected_s: float | None = None
    ) -> None:
        """A stage starts: `total` units of work to come (None: not counted), or `expected_s` seconds."""

    def advance(self, done: int) -> None:
        """`done` units of the current stage's total are finished (a running count, not an increment)."""

    def stopped(self) -> bool:
        """Whether the caller wants the computation to stop; checked between chunks of work."""
        return False

    def check(self) -> None:
        """Raise Cancelled when the caller wants the computation to stop."""
        if self.stopped():
            raise Cancelled("stopped on request")


SILENT = Monitor()
