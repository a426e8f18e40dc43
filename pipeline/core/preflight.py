"""The production profile's preflight: every server it names answers, before any work starts.

``KMEANS_PROFILE=production`` names servers instead of embedding stores: the MLflow tracking
server, Redis (Feast's online store), PostgreSQL (when ``KMEANS_POSTGRES_URL`` is set). A piece
that is missing would otherwise show up minutes later, deep in a stage, as a library's
traceback. :func:`check` asks each one with a few seconds' timeout and raises
:class:`ServiceUnavailable` naming every piece that did not answer, its address and the setting
that names it, on one line. The tokens are checked earlier, by the settings themselves (the
profile refuses to load without both).

Standard library only (sockets, ``urllib``): the inference server's image runs it too. Each
check speaks the server's own protocol briefly, so a port held by something else is not taken
for the server: ``GET /health`` for MLflow, ``PING`` (after ``AUTH`` when the connection string
has a password) for Redis, the SSL negotiation request for PostgreSQL.
"""

from __future__ import annotations

import json
import socket
import ssl
import struct
import urllib.error
import urllib.parse
import urllib.request

from pipeline.core.settings import Settings

#: Seconds each check may take to connect and to answer.
TIMEOUT_SECONDS = 5.0
PIECES = ("postgres", "mlflow", "redis")


class ServiceUnavailable(ValueError):
    """A server the production profile needs did not answer (the message names each one)."""


def check(settings: Settings, *, needs: tuple[str, ...] = PIECES,
          timeout: float = TIMEOUT_SECONDS) -> None:
    """Raise :class:`ServiceUnavailable` unless every piece in ``needs`` that ``settings``
    configures answers; nothing to do in the local profile."""
    if settings.profile != "production":
        return
    unknown = sorted(set(needs) - set(PIECES))
    if unknown:
        raise ValueError(f"unknown preflight pieces {unknown}; known: {list(PIECES)}")
    problems = [problem for piece in PIECES if piece in needs
                if (problem := _CHECKS[piece](settings, timeout))]
    if problems:
        raise ServiceUnavailable("profile=production: " + "; ".join(problems))


def _check_postgres(settings: Settings, timeout: float) -> str | None:
    if settings.postgres_url is None:
        return None
    host, port = postgres_address(settings.postgres_url.get_secret_value())
    problem = postgres_problem(host, port, timeout)
    return problem and (f"PostgreSQL at {host}:{port} (KMEANS_POSTGRES_URL) {problem}")


def _check_mlflow(settings: Settings, timeout: float) -> str | None:
    uri = settings.mlflow_tracking_uri
    scheme = uri.split(":", 1)[0].split("+", 1)[0].lower()
    if scheme in ("postgresql", "postgres"):  # a database as the tracking store, no server
        host, port = postgres_address(uri)
        problem = postgres_problem(host, port, timeout)
        return problem and (f"MLflow's store, PostgreSQL at {host}:{port} "
                            f"(KMEANS_MLFLOW_TRACKING_URI) {problem}")
    if scheme not in ("http", "https"):
        return None  # a store this check does not know how to ask (databricks, ...)
    problem = http_problem(uri.rstrip("/") + "/health", timeout)
    return problem and (f"MLflow tracking server at {_without_credentials(uri)} "
                        f"(KMEANS_MLFLOW_TRACKING_URI) {problem}")


def _check_redis(settings: Settings, timeout: float) -> str | None:
    host, port, options = redis_address(settings.redis_connection_string)
    problem = redis_problem(host, port, options, timeout)
    return problem and (f"Redis (the Feast online store) at {host}:{port} "
                        f"(KMEANS_REDIS_CONNECTION_STRING) {problem}")


_CHECKS = {"postgres": _check_postgres, "mlflow": _check_mlflow, "redis": _check_redis}


# ---- addresses --------------------------------------------------------------------------------

def postgres_address(url: str) -> tuple[str, int]:
    """Host and port of a PostgreSQL URL (``postgresql[+driver]://user[:pw]@host[:port]/db``);
    localhost and 5432 when absent."""
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port or 5432
    except ValueError:
        raise ServiceUnavailable(f"PostgreSQL URL has a bad port: {_without_credentials(url)}"
                                 ) from None
    return parts.hostname or "localhost", port


