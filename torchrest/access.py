"""Who may call what: the admin token that guards state-changing endpoints, and the API keys that guard
inference. Every front-end asks here before it does anything (HTTP today, gRPC next).

    open        health, readiness, metrics, metadata, the repository index: probes and scrapers need them
    inference   /classify, /v2/.../infer: open, or with `--api-keys-file` a key
                (`Authorization: Bearer <key>` or `X-API-Key: <key>`)
    admin       repository load/unload: refused (403) until `--admin-token-file` or TORCHREST_ADMIN_TOKEN
                configures a token, then `Authorization: Bearer <token>`

Both secrets live in files that are re-read when they change (checked at most once a second), so a
Kubernetes Secret update rotates keys without a restart. Comparisons take constant time. No secret is
ever put in an error message or a log line.
"""

from __future__ import annotations

import hmac
import logging
import os
import threading
import time
from pathlib import Path

from torchrest.config import ServerConfig
from torchrest.errors import Forbidden, StartupError, Unauthorized

log = logging.getLogger("torchrest.access")

RECHECK_S = 1.0
MIN_ADMIN_TOKEN_LENGTH = 16


class SecretFile:
    """The non-empty, non-comment lines of a file, read again when its identity or content changes."""

    def __init__(self, path: Path, what: str) -> None:
        self.path = path
        self.what = what
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._checked_at = float("-inf")
        self._secrets: tuple[bytes, ...] = ()
        self._refresh(startup=True)

    def secrets(self) -> tuple[bytes, ...]:
        now = time.monotonic()
        if now - self._checked_at >= RECHECK_S:
            self._refresh(startup=False)
        return self._secrets

    def _refresh(self, startup: bool) -> None:
        with self._lock:
            self._checked_at = time.monotonic()
            try:
                info = os.stat(self.path)  # follows the ..data symlink a Secret volume swaps
                stamp = (info.st_ino, info.st_mtime_ns, info.st_size)
                if stamp == self._stamp:
                    return
                lines = self.path.read_text().splitlines()
            except (OSError, UnicodeDecodeError) as exc:
                if startup:
                    raise StartupError(f"{self.what} file {self.path} is not readable: {exc}") from None
                log.warning("%s file %s is not readable (%s): keeping the previous ones", self.what, self.path, exc)
                return
            stripped = (line.strip() for line in lines)
            secrets = tuple(line.encode() for line in stripped if line and not line.startswith("#"))
            if not secrets:
                if startup:
                    raise StartupError(f"{self.what} file {self.path} holds none")
                log.warning("%s file %s holds none now: every request needing one is refused", self.what, self.path)
            elif not startup:
                log.info("%s file %s re-read: %d", self.what, self.path, len(secrets))
            self._stamp, self._secrets = stamp, secrets


class AccessControl:
    """The server's admin token and API keys, either of which may be absent."""

    def __init__(self, admin_token: SecretFile | bytes | None = None, api_keys: SecretFile | None = None) -> None:
        self._admin_token = admin_token
        self._api_keys = api_keys

    @classmethod
    def from_config(cls, config: ServerConfig) -> AccessControl:
        """The server's access control; StartupError for an unreadable, empty or too short secret."""
        admin: SecretFile | bytes | None = None
        if config.admin_token_file is not None:
            admin = SecretFile(config.admin_token_file, "admin token")
            if any(len(token) < MIN_ADMIN_TOKEN_LENGTH for token in admin.secrets()):
                raise StartupError(f"the admin token in {config.admin_token_file} is under 16 characters")
        elif config.admin_token is not None:
            admin = config.admin_token.strip().encode()
        keys = SecretFile(config.api_keys_file, "API key") if config.api_keys_file is not None else None
        return cls(admin, keys)

    @property
    def requires_api_key(self) -> bool:
        return self._api_keys is not None

    @property
    def management_enabled(self) -> bool:
        return self._admin_token is not None

    def check_admin(self, authorization: str | None) -> None:
        """Raise Forbidden when no admin token is configured, Unauthorized unless `authorization` bears it."""
        if self._admin_token is None:
            raise Forbidden(
                "model repository management is disabled: start the server with --admin-token-file FILE "
                "(or TORCHREST_ADMIN_TOKEN) and send Authorization: Bearer <token>"
            )
        tokens = self._admin_token.secrets() if isinstance(self._admin_token, SecretFile) else (self._admin_token,)
        if not _matches(_bearer(authorization), tokens):
            raise Unauthorized("missing or wrong admin token: send Authorization: Bearer <token>")

    def check_inference(self, authorization: str | None, api_key: str | None) -> None:
        """Raise Unauthorized when API keys are configured and neither header carries one of them."""
        if self._api_keys is None:
            return
        keys = self._api_keys.secrets()
        if not (_matches(_bearer(authorization), keys) or _matches(api_key, keys)):
            raise Unauthorized("missing or wrong API key: send Authorization: Bearer <key> or X-API-Key: <key>")


def _bearer(authorization: str | None) -> str | None:
    if authorization is None:
        return None
    scheme, _, credentials = authorization.strip().partition(" ")
    return credentials.strip() if scheme.lower() == "bearer" else None


def _matches(offered: str | None, secrets: tuple[bytes, ...]) -> bool:
    """True when `offered` equals one of `secrets`, comparing against all of them in constant time each."""
    if not offered:
        return False
    candidate = offered.encode("utf-8", "surrogateescape")
    found = False
    for secret in secrets:
        found |= hmac.compare_digest(candidate, secret)
    return found
