"""Download throughput from a loopback server in another process.

Compares the pipeline's downloader (verification, atomic writes, retries on)
with a bare threaded ``requests`` loop of the same concurrency that only saves
bytes, on the same generated images, and a rerun in which every file is cached.

    .venv/bin/python benchmarks/download.py [--images 5000] [--concurrency 16]
"""

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from stl_pipeline.generate import GeneratorConfig, generate_dataset
from stl_pipeline.images.download import CACHED, DOWNLOADED, Downloader
from stl_pipeline.images.policy import DownloadPolicy


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def bare_loop(urls: list[str], out: Path, concurrency: int) -> None:
    session = requests.Session()
    adapter = requests.adapters.HTTPAdapter(pool_maxsize=concurrency)
    session.mount("http://", adapter)

    def fetch(url: str) -> None:
        response = session.get(url, timeout=15)
        response.raise_for_status()
        (out / url.rsplit("/", 1)[-1]).write_bytes(response.content)

    out.mkdir(parents=True)
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(fetch, urls))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[8, 16])
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="stl-bench-download-"))
    try:
        scenes = max(1, args.images // 5)
        data = work / "data"
        generate_dataset(GeneratorConfig(products=args.images - scenes, scenes=scenes, seed=11), data)
        signatures = sorted(p.stem for p in (data / "images").iterdir())
        megabytes = sum(p.stat().st_size for p in (data / "images").iterdir()) / 1e6

        port = free_port()
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "http.server",
                str(port),
                "--bind",
                "127.0.0.1",
                "--directory",
                str(data / "images"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    requests.get(f"http://127.0.0.1:{port}/", timeout=1)
                    break
                except requests.ConnectionError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            template = f"http://127.0.0.1:{port}/{{signature}}.jpg"
            rows = []

            start = time.perf_counter()
            for concurrency in args.concurrency:
                start = time.perf_counter()
                urls = [template.format(signature=s) for s in signatures]
                bare_loop(urls, work / f"bare-{concurrency}", concurrency)
                bare = time.perf_counter() - start
                rows.append(("bare requests loop (no checks)", concurrency, bare, bare))

                policy = DownloadPolicy(
                    template, frozenset({"127.0.0.1"}), concurrency=concurrency, max_attempts=4
                )
                downloader = Downloader(policy, work / f"store-{concurrency}")
                start = time.perf_counter()
                manifest = downloader.run(signatures)
                seconds = time.perf_counter() - start
                assert (manifest["status"] == DOWNLOADED).all(), manifest["error"].value_counts()
                rows.append(("stl-pipeline downloader", concurrency, seconds, bare))

                start = time.perf_counter()
                manifest = downloader.run(signatures)
                rerun = time.perf_counter() - start
                assert (manifest["status"] == CACHED).all()
                rows.append(("stl-pipeline rerun (all cached)", concurrency, rerun, bare))
        finally:
            server.terminate()
            server.wait()

        n = len(signatures)
        print(f"{n} images, {megabytes:.1f} MB, loopback server in another process, retries on (4 attempts)")
        print(f"| {'method':<32} | {'threads':>7} | {'seconds':>7} | {'images/s':>8} | {'vs bare':>7} |")
        print(f"|{'-' * 34}|{'-' * 9}|{'-' * 9}|{'-' * 10}|{'-' * 9}|")
        for name, concurrency, secs, bare in rows:
            print(f"| {name:<32} | {concurrency:>7} | {secs:7.2f} | {n / secs:8.1f} | {bare / secs:7.2f} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
