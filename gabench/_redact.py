"""Credentials out of URLs before they are printed, logged or stored.

One function, :func:`redact`, used wherever a storage URL (Optuna ``--storage``) or a tracking
URI (MLflow ``--tracking-uri``) reaches a message, a tag, a user attribute or a file; and
:func:`scrub`, for messages of other libraries that may quote the URL or its password.
"""

from __future__ import annotations

import re
import urllib.parse

MASK = "***"
#: Query parameters whose values are secrets (compared case-insensitively).
SECRET_PARAMS = frozenset({
    "password", "passwd", "pwd", "pass", "secret", "token", "access_token", "api_key", "apikey",
    "key", "sslpassword", "client_secret", "auth",
})
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^@/\s]*)@")


def redact(url: str) -> str:
    """``url`` with its password and secret query values replaced by ``***``.

    Both ``scheme://user:PASSWORD@host`` and ``...?password=PASSWORD`` (or ``token=``,
    ``secret=``, ``api_key=``, ...) are masked; the user name, host, path and other query
    parameters are kept so that the message still says which store is meant.

    >>> redact("postgresql://bob:hunter2@db:5432/optuna?sslmode=require&password=x")
    'postgresql://bob:***@db:5432/optuna?sslmode=require&password=***'
    >>> redact("sqlite:///optuna.db")
    'sqlite:///optuna.db'
    """
    if not isinstance(url, str):
        return url
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:  # e.g. an invalid IPv6 host: mask what looks like userinfo
        return _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        if ":" in userinfo:
            userinfo = userinfo.split(":", 1)[0] + ":" + MASK
        netloc = f"{userinfo}@{host}"
    query = parts.query
    if query:
        pairs = []
        for item in query.split("&"):
            key, eq, _value = item.partition("=")
            if eq and urllib.parse.unquote_plus(key).lower() in SECRET_PARAMS:
                item = f"{key}={MASK}"
            pairs.append(item)
        query = "&".join(pairs)
    # Substituted in place: urlunsplit would turn ``sqlite:///x`` into ``sqlite:/x``.
    if netloc != parts.netloc:
        url = url.replace("//" + parts.netloc, "//" + netloc, 1)
    if query != parts.query:
        url = url.replace("?" + parts.query, "?" + query, 1)
    return url


def secrets_of(url: str) -> list[str]:
    """The secret strings inside ``url`` (its password and secret query values), raw and
    percent-decoded, longest first; empty when it has none."""
    if not isinstance(url, str):
        return []
    found: set[str] = set()
    try:
        parts = urllib.parse.urlsplit(url)
        if parts.password:
            found.add(parts.password)
        for key, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True):
            if key.lower() in SECRET_PARAMS and value:
                found.add(value)
        for item in parts.query.split("&"):
            key, eq, value = item.partition("=")
            if eq and urllib.parse.unquote_plus(key).lower() in SECRET_PARAMS and value:
                found.add(value)
    except ValueError:
        pass
    for m in _USERINFO.finditer(url):
        if m["pw"]:
            found.add(m["pw"])
    found |= {urllib.parse.unquote(s) for s in found}
    return sorted((s for s in found if s), key=len, reverse=True)


def scrub(text: str, *urls: str | None) -> str:
    """``text`` (e.g. a driver's error message) with every URL in ``urls`` redacted and any
    secret of theirs that still appears replaced by ``***``."""
    for url in urls:
        if not url:
            continue
        text = text.replace(url, redact(url))
        for secret in secrets_of(url):
            text = text.replace(secret, MASK)
    return text
