"""What ccr writes or prints never carries a credential, nor raw control bytes.

A URI may hold a password or key (`http://user:PASSWORD@host`, `s3://KEY:SECRET@bucket/...`,
`?secret_key=...`): every file ccr writes (config.yaml, results.json, checkpoints, log.txt, events.jsonl,
reports) and every line it prints passes through `redact`, and the config a study records is `redact_tree`
of the one it runs with. Text that came from elsewhere (a tracking server's answer) is made `printable`.
"""

from __future__ import annotations

import logging
import re
from typing import Any

HIDDEN = "***"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# scheme://userinfo@ : everything before the @ of the authority
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)([^/\s@'\"<>?#]+)@")
# query parameters that carry secrets (pyarrow's S3 URIs take access_key, secret_key, session_token)
_SECRET_PARAM = re.compile(r"(?i)([?&;](?:access_key|secret_key|session_token|password|passwd|token|api_key)=)"
                           r"([^&\s'\"<>#]*)")


def redact(text: str) -> str:
    """`text` with the credentials of every URI in it replaced by ***."""
    if "://" not in text and "=" not in text:
        return text
    return _SECRET_PARAM.sub(lambda m: m.group(1) + HIDDEN, _USERINFO.sub(lambda m: m.group(1) + HIDDEN + "@", text))


def redact_tree(obj: Any) -> Any:
    """A copy of a config-like tree (dicts, lists, strings) with every string redacted."""
    if isinstance(obj, str):
        return redact(obj)
    if isinstance(obj, dict):
        return {k: redact_tree(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(redact_tree(v) for v in obj)
    return obj


def printable(text: str) -> str:
    """Control characters (NUL, escape sequences, ...) shown as '?', line breaks and tabs kept: a remote
    server's bytes cannot rewrite a terminal or a log."""
    return "".join(c if c.isprintable() or c in "\n\t" else "?" for c in text)


def safe(text: object) -> str:
    """What ccr may print or write of `text`: redacted and printable."""
    return printable(redact(str(text)))


class SafeFormatter(logging.Formatter):
    """ccr's log lines (console and log.txt), redacted and printable whatever a message carried."""

    def __init__(self, fmt: str = LOG_FORMAT):
        super().__init__(fmt)

    def format(self, record: logging.LogRecord) -> str:
        return safe(super().format(record))