def redis_address(connection_string: str) -> tuple[str, int, dict[str, str]]:
    """Host, port and options of Feast's Redis connection string (``host:port,key=value,...``,
    the first node for a cluster)."""
    nodes = [c.strip() for c in connection_string.split(",") if c.strip() and "=" not in c]
    options = dict(c.strip().split("=", 1) for c in connection_string.split(",") if "=" in c)
    host, _, port = (nodes[0] if nodes else "localhost:6379").rpartition(":")
    if not host:
        host, port = port, "6379"
    try:
        return host, int(port), options
    except ValueError:
        raise ServiceUnavailable(f"Redis (the Feast online store) address {host}:{port} "
                                 f"(KMEANS_REDIS_CONNECTION_STRING) has a bad port") from None


def _without_credentials(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


# ---- protocols ---------------------------------------------------------------------------------

def _connect(host: str, port: int, timeout: float) -> socket.socket:
    return socket.create_connection((host, port), timeout=timeout)


def _reason(err: BaseException) -> str:
    if isinstance(err, TimeoutError):
        return "did not answer in time"
    if isinstance(err, ConnectionRefusedError):
        return "refused the connection (nothing listens there)"
    if isinstance(err, socket.gaierror):
        return f"has a host name that does not resolve ({err.strerror})"
    return f"is not reachable ({getattr(err, 'strerror', None) or err})"


def http_problem(url: str, timeout: float) -> str | None:
    """What is wrong with ``GET url`` (None for a 200 answer)."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url), timeout=timeout) as reply:
            if reply.status == 200:
                return None
            return f"answered GET {urllib.parse.urlsplit(url).path} with {reply.status}"
    except urllib.error.HTTPError as err:
        return f"answered GET {urllib.parse.urlsplit(url).path} with {err.code}"
    except urllib.error.URLError as err:
        if isinstance(err.reason, BaseException):
            return _reason(err.reason)
        return f"is not reachable ({err.reason})"
    except OSError as err:
        return _reason(err)


def redis_problem(host: str, port: int, options: dict[str, str], timeout: float) -> str | None:
    """What is wrong with Redis at host:port (None when it answers PING with PONG)."""
    try:
        with _connect(host, port, timeout) as raw:
            conn: socket.socket = raw
            if options.get("ssl", "").lower() == "true":
                conn = ssl.create_default_context().wrap_socket(raw, server_hostname=host)
            reader = conn.makefile("rb")
            if "password" in options:
                auth = [_unquoted(options[k]) for k in ("username", "password") if k in options]
                conn.sendall(_resp("AUTH", *auth))
                said = reader.readline().strip()
                if not said.startswith(b"+"):
                    return f"refused the password: {said.decode(errors='replace')[:80]}"
            conn.sendall(_resp("PING"))
            said = reader.readline().strip()
    except (OSError, ssl.SSLError) as err:
        return _reason(err)
    if said == b"+PONG":
        return None
    if said.startswith(b"-"):
        return f"answered PING with an error: {said.decode(errors='replace')[1:80]}"
    return "does not speak the Redis protocol (no PONG to PING)"


def _unquoted(value: str) -> str:
    """Feast json-decodes each option's value: ``password="123"`` is the string 123."""
    try:
        decoded = json.loads(value)
    except ValueError:
        return value
    return decoded if isinstance(decoded, str) else value


def _resp(*words: str) -> bytes:
    out = [f"*{len(words)}\r\n".encode()]
    for word in words:
        data = word.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


#: PostgreSQL's SSLRequest: length 8, code 80877103. A server answers one byte, S or N.
_SSL_REQUEST = struct.pack("!ii", 8, 80877103)


def postgres_problem(host: str, port: int, timeout: float) -> str | None:
    """What is wrong with PostgreSQL at host:port (None when it answers the SSL negotiation,
    as every PostgreSQL server does before authentication)."""
    try:
        with _connect(host, port, timeout) as conn:
            conn.sendall(_SSL_REQUEST)
            said = conn.recv(1)
    except OSError as err:
        return _reason(err)
    if said in (b"S", b"N"):
        return None
    return "does not speak the PostgreSQL protocol (no answer to its SSL request)"
