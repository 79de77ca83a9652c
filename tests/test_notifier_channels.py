"""The notifier's channels against real receivers started here: apprise (its json:// gateway posting
to a local HTTP server), and a webhook that refuses (a failed send is an error to retry, not success)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from services.notifier import channels
from services.notifier.outbox import Row
from shared.settings.notifier import AppriseChannel, EmailChannel, WebhookChannel

pytest.importorskip("apprise")


def row() -> Row:
    return Row(key="0123456789:open:chat", channel="chat", transition="open", site="s1", meter="m1", kind="burst",
               severity="critical", subject="[flowwatch CRITICAL] OPEN: burst on s1/m1", body="Meter: s1/m1\nWhat: burst",
               data={"key": "0123456789:open:chat", "site": "s1", "meter": "m1", "kind": "burst"}, created=0.0, attempts=0)


@pytest.fixture
def receiver():
    got: list[dict] = []
    status = {"code": 200}

    class H(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            got.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(status["code"])
            self.end_headers()

        def log_message(self, *a) -> None:  # noqa: ANN002
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv.server_address[1], got, status
    srv.shutdown()
    srv.server_close()


def test_apprise_delivers_through_its_url(tmp_path: Path, receiver) -> None:
    port, got, _ = receiver
    urls = tmp_path / "apprise-urls"
    urls.write_text(f"# the operator's gateways\njson://127.0.0.1:{port}/hook\n")
    channels.send(AppriseChannel(type="apprise", urls_file=urls), row())
    assert len(got) == 1 and got[0]["title"].startswith("[flowwatch CRITICAL]") and "Meter: s1/m1" in got[0]["message"]


def test_failures_raise_send_error(tmp_path: Path, receiver) -> None:
    port, got, status = receiver
    status["code"] = 503
    with pytest.raises(channels.SendError, match="HTTP 503"):
        channels.send(WebhookChannel(type="webhook", url=f"http://127.0.0.1:{port}/x"), row())
    urls = tmp_path / "apprise-urls"
    urls.write_text(f"json://127.0.0.1:{port}/hook\n")
    with pytest.raises(channels.SendError, match="failed"):
        channels.send(AppriseChannel(type="apprise", urls_file=urls), row())
    with pytest.raises(channels.SendError, match="cannot read"):
        channels.send(AppriseChannel(type="apprise", urls_file=tmp_path / "missing"), row())
    with pytest.raises(channels.SendError):  # nothing listens there
        channels.send(EmailChannel(type="email", host="127.0.0.1", port=1, sender="a@b.c", to=["x@y.z"], timeout_s=2), row())
