"""A bounded, resumable, defensive image downloader.

Every signature ends as exactly one manifest row: ``downloaded`` or ``cached``
(a verified file is in the store) or ``failed`` (with the reason). Bytes reach
the store only after they passed `verify_image`, through an atomic rename, so
a killed run leaves no partial file and a rerun fetches only what is missing.
"""

import email.utils
import hashlib
import os
import random
import stat
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin, urlsplit
from urllib.request import url2pathname

import pandas as pd
import requests

from stl_pipeline import __version__
from stl_pipeline.ids import image_url, is_signature
from stl_pipeline.images.decode import BadImageError
from stl_pipeline.images.policy import DownloadPolicy
from stl_pipeline.images.verify import EXTENSIONS, sniff, verify_image
from stl_pipeline.storage import atomic_write_bytes, remove_stale_parts

DOWNLOADED, CACHED, FAILED = "downloaded", "cached", "failed"
MANIFEST_COLUMNS = [
    "signature",
    "status",
    "error",
    "attempts",
    "http_status",
    "bytes",
    "width",
    "height",
    "sha256",
    "path",
]
_RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
_REDIRECT_STATUS = frozenset({301, 302, 303, 307, 308})
_CHUNK = 64 * 1024


class PermanentError(Exception):
    """Retrying cannot help (403, 404, not an image, too large, host not allowed)."""

    def __init__(self, message: str, http_status: int | None = None) -> None:
        super().__init__(message)
        self.http_status = http_status


