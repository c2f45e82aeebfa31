"""Engine configuration: one frozen object, validated once at construction."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine.errors import EngineError
from engine.multimodal.fetch import MediaURLPolicy
from engine.multimodal.images import ImageLimits

DTYPES = ("auto", "float32", "float16", "bfloat16")
QUANTIZATIONS = ("none", "int8", "int4")


@dataclass(frozen=True)
class EngineConfig:
    """Everything the engine needs to know that is not in the checkpoint.

    ``model`` is a local directory or a Hugging Face Hub ID; ``None`` means the built-in
    demo model. ``threads``: torch's CPU threads; None takes one a physical core the
    process may use (engine/cpu_threads.py), on CPU only. ``dtype="auto"`` takes bf16 on a
    CPU with native bf16, else float32 on CPU (engine/cpu_dtype.py), and the checkpoint's
    16-bit type on
    GPU. ``quantization`` (CPU only) quantizes a dense checkpoint's weights at load by
    round-to-nearest: ``int4`` (group 128) or ``int8`` (per channel) decoder linears, and
    either way an int8 LM head and embedding; AWQ checkpoints run int4 on CPU without it
    (``int4`` then adds the int8 head). ``kv_cache_memory`` (GiB) fixes the KV pool's
    size; without it the pool takes ``kv_cache_fraction`` of free GPU memory, or a
    conservative default on CPU.
    ``max_model_len`` caps the context below the model's own limit. On a GPU, decode
    steps replay CUDA graphs unless ``enforce_eager`` (for debugging, or to save the
    graphs' memory and capture time); before that, every kernel the model will use is
    compiled once (``warm_up``), so no request waits on Triton's compiler. A VLM keeps
    the features of recent images (a follow-up turn resends them) in at most
    ``image_cache_bytes``, taken from the KV pool's budget when that comes from free
    memory.

    A VLM takes at most ``limit_images_per_prompt`` images a prompt, each at most
    ``max_image_bytes`` encoded and ``max_image_pixels`` decoded; http(s) image URLs are
    fetched within ``image_fetch_timeout`` seconds, only from ``allowed_media_domains``
    when given, never from internal addresses unless ``allow_private_media_urls``, and not
    at all unless ``allow_http_media`` (see MediaURLPolicy); ``file:`` image URLs are read
    only from inside ``allowed_local_media_path`` (refused when None). Videos come under
    the same rules, each at most ``max_video_bytes`` encoded and ``max_video_frames`` long.
    ``resize_min_pixels``/``resize_max_pixels`` replace the pixel bounds within which the
    Qwen-VL models resize images (their preprocessor_config.json's by default).
    """

    model: str | None = None
    dtype: str = "auto"
    device: str = "auto"
    threads: int | None = None
    quantization: str = "none"
    block_size: int = 16
    kv_cache_memory: float | None = None
    kv_cache_fraction: float = 0.85
    max_model_len: int | None = None
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 2048
    enable_prefix_caching: bool = True
    chat_template: str | None = None
    enforce_eager: bool = False
    warm_up: bool = True
    limit_images_per_prompt: int = ImageLimits.max_images
    max_image_bytes: int = ImageLimits.max_bytes
    max_image_pixels: int = ImageLimits.max_pixels
    image_fetch_timeout: float = ImageLimits.fetch_timeout
    allowed_local_media_path: str | None = None
    allowed_media_domains: tuple[str, ...] = ()
    allow_private_media_urls: bool = False
    allow_http_media: bool = True
    image_cache_bytes: int = 64 * 2**20
    max_video_bytes: int = ImageLimits.max_video_bytes
    max_video_frames: int = ImageLimits.max_video_frames
    resize_min_pixels: int | None = None
    resize_max_pixels: int | None = None

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise EngineError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.quantization not in QUANTIZATIONS:
            raise EngineError(
                f"quantization must be one of {', '.join(QUANTIZATIONS)}, got {self.quantization!r}"
            )
        if self.threads is not None and self.threads < 1:
            raise EngineError(f"threads must be at least 1, got {self.threads}")
        if self.block_size < 1 or self.block_size & (self.block_size - 1):
            raise EngineError(f"block_size must be a power of two, got {self.block_size}")
        if self.kv_cache_memory is not None and self.kv_cache_memory <= 0:
            raise EngineError(f"kv_cache_memory must be > 0 GiB, got {self.kv_cache_memory}")
        if not 0 < self.kv_cache_fraction <= 1:
            raise EngineError(f"kv_cache_fraction must be in (0, 1], got {self.kv_cache_fraction}")
        if self.max_model_len is not None and self.max_model_len < 2:
            raise EngineError(f"max_model_len must be at least 2, got {self.max_model_len}")
        if self.max_num_seqs < 1:
            raise EngineError(f"max_num_seqs must be at least 1, got {self.max_num_seqs}")
        if self.max_num_batched_tokens < self.max_num_seqs:
            raise EngineError(
                "max_num_batched_tokens must be at least max_num_seqs "
                f"({self.max_num_batched_tokens} < {self.max_num_seqs})"
            )
        for name in (
            "limit_images_per_prompt",
            "max_image_bytes",
            "max_image_pixels",
            "max_video_bytes",
            "max_video_frames",
        ):
            if getattr(self, name) < 1:
                raise EngineError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.image_cache_bytes < 0:
            raise EngineError(f"image_cache_bytes must be >= 0, got {self.image_cache_bytes}")
        low, high = self.resize_min_pixels, self.resize_max_pixels
        for name, value in (("resize_min_pixels", low), ("resize_max_pixels", high)):
            if value is not None and value < 1:
                raise EngineError(f"{name} must be at least 1, got {value}")
        if low is not None and high is not None and low > high:
            raise EngineError(f"resize_min_pixels {low} exceeds resize_max_pixels {high}")
        if not self.image_fetch_timeout > 0:
            raise EngineError(f"image_fetch_timeout must be > 0 s, got {self.image_fetch_timeout}")
        media = self.allowed_local_media_path
        if media is not None and not Path(media).is_dir():
            raise EngineError(f"allowed_local_media_path {media!r} is not a directory")

    @property
    def image_limits(self) -> ImageLimits:
        media = self.allowed_local_media_path
        return ImageLimits(
            max_images=self.limit_images_per_prompt,
            max_bytes=self.max_image_bytes,
            max_pixels=self.max_image_pixels,
            fetch_timeout=self.image_fetch_timeout,
            local_media_dir=None if media is None else Path(media),
            url_policy=MediaURLPolicy(
                self.allow_http_media, self.allowed_media_domains, self.allow_private_media_urls
            ),
            max_video_bytes=self.max_video_bytes,
            max_video_frames=self.max_video_frames,
        )
