"""runtime/remote.py on its own: URL redaction, and fetching a STAC Item's text bounded in time
and size, against a small HTTP server started here on loopback."""
import contextlib
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from stsun.errors import SceneError
from stsun.runtime import remote
from stsun.runtime.remote import redact, redact_text


def test_redact_hides_user_info_and_query_whatever_the_case_of_the_scheme():
    assert redact("HTTPS://user:pw@host/a.tif?X-Amz-Signature=secret") == "https://host/a.tif?<redacted>"
    assert redact("/VSICURL/https://host/a.tif?sig=secret") == "/VSICURL/https://host/a.tif?<redacted>"
    text = redact_text("GDAL: HTTPS://host/a.tif?sig=secret and S3://b/k?token=secret failed")
    assert "secret" not in text and "https://host/a.tif?<redacted>" in text


def test_redact_never_raises_on_a_broken_url():
    assert redact("http://[::1/a.tif?sig=secret") == "http://<redacted>"
    assert "secret" not in redact_text("failed on http://[::1/a.tif?sig=secret")


def test_curl_settings_take_extensionless_cogs_and_leave_the_block_cache_alone():
    extensions = remote.GDAL_REMOTE["CPL_VSIL_CURL_ALLOWED_EXTENSIONS"].split(",")
    assert "{noext}" in extensions and len(extensions) == len({e.lower() for e in extensions})
    assert "GDAL_CACHEMAX" not in remote.GDAL_REMOTE  # process-wide in GDAL: set once by the scene


@contextlib.contextmanager
def server(body: bytes, delay_s: float = 0.0):
    """The base URL of a server answering every GET with ``body``, a byte every ``delay_s``
    seconds when given (each read well within any per-read timeout)."""
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 -- http.server's name
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            with contextlib.suppress(OSError):
                if not delay_s:
                    self.wfile.write(body)
                for i in range(len(body) if delay_s else 0):
                    self.wfile.write(body[i:i + 1])
                    self.wfile.flush()
                    time.sleep(delay_s)

        def log_message(self, *_):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_read_text_has_an_overall_deadline(monkeypatch):
    monkeypatch.setenv("GDAL_HTTP_TIMEOUT", "0.5")  # per read; the whole answer gets 4x that
    with server(b'{"type": "Feature"}' * 20, delay_s=0.02) as base:  # 8 s in all
        start = time.monotonic()
        with pytest.raises(SceneError, match="no complete answer within 2 s") as err:
            remote.read_text(f"{base}/item.json?sig=secret")
        assert time.monotonic() - start < 10
    assert "secret" not in str(err.value)


def test_read_text_refuses_an_answer_too_big_for_an_item(monkeypatch):
    monkeypatch.setattr(remote, "MAX_ITEM_BYTES", 200_000)
    with server(b"x" * 200_000) as base:
        assert len(remote.read_text(f"{base}/item.json")) == 200_000
    monkeypatch.setattr(remote, "MAX_ITEM_BYTES", 1000)
    with server(b"x" * 200_000) as base:
        with pytest.raises(SceneError, match="not a STAC Item"):
            remote.read_text(f"{base}/item.json")


def test_read_text_takes_a_gdal_path_back_to_its_url_and_refuses_other_vsi_paths():
    with server(b'{"type": "Feature"}') as base:
        assert remote.read_text(f"/vsicurl/{base}/item.json") == '{"type": "Feature"}'
    with pytest.raises(SceneError, match="only http"):
        remote.read_text("/vsigs/bucket/item.json")
    assert remote.as_fetch_url("/vsis3/bucket/a/item.json") == "s3://bucket/a/item.json"
