"""Prometheus metrics, named as vLLM names them where it has the same metric, so that
existing dashboards work. Each app has its own registry: several apps (tests) may share
a process, and prometheus-client's global registry would mix them up."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from engine import RequestOutput
from server.state import EngineHolder

LATENCY_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
    160.0,
    640.0,
)
TOKEN_GAP_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    10.0,
)
TOKEN_COUNT_BUCKETS = (
    1,
    2,
    5,
    10,
    20,
    50,
    100,
    200,
    500,
    1000,
    2000,
    5000,
    10000,
    20000,
    50000,
    100000,
)
LABELS = ("model_name",)


class Metrics:
    """Request-side metrics, observed by the server as it streams; engine-side ones are
    read from ``AsyncLLM.stats()`` at each scrape."""

    def __init__(self, holder: EngineHolder, model_name: Callable[[], str]):
        self.registry = CollectorRegistry()
        self.model_name = model_name
        kwargs = dict(labelnames=LABELS, registry=self.registry)
        self.ttft = Histogram(
            "vllm:time_to_first_token_seconds",
            "Time from the request's arrival to its first token.",
            buckets=LATENCY_BUCKETS,
            **kwargs,
        )
        self.itl = Histogram(
            "vllm:inter_token_latency_seconds",
            "Time between consecutive tokens of a request.",
            buckets=TOKEN_GAP_BUCKETS,
            **kwargs,
        )
        self.e2e = Histogram(
            "vllm:e2e_request_latency_seconds",
            "Time from the request's arrival to its last token.",
            buckets=LATENCY_BUCKETS,
            **kwargs,
        )
        self.prompt_tokens = Histogram(
            "vllm:request_prompt_tokens",
            "Prompt tokens per finished request.",
            buckets=TOKEN_COUNT_BUCKETS,
            **kwargs,
        )
        self.generation_tokens = Histogram(
            "vllm:request_generation_tokens",
            "Generated tokens per finished request.",
            buckets=TOKEN_COUNT_BUCKETS,
            **kwargs,
        )
        self.success = Counter(
            "vllm:request_success",
            "Requests that finished, by finish reason.",
            labelnames=(*LABELS, "finished_reason"),
            registry=self.registry,
        )
        self.registry.register(EngineCollector(holder, model_name))

    def first_token(self, seconds: float) -> None:
        self.ttft.labels(self.model_name()).observe(seconds)

    def token_gap(self, seconds: float) -> None:
        self.itl.labels(self.model_name()).observe(seconds)

    def finished(self, output: RequestOutput, seconds: float) -> None:
        name = self.model_name()
        self.e2e.labels(name).observe(seconds)
        self.prompt_tokens.labels(name).observe(len(output.prompt_token_ids))
        self.generation_tokens.labels(name).observe(output.num_output_tokens)
        self.success.labels(name, output.finish_reason).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class EngineCollector(Collector):
    """The engine's load and token counters, as of its latest step."""

    def __init__(self, holder: EngineHolder, model_name: Callable[[], str]):
        self.holder = holder
        self.model_name = model_name

    def collect(self) -> Iterator[Metric]:
        llm = self.holder.loaded
        if llm is None:
            return
        stats = llm.stats()
        name = [self.model_name()]
        gauges = (
            ("vllm:num_requests_running", "Requests in the running batch.", stats.num_running),
            ("vllm:num_requests_waiting", "Requests waiting to run.", stats.num_waiting),
            ("vllm:kv_cache_usage_perc", "KV-cache usage (1 = full).", stats.kv_cache_usage),
            ("edgechat:kv_cache_blocks_total", "KV-cache blocks in the pool.", stats.num_blocks),
            (
                "edgechat:kv_cache_blocks_used",
                "KV-cache blocks held by requests.",
                stats.num_blocks - stats.num_free_blocks,
            ),
        )
        counters = (
            ("vllm:prompt_tokens", "Prompt tokens processed.", stats.num_prompt_tokens),
            ("vllm:generation_tokens", "Tokens generated.", stats.num_generation_tokens),
            (
                "vllm:prefix_cache_queries",
                "Prompt tokens looked up in the prefix cache.",
                stats.num_prefix_query_tokens,
            ),
            (
                "vllm:prefix_cache_hits",
                "Prompt tokens found in the prefix cache.",
                stats.num_prefix_hit_tokens,
            ),
            (
                "edgechat:image_cache_hits",
                "Images whose features came from the image embedding cache.",
                stats.num_image_cache_hits,
            ),
            (
                "edgechat:image_cache_misses",
                "Images run through the vision tower (not in the image embedding cache).",
                stats.num_image_cache_misses,
            ),
            ("vllm:num_preemptions", "Requests preempted.", stats.num_preemptions),
        )
        for metric_name, doc, value in gauges:
            family = GaugeMetricFamily(metric_name, doc, labels=LABELS)
            family.add_metric(name, value)
            yield family
        for metric_name, doc, value in counters:
            family = CounterMetricFamily(metric_name, doc, labels=LABELS)
            family.add_metric(name, value)
            yield family
