"""API-key authentication.

Keys travel as ``Authorization: Bearer <key>``. The server knows only their
SHA-256 digests (``LORACLE_API_KEY_HASHES``, comma-separated hex), so a leaked
configuration leaks no key. A presented key's digest is compared with every
accepted digest in constant time (``hmac.compare_digest``, no early exit).

Each entry is ``<digest>`` or ``<owner>:<digest>``. The owner of what a request
creates is the entry's owner name, or its digest when it has none: files and jobs
of one owner are invisible (404) to another. Several keys may share an owner name,
which is how a key is rotated without orphaning its jobs: list the new key's digest
under the old one's owner (``<old digest>:<new digest>``, or a chosen name), move
clients over, then remove the old entry. ``LORACLE_AUTH_DISABLED=1`` turns
authentication off; the server says so loudly at start.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.errors import ApiError
from loracle.keys import configured_entries
from loracle.settings import Settings

log = logging.getLogger("loracle.api")

ANONYMOUS = None  # owner of everything while authentication is disabled


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return "lor_" + secrets.token_urlsafe(32)


OWNER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
HEX_DIGEST = re.compile(r"^[0-9a-f]{64}$")


def accepted_keys(settings: Settings) -> list[tuple[str, str]]:
    """(digest, owner) of every entry of LORACLE_API_KEY_HASHES, or of the key file when it
    is unset (loracle/keys.py)."""
    keys = []
    for entry in configured_entries(settings):
        entry = entry.strip()
        if not entry:
            continue
        name, _, hashed = entry.rpartition(":")
        hashed, name = hashed.strip().lower(), name.strip()
        # An owner named by a digest (a rotated key: old-digest:new-digest) is that digest's
        # owner whatever its case, as a plain entry's digest is.
        if HEX_DIGEST.match(name.lower()):
            name = name.lower()
        keys.append((hashed, name or hashed))
    return keys


def accepted_hashes(settings: Settings) -> list[str]:
    return [hashed for hashed, _ in accepted_keys(settings)]


def configuration_problem(settings: Settings) -> str | None:
    """Why the server must not start with these settings, or None."""
    if settings.auth_disabled:
        return None
    hashes = accepted_hashes(settings)
    if not hashes:
        return (
            "no API keys configured: set LORACLE_API_KEY_HASHES to the SHA-256 hex digests of "
            "the accepted keys (comma-separated), or LORACLE_AUTH_DISABLED=1 to run without "
            "authentication; `loracle up` creates a key for you"
        )
    bad = [h for h in hashes if not HEX_DIGEST.match(h)]
    if bad:
        return f"LORACLE_API_KEY_HASHES holds {len(bad)} value(s) that are not SHA-256 hex digests"
    names = [owner for hashed, owner in accepted_keys(settings) if owner != hashed]
    bad_names = [n for n in names if not OWNER_NAME.match(n)]
    if bad_names:
        return (
            f"LORACLE_API_KEY_HASHES: owner names {bad_names} are not 1-64 letters, digits, "
            "'.', '_' or '-' (starting with a letter or digit); write entries as "
            "<owner>:<digest>"
        )
    if len(set(hashes)) != len(hashes):
        return "LORACLE_API_KEY_HASHES lists a digest twice; list each key once"
    workers = worker_token_hashes(settings)
    bad = [h for h in workers if not HEX_DIGEST.match(h)]
    if bad:
        return (
            f"LORACLE_WORKER_TOKEN_HASHES holds {len(bad)} value(s) that are not SHA-256 hex "
            "digests; list the digests of the workers' tokens, comma-separated"
        )
    if set(workers) & set(hashes):
        return (
            "a digest is in both LORACLE_API_KEY_HASHES and LORACLE_WORKER_TOKEN_HASHES: a "
            "worker token must not be an API key; make the worker its own (`loracle keys worker`)"
        )
    return None


def _unauthorized(detail: str) -> ApiError:
    return ApiError(401, "unauthorized", detail, headers={"WWW-Authenticate": "Bearer"})


async def app_settings(request: Request) -> Settings:
    """The settings the app was built with (``create_app(settings)``)."""
    settings: Settings = request.app.state.settings
    return settings


# Declares the scheme in the OpenAPI (components.securitySchemes.bearer and `security` on
# every operation that depends on get_owner), so Swagger UI's Authorize button sends the key.
# auto_error=False: the check and its 401 are key_owner's, the same for every route.
BEARER = HTTPBearer(
    scheme_name="bearer",
    description="An API key: `Authorization: Bearer <key>`. `loracle up` prints one.",
    auto_error=False,
)
# The same requirement, for routes that check the key themselves (POST /v1/recommendations).
BEARER_SECURITY: list[dict[str, list[str]]] = [{"bearer": []}]


async def get_owner(
    request: Request,
    settings: Annotated[Settings, Depends(app_settings)],
    _: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)] = None,
) -> str | None:
    """The owner of this request: its valid API key's owner name, or the key's digest."""
    return check_key(request, settings)


def check_key(request: Request, settings: Settings) -> str | None:
    """The owner of the request's valid API key (None with auth disabled); raises 401."""
    return key_owner(request.headers.get("authorization", ""), settings)


