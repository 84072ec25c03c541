"""The server's key file: the digests of the accepted API keys, one entry a line.

``$LORACLE_DATA_DIR/api-key.sha256`` holds what ``loracle up`` and ``loracle keys`` write::

    # owner:sha256-hex-digest created-at (UTC)
    default:3f7a...c2 2026-12-05T02:37:06Z

No key is ever stored, only its SHA-256 digest, so a copied file grants nothing. A line may
also be a bare digest (what the first run wrote before keys had owners): that key's owner is
its digest, as in ``LORACLE_API_KEY_HASHES``. When ``LORACLE_API_KEY_HASHES`` is set it wins
and the file is not read; unset, the API reads the file on each request (re-read only when it
changes, one ``stat`` otherwise), so a key created or revoked takes effect without a restart.

Torch-free and web-free: the API reads the file through `configured_entries`; the CLI
writes it.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from loracle.settings import Settings

KEY_FILE = "api-key.sha256"
_HEADER = "# owner:sha256-hex-digest created-at (UTC); written by `loracle keys`\n"


@dataclass(frozen=True)
class KeyEntry:
    """One accepted key: its owner (None: the digest owns what the key creates), its
    SHA-256 hex digest, and when it was created (None: an entry from before this was kept)."""

    owner: str | None
    digest: str
    created_at: datetime | None = None

    @property
    def spec(self) -> str:
        """The entry as LORACLE_API_KEY_HASHES writes it: ``owner:digest`` or ``digest``."""
        return f"{self.owner}:{self.digest}" if self.owner else self.digest

    def line(self) -> str:
        when = self.created_at.strftime("%Y-%m-%dT%H:%M:%SZ") if self.created_at else ""
        return f"{self.spec} {when}".rstrip()


def key_file(settings: Settings) -> Path:
    return settings.data_dir / KEY_FILE


def parse(text: str) -> list[KeyEntry]:
    """The entries of a key file's text; blank lines and ``#`` comments are skipped. Values
    are not judged here: the API's `configuration_problem` says what is wrong with them."""
    entries = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        spec, _, when = line.partition(" ")
        owner, _, hashed = spec.rpartition(":")
        created = None
        if when.strip():
            try:
                created = datetime.strptime(when.strip(), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
            except ValueError:
                created = None  # a hand-edited date does not cost the key
        entries.append(KeyEntry(owner or None, hashed.strip().lower(), created))
    return entries


def read(path: Path) -> list[KeyEntry]:
    try:
        return parse(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []


def write(path: Path, entries: list[KeyEntry]) -> None:
    """Replace the file atomically, readable by its owner only: a reader (the API, on each
    request) sees the old list or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(_HEADER + "".join(e.line() + "\n" for e in entries))
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# path -> (inode, mtime_ns, size, specs): the API asks on every request; a stat is all it
# costs while the file is unchanged (`write` replaces it, so a change is a new inode too).
_cache: dict[Path, tuple[int, int, int, list[str]]] = {}


def configured_entries(settings: Settings) -> list[str]:
    """The accepted keys as ``owner:digest`` or ``digest`` specs: LORACLE_API_KEY_HASHES
    when set, else the key file's entries (none when it does not exist)."""
    if settings.api_key_hashes and settings.api_key_hashes.strip():
        return settings.api_key_hashes.split(",")
    path = key_file(settings)
    try:
        st = path.stat()
    except FileNotFoundError:
        return []
    cached = _cache.get(path)
    stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
    if cached and cached[:3] == stamp:
        return cached[3]
    specs = [e.spec for e in read(path)]
    _cache[path] = (*stamp, specs)
    return specs
