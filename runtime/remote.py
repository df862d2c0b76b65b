"""Inputs that live behind a URL: ``https://`` and ``s3://`` STAC Items and COGs, read by GDAL.

Rasters are opened through GDAL's network file systems (``/vsicurl/``, ``/vsis3/``) so a window
read fetches only the blocks it needs. GDAL is configured for COGs here (``gdal_env``), not left
to the user's environment: no directory listing on open, consecutive ranges merged, bounded
caches, retries with backoff on 429/5xx, a timeout so a stalled server cannot hang a job. A
setting the user exported (``GDAL_HTTP_TIMEOUT=5``) wins over ours.

Credentials and endpoints come only from where GDAL and boto3 look themselves: the ``AWS_*``
variables and the AWS profile files. An S3-compatible store named by ``AWS_ENDPOINT_URL`` (boto3's
variable) is passed on to GDAL as ``AWS_S3_ENDPOINT`` / ``AWS_HTTPS`` / ``AWS_VIRTUAL_HOSTING``.
URLs in messages go through ``redact`` (no user info, no query string: presigned URLs carry
signatures there).
"""
from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

from stsun.errors import SceneError

SCHEMES = ("http", "https", "s3")
HTTP_TIMEOUT_S = 30
# Our GDAL settings for reading COGs over the network (values as GDAL takes them).
GDAL_REMOTE: dict[str, object] = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",  # no listing, no sidecar probing per open
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",  # a strip's adjacent blocks in one request
    "GDAL_HTTP_MULTIPLEX": "YES",
    "GDAL_HTTP_MAX_RETRY": "4",                   # 429, 5xx and timeouts: retried with backoff
    "GDAL_HTTP_RETRY_DELAY": "0.5",
    "GDAL_HTTP_TIMEOUT": str(HTTP_TIMEOUT_S),
    "GDAL_HTTP_CONNECTTIMEOUT": "10",
    "CPL_VSIL_CURL_CACHE_SIZE": str(128 << 20),   # downloaded ranges, shared by every handle of a file
    "CPL_VSIL_CURL_CHUNK_SIZE": str(64 << 10),
    "VSI_CACHE": "TRUE",
    "VSI_CACHE_SIZE": str(32 << 20),
    # GDAL compares extensions case-insensitively; {noext}: COG URLs without one (signed API links)
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.tiff,.jp2,{noext}",
}
# GDAL_CACHEMAX is not among them: it is process-wide in GDAL, so threads entering and leaving
# gdal_env would race on it; the scene runner sets it once (stsun.runtime.scene).
MAX_ITEM_BYTES = 16 << 20  # a STAC Item is kilobytes: anything this big is not one


_COLLAPSED = re.compile(r"^(https?|s3):/(?!/)", re.I)


def as_url(href: str | os.PathLike) -> str:
    """``href`` as text, with the ``//`` after the scheme back when a ``pathlib.Path`` collapsed it
    (``Path("s3://b/k")`` is ``s3:/b/k``: a CLI option typed as a path arrives that way)."""
    return _COLLAPSED.sub(lambda m: f"{m.group(1)}://", os.fspath(href))


def is_remote(href: str | os.PathLike) -> bool:
    """Whether ``href`` is a URL this reader fetches (http, https, s3) or a GDAL network path."""
    text = as_url(href)
    return urlsplit(text).scheme.lower() in SCHEMES or text.startswith(("/vsicurl/", "/vsis3/"))


def gdal_path(href: str) -> str:
    """The GDAL path of a URL: ``s3://b/k`` -> ``/vsis3/b/k``, ``https://...`` -> ``/vsicurl/https://...``."""
    if href.startswith("/vsi"):
        return href
    parts = urlsplit(href)
    if parts.scheme.lower() == "s3":
        return f"/vsis3/{parts.netloc}{parts.path}"
    return f"/vsicurl/{href}"


def redact(href: str | os.PathLike) -> str:
    """``href`` fit for a message or log: user info and query string removed. Never raises (a URL
    too broken to parse is shown as ``scheme://<redacted>``)."""
    text = str(href)
    prefix = ""
    for vsi in ("/vsicurl/", "/vsis3/"):
        if text.lower().startswith(vsi):
            prefix, text = text[:len(vsi)], text[len(vsi):]
    try:
        parts = urlsplit(text)
        if not parts.scheme:
            return prefix + text
        netloc = parts.netloc.rsplit("@", 1)[-1]
        query = "<redacted>" if parts.query else ""
        return prefix + urlunsplit((parts.scheme, netloc, parts.path, query, ""))
    except ValueError:  # e.g. an unclosed IPv6 bracket
        return prefix + text.split(":", 1)[0] + "://<redacted>"


def gdal_config() -> dict[str, object]:
    """GDAL's options for remote reads: ours, the user's exported ones over them, and the S3
    endpoint of ``AWS_ENDPOINT_URL`` when GDAL's own ``AWS_S3_ENDPOINT`` is not set."""
    config = {k: v for k, v in GDAL_REMOTE.items() if k not in os.environ}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint and "AWS_S3_ENDPOINT" not in os.environ:
        parts = urlsplit(endpoint)
        config["AWS_S3_ENDPOINT"] = parts.netloc
        config.setdefault("AWS_HTTPS", "NO" if parts.scheme == "http" else "YES")
        if "AWS_VIRTUAL_HOSTING" not in os.environ:
            config["AWS_VIRTUAL_HOSTING"] = "FALSE"  # S3-compatible stores answer on a path, not a host name
    return config


@contextlib.contextmanager
def gdal_env() -> Iterator[None]:
    """GDAL configured for remote COGs in this thread (rasterio keeps options per thread)."""
    import rasterio

    with rasterio.Env(**gdal_config()):
        yield


