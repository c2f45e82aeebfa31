"""What the HTTP layer needs to know that the engine does not: one frozen object."""

from __future__ import annotations

from dataclasses import dataclass

from server.tools.registry import parser_named

MIB = 1 << 20


@dataclass(frozen=True)
class ServerSettings:
    """``api_key`` None serves without authentication. ``served_model_name`` None serves
    the engine's own name (the checkpoint path or Hub ID, or ``edgechat-demo``).
    ``max_queued_requests``: engine requests (a choice each) that may wait for one of
    the engine's ``max_num_seqs`` slots before new ones get a 503.
    ``keepalive_seconds``: how often an SSE stream sends a comment while it has no
    tokens to send (queued, or prefilling a long prompt).
    ``shutdown_grace_seconds``: on SIGTERM, how long running requests may go on before
    they are aborted.
    ``web_ui``: serve the browser chat page (client/web/) at ``/``.
    ``docs``: serve the API's OpenAPI document at ``/openapi.json`` and Swagger UI at
    ``/docs``.
    ``cors_origins``: web origins (e.g. ``http://robot.local:3000``) whose pages may call
    the API from a browser; ``("*",)`` allows any. Empty: same-origin pages only.
    ``stream_send_timeout_seconds``: a stream whose client reads nothing for this long
    is closed and its generations aborted (their admission given back).
    ``body_read_timeout_seconds``: how long a request body may take to arrive (408).
    ``max_client_errors_per_minute``: refused (4xx) requests one client address may
    cause a minute before its requests get 429s unread (server/client_budget.py); 0: no
    limit.
    ``tool_call_parser``: the format tool calls are parsed in (server/tools/registry.py);
    None tells it from the chat template."""

    api_key: str | None = None
    served_model_name: str | None = None
    max_queued_requests: int = 256
    max_request_bytes: int = 4 * MIB
    keepalive_seconds: float = 10.0
    shutdown_grace_seconds: float = 10.0
    web_ui: bool = True
    docs: bool = True
    cors_origins: tuple[str, ...] = ()
    stream_send_timeout_seconds: float = 60.0
    body_read_timeout_seconds: float = 30.0
    max_client_errors_per_minute: int = 12
    tool_call_parser: str | None = None

    def __post_init__(self) -> None:
        if self.api_key == "":
            raise ValueError("api_key must not be empty (use None to serve without a key)")
        if self.served_model_name == "":
            raise ValueError("served_model_name must not be empty")
        if self.max_queued_requests < 0:
            raise ValueError(f"max_queued_requests must be >= 0, got {self.max_queued_requests}")
        if self.max_request_bytes < 1024:
            raise ValueError(f"max_request_bytes must be >= 1024, got {self.max_request_bytes}")
        if self.max_client_errors_per_minute < 0:
            raise ValueError(
                "max_client_errors_per_minute must be >= 0, got "
                f"{self.max_client_errors_per_minute}"
            )
        if self.keepalive_seconds <= 0:
            raise ValueError(f"keepalive_seconds must be > 0, got {self.keepalive_seconds}")
        for name in ("stream_send_timeout_seconds", "body_read_timeout_seconds"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.tool_call_parser is not None:
            parser_named(self.tool_call_parser)
        if self.shutdown_grace_seconds < 0:
            raise ValueError(
                f"shutdown_grace_seconds must be >= 0, got {self.shutdown_grace_seconds}"
            )
