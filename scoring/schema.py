"""The SQLAlchemy 2 schema of TrailGuard.

It lives in ``scoring`` because both the server and the workers write it, and the data flow is
``server → scoring``. Alembic's environment (``migrations/env.py``) targets ``Base.metadata``;
a test checks that autogenerate finds no difference between the models and the migrations.

Raw mouse samples stay in Redis while a page session is live; once scored they are archived
compactly (``PageSession.samples``: the wire codec's bytes, zlib-compressed).
"""

from __future__ import annotations

import datetime as dt
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON, list[Any]: JSON}


def _created() -> Mapped[dt.datetime]:
    return mapped_column(DateTime(timezone=True), default=utcnow, server_default=func.now())


class Site(Base):
    """A website that embeds the collector. ``key`` is public; the secret authenticates APIs."""

    __tablename__ = "sites"
    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    allowed_origins: Mapped[list[Any]] = mapped_column(default=list)
    secret_hash: Mapped[str] = mapped_column(String(128))
    auto_alert_threshold: Mapped[float | None] = mapped_column(Float)
    webhook_url: Mapped[str | None] = mapped_column(String(500))
    policy: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[dt.datetime] = _created()


class Account(Base):
    """A user account of a site, identified by the site's own id for it."""

    __tablename__ = "accounts"
    __table_args__ = (UniqueConstraint("site_id", "external_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    site_id: Mapped[int] = mapped_column(ForeignKey("sites.id", ondelete="CASCADE"), index=True)
    external_id: Mapped[str] = mapped_column(String(200))
    owner_email: Mapped[str | None] = mapped_column(String(320))
    created_at: Mapped[dt.datetime] = _created()
    site: Mapped[Site] = relationship()


class PageSession(Base):
    """One page visit's metadata; samples live in Redis until scored, then in ``samples``."""

    __tablename__ = "page_sessions"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    site_id: Mapped[int] = mapped_column(ForeignKey("sites.id", ondelete="CASCADE"), index=True)
    account_id: Mapped[int | None] = mapped_column(
        ForeignKey("accounts.id", ondelete="SET NULL"), index=True
    )
    page_path: Mapped[str] = mapped_column(String(2000), default="")
    viewport_w: Mapped[int] = mapped_column(Integer, default=0)
    viewport_h: Mapped[int] = mapped_column(Integer, default=0)
    device_pixel_ratio: Mapped[float] = mapped_column(Float, default=1.0)
    pointer_type: Mapped[str] = mapped_column(String(16), default="mouse")
    user_agent: Mapped[str] = mapped_column(String(1000), default="")
    client_ip: Mapped[str] = mapped_column(String(64), default="")
    status: Mapped[str] = mapped_column(String(16), default="live")
    end_reason: Mapped[str | None] = mapped_column(String(32))
    n_samples: Mapped[int] = mapped_column(Integer, default=0)
    samples: Mapped[bytes | None] = mapped_column(LargeBinary)
    label: Mapped[str | None] = mapped_column(String(16))
    started_at: Mapped[dt.datetime] = _created()
    ended_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class ModelVersion(Base):
    """A model file in the model store; one active per (pipeline, task, account)."""

    __tablename__ = "model_versions"
    id: Mapped[int] = mapped_column(primary_key=True)
    pipeline: Mapped[str] = mapped_column(String(16), index=True)
    task: Mapped[str] = mapped_column(String(32), default="default")
    account_id: Mapped[int | None] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    version: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(String(1000))
    threshold: Mapped[float | None] = mapped_column(Float)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    active: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = _created()


class Score(Base):
    """A mouse-pipeline result for one page session; ``job_id`` makes writes idempotent."""

    __tablename__ = "scores"
    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[str] = mapped_column(String(64), unique=True)
    session_id: Mapped[str] = mapped_column(
        ForeignKey("page_sessions.id", ondelete="CASCADE"), index=True
    )
    model_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    score: Mapped[float] = mapped_column(Float)
    threshold: Mapped[float] = mapped_column(Float)
    flagged: Mapped[bool] = mapped_column(Boolean, default=False)
    untrained: Mapped[bool] = mapped_column(Boolean, default=False)
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[dt.datetime] = _created()


class Analyst(Base):
    """A person who reviews cases; ``role`` is ``analyst`` or ``admin``."""

    __tablename__ = "analysts"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    password_hash: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(16), default="analyst")
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[dt.datetime] = _created()


class ReviewCase(Base):
    """Something flagged for a person to decide: a mouse session, a pump card or an audio clip."""

    __tablename__ = "review_cases"
    __table_args__ = (Index("ix_review_cases_status_risk", "status", "risk"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    site_id: Mapped[int | None] = mapped_column(ForeignKey("sites.id", ondelete="CASCADE"))
    pipeline: Mapped[str] = mapped_column(String(16), default="mouse")
    subject_id: Mapped[str] = mapped_column(String(64))
    score_id: Mapped[int | None] = mapped_column(ForeignKey("scores.id", ondelete="SET NULL"))
    risk: Mapped[float] = mapped_column(Float, default=0.0)
    threshold: Mapped[float | None] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(16), default="open")
    assignee_id: Mapped[int | None] = mapped_column(ForeignKey("analysts.id"))
    claimed_until: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    deadline: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[dt.datetime] = _created()
    updated_at: Mapped[dt.datetime] = _created()


class CaseEvent(Base):
    """Append-only audit log of everything that happens to a case."""

    __tablename__ = "case_events"
    id: Mapped[int] = mapped_column(primary_key=True)
    case_id: Mapped[int] = mapped_column(
        ForeignKey("review_cases.id", ondelete="CASCADE"), index=True
    )
    actor: Mapped[str] = mapped_column(String(320))
    kind: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str] = mapped_column(Text, default="")
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)
    at: Mapped[dt.datetime] = _created()


