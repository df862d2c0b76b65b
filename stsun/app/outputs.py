"""Where maps go: a local path, or an object store (``s3://bucket/key.tif``), written safely.

A map for an object store is written locally first (a temporary directory), with its STAC Item
beside it, then uploaded: the map, its extra files, and the Item last. An S3 object appears
only when its upload completes (a single PUT, or a multipart upload's completion), and a failed
upload aborts its multipart upload, so a failed or interrupted run leaves no object and no
parts behind; parts a killed run left under the same keys are aborted before the next upload.
The endpoint and credentials are boto3's own (``AWS_ENDPOINT_URL``, ``AWS_*``, profile files; see
``stsun.runtime.remote``). Nothing is ever written to a local folder named ``s3:``.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from stsun.errors import SceneError
from stsun.runtime.remote import as_url, is_remote, redact, s3_client, split_s3

MULTIPART_BYTES = 64 << 20  # larger maps are uploaded in parts of this size


def is_store(target: str | os.PathLike) -> bool:
    """Whether ``target`` names an object store location (``s3://``)."""
    return is_remote(target) and as_url(target).lower().startswith("s3://")


def join(prefix: str, name: str) -> str:
    """``name`` under an ``s3://bucket/prefix/`` (or a local folder)."""
    return prefix.rstrip("/") + "/" + name if is_store(prefix) else str(Path(prefix) / name)


def _failure(err: Exception, url: str) -> SceneError:
    response = getattr(err, "response", None) or {}
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    code = response.get("Error", {}).get("Code", "")
    detail = f"HTTP {status} {code}".strip() if status else f"{type(err).__name__}: {err}"
    return SceneError(f"uploading to {redact(url)} failed: {detail}")


def upload(path: Path, url: str) -> None:
    """``path`` to ``s3://bucket/key``: whole or not at all (a failed multipart upload is aborted)."""
    from boto3.exceptions import S3UploadFailedError
    from boto3.s3.transfer import TransferConfig
    from botocore.exceptions import BotoCoreError, ClientError

    client = s3_client()
    bucket, key = split_s3(url)
    abort_parts(client, bucket, key)
    config = TransferConfig(multipart_threshold=MULTIPART_BYTES, multipart_chunksize=MULTIPART_BYTES,
                            max_concurrency=4)
    try:
        client.upload_file(str(path), bucket, key, Config=config)
    except (BotoCoreError, ClientError, S3UploadFailedError) as err:
        abort_parts(client, bucket, key)
        raise _failure(err, url) from None
    except BaseException:  # interrupted (Ctrl-C, SIGTERM): s3transfer aborts its upload; make sure
        abort_parts(client, bucket, key)
        raise


def abort_parts(client, bucket: str, key: str) -> None:
    """Abort the unfinished multipart uploads of ``key`` (a killed run's)."""
    from botocore.exceptions import ClientError

    with contextlib.suppress(ClientError):
        for up in client.list_multipart_uploads(Bucket=bucket, Prefix=key).get("Uploads", []):
            if up["Key"] == key:
                client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=up["UploadId"])


def head(url: str) -> dict | None:
    """The object's metadata (``ContentLength``, ``ETag``), None when there is none."""
    from botocore.exceptions import ClientError

    bucket, key = split_s3(url)
    try:
        return s3_client().head_object(Bucket=bucket, Key=key)
    except ClientError as err:
        if err.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
            return None
        raise _failure(err, url) from None


def get_text(url: str) -> str | None:
    """The object's text, None when there is none."""
    from botocore.exceptions import ClientError

    bucket, key = split_s3(url)
    try:
        return s3_client().get_object(Bucket=bucket, Key=key)["Body"].read().decode()
    except ClientError as err:
        if err.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
            return None
        raise _failure(err, url) from None


def siblings(local_map: Path) -> list[Path]:
    """The files written beside a map (``X.tif`` -> ``X.probs.tif``, ``X.png``, ``X.job.json``),
    the map first and its STAC Item (``X.json``) last: an Item in the store means its map is complete."""
    stem = local_map.name.removesuffix(".tif")
    others = sorted(p for p in local_map.parent.glob(f"{stem}.*") if p.is_file() and not p.name.startswith(".")
                    and p not in (local_map, local_map.with_suffix(".json")))
    item = local_map.with_suffix(".json")
    return [local_map, *others] + ([item] if item.is_file() else [])


def publish(local_map: Path, target: str) -> list[str]:
    """Upload a finished map and its siblings to ``target`` (the map's URL); their URLs."""
    prefix = target.rsplit("/", 1)[0]
    urls = []
    for path in siblings(local_map):
        url = join(prefix, target.rsplit("/", 1)[1].removesuffix(".tif") + path.name[len(local_map.stem):])
        upload(path, url)
        urls.append(url)
    return urls


@contextlib.contextmanager
def staged(target: str | os.PathLike) -> Iterator[Path]:
    """A local path to write the map for ``target`` at. A local target is that path; an ``s3://``
    one is a file in a temporary directory, uploaded with its siblings when the block succeeds
    and never when it fails."""
    if not is_store(target):
        if is_remote(target):
            raise SceneError(f"output {redact(as_url(target))}: only local paths and s3:// can be written")
        yield Path(target)
        return
    url = as_url(target)
    if url.endswith("/") or not url.lower().endswith((".tif", ".tiff")):
        raise SceneError(f"output {redact(url)}: give the map's key, ending in .tif (s3://bucket/path/map.tif)")
    with tempfile.TemporaryDirectory(prefix="stsun-upload-") as work:
        local = Path(work) / "map.tif"
        yield local
        publish(local, url)


@contextlib.contextmanager
def scene_output(target: str | os.PathLike, dates: list, engine, build_dir: str | os.PathLike) -> Iterator[Path]:
    """``staged``, and the map's STAC Item (``stsun.app.catalogue``) written beside it when the
    block succeeds, before any upload: ``stsun predict``'s output."""
    from stsun.runtime.scene_inputs import resolve_date

    from .catalogue import write_item

    url = as_url(target) if is_store(target) else None
    with staged(target) as local:
        yield local
        inputs = [resolve_date(d, engine.profile) for d in dates]
        write_item(local, url.rsplit("/", 1)[-1] if url else local.name, inputs, engine, build_dir)


__all__ = ["MULTIPART_BYTES", "abort_parts", "get_text", "head", "is_store", "join", "publish", "scene_output", "siblings", "staged",
           "upload"]
