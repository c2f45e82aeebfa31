"""The engine: requests in, tokens out. ``step()`` schedules, runs the model, samples
and detokenizes once; ``LLM`` and ``AsyncLLM`` drive it."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import kernels
from engine.block_manager import BlockManager
from engine.config import EngineConfig
from engine.demo import DEMO_MODEL_ID, demo_model_dir, is_demo_model
from engine.detokenizer import IncrementalDetokenizer
from engine.errors import EngineError, InvalidRequestError
from engine.inputs import InputProcessor
from engine.kv_cache import KVCache, num_blocks_for_budget
from engine.loader import load_config, load_model, resolve_model_dir
from engine.memory import check_weights_fit, checkpoint_bytes, kv_budget_bytes
from engine.model_info import eos_token_ids, max_context_len, pick_device, pick_dtype
from engine.multimodal.images import ImageInput
from engine.multimodal.requests import ImageRequests
from engine.outputs import RequestOutput
from engine.request import Request
from engine.runner import ModelRunner
from engine.sampler import Sampler, SampleResult
from engine.sampling import SamplingParams
from engine.scheduler import ScheduledBatch, Scheduler
from engine.sequence import Sequence
from engine.tokenizer import ChatTemplate, load_tokenizer

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineStats:
    """A snapshot of the engine's load, for metrics."""

    num_running: int
    num_waiting: int
    num_blocks: int
    num_free_blocks: int
    kv_cache_usage: float
    num_prefix_query_tokens: int
    num_prefix_hit_tokens: int
    num_preemptions: int
    num_prompt_tokens: int
    num_generation_tokens: int
    num_image_cache_hits: int = 0
    num_image_cache_misses: int = 0


