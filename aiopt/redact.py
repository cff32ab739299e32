"""Secrets out of what aiopt records: a command line or a URL written into an artifact's metadata,
a report or an error message has its passwords and tokens replaced by ***.

Plain string work (no SQLAlchemy): it runs for every artifact written. A URL's password is
everything between "user:" and the last "@" before the host, so a password with an unescaped
"@" is masked whole, not cut at its first "@".
"""
from __future__ import annotations

import re

MASK = "***"
# scheme://user:password@host -- the password is greedy up to the last "@" of the authority
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/@]*:)(?P<secret>\S*)@(?=[^\s@/]*(?:[/?#\s]|$))")
# ?password=...&token=... in a URL's query, or password=... in a driver's connection string
_KEY_VALUE = re.compile(r"(?i)(?P<head>\b[\w-]*(?:password|passwd|pwd|token|secret|api[_-]?key|access[_-]?key)=)(?P<secret>[^\s&;'\"]+)")
# --password VALUE, --hf-token=VALUE, ...
_SECRET_FLAG = re.compile(r"(?i)^--?[\w-]*(?:password|passwd|token|secret|api[_-]?key|access[_-]?key)$")


def mask_secrets(text: str) -> str:
    """`text` with the password of every scheme://user:password@ URL and every password=/token=
    value replaced by ***."""
    text = _URL_PASSWORD.sub(lambda m: m["head"] + MASK + "@", text)
    return _KEY_VALUE.sub(lambda m: m["head"] + MASK, text)


def mask_argv(argv: list[str]) -> list[str]:
    """A command line with secrets masked: URLs and key=value pairs in any argument, and the value
    of a flag named for a secret (--password X, --token=X)."""
    masked: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            masked.append(MASK)
            hide_next = False
            continue
        flag, equals, _ = arg.partition("=")
        if _SECRET_FLAG.match(flag):
            if equals:
                masked.append(f"{flag}={MASK}")
            else:
                masked.append(arg)
                hide_next = True
            continue
        masked.append(mask_secrets(arg))
    return masked


def mask_known(text: str, secrets: list[str | None]) -> str:
    """`text` with every occurrence of the given secrets (e.g. a URL's parsed password, which a
    driver may echo in its own words) and of URL passwords replaced by ***."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, MASK)
    return mask_secrets(text)
