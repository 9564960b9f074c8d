"""Errors as users see them: passwords hidden everywhere, one line per failure.

Every message, traceback and log record resnext-nas prints or logs goes through ``redact_text``
(a storage or tracking URL may carry a password). No torch, optuna or mlflow here.
"""

from __future__ import annotations

import logging
import re
import sys
import traceback

_CREDENTIALS = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*):(?P<password>[^@\s]*)@")


def redact_text(text: str) -> str:
    """Hide the password of every URL inside ``text`` (error messages, tracebacks, logs)."""
    return _CREDENTIALS.sub(lambda m: f"{m['head']}:***@", text)


def redact_tree(value):
    """A copy of a YAML/JSON-like value with every URL password hidden (for logged configs)."""
    if isinstance(value, dict):
        return {k: redact_tree(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_tree(v) for v in value]
    return redact_text(value) if isinstance(value, str) else value


def error_line(e: BaseException) -> str:
    """An exception's first line (or its type when it has no message), passwords hidden."""
    text = str(e)
    return redact_text(text.splitlines()[0] if text.strip() else type(e).__name__)


def redact(url: str) -> str:
    """Hide the password of a URL (``postgresql://user:***@host/db``) for logs and tags."""
    return redact_text(url)


class RedactLogs(logging.Filter):
    """Hide URL passwords in the records (and tracebacks) a library logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = redact_text(record.getMessage()), ()
        if record.exc_info and issubclass(record.exc_info[0], KeyboardInterrupt):
            record.exc_info = None  # an interruption needs no traceback
        if record.exc_info:
            record.exc_text = redact_text("".join(traceback.format_exception(*record.exc_info)).rstrip("\n"))
            record.exc_info = None
        return True


def guarded(fn, *args) -> int:
    """Run ``fn(*args)``; an unexpected error prints its traceback with URL passwords hidden."""
    try:
        return fn(*args)
    except Exception:
        print(redact_text(traceback.format_exc()).rstrip(), file=sys.stderr)
        print("error: unexpected failure (traceback above); please report it", file=sys.stderr)
        return 1



class StorageUnavailable(RuntimeError):
    """The study storage stayed out of reach past ``search.storage_patience_s``, or cannot be written.

    Its message is one line naming the storage (password hidden) and the cause; what was
    recorded before is kept, and rerunning the same command resumes (exit status 3).
    """