class TransientError(Exception):
    """Retrying may help (timeouts, 429, 5xx, a body cut short)."""

    def __init__(
        self, message: str, http_status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.retry_after = retry_after


@dataclass(frozen=True)
class Progress:
    done: int
    total: int
    failed: int
    elapsed_s: float

    @property
    def rate(self) -> float:
        return self.done / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def __str__(self) -> str:
        eta = f"{(self.total - self.done) / self.rate:.0f}s" if self.rate else "unknown"
        return (
            f"{self.done}/{self.total} images ({self.done / max(1, self.total):.0%}), "
            f"{self.rate:.1f} images/s, ETA {eta}, {self.failed} failed"
        )


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def store_path(store: Path, signature: str, image_format: str) -> Path:
    """Where a verified image lives: sharded by its first two hex digits."""
    return Path(store) / signature[:2] / f"{signature}{EXTENSIONS[image_format]}"


class Downloader:
    def __init__(
        self, policy: DownloadPolicy, store: Path, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        self.policy = policy
        self.store = Path(store)
        self._sleep = sleep
        self._local = threading.local()

    def _session(self) -> requests.Session:
        # One session (and connection) per worker thread: requests.Session is not thread-safe.
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=1, max_retries=0)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            session.headers["User-Agent"] = f"stl-pipeline/{__version__}"
            self._local.session = session
        return session

    def _check_host(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise PermanentError(
                f"refusing {parts.scheme or 'schemeless'} URL {url}: only http(s) is fetched"
            )
        host = (parts.hostname or "").lower()
        if host not in self.policy.allowed_hosts:
            raise PermanentError(
                f"host {host!r} is not in the allowed hosts {sorted(self.policy.allowed_hosts)} "
                "(set STL_ALLOWED_HOSTS to allow it)"
            )

    def _read_body(self, response: requests.Response, deadline: float) -> bytes:
        status = response.status_code
        content_type = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if (
            content_type
            and not content_type.startswith("image/")
            and content_type != "application/octet-stream"
        ):
            raise PermanentError(f"content type {content_type!r} is not an image", status)
        length = response.headers.get("Content-Length", "")
        declared = int(length) if length.isdigit() else None
        if declared is not None and declared > self.policy.max_bytes:
            raise PermanentError(
                f"body of {declared:,} bytes is over the cap of {self.policy.max_bytes:,}", status
            )
        body = bytearray()
        try:
            for chunk in response.iter_content(_CHUNK):
                body += chunk
                if len(body) > self.policy.max_bytes:
                    raise PermanentError(f"body is over the cap of {self.policy.max_bytes:,} bytes", status)
                if time.monotonic() > deadline:
                    raise TransientError(f"transfer took over {self.policy.total_timeout_s:g}s", status)
        except requests.RequestException as exc:
            raise TransientError(
                f"body cut short after {len(body):,} bytes ({type(exc).__name__})", status
            ) from exc
        if declared is not None and len(body) != declared:
            raise TransientError(f"body cut short: {len(body):,} of {declared:,} bytes", status)
        return bytes(body)

    def _fetch_http(self, url: str) -> tuple[bytes, int]:
        deadline = time.monotonic() + self.policy.total_timeout_s
        timeout = (self.policy.connect_timeout_s, self.policy.read_timeout_s)
        for _ in range(self.policy.max_redirects + 1):
            self._check_host(url)
            try:
                response = self._session().get(url, stream=True, timeout=timeout, allow_redirects=False)
            except requests.Timeout as exc:
                raise TransientError(f"timed out ({type(exc).__name__})") from exc
            except requests.ConnectionError as exc:
                raise TransientError(f"connection failed ({type(exc).__name__})") from exc
            except requests.RequestException as exc:
                raise PermanentError(f"bad request for {url}: {exc}") from exc
            with response:
                status = response.status_code
                if status in _REDIRECT_STATUS and response.headers.get("Location"):
                    url = urljoin(url, response.headers["Location"])
                    continue
                if status == 200:
                    return self._read_body(response, deadline), status
                if status in _RETRYABLE_STATUS:
                    retry_after = parse_retry_after(response.headers.get("Retry-After"))
                    raise TransientError(f"HTTP {status}", status, retry_after)
                raise PermanentError(f"HTTP {status}", status)
        raise PermanentError(f"more than {self.policy.max_redirects} redirects")

    def _fetch_file(self, url: str) -> bytes:
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            raise PermanentError(f"file URL {url} names a remote host")
        path = Path(url2pathname(parts.path))
        try:
            # Non-blocking, so that a FIFO cannot hang the open; then regular files only: a
            # device or a FIFO has no size to cap and may never end.
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        except FileNotFoundError as exc:
            raise PermanentError(f"no such file {path}") from exc
        except OSError as exc:
            raise TransientError(f"cannot open {path}: {exc.strerror}") from exc
        with os.fdopen(fd, "rb") as file:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise PermanentError(f"{path} is not a regular file")
            deadline = time.monotonic() + self.policy.total_timeout_s
            chunks, size = [], 0
            try:
                while chunk := file.read(_CHUNK):
                    chunks.append(chunk)
                    size += len(chunk)
                    if size > self.policy.max_bytes:
                        raise PermanentError(f"{path} is over the cap of {self.policy.max_bytes:,} bytes")
                    if time.monotonic() > deadline:
                        raise TransientError(f"reading {path} took over {self.policy.total_timeout_s:g}s")
            except OSError as exc:
                raise TransientError(f"cannot read {path}: {exc.strerror}") from exc
        return b"".join(chunks)

    def _cached(self, signature: str) -> dict | None:
        """A verified earlier download, so reruns fetch only what is missing."""
        for image_format in EXTENSIONS:
            path = store_path(self.store, signature, image_format)
            if not path.is_file():
                continue
            data = path.read_bytes()
            try:
                if sniff(data[:16]) != image_format:
                    raise BadImageError("content does not match its extension")
                # The check a download passes, whole: a header survives truncation.
                info = verify_image(data, self.policy.limits)
            except BadImageError:
                path.unlink(missing_ok=True)  # tampered or damaged: fetch it again
                continue
            return _row(signature, CACHED, None, 0, None, data, info.width, info.height, path)
        return None

    def _backoff(self, attempt: int, retry_after: float | None) -> float | None:
        if retry_after is not None:
            return retry_after if retry_after <= self.policy.backoff_max_s else None
        delay = min(self.policy.backoff_max_s, self.policy.backoff_base_s * 2 ** (attempt - 1))
        return delay * random.uniform(0.5, 1.0)  # jitter spreads out synchronized retries

    def fetch_one(self, signature: str) -> dict:
        """Fetch, verify and store one image; never raises, always returns a manifest row."""
        if not is_signature(signature):
            return _row(signature, FAILED, "invalid signature: not 32 lowercase hex characters", 0)
        try:
            cached = self._cached(signature)
            if cached:
                return cached
            url = image_url(self.policy.url_template, signature)
            is_file = urlsplit(url).scheme == "file"
            attempt, http_status = 0, None
            while True:
                attempt += 1
                try:
                    data, http_status = (self._fetch_file(url), None) if is_file else self._fetch_http(url)
                    info = verify_image(data, self.policy.limits)
                    path = store_path(self.store, signature, info.format)
                    atomic_write_bytes(path, data)
                    return _row(
                        signature, DOWNLOADED, None, attempt, http_status, data, info.width, info.height, path
                    )
                except (PermanentError, BadImageError) as exc:
                    return _row(
                        signature, FAILED, str(exc), attempt, getattr(exc, "http_status", http_status)
                    )
                except TransientError as exc:
                    wait_s = self._backoff(attempt, exc.retry_after)
                    if attempt >= self.policy.max_attempts or wait_s is None:
                        reason = f"gave up after {attempt} attempts: {exc}"
                        if wait_s is None:
                            reason += (
                                f" (Retry-After {exc.retry_after:g}s is over backoff_max_s; rerun later)"
                            )
                        return _row(signature, FAILED, reason, attempt, exc.http_status)
                    self._sleep(wait_s)
        except Exception as exc:  # a bug or a disk error: record it, never lose the row
            return _row(signature, FAILED, f"unexpected {type(exc).__name__}: {exc}", 0)

    def run(
        self,
        signatures: Iterable[str],
        progress: Callable[[Progress], None] | None = None,
        progress_every_s: float = 5.0,
    ) -> pd.DataFrame:
        """Fetch every distinct signature; return the manifest in input order."""
        remove_stale_parts(self.store)
        wanted = list(dict.fromkeys(signatures))
        rows: dict[str, dict] = {}
        failed = 0
        start = last_report = time.monotonic()
        queue = iter(wanted)
        in_flight_cap = 4 * self.policy.concurrency
        with ThreadPoolExecutor(self.policy.concurrency, thread_name_prefix="stl-download") as pool:
            pending: set = set()

            def top_up() -> None:
                while len(pending) < in_flight_cap and (signature := next(queue, None)) is not None:
                    pending.add(pool.submit(self.fetch_one, signature))

            top_up()
            while pending:
                done, pending = wait(pending, timeout=progress_every_s, return_when=FIRST_COMPLETED)
                for future in done:
                    row = future.result()
                    rows[row["signature"]] = row
                    failed += row["status"] == FAILED
                top_up()
                now = time.monotonic()
                if progress and (now - last_report >= progress_every_s or not pending):
                    progress(Progress(len(rows), len(wanted), failed, now - start))
                    last_report = now
        return manifest_frame([rows[s] for s in wanted])


def _row(
    signature: str,
    status: str,
    error: str | None,
    attempts: int,
    http_status: int | None = None,
    data: bytes | None = None,
    width: int | None = None,
    height: int | None = None,
    path: Path | None = None,
) -> dict:
    return {
        "signature": signature,
        "status": status,
        "error": error,
        "attempts": attempts,
        "http_status": http_status,
        "bytes": None if data is None else len(data),
        "width": width,
        "height": height,
        "sha256": None if data is None else hashlib.sha256(data).hexdigest(),
        "path": None if path is None else str(path),
    }


def manifest_frame(rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    return frame.astype(
        {
            "signature": "string",
            "status": "string",
            "error": "string",
            "attempts": "int64",
            "http_status": "Int64",
            "bytes": "Int64",
            "width": "Int64",
            "height": "Int64",
            "sha256": "string",
            "path": "string",
        }
    )
