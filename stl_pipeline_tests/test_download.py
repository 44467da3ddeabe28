import hashlib
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from stl_pipeline.generate.dataset import signature
from stl_pipeline.images.decode import ImageLimits
from stl_pipeline.images.download import (
    CACHED,
    DOWNLOADED,
    FAILED,
    Downloader,
    Progress,
    parse_retry_after,
)
from stl_pipeline.images.policy import DownloadPolicy
from stl_pipeline.images.verify import verify_image
from stl_pipeline.storage import PART_SUFFIX
from stl_pipeline_tests.http_server import ImageServer, Reply
from stl_pipeline_tests.images import encoded, png_bomb

JPEG = encoded("JPEG")
HTML = {"Content-Type": "text/html"}


def sig(name: str) -> str:
    """A stable signature per name: the built-in hash() is salted per process, and
    two names sharing a signature would merge their manifest rows."""
    return signature(0, "test", zlib.crc32(name.encode()))


def policy(server: ImageServer, **overrides: object) -> DownloadPolicy:
    settings = {
        "url_template": server.url(),
        "allowed_hosts": frozenset({"127.0.0.1"}),
        "concurrency": 4,
        "read_timeout_s": 0.5,
        "max_attempts": 3,
        "max_bytes": 200_000,
        "max_pixels": 4_000_000,
    } | overrides
    return DownloadPolicy(**settings)