def s3_endpoint() -> str | None:
    """The S3 endpoint URL boto3 should use: ``AWS_ENDPOINT_URL(_S3)``, else GDAL's
    ``AWS_S3_ENDPOINT`` (host:port, https unless ``AWS_HTTPS=NO``), else AWS itself (None)."""
    url = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if url:
        return url
    host = os.environ.get("AWS_S3_ENDPOINT")
    if host:
        scheme = "http" if os.environ.get("AWS_HTTPS", "YES").upper() in ("NO", "FALSE", "OFF") else "https"
        return host if "://" in host else f"{scheme}://{host}"
    return None


def s3_client():
    """A boto3 S3 client from the standard variables and profile files; unsigned when
    ``AWS_NO_SIGN_REQUEST=YES`` (public buckets); bounded timeouts and retries."""
    try:
        import boto3
        from botocore import UNSIGNED
        from botocore.config import Config
    except ImportError:
        raise SceneError("s3:// needs boto3: pip install 'stsun[remote]'") from None
    unsigned = os.environ.get("AWS_NO_SIGN_REQUEST", "").upper() in ("YES", "TRUE", "1")
    config = Config(connect_timeout=10, read_timeout=float(os.environ.get("GDAL_HTTP_TIMEOUT", HTTP_TIMEOUT_S)),
                    retries={"max_attempts": 4, "mode": "standard"},
                    s3={"addressing_style": "path" if s3_endpoint() else "auto"},
                    **({"signature_version": UNSIGNED} if unsigned else {}))
    return boto3.client("s3", endpoint_url=s3_endpoint(), config=config)


def split_s3(url: str) -> tuple[str, str]:
    """(bucket, key) of ``s3://bucket/key``."""
    parts = urlsplit(url)
    return parts.netloc, parts.path.lstrip("/")


def as_fetch_url(href: str) -> str:
    """The URL of a GDAL network path (``/vsis3/b/k`` -> ``s3://b/k``, ``/vsicurl/URL`` -> URL)."""
    if href.lower().startswith("/vsis3/"):
        return "s3://" + href[len("/vsis3/"):]
    if href.lower().startswith("/vsicurl/") and urlsplit(href[len("/vsicurl/"):]).scheme.lower() in ("http", "https"):
        return href[len("/vsicurl/"):]
    if href.lower().startswith("/vsi"):
        raise SceneError(f"{redact(href)}: only http(s):// and s3:// STAC Items can be fetched")
    return href


def _read_capped(read, href: str, timeout: float) -> str:
    """The text ``read(n)`` gives in chunks, within an overall deadline (a server that drips bytes
    would pass every per-read timeout) and ``MAX_ITEM_BYTES``."""
    deadline = time.monotonic() + 4 * timeout
    chunks, size = [], 0
    while chunk := read(64 << 10):
        size += len(chunk)
        if size > MAX_ITEM_BYTES:
            raise SceneError(f"{redact(href)}: over {MAX_ITEM_BYTES >> 20} MB, not a STAC Item")
        if time.monotonic() > deadline:
            raise SceneError(f"{redact(href)}: no complete answer within {4 * timeout:g} s")
        chunks.append(chunk)
    try:
        return b"".join(chunks).decode()
    except UnicodeDecodeError:
        raise SceneError(f"{redact(href)}: not text (not a STAC Item)") from None


def read_text(href: str) -> str:
    """The text at a URL (a STAC Item), fetched with a timeout per read and an overall deadline,
    at most ``MAX_ITEM_BYTES``; a failure is a SceneError in one line naming the URL (redacted)
    and the status."""
    href = as_fetch_url(href)
    scheme = urlsplit(href).scheme.lower()
    timeout = float(os.environ.get("GDAL_HTTP_TIMEOUT", HTTP_TIMEOUT_S))
    if scheme == "s3":
        from botocore.exceptions import BotoCoreError, ClientError

        bucket, key = split_s3(href)
        try:
            body = s3_client().get_object(Bucket=bucket, Key=key, **request_payer())["Body"]
            return _read_capped(body.read, href, timeout)
        except ClientError as err:
            status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "?")
            code = err.response.get("Error", {}).get("Code", "")
            raise SceneError(f"{redact(href)}: HTTP {status} {code}".rstrip()) from None
        except BotoCoreError as err:
            raise SceneError(f"{redact(href)}: {type(err).__name__} ({redact_text(str(err))})") from None
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(href, timeout=timeout) as response:
            # read1: one receive at a time, so the deadline is checked between them
            return _read_capped(response.read1, href, timeout)
    except urllib.error.HTTPError as err:
        raise SceneError(f"{redact(href)}: HTTP {err.code} {err.reason}") from None
    except (urllib.error.URLError, TimeoutError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise SceneError(f"{redact(href)}: no answer ({reason or type(err).__name__}, timeout {timeout:g} s)") from None


def request_payer() -> dict[str, str]:
    """boto3's argument for requester-pays buckets, when ``AWS_REQUEST_PAYER=requester``."""
    return {"RequestPayer": "requester"} if os.environ.get("AWS_REQUEST_PAYER", "").lower() == "requester" else {}


def redact_text(text: str) -> str:
    """Every URL in ``text`` redacted (GDAL's messages quote the URL they failed on)."""
    return re.sub(r"(?:https?|s3)://[^\s'\"]+", lambda m: redact(m.group(0)), text, flags=re.I)


__all__ = ["GDAL_REMOTE", "MAX_ITEM_BYTES", "as_fetch_url", "as_url", "gdal_config", "gdal_env", "gdal_path",
           "is_remote", "read_text", "redact", "redact_text", "request_payer", "s3_client", "s3_endpoint", "split_s3"]
