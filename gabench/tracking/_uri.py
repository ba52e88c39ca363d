"""Tracking-URI resolution and the reachability check made before any training starts."""

from __future__ import annotations

import base64
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from gabench._errors import ConfigError
from gabench._redact import redact, scrub

DEFAULT_DB = "mlflow.db"
SCHEMES = ("sqlite", "postgresql", "mysql", "mssql", "http", "https")


def default_tracking_uri(cwd: str | os.PathLike | None = None) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else a SQLite store ``mlflow.db`` in the working directory."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return "sqlite:///" + str((Path(cwd or Path.cwd()) / DEFAULT_DB).absolute())


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (None for other stores)."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///"):])


def split_credentials(uri: str) -> tuple[str, str | None, str | None]:
    """``http://user:pass@host:port/path`` -> (``http://host:port/path``, user, password), the
    user name and password percent-decoded; (uri, None, None) without credentials."""
    parts = urllib.parse.urlsplit(uri)
    if "@" not in parts.netloc:
        return uri, None, None
    host = parts.netloc.rpartition("@")[2]
    user = urllib.parse.unquote(parts.username or "")
    password = None if parts.password is None else urllib.parse.unquote(parts.password)
    return urllib.parse.urlunsplit(parts._replace(netloc=host)), user, password


def check_tracking_uri(uri: str, timeout: float = 5.0, param: str = "--tracking-uri") -> str:
    """Fail fast, with one line naming ``param``, when ``uri`` cannot be tracked to.

    SQLite: the database's directory must exist (or be creatable) and be writable. HTTP(S): the
    server must answer its ``/health`` endpoint within ``timeout`` seconds; credentials in the
    URI (``http://USER:PASSWORD@HOST:PORT``, as MLflow accepts them) are sent as HTTP basic
    auth, as MLflow sends them, and never shown (errors carry the URI with ``***`` for the
    password). Databases: the scheme is accepted and the connection is left to MLflow.
    """
    shown = redact(uri)
    scheme = urllib.parse.urlparse(uri).scheme.split("+")[0]
    if scheme not in SCHEMES:
        raise ConfigError(param, shown, "sqlite:///PATH, postgresql://..., mysql://... or "
                                        "http(s)://HOST:PORT (MLflow 3 no longer uses the plain file store)")
    db = sqlite_path(uri)
    if db is not None:
        parent = db.absolute().parent
        probe = parent
        while not probe.exists():
            probe = probe.parent
        if not probe.is_dir() or not os.access(probe, os.W_OK):
            raise ConfigError(param, shown, f"a SQLite file in a writable directory ({probe} is not)")
        return uri
    if scheme in ("http", "https"):
        try:
            bare, user, password = split_credentials(uri)
        except ValueError as exc:  # e.g. a port that is not a number
            raise ConfigError(param, shown, f"http(s)://HOST:PORT ({scrub(str(exc), uri)})") from None
        url = bare.rstrip("/") + "/health"
        request = urllib.request.Request(url)
        if user is not None or password is not None:
            token = base64.b64encode(f"{user or ''}:{password or ''}".encode()).decode("ascii")
            request.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - user's server
                if response.status != 200:
                    raise ConfigError(param, shown, f"a reachable MLflow server ({url} answered "
                                                    f"{response.status})")
        except urllib.error.HTTPError as exc:
            raise ConfigError(param, shown, f"a reachable MLflow server ({url} answered {exc.code})") \
                from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ConfigError(param, shown, f"a reachable MLflow server ({reason})") from None
    return uri