class LLMEngine:
    """Not thread-safe: one thread calls ``add_request``/``abort``/``step`` (AsyncLLM's loop
    thread does). ``make_sequence`` and ``chat_request`` (``self.inputs``: validation,
    tokenization, images) may run on any thread."""

    def __init__(self, config: EngineConfig):
        self.config = config
        self.model_dir = self._model_dir(config.model)
        self.model_name = config.model or DEMO_MODEL_ID
        self.is_demo = is_demo_model(self.model_dir)
        if self.is_demo:
            logger.warning("serving the built-in DEMO model: random weights, meaningless output")
        hf_config = load_config(self.model_dir)
        # VLM configs nest the language model's (vocab, context, eos); others return self.
        text_config = hf_config.get_text_config()
        self.device = pick_device(config.device)
        self.dtype = pick_dtype(config.dtype, hf_config, self.device)
        # VILA keeps its tokenizer with the language model, in a subfolder.
        tokenizer_dir = getattr(hf_config, "tokenizer_dir", self.model_dir)
        self.tokenizer = load_tokenizer(tokenizer_dir)
        model_template = getattr(hf_config, "conversation_template", None)
        chat_template = ChatTemplate(
            self.tokenizer,
            config.chat_template,
            model_template(self.tokenizer) if model_template else None,
        )
        self.eos_token_ids = eos_token_ids(tokenizer_dir, text_config, self.tokenizer)
        check_weights_fit(checkpoint_bytes(self.model_dir, self.dtype), self.device)
        model = load_model(self.model_dir, hf_config, self.dtype, self.device)
        self.max_model_len, num_blocks = self._size_kv_cache(model, text_config)
        # Set for VLMs only: their image token, preprocessing and checks.
        self.vision: ImageRequests | None = None
        if hasattr(model, "encode_images"):
            processor_dir = getattr(hf_config, "processor_dir", self.model_dir)
            self.vision = ImageRequests(
                processor_dir, hf_config, model, self.tokenizer, config.image_limits
            )
        self.inputs = InputProcessor(
            self.model_name,
            self.tokenizer,
            chat_template,
            self.vision,
            text_config.vocab_size,
            self.max_model_len,
            config.block_size,
        )
        self.tokenizer_lock = self.inputs.tokenizer_lock
        self.kv_cache = KVCache(
            model.attention_layers(), num_blocks, config.block_size, self.dtype, self.device
        )
        self.block_manager = BlockManager(
            num_blocks, config.block_size, config.enable_prefix_caching
        )
        self.scheduler = Scheduler(
            self.block_manager, config.max_num_seqs, config.max_num_batched_tokens
        )
        self.runner = ModelRunner(model, config.block_size, self.device)
        if self.device.type == "cuda" and not config.enforce_eager and kernels.triton_available():
            self.runner.capture_decode_graphs(config.max_num_seqs, self.max_model_len)
        self.sampler = Sampler(self.device)
        self.requests: dict[str, Request] = {}
        self.num_prompt_tokens = 0
        self.num_generation_tokens = 0

    @staticmethod
    def _model_dir(model: str | None) -> Path:
        return demo_model_dir() if model is None else resolve_model_dir(model)

    def _size_kv_cache(self, model, hf_config) -> tuple[int, int]:
        max_model_len = max_context_len(hf_config, self.config.max_model_len)
        block_size = self.config.block_size
        budget = kv_budget_bytes(
            self.config.kv_cache_memory, self.config.kv_cache_fraction, self.device
        )
        max_useful = self.config.max_num_seqs * -(-max_model_len // block_size)
        num_blocks = num_blocks_for_budget(model, budget, block_size, self.dtype, max_useful)
        if num_blocks < 1:
            raise EngineError(f"the KV cache budget ({budget} bytes) holds no block at all")
        if num_blocks * block_size < max_model_len:
            logger.warning(
                "the KV cache holds %d tokens: max_model_len lowered from %d",
                num_blocks * block_size,
                max_model_len,
            )
            max_model_len = num_blocks * block_size
        return max_model_len, num_blocks

    # -- requests ---------------------------------------------------------------------

    def make_sequence(
        self,
        request_id: str,
        prompt: str | list[int],
        params: SamplingParams,
        images: list[ImageInput] | None = None,
    ) -> Sequence:
        """See ``InputProcessor.make_sequence``; safe to call from any thread."""
        return self.inputs.make_sequence(request_id, prompt, params, images)

    def add_sequence(self, seq: Sequence) -> None:
        if seq.request_id in self.requests:
            raise InvalidRequestError(f"request id {seq.request_id!r} is already in use")
        detokenizer = IncrementalDetokenizer(self.tokenizer, seq.prompt_token_ids, seq.params.stop)
        self.requests[seq.request_id] = Request(seq, detokenizer)
        self.sampler.add_request(seq.seq_id, seq.params.seed)
        self.scheduler.add(seq)

    def add_request(
        self,
        request_id: str,
        prompt: str | list[int],
        params: SamplingParams,
        images: list[ImageInput] | None = None,
    ) -> None:
        self.add_sequence(self.make_sequence(request_id, prompt, params, images))

    def abort(self, request_id: str) -> RequestOutput | None:
        """End a request now and free its KV blocks; None if it is not running."""
        request = self.requests.get(request_id)
        if request is None:
            return None
        self._finish(request, "abort")
        return request.snapshot()

    @property
    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished

    # -- the step ---------------------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        """One scheduling round. Returns an output for every request that produced a
        token or finished in it (prefill-only steps of chunked prompts return none).

        A request whose work raises is finished with reason ``"error"`` (and the exception
        logged); the others go on. When the batch as a whole fails, its sequences are run
        again one at a time to find the ones at fault.
        """
        batch = self.scheduler.schedule()
        if not batch:
            return []
        outputs: list[RequestOutput] = []
        try:
            results = self._run(batch)
        except Exception:
            logger.exception("a batch of %d sequences failed; running them one by one", len(batch))
            batch, results = self._run_one_by_one(batch, outputs)
        self.scheduler.complete_step(batch)
        for seq, result in zip(batch.sampling, results):
            request = self.requests[seq.request_id]
            try:
                outputs.append(self._accept(request, result))
            except Exception:
                logger.exception("request %s failed", seq.request_id)
                outputs.append(self._fail(request))
        return outputs

    def _run(self, batch: ScheduledBatch) -> list[SampleResult]:
        # NOTE: writes nothing but the KV slots of the batch's uncomputed tokens (and the
        # random draws of its sampled rows), so a batch that raises can be run again.
        logits = self.runner.run(batch)
        # A step of prompt chunks only (a long prompt alone) has nothing to sample.
        return self.sampler.sample(logits, batch.sampling) if batch.sampling else []

    def _run_one_by_one(
        self, batch: ScheduledBatch, outputs: list[RequestOutput]
    ) -> tuple[ScheduledBatch, list[SampleResult]]:
        """Run each sequence of a failed batch alone; fail those that still raise (their
        outputs go to ``outputs``). Returns the batch of the others and their results."""
        survivors = ScheduledBatch()
        results: list[SampleResult] = []
        for seq, num_new in zip(batch.seqs, batch.num_new_tokens):
            alone = ScheduledBatch()
            alone.add(seq, num_new)
            try:
                results += self._run(alone)
            except Exception:
                logger.exception("request %s failed", seq.request_id)
                outputs.append(self._fail(self.requests[seq.request_id]))
                continue
            survivors.add(seq, num_new)
        return survivors, results

    def _accept(self, request: Request, result: SampleResult) -> RequestOutput:
        seq = request.seq
        if seq.num_output_tokens == 0:
            self.num_prompt_tokens += seq.num_prompt_tokens
        seq.append_token(result.token_id)
        self.num_generation_tokens += 1
        with self.tokenizer_lock:
            reason = request.accept(result, self.tokenizer, self.eos_token_ids)
        if reason is None and len(seq) >= self.max_model_len:
            reason = "length"
        if reason is not None:
            self._finish(request, reason)
        return request.snapshot()

    def _fail(self, request: Request) -> RequestOutput:
        """Finish a request whose work raised. Unlike ``_finish`` it skips the
        detokenizer's flush, which may be what raised."""
        seq = request.seq
        self.scheduler.finish(seq, "error")
        self.sampler.remove_request(seq.seq_id)
        request.finish_reason = "error"
        self.requests.pop(seq.request_id, None)
        return request.snapshot()

    def _finish(self, request: Request, reason: str) -> None:
        seq = request.seq
        self.scheduler.finish(seq, reason)
        self.sampler.remove_request(seq.seq_id)
        with self.tokenizer_lock:
            request.finish(reason)
        del self.requests[seq.request_id]

    # -- chat and stats ---------------------------------------------------------------

    def chat_prompt(self, messages: list[dict]) -> list[int]:
        """See ``InputProcessor.chat_prompt``; safe to call from any thread."""
        return self.inputs.chat_prompt(messages)

    def chat_request(self, messages: list[dict]) -> tuple[list[int], list[ImageInput]]:
        """See ``InputProcessor.chat_request``; safe to call from any thread."""
        return self.inputs.chat_request(messages)

    def stats(self) -> EngineStats:
        bm = self.block_manager
        cache = self.runner.image_cache
        return EngineStats(
            num_running=len(self.scheduler.running),
            num_waiting=len(self.scheduler.waiting),
            num_blocks=bm.num_blocks,
            num_free_blocks=bm.num_free_blocks,
            kv_cache_usage=bm.usage,
            num_prefix_query_tokens=bm.num_prefix_query_tokens,
            num_prefix_hit_tokens=bm.num_prefix_hit_tokens,
            num_preemptions=self.scheduler.num_preemptions,
            num_prompt_tokens=self.num_prompt_tokens,
            num_generation_tokens=self.num_generation_tokens,
            num_image_cache_hits=cache.num_hits if cache is not None else 0,
            num_image_cache_misses=cache.num_misses if cache is not None else 0,
        )
