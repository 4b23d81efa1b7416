"""Request checks and user messages (webapp.checks)."""

import pytest

from issp import IsspError
from webapp import checks


def test_user_messages_hold_no_server_paths_and_are_bounded():
    message = checks.user_message(
        "/srv/zoo/edsr-tiny_x2_dense.safetensors does not match; see /tmp/ab/c.png: bad"
    )
    assert message == "edsr-tiny_x2_dense.safetensors does not match; see c.png: bad"
    kept = "scale x2/x4, ../up, https://host/a/b.png and 1/2"
    assert checks.user_message(kept) == kept
    assert len(checks.user_message("x" * 10**6)) == checks.MESSAGE_CHARS
    assert checks.echo("y" * 10**6) == "'" + "y" * 76 + "..."


def test_scale_takes_the_numeric_strings_the_api_schema_shows():
    assert checks.check_scale("2") == 2 and checks.check_scale(" 4 ") == 4
    assert checks.check_scale(2) == 2
    for bad in (2.5, "2.0", "x2", "5", None):
        with pytest.raises(IsspError, match="scale must be one of"):
            checks.check_scale(bad)


def test_ratio_refuses_what_is_no_ratio_with_a_message_not_a_crash():
    assert checks.check_ratio("0.9") == 0.9 and checks.check_ratio(0) == 0.0
    # 10**400: a JSON integer past float's range raises OverflowError in float().
    for bad in (10**400, "ninety", None, 1.0, -0.1, float("nan")):
        with pytest.raises(IsspError, match="ratio"):
            checks.check_ratio(bad)
