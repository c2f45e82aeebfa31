"""A gate in front of the engine's steps, so that a test acts while a generation is
certainly still running, however fast or loaded the machine is: the engine takes only
the steps the test allows. Commands (new requests, aborts) still go through while it is
held, so an abort frees its blocks at once, as it would between two real steps.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from engine import AsyncLLM

# How long a refused step waits for a permit before handing the loop back to its commands.
REFUSED_STEP_WAIT_SECONDS = 0.005


class StepGate:
    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._num_permits = 0
        self._open = False
        self._refusing = False
        self.num_steps = 0

    def allow(self, num_steps: int = 1) -> None:
        """Let ``num_steps`` more steps through."""
        with self._changed:
            self._num_permits += num_steps
            self._changed.notify_all()

    def open(self) -> None:
        """Let every step through from now on."""
        with self._changed:
            self._open = True
            self._changed.notify_all()

    def wait_until_held(self, timeout: float = 60.0) -> None:
        """Wait until every allowed step has run and the engine asks for another."""
        with self._changed:
            held = self._changed.wait_for(
                lambda: not self._open and self._refusing and self._num_permits == 0, timeout
            )
        assert held, f"the engine did not reach the gate within {timeout} s"

    def guard(self, step: Callable[[], list]) -> Callable[[], list]:
        """``step`` behind the gate: a refused step does nothing and returns no outputs."""

        def gated_step() -> list:
            with self._changed:
                if not self._open and self._num_permits == 0:
                    self._refusing = True
                    self._changed.notify_all()
                    self._changed.wait(REFUSED_STEP_WAIT_SECONDS)
                if not self._open and self._num_permits == 0:
                    return []
                self._refusing = False
                if not self._open:
                    self._num_permits -= 1
                self.num_steps += 1
            return step()

        return gated_step


@contextmanager
def held_steps(llm: AsyncLLM, num_steps: int = 0) -> Iterator[StepGate]:
    """Gate ``llm``'s engine loop for the block, letting ``num_steps`` steps through at
    first; on leaving, the gate is removed and the engine runs freely again."""
    gate = StepGate()
    gate.allow(num_steps)
    core = llm.core
    core.step = gate.guard(core.step)
    try:
        yield gate
    finally:
        gate.open()
        del core.step
