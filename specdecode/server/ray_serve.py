"""specdecode on Ray Serve: replicas of the same OpenAI-compatible app, each with its own decoder.

Each replica loads the target and draft, warms up, and serves `create_app`'s routes (one implementation
of the API) while its decoding thread batches the requests Ray routes to it. Ray's HTTP proxy (one per
node) routes each request to the replica with the fewest requests in flight of two picked at random,
queues at most `max_pending` more per replica, and restarts a replica whose process dies or whose
decoding thread stops (`check_health`). A replica's metrics go to Ray's metrics port with Ray Serve's
`deployment`, `replica` and `application` tags, so Prometheus sees every replica's counts.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass

from prometheus_client import CollectorRegistry
from ray import serve
from ray.serve import metrics as ray_metrics

from specdecode.engine import SpeculativeDecoder
from specdecode.server.app import create_app, warm_up
from specdecode.server.config import ServerConfig

log = logging.getLogger("specdecode.server")
METRICS_PERIOD_S = 2.0  # how often a replica copies its metrics to Ray's


@dataclass(frozen=True)
class Scaling:
    """How many replicas and what each holds: `replicas` fixed, or `autoscale` = (min, max) replicas
    (Ray adds one while replicas average more than `max_batch_rows` requests in flight); `cpus` and
    `gpus` reserved per replica (a replica's PyTorch threads = its CPUs)."""

    replicas: int = 1
    autoscale: tuple[int, int] | None = None
    cpus: float = 1.0
    gpus: float = 0.0


class RayMetrics:
    """Copies a prometheus_client registry into Ray Serve metrics of the same names and labels (plus
    Ray Serve's replica tags): counters and histograms as counters increased by the change since the last
    copy, gauges as gauges. Ray exports them as `ray_<name>` on its metrics port."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._copied: dict[tuple, float] = {}
        self._metrics: dict[str, ray_metrics.Counter | ray_metrics.Gauge] = {}

    def copy(self) -> None:
        for family in self.registry.collect():
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue
                tags = dict(sample.labels)
                metric = self._metric(sample.name, family, tuple(sorted(tags)))
                if family.type == "gauge":
                    metric.set(sample.value, tags)
                    continue
                key = (sample.name, tuple(sorted(tags.items())))
                change = sample.value - self._copied.get(key, 0.0)
                if change > 0:
                    metric.inc(change, tags)
                    self._copied[key] = sample.value

    def _metric(self, name: str, family, tag_keys: tuple[str, ...]):
        if name not in self._metrics:
            kind = ray_metrics.Gauge if family.type == "gauge" else ray_metrics.Counter
            self._metrics[name] = kind(name.removesuffix("_total"), family.documentation, tag_keys=tag_keys)
        return self._metrics[name]


@serve.ingress()
class Replica:
    """One replica: a decoder loaded with `load` (`SpeculativeDecoder.from_pretrained`'s arguments) and the app."""

    def __init__(self, load: dict, config: ServerConfig, threads: int) -> None:
        import torch

        torch.set_num_threads(threads)
        self.decoder = SpeculativeDecoder.from_pretrained(**load)
        warm_up(self.decoder, config.num_speculative_tokens)
        self.config = config

    def __serve_build_asgi_app__(self):
        self.specdecode_app = create_app(self.decoder, self.config)
        threading.Thread(target=self._copy_metrics, name="specdecode-ray-metrics", daemon=True).start()
        return self.specdecode_app

    def _copy_metrics(self) -> None:
        mirror = RayMetrics(self.specdecode_app.state.metrics.registry)
        while True:
            time.sleep(METRICS_PERIOD_S)
            try:
                mirror.copy()
            except Exception:  # metrics never take a replica down
                log.exception("copying metrics to Ray failed")

    def check_health(self) -> None:
        """Called by Ray Serve every few seconds; raising makes Ray replace this replica."""
        if not self.specdecode_app.state.worker.alive:
            raise RuntimeError("the decoding thread has stopped")


def deployment_options(config: ServerConfig, scaling: Scaling) -> dict:
    """The Ray Serve deployment's options: replicas or autoscaling, resources, queue bounds, health checks."""
    options: dict = {
        "ray_actor_options": {"num_cpus": scaling.cpus, "num_gpus": scaling.gpus},
        "max_ongoing_requests": config.max_pending,  # as `--max-pending` bounds one server
        "max_queued_requests": config.max_pending,  # waiting at each proxy for a replica; more get 503
        "health_check_period_s": 5,
        "graceful_shutdown_timeout_s": 10,
    }
    if scaling.autoscale is None:
        options["num_replicas"] = scaling.replicas
    else:
        low, high = scaling.autoscale
        options["autoscaling_config"] = {
            "min_replicas": low,
            "max_replicas": high,
            "target_ongoing_requests": config.max_batch_rows,
        }
    return options


def application(load: dict, config: ServerConfig, scaling: Scaling) -> serve.Application:
    """The Ray Serve application: `Replica`s of the decoder `load` describes (`from_pretrained`'s arguments),
    served as `config` says."""
    threads = max(1, int(scaling.cpus))
    options = deployment_options(config, scaling)
    return serve.deployment(Replica, name="specdecode", **options).bind(load, config, threads)


def run(app: serve.Application, host: str, port: int, address: str | None) -> None:
    """Start (or join, `address`) a Ray cluster, serve `app` on `host:port` of every node, block until
    interrupted, then shut the application down."""
    import ray

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
    signal.signal(signal.SIGTERM, interrupt)  # stop as on Ctrl-C, so that a cluster started here stops too
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(app, name="specdecode", route_prefix="/", blocking=True)
    except KeyboardInterrupt:
        pass
    finally:
        serve.delete("specdecode")
        ray.shutdown()
