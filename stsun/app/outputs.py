"""Where maps go: a local path, or an object store (``s3://bucket/key.tif``), written safely.

A map for an object store is written locally first (a temporary directory), with its STAC Item
beside it, then uploaded: the map, its extra files, its Item, and predict-many's job record last
(the record is what resume trusts: it appears only once all the rest is there). An S3 object appears
only when its upload completes (a single PUT, or a multipart upload's completion), and a failed
upload aborts its multipart upload, so a failed or interrupted run leaves no object and no
parts behind; parts a killed run left under the same keys (uploads begun before this one, not a
duplicate attempt's live one) are aborted before the next upload.
The endpoint and credentials are boto3's own (``AWS_ENDPOINT_URL``, ``AWS_*``, profile files; see
``stsun.runtime.remote``). Nothing is ever written to a local folder named ``s3:``.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from stsun.errors import SceneError
from stsun.runtime.remote import as_url, is_remote, redact, s3_client, split_s3

MULTIPART_BYTES = 64 << 20  # larger maps are uploaded in parts of this size
CLOCK_SKEW = dt.timedelta(seconds=5)  # between this machine's clock and the store's ``Initiated``
# what may be written beside a map X.tif, in upload order: extras, its Item, the job record last
SIBLING_SUFFIXES = (".probs.tif", ".png", ".json", ".job.json")


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
    # a killed run's uploads, not a live duplicate's; what is left is not ours to abort on failure
    others = abort_parts(client, bucket, key, before=now() - CLOCK_SKEW)
    config = TransferConfig(multipart_threshold=MULTIPART_BYTES, multipart_chunksize=MULTIPART_BYTES,
                            max_concurrency=4)
    try:
        client.upload_file(str(path), bucket, key, Config=config)
    except (BotoCoreError, ClientError, S3UploadFailedError) as err:
        abort_parts(client, bucket, key, keep=others)
        raise _failure(err, url) from None
    except BaseException:  # interrupted (Ctrl-C, SIGTERM): s3transfer aborts its upload; make sure
        abort_parts(client, bucket, key, keep=others)
        raise


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def abort_parts(client, bucket: str, key: str, *, before: dt.datetime | None = None,
                keep: frozenset[str] = frozenset()) -> frozenset[str]:
    """Abort the unfinished multipart uploads of ``key`` but those in ``keep``, and when ``before``
    is given only those begun before it (a killed run's); the ids of those left. Best effort: a
    failure here never hides the error (or the interruption) that led to it."""
    from botocore.exceptions import BotoCoreError, ClientError

    left = set()
    with contextlib.suppress(BotoCoreError, ClientError):
        for up in client.list_multipart_uploads(Bucket=bucket, Prefix=key).get("Uploads", []):
            if up["Key"] != key:
                continue
            if up["UploadId"] in keep or (before and up.get("Initiated") and up["Initiated"] >= before):
                left.add(up["UploadId"])
            else:
                client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=up["UploadId"])
    return frozenset(left)


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


def base_name(name: str) -> str:
    """A map's name without its suffix (``x.TIFF`` -> ``x``), the stem its siblings share."""
    suffix = PurePosixPath(name).suffix
    return name[:-len(suffix)] if suffix else name


def siblings(local_map: Path) -> list[Path]:
    """The map and the files written beside it, by their exact names, in upload order: the map,
    ``X.probs.tif``, ``X.png``, its STAC Item ``X.json``, predict-many's record ``X.job.json``
    last (job ``a``'s siblings are never job ``a.b``'s files)."""
    base = base_name(local_map.name)
    return [local_map] + [p for p in (local_map.with_name(base + s) for s in SIBLING_SUFFIXES) if p.is_file()]


def publish(local_map: Path, target: str) -> list[str]:
    """Upload a finished map and its siblings to ``target`` (the map's URL; its siblings' keys
    share its base name: ``x.tiff`` -> ``x.json``); their URLs."""
    prefix, name = target.rsplit("/", 1)
    local_base = base_name(local_map.name)
    urls = []
    for path in siblings(local_map):
        url = target if path == local_map else join(prefix, base_name(name) + path.name[len(local_base):])
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
    if url.endswith("/") or PurePosixPath(url).suffix.lower() not in (".tif", ".tiff"):
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

    from .catalogue import check_item_path, write_item

    url = as_url(target) if is_store(target) else None
    with staged(target) as local:
        check_item_path(local)  # before any compute
        yield local
        inputs = [resolve_date(d, engine.profile) for d in dates]
        write_item(local, url.rsplit("/", 1)[-1] if url else local.name, inputs, engine, build_dir)


def local_dir(outdir: str | os.PathLike) -> tuple[Path, str | None]:
    """(the local folder maps are written in, the ``s3://`` prefix they are published to or None).
    A prefix's folder is a fixed one under the temporary directory, so every run of a host stages
    it in the same place (and predict-many's lock there holds); it is this user's own (mode 0700,
    checked), so another user cannot plant or read files in it."""
    if not is_store(outdir):
        return Path(outdir).resolve(), None
    import hashlib

    url = as_url(outdir).rstrip("/") + "/"
    mine = _private(Path(tempfile.gettempdir()) / f"stsun-outputs-{os.getuid()}")
    return _private(mine / hashlib.sha256(url.encode()).hexdigest()[:16]), url


def _private(folder: Path) -> Path:
    """``folder``, made if missing; refused unless it is a real directory of this user's that
    no one else can enter."""
    import stat

    with contextlib.suppress(FileExistsError):
        folder.mkdir(mode=0o700)
    info = folder.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise SceneError(f"{folder}: not a private folder of this user's (owner, mode or a link); "
                         f"remove it or set TMPDIR elsewhere")
    return folder


def publish_job(out: Path, store: str) -> None:
    """A predict-many job's map and its siblings (Item, then the record last) to the store, then
    removed here."""
    publish(out, join(store, out.name))
    for path in siblings(out):
        path.unlink(missing_ok=True)


def stored_output(store: str, job_id: str, fingerprint: str, extras: list[str]) -> dict | None:
    """The record of a job whose map, extras and Item are in the store and match the record (same
    fingerprint, the map's size as uploaded); None when the job must run. The record is uploaded
    last, so a record in the store means the rest went up before it."""
    import json

    try:
        done = json.loads(get_text(join(store, f"{job_id}.job.json")) or "null")
    except ValueError:
        return None
    if not isinstance(done, dict) or done.get("fingerprint") != fingerprint:
        return None
    stored = head(join(store, f"{job_id}.tif"))
    if stored is None or stored["ContentLength"] != done.get("size"):
        return None
    if any(head(join(store, name)) is None for name in [*extras, f"{job_id}.json"]):
        return None
    return done


def publish_catalogue(outdir: Path, store: str | None, job_ids: list[str]) -> None:
    """predict-many's ``catalogue.json`` (the results' ItemCollection) in OUTDIR, and with the
    report uploaded to the store when there is one."""
    from .catalogue import write_collection

    catalogue = write_collection(outdir, store, job_ids)
    if store:
        for path in (outdir / "report.json", catalogue):
            upload(path, join(store, path.name))


__all__ = ["MULTIPART_BYTES", "abort_parts", "base_name", "get_text", "head", "is_store", "join", "local_dir",
           "publish", "publish_catalogue", "publish_job", "scene_output", "stored_output", "siblings", "staged",
           "upload"]
