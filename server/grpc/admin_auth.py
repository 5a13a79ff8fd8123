"""Admin API credentials: a bearer token from a file or WARPSERVE_ADMIN_TOKEN."""

from __future__ import annotations

import hmac
import os
from pathlib import Path

TOKEN_ENV = "WARPSERVE_ADMIN_TOKEN"
METADATA_KEY = "authorization"


def load_token(path: Path | None) -> str | None:
    if path is not None:
        token = path.read_text().strip()
        if not token:
            raise ValueError(f"admin token file {path} is empty")
        return token
    return os.environ.get(TOKEN_ENV) or None


def is_loopback(address: str) -> bool:
    return address in ("localhost", "::1", "[::1]") or address.startswith("127.")


def token_matches(
    expected: str, metadata: tuple[tuple[str, str | bytes], ...] | None
) -> bool | None:
    """None: no credentials sent; otherwise whether they match."""
    for key, value in metadata or ():
        if key == METADATA_KEY:
            text = value.decode() if isinstance(value, bytes) else value
            given = text.removeprefix("Bearer ").strip()
            return hmac.compare_digest(given.encode(), expected.encode())
    return None
