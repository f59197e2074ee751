"""Reading Ollama's error replies: its own message, or one short line of whatever came."""

from __future__ import annotations

from fleetd.core.ollama import error_message


def test_ollama_error_text_is_returned_as_is() -> None:
    assert error_message(b'{"error":"pull model manifest: file does not exist"}') == (
        "pull model manifest: file does not exist"
    )
    assert (
        error_message(b'{"error":{"message":"model \\"x\\" not found"}}') == 'model "x" not found'
    )


def test_a_non_ollama_reply_becomes_one_short_line() -> None:
    html = b"<!DOCTYPE HTML>\n<html>\n  <head>\n<title>Error</title>\n" + b"x" * 1000
    msg = error_message(html)
    assert "\n" not in msg
    assert msg.startswith("<!DOCTYPE HTML> <html> <head>")
    assert len(msg) <= 201
    assert error_message(b"") == "empty reply"
