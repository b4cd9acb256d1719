"""The Pipeline interface shared by every render-then-score pipeline.

The worker (:mod:`scoring.worker`) drives each batch of jobs through these steps::

    decode   (async, per job)   job → item              InvalidInput = permanent failure
    render   (per item)         item → tensor (K,C,H,W) K ≥ 1 images (windows) per item
    score    (per batch)        tensor (B,C,H,W) → (B,D) one forward pass for all items' images
    summarise(per item)         item, outputs (K,D) → JSON-able result dict
    persist  (per job, in a DB transaction)   result row keyed by job.id (unique: idempotent)
    act      (same transaction)               e.g. open a review case, queue an alert

The transaction commits, then the job is acknowledged. A pipeline whose items are too big to
render at once (hours of audio) overrides :meth:`Pipeline.process` and streams.

Threads: render/score/summarise of one batch run in one worker thread while persist/act of the
previous batch run in another, so those two groups of steps must not share mutable state.
Delivery is at least once: when ``persist`` returns an existing row instead of raising on the
unique ``job_id``, ``act`` runs again for it and must tolerate that. See docs/worker.md.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import redis.asyncio as aioredis
import torch
from sqlalchemy.orm import Session, sessionmaker


@dataclass
class Job:
    """One entry of a pipeline's jobs stream."""

    id: str
    """The job id, the idempotency key of the result row."""
    pipeline: str
    fields: dict[str, str]
    stream_id: str = ""
    attempts: int = 0


@dataclass
class Context:
    """What pipelines may use: built by the worker command from the settings."""

    sessions: sessionmaker[Session]
    redis: aioredis.Redis
    model_dir: Path
    data_dir: Path
    device: str = "cpu"
    extra: dict[str, Any] = field(default_factory=dict)


class Pipeline(ABC):
    """One render-then-score pipeline. Subclasses set ``name`` and implement the steps."""

    name: ClassVar[str]

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def load(self) -> None:  # noqa: B027 - optional hook
        """Load (or reload) the active model. Called before the first batch."""

    @abstractmethod
    async def decode(self, job: Job) -> Any:
        """Fetch and validate the job's input; raise InvalidInput when it is unusable."""

    @abstractmethod
    def render(self, item: Any) -> torch.Tensor:
        """The item's images as a float tensor (K, C, H, W), K ≥ 1."""

    @abstractmethod
    def score(self, batch: torch.Tensor) -> torch.Tensor:
        """Model outputs (B, D) for a batch of images, without gradients."""

    @abstractmethod
    def summarise(self, item: Any, outputs: torch.Tensor) -> dict[str, Any]:
        """One item's result from its images' outputs (K, D). Must be JSON-able."""

    @abstractmethod
    def persist(self, session: Session, job: Job, item: Any, result: dict[str, Any]) -> Any:
        """Write the result row keyed by ``job.id``; a second call for the same job is a no-op."""

    def act(self, session: Session, job: Job, item: Any, result: dict[str, Any], row: Any) -> None:  # noqa: B027
        """Follow-up in the same transaction (cases, alerts). Default: nothing."""

    def process(self, item: Any) -> dict[str, Any]:
        """Render, score and summarise one item alone; streaming pipelines override this."""
        images = self.render(item)
        return self.summarise(item, self.score(images))
