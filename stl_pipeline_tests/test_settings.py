from pathlib import Path

import pytest

from stl_pipeline.settings import PINTEREST_TEMPLATE, load_settings


def test_demo_defaults(tmp_path: Path) -> None:
    settings = load_settings({"STL_DATA_DIR": str(tmp_path)})
    assert settings.demo
    assert settings.pairs_path == tmp_path / "demo" / "fashion.json"
    assert settings.image_url_template == (tmp_path / "demo" / "images").as_uri() + "/{signature}.jpg"
    assert settings.allowed_hosts == ()


def test_data_dir_defaults_to_the_working_directory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    assert load_settings({}).data_dir == tmp_path / ".stl_data"


def test_real_files_default_to_pinterest_and_its_host(tmp_path: Path) -> None:
    settings = load_settings({"STL_PAIRS_PATH": "a.json", "STL_CATEGORIES_PATH": "b.json"})
    assert not settings.demo
    assert settings.image_url_template == PINTEREST_TEMPLATE
    assert settings.allowed_hosts == ("i.pinimg.com",)


def test_mirror_and_hosts_are_configurable() -> None:
    settings = load_settings(
        {
            "STL_PAIRS_PATH": "a.json",
            "STL_CATEGORIES_PATH": "b.json",
            "STL_IMAGE_URL_TEMPLATE": "https://Mirror.example.org/stl/{shard}/{signature}.jpg",
        }
    )
    assert settings.allowed_hosts == ("mirror.example.org",)
    hosts = load_settings({"STL_ALLOWED_HOSTS": "a.example, B.example ,"}).allowed_hosts
    assert hosts == ("a.example", "b.example")


def test_personalized_files_default_to_the_generated_purchases(tmp_path: Path) -> None:
    settings = load_settings({"STL_DATA_DIR": str(tmp_path)})
    assert settings.hm_demo and settings.hm_paths[0] == tmp_path / "demo_hm" / "transactions_train.csv"
    given = {"HM_TRANSACTIONS_PATH": "t.csv", "HM_ARTICLES_PATH": "a.csv", "HM_CUSTOMERS_PATH": "c.csv"}
    settings = load_settings(given)
    assert not settings.hm_demo and [p.name for p in settings.hm_paths] == ["t.csv", "a.csv", "c.csv"]


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"STL_PAIRS_PATH": "a.json"}, "set both"),
        ({"STL_CATEGORIES_PATH": "b.json"}, "set both"),
        ({"STL_IMAGE_URL_TEMPLATE": "http://x/{id}"}, "must contain"),
        ({"HM_TRANSACTIONS_PATH": "t.csv"}, "missing: HM_ARTICLES_PATH, HM_CUSTOMERS_PATH"),
        ({"HM_ARTICLES_PATH": "a.csv", "HM_CUSTOMERS_PATH": "c.csv"}, "missing: HM_TRANSACTIONS_PATH"),
    ],
)
def test_inconsistent_settings_fail_clearly(environ: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_settings(environ)