class Alert(Base):
    """An alert to an account owner (email) or a site (webhook), with delivery status."""

    __tablename__ = "alerts"
    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int | None] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    case_id: Mapped[int | None] = mapped_column(ForeignKey("review_cases.id", ondelete="SET NULL"))
    channel: Mapped[str] = mapped_column(String(16), default="email")
    device: Mapped[str] = mapped_column(String(200), default="")
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    token_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    token_used_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    owner_decision: Mapped[str | None] = mapped_column(String(16))
    sent_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[dt.datetime] = _created()


class PumpCard(Base):
    """One dynamometer card of a well: (position, load) points as given, in their own units.

    A well belongs to a site: ``well_id`` is the site's own name for it, so two sites may both
    have a well "A-12" and neither sees the other's (the site API looks wells up within the
    authenticated site)."""

    __tablename__ = "pump_cards"
    __table_args__ = (UniqueConstraint("site_id", "well_id", "card_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    site_id: Mapped[int] = mapped_column(ForeignKey("sites.id", ondelete="CASCADE"), index=True)
    well_id: Mapped[str] = mapped_column(String(200), default="")
    card_id: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(16), default="surface")
    n_points: Mapped[int] = mapped_column(Integer)
    points: Mapped[list[Any]] = mapped_column()
    source: Mapped[str] = mapped_column(String(32), default="api")
    created_at: Mapped[dt.datetime] = _created()


class PumpDiagnosis(Base):
    """The pump pipeline's result for one card."""

    __tablename__ = "pump_diagnoses"
    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[str] = mapped_column(String(64), unique=True)
    card_pk: Mapped[int] = mapped_column(
        ForeignKey("pump_cards.id", ondelete="CASCADE"), index=True
    )
    model_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    mode: Mapped[str] = mapped_column(String(64))
    confidence: Mapped[float] = mapped_column(Float)
    probabilities: Mapped[dict[str, Any]] = mapped_column(default=dict)
    untrained: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = _created()


class AudioClip(Base):
    """An uploaded recording; the file itself lives under data_dir.

    A clip belongs to the site that uploaded it: the site API reads and lists only the
    authenticated site's clips (their analyses and detections hang off the clip)."""

    __tablename__ = "audio_clips"
    id: Mapped[int] = mapped_column(primary_key=True)
    site_id: Mapped[int] = mapped_column(ForeignKey("sites.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(500))
    path: Mapped[str] = mapped_column(String(1000))
    sample_rate: Mapped[int] = mapped_column(Integer)
    duration_s: Mapped[float] = mapped_column(Float)
    created_at: Mapped[dt.datetime] = _created()


class ClipAnalysis(Base):
    """The whale pipeline's result for one clip; detections hang off it."""

    __tablename__ = "clip_analyses"
    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[str] = mapped_column(String(64), unique=True)
    clip_id: Mapped[int] = mapped_column(
        ForeignKey("audio_clips.id", ondelete="CASCADE"), index=True
    )
    model_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    threshold: Mapped[float] = mapped_column(Float)
    windows: Mapped[list[Any]] = mapped_column(default=list)
    untrained: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = _created()


class Detection(Base):
    """A merged span of audio in which whale song was detected."""

    __tablename__ = "detections"
    id: Mapped[int] = mapped_column(primary_key=True)
    analysis_id: Mapped[int] = mapped_column(
        ForeignKey("clip_analyses.id", ondelete="CASCADE"), index=True
    )
    start_s: Mapped[float] = mapped_column(Float)
    end_s: Mapped[float] = mapped_column(Float)
    confidence: Mapped[float] = mapped_column(Float)


class JobFailure(Base):
    """A job that reached the dead-letter stream, with the error that sent it there."""

    __tablename__ = "job_failures"
    id: Mapped[int] = mapped_column(primary_key=True)
    pipeline: Mapped[str] = mapped_column(String(16))
    job_id: Mapped[str] = mapped_column(String(64), unique=True)
    attempts: Mapped[int] = mapped_column(Integer)
    error: Mapped[str] = mapped_column(Text)
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[dt.datetime] = _created()


class Decision(Base):
    """A real-time risk decision answered to a site, kept for audit."""

    __tablename__ = "decisions"
    id: Mapped[int] = mapped_column(primary_key=True)
    site_id: Mapped[int] = mapped_column(ForeignKey("sites.id", ondelete="CASCADE"), index=True)
    session_id: Mapped[str | None] = mapped_column(String(64))
    account_id: Mapped[int | None] = mapped_column(ForeignKey("accounts.id", ondelete="SET NULL"))
    action: Mapped[str] = mapped_column(String(32))
    decision: Mapped[str] = mapped_column(String(16))
    score: Mapped[float | None] = mapped_column(Float)
    threshold: Mapped[float | None] = mapped_column(Float)
    model_version: Mapped[str | None] = mapped_column(String(64))
    reasons: Mapped[list[Any]] = mapped_column(default=list)
    samples_used: Mapped[int] = mapped_column(Integer, default=0)
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[dt.datetime] = _created()


class PolicyChange(Base):
    """Append-only audit of every edit of a site's decision policy (``Site.policy``)."""

    __tablename__ = "policy_changes"
    id: Mapped[int] = mapped_column(primary_key=True)
    site_id: Mapped[int] = mapped_column(ForeignKey("sites.id", ondelete="CASCADE"), index=True)
    actor: Mapped[str] = mapped_column(String(320))
    before: Mapped[dict[str, Any]] = mapped_column(default=dict)
    after: Mapped[dict[str, Any]] = mapped_column(default=dict)
    reason: Mapped[str] = mapped_column(Text, default="")
    at: Mapped[dt.datetime] = _created()
