"""The loaded engine: a checkpoint's model, tokenizer and KV cache, wired into the three
parts a request goes through:

    InputProcessor  (any thread)     request -> PreparedPrompt -> Sequence
    EngineCore      (one thread)     schedule -> run -> sample -> append: TokenDeltas
    OutputProcessor (where outputs   TokenDeltas -> text, stop strings -> RequestOutputs
                     are read)

``step()`` runs the core and then the outputs inline, for the synchronous front
(``LLM``); ``AsyncLLM`` drives ``core`` in its loop thread and processes outputs on the
asyncio side.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import kernels
from engine.block_manager import BlockManager
from engine.config import EngineConfig
from engine.core import EngineCore, EngineStats
from engine.cpu_threads import configure_threads
from engine.demo import DEMO_MODEL_ID, demo_model_dir, is_demo_model
from engine.errors import InvalidRequestError, UnsupportedModelError
from engine.inputs import InputProcessor, PreparedPrompt
from engine.kv_cache import allocate_kv_cache, size_kv_cache
from engine.layers.cpu_decode_layer import use_native_decode_layers
from engine.layers.cpu_quant import kernel_dtype, native_kernels
from engine.layers.warmup import warm_up_kernels
from engine.loader import is_int4_checkpoint, load_config, load_model, resolve_model_dir
from engine.memory import check_weights_fit, checkpoint_bytes
from engine.model_info import eos_token_ids, pick_device, pick_dtype
from engine.models.interface import VisionLanguageModel
from engine.multimodal.embed_cache import ImageEmbeddingCache
from engine.multimodal.images import ImageInput
from engine.multimodal.nvila_requests import NvilaImageRequests
from engine.multimodal.qwen_requests import QWEN_VL_MODEL_TYPES, QwenImageRequests
from engine.multimodal.requests import ImageRequests
from engine.output_processor import OutputProcessor, RequestState
from engine.outputs import RequestOutput
from engine.runner import ModelRunner
from engine.sampler import Sampler
from engine.sampling import SamplingParams
from engine.scheduler import Scheduler
from engine.sequence import Sequence
from engine.structured.compiler import grammar_compiler
from engine.tokenizer import ChatTemplate, load_tokenizer
from kernels.cpu_linear import INT8_ACTIVATIONS

logger = logging.getLogger(__name__)


class LLMEngine:
    """``step``, ``add_request`` and ``abort`` from one thread at a time; ``inputs``
    (validation, tokenization, images) from any thread."""

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
        if self.device.type == "cpu" or config.threads is not None:
            configure_threads(config.threads)
        if self.device.type == "cpu":  # unless EDGECHAT_NATIVE_CPU_KERNELS=0 or no compiler
            kernels.use_native_cpu_ops(native_kernels())
        linear_dtype = kernel_dtype(config.dtype, self.device)
        int8_linears = linear_dtype == INT8_ACTIVATIONS and (
            config.quantization != "none" or is_int4_checkpoint(self.model_dir)
        )
        self.dtype = pick_dtype(config.dtype, hf_config, self.device, int8_linears)
        # VILA keeps its tokenizer with the language model, in a subfolder.
        tokenizer_dir = getattr(hf_config, "tokenizer_dir", self.model_dir)
        added_tokens = getattr(hf_config, "added_tokens", ())
        self.tokenizer = load_tokenizer(tokenizer_dir, added_tokens)
        model_template = getattr(hf_config, "conversation_template", None)
        chat_template = ChatTemplate(
            self.tokenizer,
            config.chat_template,
            model_template(self.tokenizer) if model_template else None,
        )
        check_weights_fit(checkpoint_bytes(self.model_dir, self.dtype), self.device)
        model = load_model(
            self.model_dir,
            hf_config,
            self.dtype,
            self.device,
            config.quantization,
            linear_dtype,
        )
        if self.device.type == "cpu":
            use_native_decode_layers(model, native_kernels())
        is_vlm = isinstance(model, VisionLanguageModel)
        image_cache_bytes = config.image_cache_bytes if is_vlm else 0
        self.max_model_len, num_blocks = size_kv_cache(
            model, text_config, config, self.dtype, self.device, image_cache_bytes
        )
        # Set for VLMs only: their image token, preprocessing and checks.
        self.vision: ImageRequests | None = None
        if is_vlm:
            processor_dir = getattr(hf_config, "processor_dir", self.model_dir)
            requests_class, resize = ImageRequests, {}
            if getattr(hf_config, "model_type", None) in QWEN_VL_MODEL_TYPES:
                requests_class = QwenImageRequests
                resize = dict(
                    min_pixels=config.resize_min_pixels, max_pixels=config.resize_max_pixels
                )
            elif getattr(hf_config, "is_nvila", False):
                requests_class = NvilaImageRequests
            if not resize and (config.resize_min_pixels or config.resize_max_pixels):
                raise UnsupportedModelError(
                    "resize_min_pixels/resize_max_pixels apply to the Qwen-VL models only"
                )
            self.vision = requests_class(
                processor_dir,
                hf_config,
                model,
                self.tokenizer,
                replace(config.image_limits, max_video_tokens=self.max_model_len),
                **resize,
            )
        eos_ids = eos_token_ids(tokenizer_dir, text_config, self.tokenizer)
        self.inputs = InputProcessor(
            self.model_name,
            self.tokenizer,
            chat_template,
            self.vision,
            text_config.vocab_size,
            self.max_model_len,
            config.block_size,
            grammar_compiler(self.tokenizer, text_config.vocab_size, eos_ids),
        )
        # NOTE: a tokenizer of its own, so decoding never waits on intake's tokenizing.
        self.outputs = OutputProcessor(load_tokenizer(tokenizer_dir, added_tokens))
        self.core = self._build_core(model, num_blocks, image_cache_bytes, eos_ids)
        # The synchronous front's live requests (AsyncLLM keeps one per stream instead).
        self._states: dict[str, RequestState] = {}

    @staticmethod
    def _model_dir(model: str | None) -> Path:
        return demo_model_dir() if model is None else resolve_model_dir(model)

    def _build_core(
        self, model, num_blocks: int, image_cache_bytes: int, eos_ids: frozenset[int]
    ) -> EngineCore:
        config = self.config
        allocate_kv_cache(model, num_blocks, config.block_size, self.dtype, self.device)
        block_manager = BlockManager(num_blocks, config.block_size, config.enable_prefix_caching)
        scheduler = Scheduler(block_manager, config.max_num_seqs, config.max_num_batched_tokens)
        image_cache = ImageEmbeddingCache(image_cache_bytes) if image_cache_bytes else None
        runner = ModelRunner(
            model,
            config.block_size,
            self.device,
            max_num_seqs=config.max_num_seqs,
            max_num_batched_tokens=config.max_num_batched_tokens,
            max_model_len=self.max_model_len,
            image_cache=image_cache,
        )
        # NOTE: after allocate_kv_cache: both run the model over the cache tensors as
        # bound now (the graphs keep reading them).
        on_triton = self.device.type == "cuda" and kernels.triton_available()
        if on_triton and config.warm_up:
            warm_up_kernels(
                model, config.block_size, config.max_num_seqs, config.max_num_batched_tokens
            )
        if on_triton and not config.enforce_eager:
            runner.capture_decode_graphs(config.max_num_seqs, self.max_model_len)
        return EngineCore(scheduler, runner, Sampler(self.device), eos_ids, self.max_model_len)

    # -- requests ---------------------------------------------------------------------

    def make_sequence(
        self,
        request_id: str,
        prompt: str | list[int] | PreparedPrompt,
        params: SamplingParams,
        images: list[ImageInput] | None = None,
    ) -> Sequence:
        """Validate a request (see ``InputProcessor``) into the core's Sequence; safe to
        call from any thread."""
        if not isinstance(prompt, PreparedPrompt):
            prompt = self.inputs.prepare(prompt, images)
        return self.inputs.make_sequence(request_id, prompt, params)

    def add_sequence(self, seq: Sequence) -> None:
        self.core.add(seq)
        self._states[seq.request_id] = self.outputs.new_request(
            seq.request_id, seq.prompt_token_ids, seq.params
        )

    def add_request(
        self,
        request_id: str,
        prompt: str | list[int] | PreparedPrompt,
        params: SamplingParams,
        images: list[ImageInput] | None = None,
    ) -> None:
        self.add_sequence(self.make_sequence(request_id, prompt, params, images))

    def abort(self, request_id: str) -> RequestOutput | None:
        """End a request now and free its KV blocks; None if it is not running."""
        delta = self.core.abort(request_id)
        if delta is None:
            return None
        return self._states.pop(request_id).apply(delta)

    @property
    def has_unfinished(self) -> bool:
        return self.core.has_unfinished

    def step(self) -> list[RequestOutput]:
        """One step of the core, its deltas made outputs: one for every request that got
        a token or finished (see ``EngineCore.step``)."""
        outputs = []
        for delta in self.core.step():
            state = self._states[delta.request_id]
            output = state.apply(delta)
            if state.needs_abort:  # a stop string: the core did not see it
                self.core.abort(delta.request_id)
            if output.finished:
                del self._states[delta.request_id]
            outputs.append(output)
        return outputs

    # -- chat and stats ---------------------------------------------------------------

    def chat_prompt(self, messages: list[dict]) -> list[int]:
        """Token ids of text-only ``messages`` rendered by the chat template."""
        token_ids, images = self.chat_request(messages)
        if images:
            raise InvalidRequestError("messages with images need chat_request, not chat_prompt")
        return token_ids

    def chat_request(self, messages: list[dict]) -> tuple[list[int], list[ImageInput]]:
        """OpenAI-style ``messages`` -> the prompt's token ids (each image's tokens
        expanded) and its images: pass both to ``add_request``. Blocking (images are
        fetched and decoded); safe to call from any thread."""
        prepared = self.inputs.prepare_chat(messages)
        return prepared.token_ids, prepared.images

    def stats(self) -> EngineStats:
        return self.core.stats()
