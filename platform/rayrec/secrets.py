"""Secrets out of every message and log line: passwords in URLs (``user:password@`` and
``?password=…``), bearer tokens, and any value registered with :func:`register`.

:func:`mask` rewrites one string; :func:`install` makes every log record of this process go through
it (a log record factory, so records of every logger and handler are covered, tracebacks included).
The serving app and the jobs install it at start-up; store messages use ``rayrec.store.base.mask_url``,
which masks the same things in a URL.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any

__all__ = ["MASK", "SECRET_PARAMS", "mask", "register", "install"]

MASK = "***"
#: query-string and ``key=value`` names whose values are secrets (case-insensitive)
SECRET_PARAMS = ("password", "passwd", "pwd", "pass", "token", "secret", "api_key", "apikey", "access_key",
                 "secret_key", "auth", "credentials")  # fmt: skip

_URL_AUTH = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^@/\s]+)@")
_PARAM = re.compile(r"(?P<key>(?<![A-Za-z0-9_])(?:" + "|".join(SECRET_PARAMS) + r"))(?P<sep>\s*[=:]\s*)"
                    r"(?P<q>['\"]?)(?P<value>(?!\*\*\*)[^&\s'\",;)}\]]+)", re.IGNORECASE)  # fmt: skip
# a credential has a digit or a symbol: "Token authentication" is prose, "Bearer 3xY-…" is not
_BEARER = re.compile(r"(?P<kind>\b(?:Bearer|Basic|Token)\s+)(?P<value>(?!\*\*\*)(?=[A-Za-z]*[0-9._~+/=\-])[A-Za-z0-9._~+/=\-]{4,})",
                     re.IGNORECASE)  # fmt: skip

_lock = threading.Lock()
_known: set[str] = set()
_installed = False


def register(secret: str | None) -> None:
    """Mask this exact value wherever it appears from now on (a configured API token, say)."""
    if secret and len(secret) >= 4:
        with _lock:
            _known.add(secret)


def mask(text: str) -> str:
    """``text`` with every secret replaced by ``***``."""
    if not text:
        return text
    for secret in tuple(_known):
        if secret in text:
            text = text.replace(secret, MASK)
    text = _URL_AUTH.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)
    text = _BEARER.sub(lambda m: f"{m['kind']}{MASK}", text)
    return _PARAM.sub(lambda m: f"{m['key']}{m['sep']}{m['q']}{MASK}", text)


def install() -> None:
    """Mask secrets in every log record made in this process from now on (idempotent). The message is
    formatted once, masked, and stored without its arguments; a traceback is formatted and masked too."""
    global _installed
    with _lock:
        if _installed:
            return
        _installed = True
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        try:
            record.msg, record.args = mask(record.getMessage()), None
            if record.exc_info and not record.exc_text:
                record.exc_text = mask(logging.Formatter().formatException(record.exc_info))
        except Exception:  # a record whose message cannot be formatted is logged as is
            pass
        return record

    logging.setLogRecordFactory(factory)
