"""Request checks and user messages (webapp.checks)."""

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