def key_owner(authorization: str, settings: Settings) -> str | None:
    """The one check of an ``Authorization`` header: the owner of its valid API key (None
    with auth disabled); raises a 401 ``ApiError``. Routes reach it through `check_key`;
    the upload middleware (api/limits.py) calls it before reading a body."""
    if settings.auth_disabled:
        return ANONYMOUS
    scheme, _, key = authorization.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise _unauthorized("send your API key as 'Authorization: Bearer <key>'")
    presented = digest(key.strip())
    match = None
    for accepted, owner in accepted_keys(settings):
        if hmac.compare_digest(presented, accepted):
            match = owner
    if match is None:
        raise _unauthorized("the API key is not valid; check it, or ask for a new one")
    return match


OwnerDep = Annotated[str | None, Depends(get_owner)]


# -- worker tokens (api/worker_files) ------------------------------------------------------
# A credential of another kind than an API key: a worker token opens only the /v1/worker/
# routes, and there only the files of a job its worker holds the lease of; an API key opens
# none of them. Two lists of digests, so neither can stand in for the other.


def new_worker_token() -> str:
    return "lorw_" + secrets.token_urlsafe(32)


def worker_token_hashes(settings: Settings) -> list[str]:
    raw = settings.worker_token_hashes or ""
    return [h.strip().lower() for h in raw.split(",") if h.strip()]


def check_worker_token(authorization: str, settings: Settings) -> None:
    """Accept a request to a /v1/worker/ route only with a valid worker token; raises a 401
    ``ApiError`` that says what to send or to configure. Open with auth disabled."""
    if settings.auth_disabled:
        return
    accepted = worker_token_hashes(settings)
    if not accepted:
        raise _unauthorized(
            "this server accepts no worker tokens: set LORACLE_WORKER_TOKEN_HASHES on the API "
            "to the SHA-256 digests of its workers' LORACLE_WORKER_TOKEN (`loracle keys "
            "worker` makes a token and prints both)"
        )
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _unauthorized("send the worker token as 'Authorization: Bearer <token>'")
    presented = digest(token.strip())
    match = False
    for hashed in accepted:
        match |= hmac.compare_digest(presented, hashed)
    if not match:
        raise _unauthorized(
            "not a worker token this server accepts (an API key is not one): set the worker's "
            "LORACLE_WORKER_TOKEN to a token whose digest is in LORACLE_WORKER_TOKEN_HASHES"
        )


async def require_worker(
    request: Request,
    settings: Annotated[Settings, Depends(app_settings)],
    _: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)] = None,
) -> None:
    check_worker_token(request.headers.get("authorization", ""), settings)
