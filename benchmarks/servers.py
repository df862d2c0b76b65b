"""Real servers on loopback for the remote-input benchmark and tests: nginx serving a directory
(range requests, an access log of status and bytes per request), moto's S3 server, a TCP proxy
that adds latency to every request/response round trip, and a server that accepts and never
answers. Each is a context manager that always stops what it started."""
from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

NGINX_CONF = """{user}worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 256; }}
http {{
  log_format bytes '$status $bytes_sent $request_method $uri $http_range';
  access_log {prefix}/access.log bytes;
  client_body_temp_path {prefix}/body; proxy_temp_path {prefix}/proxy; fastcgi_temp_path {prefix}/fastcgi;
  uwsgi_temp_path {prefix}/uwsgi; scgi_temp_path {prefix}/scgi;
  keepalive_requests 100000;
  types {{ application/json json; image/tiff tif; }}
  server {{ listen 127.0.0.1:{port}; root {root}; }}
}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 20.0, proc: subprocess.Popen | None = None) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server exited with code {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout:g} s")


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.path.exists(p)), None)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def nginx(root: Path, prefix: Path) -> Iterator[tuple[str, Path]]:
    """(base URL, access log) of an nginx serving ``root`` on a free loopback port."""
    binary = nginx_binary()
    if binary is None:
        raise RuntimeError("nginx is not installed (apt-get install -y nginx-light)")
    prefix.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = prefix / "nginx.conf"
    # as root, nginx's workers would drop to nobody, who cannot read a private temporary directory
    user = "user root root;\n" if os.geteuid() == 0 else ""
    conf.write_text(NGINX_CONF.format(user=user, prefix=prefix, port=port, root=Path(root).resolve()))
    proc = subprocess.Popen([binary, "-c", str(conf), "-p", str(prefix)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        wait_for_port(port, proc=proc)
        yield f"http://127.0.0.1:{port}", prefix / "access.log"
    finally:
        _stop(proc)


def access_log(path: Path) -> list[tuple[int, int, str]]:
    """(status, bytes sent, uri) per request in an access log written with NGINX_CONF's format."""
    rows = []
    for line in path.read_text().splitlines():
        status, sent, _, uri, *_ = line.split(" ") + [""]
        rows.append((int(status), int(sent), uri))
    return rows


@contextlib.contextmanager
def moto_s3() -> Iterator[dict[str, str]]:
    """The environment (``AWS_*``) of a moto S3 server on a free loopback port."""
    port = free_port()
    binary = shutil.which("moto_server") or str(Path(sys.executable).parent / "moto_server")
    proc = subprocess.Popen([binary, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc=proc)
        yield {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
               "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}
    finally:
        _stop(proc)


class DelayProxy:
    """A TCP proxy on a free loopback port that holds each request ``delay_s`` before passing it
    to ``target``: one added round trip per request/response exchange, as a distant server has
    (the first bytes of a request are delayed; its response then flows straight back)."""

    def __init__(self, target_port: int, delay_s: float) -> None:
        self.target_port, self.delay_s, self.port = target_port, delay_s, free_port()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    async def _pipe(self, reader, writer, delay: float) -> None:
        try:
            while data := await reader.read(1 << 16):
                if delay:
                    await asyncio.sleep(delay)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _handle(self, client_reader, client_writer) -> None:
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(self._pipe(client_reader, server_writer, self.delay_s),
                                 self._pipe(server_reader, client_writer, 0.0), return_exceptions=True)

    def __enter__(self) -> DelayProxy:
        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", self.port), self.loop).result(10)
        return self

    def __exit__(self, *exc) -> None:
        async def close():
            self.server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@contextlib.contextmanager
def stalled_server() -> Iterator[str]:
    """The base URL of a server that accepts connections and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        sock.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                held.append(sock.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(5)
        for s in held:
            s.close()
        sock.close()
