"""The channels a notification leaves by: e-mail (SMTP + STARTTLS), a JSON webhook, apprise URLs.

Each :func:`send` either returns (the receiver accepted it) or raises :class:`SendError` with what
went wrong; the outbox then retries later. Secrets are read from their files at each send, so a
rotated password needs no restart. Libraries are imported where used (apprise only by the notifier).
"""

from __future__ import annotations

import logging
import smtplib
import ssl
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from services.notifier.outbox import Row
from shared.settings.notifier import AppriseChannel, EmailChannel, WebhookChannel

logger = logging.getLogger(__name__)


class SendError(Exception):
    """A channel could not take the notification now (retried with backoff)."""


def _read(path, what: str) -> str:  # noqa: ANN001
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise SendError(f"cannot read {what} {path}: {exc}") from exc


def send(cfg: EmailChannel | WebhookChannel | AppriseChannel, row: Row) -> None:
    try:
        if isinstance(cfg, EmailChannel):
            _email(cfg, row)
        elif isinstance(cfg, WebhookChannel):
            _webhook(cfg, row)
        else:
            _apprise(cfg, row)
    except SendError:
        raise
    except Exception as exc:  # noqa: BLE001 - any library failure is a failed send, retried
        raise SendError(f"{type(exc).__name__}: {exc}") from exc


def _email(cfg: EmailChannel, row: Row) -> None:
    msg = EmailMessage()
    msg["Subject"] = row.subject
    msg["From"] = cfg.sender
    msg["To"] = ", ".join(cfg.to)
    msg["Date"] = formatdate(localtime=False)
    # The same key gives the same Message-ID: a second copy after a crash is recognisable.
    msg["Message-ID"] = make_msgid(idstring=row.key.replace(":", ".").replace("/", "."), domain="flowwatch")
    msg["X-Flowwatch-Key"] = row.key
    msg.set_content(row.body)
    with smtplib.SMTP(cfg.host, cfg.port, timeout=cfg.timeout_s) as smtp:
        smtp.ehlo()
        if cfg.starttls:
            if not smtp.has_extn("starttls"):
                raise SendError(f"SMTP server {cfg.host}:{cfg.port} does not offer STARTTLS (set starttls: false only on a trusted network)")
            ctx = ssl.create_default_context(cafile=str(cfg.ca_file) if cfg.ca_file else None)
            smtp.starttls(context=ctx)
            smtp.ehlo()
        if cfg.username:
            smtp.login(cfg.username, _read(cfg.password_file, "SMTP password file"))
        refused = smtp.send_message(msg)
        if refused:
            logger.warning("SMTP server refused recipient(s) %s for %s", ", ".join(refused), row.key)


def _webhook(cfg: WebhookChannel, row: Row) -> None:
    import requests

    headers = {"Content-Type": "application/json", "Idempotency-Key": row.key}
    if cfg.token_file is not None:
        headers["Authorization"] = f"Bearer {_read(cfg.token_file, 'webhook token file')}"
    body = {**row.data, "subject": row.subject, "text": row.body}
    try:
        resp = requests.post(cfg.url, json=body, headers=headers, timeout=cfg.timeout_s)
    except requests.RequestException as exc:
        raise SendError(f"webhook {cfg.url}: {type(exc).__name__}") from exc
    if resp.status_code >= 300:
        raise SendError(f"webhook {cfg.url} answered HTTP {resp.status_code}: {resp.text[:200]}")


def _apprise(cfg: AppriseChannel, row: Row) -> None:
    import apprise

    urls = [u.strip() for u in _read(cfg.urls_file, "apprise URLs file").splitlines() if u.strip() and not u.lstrip().startswith("#")]
    if not urls:
        raise SendError(f"apprise URLs file {cfg.urls_file} holds no URL")
    ap = apprise.Apprise()
    for u in urls:
        if not ap.add(u):
            raise SendError(f"apprise cannot use a URL in {cfg.urls_file} (check its scheme; see the apprise wiki)")
    if not ap.notify(title=row.subject, body=row.body):
        raise SendError(f"apprise: at least one of the {len(urls)} URL(s) in {cfg.urls_file} failed")
