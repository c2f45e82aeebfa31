"""``edgechat serve`` whose engine steps only when the test that started it allows (see
tests/step_gate.py): the test writes to a pipe whose read end is the file descriptor in
``$EDGECHAT_TEST_GATE_FD``; each ``s`` lets one step through, ``o`` (or the pipe's
closing) opens the gate for good.

    python -m tests.server.gated_serve serve --port 0 ...
"""

from __future__ import annotations

import os
import sys
import threading

from engine import AsyncLLM
from server.cli import main
from tests.step_gate import StepGate

GATE_FD_VARIABLE = "EDGECHAT_TEST_GATE_FD"
ONE_STEP, OPEN = b"s", b"o"


def read_commands(gate: StepGate, fd: int) -> None:
    with os.fdopen(fd, "rb", buffering=0) as pipe:
        while (command := pipe.read(1)) not in (b"", OPEN):
            assert command == ONE_STEP, f"unknown gate command {command!r}"
            gate.allow(1)
    gate.open()


def gate_every_engine(gate: StepGate) -> None:
    build = AsyncLLM.__init__

    def build_gated(llm: AsyncLLM, *args, **kwargs) -> None:
        build(llm, *args, **kwargs)
        # NOTE: the loop thread is already running, but it steps only once a request
        # comes, and none can before the server is up.
        llm.core.step = gate.guard(llm.core.step)

    AsyncLLM.__init__ = build_gated


if __name__ == "__main__":
    gate = StepGate()
    gate_every_engine(gate)
    fd = int(os.environ[GATE_FD_VARIABLE])
    threading.Thread(target=read_commands, args=(gate, fd), daemon=True).start()
    sys.exit(main())
