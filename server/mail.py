"""Owner alert emails: composing them (HTML + text) and delivering them (SMTP or outbox).

Delivery uses aiosmtplib against ``settings.smtp_url`` (``smtp://`` with optional STARTTLS, or
``smtps://``). With no SMTP configured, each message is written to ``settings.outbox_dir`` as an
``.eml`` file, so a development set-up loses nothing and a person can open it. Delivery errors
(``aiosmtplib.SMTPException``, ``OSError``) propagate; :mod:`server.alerts` records them and
retries.
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path
from urllib.parse import unquote, urlsplit

import aiosmtplib
import jinja2

from server.review.templating import ENV as HTML_ENV
from server.review.templating import TEMPLATE_DIR
from server.settings import Settings

SMTP_TIMEOUT = 20.0
TEXT_ENV = jinja2.Environment(
    loader=jinja2.FileSystemLoader(TEMPLATE_DIR),
    autoescape=False,
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
)


@dataclass(frozen=True)
class AlertItem:
    """What an owner is told about one flagged or confirmed session."""

    site_name: str
    account: str
    when: dt.datetime
    page: str
    device: str
    location: str
    network: str
    reason: str
    not_me_url: str
    me_url: str

    @property
    def when_text(self) -> str:
        when = self.when if self.when.tzinfo else self.when.replace(tzinfo=dt.UTC)
        return when.astimezone(dt.UTC).strftime("%A %d %B %Y, %H:%M UTC")


def _message(settings: Settings, to: str, subject: str, template: str, ctx: dict) -> EmailMessage:
    message = EmailMessage()
    message["From"] = settings.smtp_from
    message["To"] = to
    message["Subject"] = subject
    message["Date"] = format_datetime(dt.datetime.now(dt.UTC))
    message["Message-ID"] = make_msgid(domain="trailguard.invalid")
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(TEXT_ENV.get_template(f"email/{template}.txt").render(ctx))
    message.add_alternative(
        HTML_ENV.get_template(f"email/{template}.html").render(ctx), subtype="html"
    )
    return message


def alert_message(settings: Settings, to: str, item: AlertItem) -> EmailMessage:
    subject = f"Security alert: unusual activity on your {item.site_name} account"
    return _message(settings, to, subject, "alert", {"item": item})


def digest_message(settings: Settings, to: str, items: list[AlertItem]) -> EmailMessage:
    site = items[0].site_name if items else "TrailGuard"
    subject = f"Security digest: {len(items)} more unusual sessions on your {site} account"
    return _message(settings, to, subject, "digest", {"items": items})


def write_outbox(outbox: Path, message: EmailMessage) -> Path:
    """Write ``message`` as an .eml file atomically (a reader never sees half a file)."""
    outbox.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%f")
    path = outbox / f"{stamp}-{secrets.token_hex(4)}.eml"
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(message.as_bytes())
    os.replace(tmp, path)
    return path


async def deliver(settings: Settings, message: EmailMessage) -> str:
    """Send ``message``; returns ``smtp`` or the outbox file path it was written to."""
    if not settings.smtp_url:
        return str(write_outbox(settings.outbox_dir, message))
    parts = urlsplit(settings.smtp_url)
    implicit_tls = parts.scheme == "smtps"
    await aiosmtplib.send(
        message,
        hostname=parts.hostname,
        port=parts.port or (465 if implicit_tls else 25),
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        use_tls=implicit_tls,
        start_tls=settings.smtp_starttls and not implicit_tls,
        timeout=SMTP_TIMEOUT,
    )
    return "smtp"
