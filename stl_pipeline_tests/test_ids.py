import pytest

from stl_pipeline.ids import InvalidSignatureError, check_signature, check_url_template, image_url, shard

GOOD = "0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize(
    "value",
    [
        "../../etc/passwd",
        "../" + GOOD[3:],
        GOOD.upper(),
        GOOD[:-1],
        GOOD + "0",
        GOOD[:-1] + "g",
        GOOD[:-1] + "\n",
        " " + GOOD[1:],
        "",
        None,
        12345,
    ],
)
def test_hostile_signatures_are_rejected(value: object) -> None:
    with pytest.raises(InvalidSignatureError, match="not 32 lowercase hex"):
        check_signature(value)


def test_shard_and_url_follow_the_cdn_layout() -> None:
    assert shard(GOOD) == "01/23/45"
    template = "http://i.pinimg.com/400x/{shard}/{signature}.jpg"
    assert image_url(template, GOOD) == f"http://i.pinimg.com/400x/01/23/45/{GOOD}.jpg"


def test_url_template_rejects_unknown_fields() -> None:
    with pytest.raises(ValueError, match="must contain"):
        check_url_template("http://h/{signature}/{user}.jpg")
    with pytest.raises(ValueError, match="malformed"):
        check_url_template("http://h/{signature.jpg")
