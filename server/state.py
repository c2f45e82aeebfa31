"""The engine as the server sees it: loading, ready or failed; and admission control."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from engine import AsyncLLM, EngineError
from server.errors import bad_request, unavailable

logger = logging.getLogger(__name__)


class Ticket:
    """``num_requests`` admitted engine requests, given back once by ``release``."""

    def __init__(self, holder: EngineHolder, num_requests: int):
        self._holder = holder
        self.num_requests = num_requests
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._holder.num_admitted -= self.num_requests


class EngineHolder:
    """Loads the engine in a background thread, so that the server answers (``/health``
    says 503) while a large checkpoint loads, and bounds the engine's queue.

    ``admit`` lets ``max_num_seqs + max_queued_requests`` engine requests in at once;
    past that a request gets a 503 instead of waiting without bound. Admission is
    counted on the event loop's thread only.
    """

    def __init__(self, load: Callable[[], AsyncLLM], max_queued_requests: int):
        self._load = load
        self._llm: AsyncLLM | None = None
        self.load_error: BaseException | None = None
        self.max_queued_requests = max_queued_requests
        self.num_admitted = 0

    def start_loading(self, on_failure: Callable[[BaseException], None] | None = None) -> None:
        threading.Thread(
            target=self._run_load, args=(on_failure,), name="edgechat-load", daemon=True
        ).start()

    def _run_load(self, on_failure: Callable[[BaseException], None] | None) -> None:
        try:
            self._llm = self._load()
        except Exception as e:
            if isinstance(e, EngineError):
                logger.error("cannot load the model: %s", e)
            else:
                logger.exception("cannot load the model")
            self.load_error = e
            if on_failure is not None:
                on_failure(e)
            return
        logger.info(
            "model %s ready (context %d tokens)", self._llm.model_name, self._llm.max_model_len
        )

    @property
    def status(self) -> str:
        if self._llm is not None:
            return "ready"
        return "failed" if self.load_error is not None else "loading"

    @property
    def loaded(self) -> AsyncLLM | None:
        return self._llm

    @property
    def llm(self) -> AsyncLLM:
        """The engine; a 503 while it is loading or if it failed to load."""
        if self._llm is not None:
            return self._llm
        if self.load_error is not None:
            raise unavailable("the model failed to load; see the server log", "model_load_failed")
        raise unavailable("the model is still loading; retry shortly", "model_loading")

    @property
    def max_admitted(self) -> int:
        return self.llm.max_num_seqs + self.max_queued_requests

    def admit(self, num_requests: int) -> Ticket:
        limit = self.max_admitted
        if num_requests > limit:
            raise bad_request(
                f"this request needs {num_requests} generations at once, more than the "
                f"server runs at a time ({limit})",
                param="n",
            )
        if self.num_admitted + num_requests > limit:
            raise unavailable(
                f"the server is at capacity ({self.num_admitted} generations running or "
                "queued); retry shortly",
                "queue_full",
            )
        self.num_admitted += num_requests
        return Ticket(self, num_requests)

    def shutdown(self) -> None:
        if self._llm is not None:
            self._llm.shutdown()
