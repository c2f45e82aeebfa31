"""``LLM``: the offline, synchronous front of the engine (vLLM-like)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence

from tqdm import tqdm

from engine.config import EngineConfig
from engine.inputs import PreparedPrompt
from engine.llm_engine import LLMEngine
from engine.outputs import RequestOutput
from engine.sampling import SamplingParams

Prompt = str | list[int]


class LLM:
    """``LLM(model=PATH_OR_HUB_ID)`` loads a model; ``generate`` runs prompts to the end,
    batched together. ``model=None`` loads the built-in demo model (random weights).
    Keyword arguments are EngineConfig fields."""

    def __init__(self, model: str | None = None, **config):
        self.engine = LLMEngine(EngineConfig(model=model, **config))
        self._ids = itertools.count()

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    @property
    def has_chat_template(self) -> bool:
        """Whether ``chat`` and ``stream_chat`` have a template to render messages with."""
        return self.engine.inputs.chat_template.available

    @property
    def is_demo(self) -> bool:
        """Whether this is the built-in demo model (random weights)."""
        return self.engine.is_demo

    def generate(
        self,
        prompts: Prompt | Sequence[Prompt],
        params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool = False,
    ) -> list[RequestOutput]:
        """One finished output per prompt, in order. A prompt is a string or a list of
        token ids; a single prompt may be passed bare."""
        prompts = _as_prompt_list(prompts)
        if params is None or isinstance(params, SamplingParams):
            params = [params or SamplingParams()] * len(prompts)
        if len(params) != len(prompts):
            raise ValueError(f"{len(params)} SamplingParams for {len(prompts)} prompts")
        # Validate everything first, so one bad prompt does not leave others half-run.
        seqs = [
            self.engine.make_sequence(f"llm-{next(self._ids)}", prompt, p)
            for prompt, p in zip(prompts, params)
        ]
        for seq in seqs:
            self.engine.add_sequence(seq)
        return self._run([seq.request_id for seq in seqs], use_tqdm)

    def stream(
        self, prompt: Prompt | PreparedPrompt, params: SamplingParams | None = None
    ) -> Iterator[RequestOutput]:
        """One prompt's outputs as they come (``new_text`` is what each step added)."""
        request_id = f"llm-{next(self._ids)}"
        self.engine.add_request(request_id, prompt, params or SamplingParams())
        try:
            while self.engine.has_unfinished:
                for output in self.engine.step():
                    yield output
                    if output.finished:
                        return
        finally:
            self.engine.abort(request_id)  # a no-op once it has finished

    def stream_chat(
        self, messages: list[dict], params: SamplingParams | None = None
    ) -> Iterator[RequestOutput]:
        """``stream`` for a conversation, rendered with the chat template."""
        return self.stream(self.engine.inputs.prepare_chat(messages), params)

    def chat(self, messages: list[dict], params: SamplingParams | None = None) -> RequestOutput:
        """Answer one conversation (OpenAI-style messages, with ``image_url`` parts for
        VLMs) with the chat template."""
        prompt = self.engine.inputs.prepare_chat(messages)
        seq = self.engine.make_sequence(
            f"llm-{next(self._ids)}", prompt, params or SamplingParams()
        )
        self.engine.add_sequence(seq)
        return self._run([seq.request_id], use_tqdm=False)[0]

    def _run(self, request_ids: list[str], use_tqdm: bool) -> list[RequestOutput]:
        finished: dict[str, RequestOutput] = {}
        with tqdm(total=len(request_ids), disable=not use_tqdm, desc="generating") as bar:
            while self.engine.has_unfinished:
                for output in self.engine.step():
                    if output.finished:
                        finished[output.request_id] = output
                        bar.update(1)
        return [finished[request_id] for request_id in request_ids]


def _as_prompt_list(prompts) -> list[Prompt]:
    if isinstance(prompts, str):
        return [prompts]
    prompts = list(prompts)
    if prompts and all(isinstance(t, int) for t in prompts):
        return [prompts]
    return prompts
