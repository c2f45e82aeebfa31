"""What the endpoints of one app share."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from importlib.metadata import version
from pathlib import Path

from fastapi import Request

from engine import PreparedPrompt, SamplingParams
from server.errors import APIError
from server.generation import Generation
from server.metrics import Metrics
from server.settings import ServerSettings
from server.state import EngineHolder, Ticket


class ServerContext:
    def __init__(self, settings: ServerSettings, holder: EngineHolder):
        self.settings = settings
        self.holder = holder
        self.metrics = Metrics(holder, lambda: self.model_name)
        self.created = int(time.time())

    @property
    def model_name(self) -> str:
        """The id clients use; raises a 503 until the engine is loaded."""
        return self.settings.served_model_name or served_name(self.holder.llm.model_name)

    @property
    def fingerprint(self) -> str:
        """OpenAI's ``system_fingerprint``: changes when what answers changes."""
        llm = self.holder.llm
        key = f"edgechat {version('edgechat')}:{llm.model_name}:{llm.max_model_len}"
        return "fp_" + hashlib.sha256(key.encode()).hexdigest()[:10]

    @property
    def accepts_images(self) -> bool:
        return self.holder.llm.accepts_images

    @property
    def accepts_videos(self) -> bool:
        return self.holder.llm.accepts_videos

    def check_model(self, requested: str | None) -> str:
        """The served model's name; a 404 if the request names another one."""
        name = self.model_name
        if requested is not None and requested != name:
            raise APIError(
                404,
                f"the model {requested!r} does not exist; this server serves {name!r}",
                param="model",
                code="model_not_found",
            )
        return name

    @contextmanager
    def admitted(self, num_requests: int) -> Iterator[Ticket]:
        """Admit ``num_requests`` generations (a 503 when the queue is full, a 400 when
        no queue could hold them) before any intake work, so that a flood of prompts is
        refused before it is tokenized. The ticket is given back if the block raises;
        otherwise it passes to the Generation ``start`` makes."""
        ticket = self.holder.admit(num_requests)
        try:
            yield ticket
        except BaseException:
            ticket.release()
            raise

    def start(
        self,
        request: Request,
        prompts: list[PreparedPrompt],
        params: list[SamplingParams],
        ticket: Ticket,
    ) -> Generation:
        assert ticket.num_requests == len(prompts) * len(params)
        return Generation(
            self.holder.llm,
            request.state.request_id,
            prompts,
            params,
            ticket,
            self.metrics,
            request.state.arrival,
        )


@lru_cache(maxsize=8)
def served_name(model: str) -> str:
    """A local checkpoint is served under its directory's name (clients should not see,
    nor have to send, a path on the server); a Hub ID as it is."""
    path = Path(model)
    return path.resolve().name if path.is_dir() else model
