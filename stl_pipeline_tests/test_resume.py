import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from stl_pipeline.generate.dataset import signature
from stl_pipeline.images.decode import ImageLimits
from stl_pipeline.images.download import CACHED, DOWNLOADED, Downloader
from stl_pipeline.images.policy import DownloadPolicy
from stl_pipeline.images.verify import verify_image
from stl_pipeline.storage import PART_SUFFIX
from stl_pipeline_tests.http_server import ImageServer, Reply
from stl_pipeline_tests.images import encoded

CHILD = """
import sys
from stl_pipeline.images.download import Downloader
from stl_pipeline.images.policy import DownloadPolicy
template, store, *signatures = sys.argv[1:]
policy = DownloadPolicy(template, frozenset({"127.0.0.1"}), concurrency=4)
Downloader(policy, store).run(signatures)
"""


def test_killed_run_resumes_without_refetching(tmp_path: Path) -> None:
    store = tmp_path / "store"
    signatures = [signature(1, "resume", i) for i in range(200)]
    with ImageServer() as server:
        for i, s in enumerate(signatures):
            server.routes[s] = [Reply(body=encoded(colour=(i, 50, 100)), delay_s=0.03)]
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, server.url(), str(store), *signatures],
            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
        )
        deadline = time.monotonic() + 60
        while len(list(store.rglob("*.jpg"))) < 40:
            assert child.poll() is None, "the download finished before it could be interrupted"
            assert time.monotonic() < deadline
            time.sleep(0.02)
        child.send_signal(signal.SIGKILL)
        child.wait()

        survivors = sorted(store.rglob("*.jpg"))
        assert 40 <= len(survivors) < len(signatures)
        for path in survivors:  # whatever reached its final name is a whole, valid image
            verify_image(path.read_bytes(), ImageLimits(10**6))
        hits_before = dict(server.hits)

        policy = DownloadPolicy(server.url(), frozenset({"127.0.0.1"}), concurrency=4)
        manifest = Downloader(policy, store).run(signatures)

    assert set(manifest["status"]) <= {DOWNLOADED, CACHED}
    assert (manifest["status"] == CACHED).sum() == len(survivors)
    for path in survivors:
        assert server.hits[path.stem] == hits_before[path.stem] == 1
    assert not list(store.rglob(f"*{PART_SUFFIX}"))
    assert len(list(store.rglob("*.jpg"))) == len(signatures)
