"""The alert a scheduled check posts: one short Slack-compatible ``{"text": ...}`` body
(Slack, Mattermost and Discord's /slack endpoint accept it).

The text names the checks that failed or warn, never a password: the details carry
none, and every password from the outputs is blanked again before posting. The webhook
URL is itself a secret, so no message here repeats it.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Sequence

from tools.verify.result import FAIL, PASS, WARN, Result

MAX_LINES = 12  # a chat message, not a log: the job's log has the rest


def check_url(url: str) -> None:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("the alert webhook must be an http:// or https:// URL")


def redact(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[secret]")
    return text


def alert_text(results: Sequence[Result], host: str, secrets: Iterable[str]) -> str | None:
    """The message, or None when every check passed (nothing to post)."""
    problems = sorted((r for r in results if r.status != PASS), key=lambda r: r.status != FAIL)
    if not problems:
        return None
    failed = sum(r.status == FAIL for r in problems)
    warned = sum(r.status == WARN for r in problems)
    lines = [f"dkim-relay verify on {host}: {failed} failed, {warned} warning(s)"]
    lines += [f"{r.status} {r.check}: {r.detail}" for r in problems[:MAX_LINES]]
    if len(problems) > MAX_LINES:
        lines.append(f"... and {len(problems) - MAX_LINES} more (see the job's log)")
    return redact("\n".join(lines), secrets)


def error_text(message: str) -> str:
    return f"dkim-relay verify could not run: {message}"


def post(url: str, text: str, timeout: float) -> str | None:
    """POST the body; None when the webhook took it, else why not (without the URL)."""
    body = json.dumps({"text": text}).encode()
    req = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "User-Agent": "dkim-relay-verify"},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            resp.read(4096)
    except urllib.error.HTTPError as exc:
        return f"the webhook answered HTTP {exc.code}"
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, TimeoutError):
            return f"the webhook did not answer within {timeout:g} s"
        return f"the webhook could not be reached ({_reason(exc.reason)})"
    except TimeoutError:
        return f"the webhook did not answer within {timeout:g} s"
    except OSError as exc:
        return f"the webhook could not be reached ({_reason(exc)})"
    return None


def _reason(reason: object) -> str:
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return type(reason).__name__ if isinstance(reason, BaseException) else str(reason)