class SleepRecorder:
    """Records backoff waits instead of sleeping, keeping the test fast."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


SCRIPT: dict[str, tuple[list[Reply], str, int]] = {
    # name: (replies, expected status, expected requests)
    "ok": ([Reply(body=JPEG)], DOWNLOADED, 1),
    "png": ([Reply(body=encoded("PNG"), headers={"Content-Type": "image/png"})], DOWNLOADED, 1),
    "forbidden": ([Reply(403, b"no", HTML)], FAILED, 1),
    "missing": ([Reply(404, b"no", HTML)], FAILED, 1),
    "rate_limited": ([Reply(429, b"", {"Retry-After": "2"}), Reply(body=JPEG)], DOWNLOADED, 2),
    "flaky": ([Reply(500, b"oops", HTML), Reply(body=JPEG)], DOWNLOADED, 2),
    "down": ([Reply(503, b"down", HTML)], FAILED, 3),
    "slow": ([Reply(body=JPEG, delay_s=1.5)], FAILED, 3),
    "truncated": ([Reply(body=JPEG, truncate_to=len(JPEG) // 2)], FAILED, 3),
    "truncated_once": ([Reply(body=JPEG, truncate_to=100), Reply(body=JPEG)], DOWNLOADED, 2),
    "html": ([Reply(body=b"<html>hello</html>", headers=HTML)], FAILED, 1),
    "lying_type": ([Reply(body=b"<html>hello</html>")], FAILED, 1),
    "oversized": ([Reply(body=b"\xff\xd8\xff" + b"\0" * 300_000)], FAILED, 1),
    "oversized_chunked": ([Reply(body=b"\xff\xd8\xff" + b"\0" * 300_000, chunked=True)], FAILED, 1),
    "corrupt": ([Reply(body=JPEG[: len(JPEG) // 2])], FAILED, 1),
    "bomb": ([Reply(body=png_bomb(), headers={"Content-Type": "image/png"})], FAILED, 1),
}


@pytest.fixture
def scripted(tmp_path: Path):
    with ImageServer() as server:
        for name, (replies, _, _) in SCRIPT.items():
            server.routes[sig(name)] = replies
        server.routes[sig("target")] = [Reply(body=JPEG)]
        server.routes[sig("to_other_host")] = [
            Reply(302, b"", {"Location": server.url(f"/img/{sig('target')}.jpg", host="localhost")})
        ]
        server.routes[sig("to_same_host")] = [Reply(302, b"", {"Location": f"/img/{sig('target')}.jpg"})]
        assert len(server.routes) == len(SCRIPT) + 3, "two test names share a signature"
        yield server


def assert_store_consistent(store: Path, manifest) -> None:
    """Every row is a verified file on disk or a recorded failure; nothing partial."""
    assert not list(store.rglob(f"*{PART_SUFFIX}"))
    files = {p.stem: p for p in store.rglob("*") if p.is_file()}
    for row in manifest.itertuples():
        if row.status == FAILED:
            assert row.signature not in files, row
            assert row.error
        else:
            data = Path(row.path).read_bytes()
            assert hashlib.sha256(data).hexdigest() == row.sha256
            assert verify_image(data, ImageLimits(10**7)).width == row.width
    assert set(files) <= set(manifest["signature"])


def test_every_fault_ends_verified_or_recorded(scripted: ImageServer, tmp_path: Path) -> None:
    sleeps = SleepRecorder()
    names = [*SCRIPT, "to_other_host", "to_same_host"]
    manifest = Downloader(policy(scripted), tmp_path / "store", sleep=sleeps).run([sig(n) for n in names])

    by_name = {name: row for name, row in zip(names, manifest.to_dict("records"), strict=True)}
    for name, (_, status, requests) in SCRIPT.items():
        assert by_name[name]["status"] == status, (name, by_name[name]["error"])
        assert scripted.hits[sig(name)] == requests, name
    assert by_name["forbidden"]["http_status"] == 403
    assert by_name["missing"]["http_status"] == 404
    assert "gave up after 3 attempts" in by_name["down"]["error"]
    assert "timed out" in by_name["slow"]["error"]
    assert "cut short" in by_name["truncated"]["error"]
    assert "not an image" in by_name["html"]["error"]
    assert "not an image" in by_name["lying_type"]["error"]
    assert "cap" in by_name["oversized"]["error"]
    assert "cap" in by_name["oversized_chunked"]["error"]
    assert "corrupt" in by_name["corrupt"]["error"]
    assert "bomb" in by_name["bomb"]["error"] or "over the cap" in by_name["bomb"]["error"]
    assert "'localhost' is not in the allowed hosts" in by_name["to_other_host"]["error"]
    assert by_name["to_same_host"]["status"] == DOWNLOADED
    assert scripted.hits[sig("target")] == 1  # only through the allowed redirect
    assert 2.0 in sleeps.waits  # Retry-After honoured
    assert_store_consistent(tmp_path / "store", manifest)


def test_rerun_fetches_only_what_is_missing(scripted: ImageServer, tmp_path: Path) -> None:
    names = ["ok", "png", "flaky", "missing"]
    downloader = Downloader(policy(scripted), tmp_path / "store", sleep=SleepRecorder())
    downloader.run([sig(n) for n in names])
    before = dict(scripted.hits)
    again = downloader.run([sig(n) for n in names])
    assert list(again["status"]) == [CACHED, CACHED, CACHED, FAILED]
    assert scripted.hits[sig("ok")] == before[sig("ok")]
    assert scripted.hits[sig("missing")] == before[sig("missing")] + 1
    assert_store_consistent(tmp_path / "store", again)


def test_damaged_store_file_is_fetched_again(scripted: ImageServer, tmp_path: Path) -> None:
    downloader = Downloader(policy(scripted), tmp_path / "store")
    first = downloader.run([sig("ok")])
    Path(first.loc[0, "path"]).write_bytes(b"garbage")
    second = downloader.run([sig("ok")])
    assert second.loc[0, "status"] == DOWNLOADED
    assert scripted.hits[sig("ok")] == 2


def test_hostile_ids_never_become_paths(scripted: ImageServer, tmp_path: Path) -> None:
    hostile = ["../../etc/passwd", "A" * 32, "abc", "0" * 31 + "/", "%2e%2e%2fetc"]
    manifest = Downloader(policy(scripted), tmp_path / "store").run(hostile)
    assert set(manifest["status"]) == {FAILED}
    assert manifest["error"].str.contains("invalid signature").all()
    assert sum(scripted.hits.values()) == 0
    assert not (tmp_path / "store").exists() or not any((tmp_path / "store").iterdir())


def test_retry_after_longer_than_the_cap_is_a_recorded_failure(scripted: ImageServer, tmp_path: Path) -> None:
    scripted.routes[sig("later")] = [Reply(429, b"", {"Retry-After": "3600"})]
    manifest = Downloader(policy(scripted, backoff_max_s=5), tmp_path / "store").run([sig("later")])
    assert manifest.loc[0, "status"] == FAILED
    assert "rerun later" in manifest.loc[0, "error"]
    assert scripted.hits[sig("later")] == 1


def test_progress_is_reported(scripted: ImageServer, tmp_path: Path) -> None:
    reports = []
    Downloader(policy(scripted), tmp_path / "store").run([sig("ok"), sig("png")], progress=reports.append)
    assert reports[-1].done == reports[-1].total == 2
    assert "images/s" in str(reports[-1])


def test_progress_before_the_first_image_has_no_eta() -> None:
    assert "ETA unknown" in str(Progress(done=0, total=10, failed=0, elapsed_s=5.0))
    assert "ETA 5s" in str(Progress(done=5, total=10, failed=0, elapsed_s=5.0))


def test_file_source(tmp_path: Path) -> None:
    source = tmp_path / "mirror"
    source.mkdir()
    (source / f"{sig('ok')}.jpg").write_bytes(JPEG)
    template = source.as_uri() + "/{signature}.jpg"
    manifest = Downloader(DownloadPolicy(template), tmp_path / "store").run([sig("ok"), sig("missing")])
    assert list(manifest["status"]) == [DOWNLOADED, FAILED]
    assert "no such file" in manifest.loc[1, "error"]


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("http://h/{id}.jpg", "must contain {signature}"),
        ("http://h/static.jpg", "must contain {signature}"),
        ("ftp://h/{signature}.jpg", "scheme must be"),
    ],
)
def test_bad_templates_are_refused(template: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DownloadPolicy(template)


def test_parse_retry_after() -> None:
    now = time.time()
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now + 30))
    assert 25 <= parse_retry_after(date, now=now) <= 31


def test_concurrent_runs_share_one_store(tmp_path: Path) -> None:
    """product_images and scene_images may run at once in dagster dev's executor."""
    signatures = [signature(2, "shared", i) for i in range(60)]
    with ImageServer() as server:
        for s in signatures:
            server.routes[s] = [Reply(body=JPEG, delay_s=0.01)]
        runs = [Downloader(policy(server), tmp_path / "store") for _ in range(2)]
        with ThreadPoolExecutor(2) as pool:
            manifests = list(pool.map(lambda d: d.run(signatures), runs))
    for manifest in manifests:
        assert set(manifest["status"]) <= {DOWNLOADED, CACHED}
        assert_store_consistent(tmp_path / "store", manifest)
