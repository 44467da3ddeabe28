import os
import socket
from pathlib import Path

import pytest

from stl_pipeline.generate import GeneratorConfig, generate_dataset
from stl_pipeline.personalized.generate import HmConfig, generate_hm
from stl_pipeline_tests.lineage import Trained, train_everything

# A small dataset most tests share: every (style, category) group has a product.
# Dense: every scene annotates 2-5 garments, so plumbing tests see context tokens everywhere.
SMALL = GeneratorConfig(products=120, scenes=60, shape="dense", styles=6, seed=7)
# Its H&M-format counterpart, for the personalized group's tests.
HM_SMALL = HmConfig(customers=400, articles=120, purchases=8_000, days=70, seed=3)


@pytest.fixture(autouse=True)
def isolated_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads the developer's STL_* settings or writes into their data dir."""
    for name in list(os.environ):
        if name.startswith(("STL_", "HM_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("STL_DATA_DIR", str(tmp_path / "stl_data"))


LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests talk to servers they start on this machine, never to the internet."""
    resolve = socket.getaddrinfo

    def guarded(host: object, *args: object, **kwargs: object) -> list:
        name = host.decode() if isinstance(host, bytes) else host
        if name is not None and name not in LOOPBACK:
            raise socket.gaierror(f"tests may only reach loopback hosts, not {name!r}")
        return resolve(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", guarded)


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("generated") / "small"
    generate_dataset(SMALL, out)
    return out


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """The whole lineage with default knobs on a fresh generated dataset (about 5 minutes)."""
    return train_everything(tmp_path_factory.mktemp("trained"))


@pytest.fixture(scope="session")
def hm_small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("hm") / "small"
    generate_hm(HM_SMALL, folder)
    return folder
