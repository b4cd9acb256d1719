"""``trailguard worker``: score jobs from the pipelines' Redis streams until SIGTERM.

``--pipelines`` takes registered names (``scoring.pipelines.PIPELINES``) or ``module:Class``
specs. Without it every registered pipeline is started, and one whose module is missing or
fails to import is reported and skipped; a pipeline named explicitly must load.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import signal
import sys
from dataclasses import dataclass, field

import redis.asyncio as aioredis
import torch
from prometheus_client import CollectorRegistry, start_http_server

from renderer.errors import ConfigError
from scoring.database import make_engine, make_sessionmaker
from scoring.metrics import WorkerMetrics, enable_multiprocess
from scoring.pipelines import PIPELINES
from scoring.pipelines.base import Context, Pipeline
from scoring.worker import Worker, WorkerConfig, default_consumer_name
from server.settings import Settings

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("worker", help="score queued jobs (render, score, store, act)")
    p.add_argument(
        "--pipelines",
        help="comma-separated: mouse,pump,whale or module:Class (default: all that import)",
    )
    p.add_argument("--batch-size", type=int, help="jobs per read and images per forward pass")
    p.add_argument("--device", choices=("cpu", "cuda"), help="torch device (default: setting)")
    p.add_argument("--max-attempts", type=int, default=5, help="failures before dead-lettering")
    p.add_argument(
        "--claim-idle",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="take over jobs idle this long (longer than the slowest job)",
    )
    p.add_argument("--consumer", help="consumer name in the groups (default: host-pid)")
    p.add_argument(
        "--metrics-port",
        type=int,
        help="serve this worker's metrics on a port (default: files under data_dir/metrics "
        "that the server's /metrics aggregates)",
    )
    p.set_defaults(func=worker)


@dataclass
class Loaded:
    classes: list[type[Pipeline]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def import_pipeline(name: str) -> type[Pipeline]:
    """The Pipeline class for a registered name or a ``module:Class`` spec."""
    target = PIPELINES.get(name) or (name if ":" in name else None)
    if target is None:
        known = ", ".join(PIPELINES)
        raise LookupError(f"unknown pipeline {name!r} (known: {known}, or module:Class)")
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name == module_name:
            raise LookupError(f"pipeline {name!r}: module {module_name} does not exist yet") from e
        raise LookupError(f"pipeline {name!r}: module {module_name} fails to import: {e}") from e
    except Exception as e:  # any import-time failure is reported, not raised at the user
        raise LookupError(
            f"pipeline {name!r}: module {module_name} fails to import: {type(e).__name__}: {e}"
        ) from e
    cls = getattr(module, attr, None)
    if not (isinstance(cls, type) and issubclass(cls, Pipeline)):
        raise LookupError(f"pipeline {name!r}: {target} is not a Pipeline subclass")
    return cls


def load_pipelines(names: list[str]) -> Loaded:
    loaded = Loaded()
    for name in names:
        try:
            loaded.classes.append(import_pipeline(name))
        except LookupError as e:
            loaded.problems.append(str(e))
    return loaded


def _config(settings: Settings, args: argparse.Namespace) -> WorkerConfig:
    batch = args.batch_size or settings.worker_batch_size
    if batch < 1 or args.max_attempts < 1 or args.claim_idle <= 0:
        raise ConfigError("trailguard worker", "batch size, attempts and claim idle must be > 0")
    return WorkerConfig(
        batch_size=batch,
        max_attempts=args.max_attempts,
        claim_idle_ms=int(args.claim_idle * 1000),
        consumer=args.consumer or default_consumer_name(),
    )


def _device(settings: Settings, args: argparse.Namespace) -> str:
    device: str = args.device or settings.device
    if device not in ("cpu", "cuda"):
        raise ConfigError("TRAILGUARD_DEVICE", f"expected cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("TRAILGUARD_DEVICE", "cuda asked for, but torch sees no CUDA device")
    return device


def _metrics(settings: Settings, args: argparse.Namespace) -> WorkerMetrics:
    if args.metrics_port:
        registry = CollectorRegistry()
        start_http_server(args.metrics_port, addr=settings.host, registry=registry)
        return WorkerMetrics.create(registry)
    enable_multiprocess(settings.data_dir / "metrics")
    return WorkerMetrics.create(None)


def worker(settings: Settings, args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    if not settings.redis_url:
        print(
            "trailguard worker: set TRAILGUARD_REDIS_URL (`trailguard run` does)", file=sys.stderr
        )
        return 2
    explicit = args.pipelines is not None
    names = [n.strip() for n in (args.pipelines or ",".join(PIPELINES)).split(",") if n.strip()]
    loaded = load_pipelines(names)
    for problem in loaded.problems:
        print(f"trailguard worker: {problem}", file=sys.stderr)
    if not loaded.classes or (explicit and loaded.problems):
        print("trailguard worker: not starting (see above)", file=sys.stderr)
        return 2
    config = _config(settings, args)
    device = _device(settings, args)
    started = ", ".join(c.name for c in loaded.classes)
    print(f"trailguard worker {config.consumer}: pipelines {started}", file=sys.stderr, flush=True)
    return asyncio.run(
        _serve(settings, args, settings.redis_url, loaded.classes, config, device, explicit)
    )


async def _serve(
    settings: Settings,
    args: argparse.Namespace,
    redis_url: str,
    classes: list[type[Pipeline]],
    config: WorkerConfig,
    device: str,
    strict: bool,
) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    engine = make_engine(settings.database_url)
    redis = aioredis.Redis.from_url(redis_url)
    ctx = Context(
        sessions=make_sessionmaker(engine),
        redis=redis,
        model_dir=settings.model_dir,
        data_dir=settings.data_dir,
        device=device,
    )
    try:
        pipelines = loaded_pipelines(classes, ctx, strict)
        if not pipelines:
            return 2
        metrics = _metrics(settings, args)  # only once it runs: multiprocess mode is global
        await Worker(pipelines, ctx, config, metrics).run(stop, load=False)
        return 0
    finally:
        await redis.aclose()
        engine.dispose()


def loaded_pipelines(classes: list[type[Pipeline]], ctx: Context, strict: bool) -> list[Pipeline]:
    """Instances whose models loaded; the others are reported (and with ``strict``, none run)."""
    pipelines: list[Pipeline] = []
    failed = False
    for cls in classes:
        try:
            pipeline = cls(ctx)
            pipeline.load()
        except Exception as e:  # start-up boundary: report each pipeline that cannot start
            print(
                f"trailguard worker: pipeline {cls.name!r} failed to load: {type(e).__name__}: {e}",
                file=sys.stderr,
            )
            failed = True
            continue
        pipelines.append(pipeline)
    if failed and (strict or not pipelines):
        print("trailguard worker: not starting (see above)", file=sys.stderr)
        return []
    return pipelines
