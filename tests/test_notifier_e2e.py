"""The notifier end to end, all real parts: collector (CSV replay) → Mosquitto → detector → notifier
→ a real SMTP server (aiosmtpd, STARTTLS with a certificate made here) and a real HTTP receiver.

One run, in phases (each a pressure loss, critical, that the real detector raises):
1. both receivers up: the alert's open and close reach each receiver once;
2. both receivers down for a minute, the notifier killed (SIGKILL) and restarted meanwhile: the
   second alert's open and close arrive once each afterwards, nothing of the first again;
3. the meter silenced with ``flowwatch alerts silence``: the third alert sends nothing;
4. an open critical alert is escalated while unacknowledged; after ``flowwatch alerts ack`` it is
   not escalated again.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.harness import wait_for
from tests.stack import ROOT, START, Stack

pytestmark = [pytest.mark.slow, pytest.mark.faults]

aiosmtpd_controller = pytest.importorskip("aiosmtpd.controller")


# --- the receivers ----------------------------------------------------------------------------
class Received:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.mail: list[str] = []  # X-Flowwatch-Key of each message
        self.hooks: list[str] = []  # key of each webhook body

    def keys(self, which: str) -> list[str]:
        with self.lock:
            return list(getattr(self, which))


class SmtpHandler:
    def __init__(self, got: Received) -> None:
        self.got = got

    async def handle_DATA(self, server, session, envelope):  # noqa: ANN001, ANN201, N802 - aiosmtpd's hook name
        text = envelope.content.decode("utf-8", "replace")
        key = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.lower().startswith("x-flowwatch-key:")), "")
        assert session.ssl is not None, "mail arrived without STARTTLS"
        with self.got.lock:
            self.got.mail.append(key)
        return "250 OK"


def make_cert(folder: Path) -> tuple[Path, Path]:
    cert, key = folder / "smtp.crt", folder / "smtp.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "2", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    return cert, key


class Receivers:
    """An SMTP server and an HTTP receiver on fixed ports that can go down and come back."""

    def __init__(self, work: Path, smtp_port: int, http_port: int) -> None:
        import ssl

        self.got = Received()
        self.smtp_port, self.http_port = smtp_port, http_port
        self.cert, key = make_cert(work)
        self.tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.tls.load_cert_chain(self.cert, key)
        self.smtp = None
        self.http: ThreadingHTTPServer | None = None

    def up(self) -> None:
        got = self.got

        class Hook(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                assert self.headers["Idempotency-Key"] == body["key"]
                with got.lock:
                    got.hooks.append(body["key"])
                self.send_response(204)
                self.end_headers()

            def log_message(self, *a) -> None:  # noqa: ANN002
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self.http = ThreadingHTTPServer(("127.0.0.1", self.http_port), Hook)
        threading.Thread(target=self.http.serve_forever, daemon=True).start()
        self.smtp = aiosmtpd_controller.Controller(SmtpHandler(got), hostname="127.0.0.1", port=self.smtp_port,
                                                   tls_context=self.tls, require_starttls=True)
        self.smtp.start()

    def down(self) -> None:
        if self.smtp is not None:
            self.smtp.stop()
            self.smtp = None
        if self.http is not None:
            self.http.shutdown()
            self.http.server_close()
            self.http = None


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the data ---------------------------------------------------------------------------------
def write_csv(path: Path, start_min: int, normal_before: int, low: int, normal_after: int) -> int:
    """Minute readings from START + start_min: normal, then ``low`` minutes of pressure loss (0.5 bar),
    then normal again; returns the minute after the last one. Values vary a little (no flat line)."""
    lines = ["timestamp,flow_rate,pressure"]
    m = start_min
    for phase, n in (("n", normal_before), ("l", low), ("n", normal_after)):
        for _ in range(n):
            t = START + timedelta(minutes=m)
            flow = 100 + (m % 7) * 0.3
            p = 0.5 if phase == "l" else 3.0 + (m % 5) * 0.01
            lines.append(f"{t:%Y-%m-%dT%H:%M:%SZ},{flow:.3f},{p:.3f}")
            m += 1
    path.write_text("\n".join(lines) + "\n")
    return m


def health_counters(stack: Stack, name: str) -> dict:
    f = stack.data / "health" / f"{name}.json"
    try:
        return json.loads(f.read_text()).get("counters", {})
    except (OSError, ValueError):
        return {}


def outbox_rows(stack: Stack) -> list[tuple]:
    db = stack.data / "notifier" / "outbox.sqlite"
    if not db.exists():
        return []
    with sqlite3.connect(db) as c:
        return c.execute("SELECT key, state, attempts FROM outbox").fetchall()


def cli(stack: Stack, *args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "app.cli", "alerts", *args, "-c", str(stack.config)], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def of(keys: list[str], transition: str) -> list[str]:
    return [k for k in keys if k.split(":")[1] == transition]


def test_notifications_reach_people_once(tmp_path: Path, fresh_broker) -> None:
    rx = Receivers(tmp_path, free_port(), free_port())
    cfg_extra = {
        "collector": {"speed": 60 * 20.0},
        "notifier": {
            "channels": {
                "mail": {"type": "email", "host": "localhost", "port": rx.smtp_port, "sender": "flowwatch@example.org",
                         "to": ["ops@example.org"], "ca_file": str(rx.cert), "timeout_s": 5},
                "hook": {"type": "webhook", "url": f"http://127.0.0.1:{rx.http_port}/alerts", "timeout_s": 5},
            },
            "routes": [{"channels": ["mail", "hook"], "severities": ["critical"], "kinds": ["pressure_loss"]}],  # the fall also opens a pressure_drop: routed by kind
            "retry_min_s": 1.0, "retry_max_s": 4.0, "escalate_after_minutes": 0.25, "command_poll_s": 1.0,
        },
    }
    stack = Stack(tmp_path, fresh_broker, n_readings=1, rate_per_s=20, extra=cfg_extra)
    try:
        rx.up()
        stack.start("detector")
        stack.start("notifier")
        assert wait_for(lambda: health_counters(stack, "notifier") is not None and (stack.data / "health" / "notifier.json").exists(), 60)

        # 1. receivers up: open and close of alert 1 reach both, once
        end = write_csv(stack.csv, 0, 40, 4, 20)
        stack.start("collector")
        assert wait_for(lambda: len(of(rx.got.keys("mail"), "close")) >= 1 and len(of(rx.got.keys("hooks"), "close")) >= 1, 120), stack.all_logs()
        first = rx.got.keys("mail")
        assert len(of(first, "open")) == 1 and len(of(first, "close")) == 1, first
        assert sorted(k.replace(":mail", "") for k in first) == sorted(k.replace(":hook", "") for k in rx.got.keys("hooks"))
        alert1 = first[0].split(":")[0]
        stack.stop("collector")

        # 2. both receivers down for a minute; alert 2 meanwhile; the notifier killed and restarted
        rx.down()
        down_at = time.monotonic()
        write_csv(stack.csv, end, 5, 4, 20)
        stack.start("collector")
        assert wait_for(lambda: any(s == "pending" and a >= 1 for _k, s, a in outbox_rows(stack)), 120), stack.all_logs()
        stack.kill("notifier")
        stack.start("notifier")
        assert wait_for(lambda: sum(1 for k, s, _a in outbox_rows(stack) if s == "pending") >= 4, 120), outbox_rows(stack)
        waiting = cli(stack, "list", "--outbox")
        assert "4 notification(s) not sent yet" in waiting and "last error" in waiting, waiting
        stack.stop("collector")
        wait_for(lambda: False, max(0.0, 60 - (time.monotonic() - down_at)))  # the outage lasts a minute
        rx.up()
        assert wait_for(lambda: all(s == "sent" for _k, s, _a in outbox_rows(stack)), 120), outbox_rows(stack)
        mail, hooks = rx.got.keys("mail"), rx.got.keys("hooks")
        assert len(mail) == 4 and len(hooks) == 4, (mail, hooks)
        assert len(set(mail)) == 4 and len(set(hooks)) == 4
        assert sum(1 for k in mail if k.startswith(alert1)) == 2  # alert 1 not sent again
        assert all(a >= 1 for k, s, a in outbox_rows(stack) if not k.startswith(alert1))  # they did fail first

        # 3. the meter silenced: alert 3 sends nothing
        cli(stack, "silence", "--meter", "meter1", "--for", "1h", "--by", "test")
        end = write_csv(stack.csv, end + 29, 5, 4, 20)
        before = health_counters(stack, "notifier").get("silenced", 0)
        stack.start("collector")
        assert wait_for(lambda: health_counters(stack, "notifier").get("silenced", 0) >= before + 4, 120), stack.log("notifier")
        stack.stop("collector")
        assert len(rx.got.keys("mail")) == 4 and len(rx.got.keys("hooks")) == 4

        # 4. escalation: an open critical alert is escalated while unacknowledged, not after an ack
        cli(stack, "unsilence", "--meter", "meter1")
        write_csv(stack.csv, end, 5, 30, 0)  # ends low: the alert stays open
        stack.start("collector")
        assert wait_for(lambda: len(of(rx.got.keys("mail"), "escalate1")) == 1, 120), stack.log("notifier")
        alert4 = of(rx.got.keys("mail"), "escalate1")[0].split(":")[0]
        listed = cli(stack, "list")
        assert alert4 in listed
        cli(stack, "ack", alert4, "--by", "test")
        assert wait_for(lambda: health_counters(stack, "notifier").get("escalation_acked", 0) >= 1, 120), stack.log("notifier")
        assert of(rx.got.keys("mail"), "escalate2") == [] and of(rx.got.keys("hooks"), "escalate2") == []
        assert "acknowledged" in cli(stack, "list")
    finally:
        stack.stop_all()
        rx.down()
