"""Hugging Face hub ids checked before a job is accepted, without torch.

Without this check a misspelt id, or a hub that cannot be reached (no network, a proxy), was
accepted with 201 and the job failed 40-50 s later inside transformers. `check_hub_model`
asks the hub once, with a short timeout, through huggingface_hub, and raises a `HubError`
whose `code` says what to answer. The API calls it at submission; the worker can call it
before it loads a model.

What each outcome means, and the answer the API gives (api/errors.py):

- the hub has the model, with safetensors weights: nothing is raised;
- the hub says it has no such model (404, or 401 for a private one without a token):
  `model_not_found`, 422;
- the hub has it, but gated, or without `.safetensors` weights: `model_gated` or
  `model_not_usable`, 422;
- the hub cannot be reached within the timeout, or answers with a server error:
  `hub_unreachable`, 503 with Retry-After: the request was right, and may succeed later;
- offline mode (`HF_HUB_OFFLINE=1`, or `TRANSFORMERS_OFFLINE=1`): the hub is not asked. A model
  whose config.json is in the hub cache (under `HF_HOME`) passes, as transformers will load it
  from there; one that is not is `model_not_cached`, 422: retrying cannot help, the cache must
  be filled first.

The hub's environment variables (`HF_ENDPOINT`, `HF_HUB_OFFLINE`, `HF_HOME`, `HF_HUB_CACHE`) are
read at each call, where huggingface_hub reads them once at import: a test, or a process whose
environment is set after start-up, is honoured.
"""

from __future__ import annotations

import os

from loracle.errors import LoracleError

MODEL_NOT_FOUND = "model_not_found"
MODEL_GATED = "model_gated"
MODEL_NOT_USABLE = "model_not_usable"
MODEL_NOT_CACHED = "model_not_cached"
HUB_UNREACHABLE = "hub_unreachable"

# How long a client should wait before it sends a job again after `hub_unreachable`.
RETRY_AFTER_S = 30

# What a user without the hub can do instead, named in every answer that concerns reaching it.
_OFFLINE_FIX = (
    "To work without the hub, copy the model into the first of LORACLE_MODEL_ROOTS and name it "
    "by its path, or download it once into the hub cache (HF_HOME) and set HF_HUB_OFFLINE=1 for "
    "the API and the workers, which then use what is cached"
)

_TRUE = {"1", "ON", "YES", "TRUE"}  # huggingface_hub's spelling of true

# huggingface_hub 2.x fetches a registry of "agent harnesses" for its User-Agent on the first
# request of a process, from the endpoint it read at import, waiting up to 3 s: offline, the
# first check would take that much longer than its timeout, and ask huggingface.co even with
# HF_ENDPOINT set later. Telemetry off skips it (and the usage pings); before huggingface_hub
# is imported, which this module does only when it checks, and a user's own setting wins.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


class HubError(LoracleError):
    """A hub id that cannot be used now. `code` is one of this module's codes; `retry_after_s`
    is set when the same request may succeed later (`hub_unreachable`)."""

    def __init__(
        self, code: str, repo_id: str, message: str, retry_after_s: int | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.repo_id = repo_id
        self.retry_after_s = retry_after_s


def offline() -> bool:
    """Whether offline mode is on (`HF_HUB_OFFLINE`, or transformers' `TRANSFORMERS_OFFLINE`)."""
    return any(
        os.environ.get(name, "").strip().upper() in _TRUE
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def endpoint() -> str:
    """The hub's address: `HF_ENDPOINT`, or huggingface.co."""
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def cache_dir() -> str:
    """The hub cache transformers loads from: `HF_HUB_CACHE`, else `$HF_HOME/hub`, else
    `~/.cache/huggingface/hub`, as huggingface_hub.constants computes it at import."""
    env = os.environ
    explicit = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return os.path.expandvars(os.path.expanduser(explicit))
    home = env.get("HF_HOME") or os.path.join(
        env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
        "huggingface",
    )
    return os.path.join(os.path.expandvars(os.path.expanduser(home)), "hub")


def check_hub_model(repo_id: str, timeout: float) -> None:
    """Raise `HubError` unless the model `repo_id` can be loaded from the hub (or, offline,
    from the hub cache). Asks the hub at most once, for at most `timeout` seconds per
    connection phase (httpx's meaning: connect, then each read)."""
    if offline():
        _check_cached(repo_id)
        return
    import httpx2  # huggingface_hub's HTTP client
    from huggingface_hub import HfApi
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
    )

    where = endpoint()
    try:
        info = HfApi(endpoint=where).model_info(repo_id, timeout=timeout, expand=["siblings"])
    except GatedRepoError:  # before RepositoryNotFoundError, its base class
        raise HubError(
            MODEL_GATED,
            repo_id,
            f"model {repo_id!r} is gated on the hub: accept its terms on its page with your "
            "account, and give the API and the workers a token that has (HF_TOKEN)",
        ) from None
    except (RepositoryNotFoundError, HFValidationError) as exc:
        raise _not_found(repo_id, where, exc) from None
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        if status in (401, 404):  # a hub that does not label its answer
            raise _not_found(repo_id, where, exc) from None
        raise _unreachable(repo_id, where, timeout, f"it answered HTTP {status}") from None
    except OfflineModeIsEnabled:
        # huggingface_hub read HF_HUB_OFFLINE=1 at import, though it is unset now: it refuses
        # to send anything, so the cache is all transformers will have either.
        _check_cached(repo_id)
        return
    except (httpx2.HTTPError, OSError, ValueError, KeyError, TypeError) as exc:
        # Connection refused, DNS, TLS, a proxy, a timeout (httpx2's errors), or an answer that
        # is not a model's info (no JSON, no id): in every case the hub said nothing usable.
        reason = f"{type(exc).__name__}: {exc}".strip().rstrip(":")
        raise _unreachable(repo_id, where, timeout, reason) from None
    names = [s.rfilename for s in info.siblings] if info.siblings is not None else None
    if names is not None and not any(n.endswith(".safetensors") for n in names):
        raise HubError(
            MODEL_NOT_USABLE,
            repo_id,
            f"model {repo_id!r} has no .safetensors weights on the hub; loracle loads only "
            "safetensors (pickled .bin weights can run code): choose a model that has them, or "
            "convert the weights and copy the model into the first of LORACLE_MODEL_ROOTS",
        )


def _not_found(repo_id: str, where: str, exc: Exception) -> HubError:
    detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return HubError(
        MODEL_NOT_FOUND,
        repo_id,
        f"the hub ({where}) has no model {repo_id!r} ({detail}): check the spelling, 'org/name' "
        "as on its page; a private model needs a token (HF_TOKEN). A local model goes in the "
        "first of LORACLE_MODEL_ROOTS, named by its path relative to it",
    )


def _unreachable(repo_id: str, where: str, timeout: float | None, reason: str) -> HubError:
    """`timeout` None: a worker's load, which waits as long as huggingface_hub does."""
    what = (
        f"to check model {repo_id!r} within {timeout:g} s"
        if timeout is not None
        else f"to load model {repo_id!r}"
    )
    return HubError(
        HUB_UNREACHABLE,
        repo_id,
        f"the hub ({where}) could not be reached {what} ({reason[:200]}); retry in "
        f"{RETRY_AFTER_S} s. {_OFFLINE_FIX}",
        retry_after_s=RETRY_AFTER_S,
    )


def _check_cached(repo_id: str) -> None:
    from huggingface_hub import try_to_load_from_cache

    cache = cache_dir()
    found = try_to_load_from_cache(repo_id, "config.json", cache_dir=cache)
    if not isinstance(found, str):  # None, or the marker of a file known to be absent
        raise _not_cached(repo_id, cache)


def _not_cached(repo_id: str, cache: str) -> HubError:
    return HubError(
        MODEL_NOT_CACHED,
        repo_id,
        f"offline mode is on (HF_HUB_OFFLINE=1) and model {repo_id!r} is not in the hub "
        f"cache ({cache}): download it there on a connected machine (`hf download "
        f"{repo_id}`, with the same HF_HOME), point HF_HOME at a cache that has it, or copy "
        "the model into the first of LORACLE_MODEL_ROOTS and name it by its path",
    )


def check_before_load(repo_id: str, timeout: float) -> None:
    """For a worker about to load hub model `repo_id`: raise `HubError` now, rather than after
    huggingface_hub's retries (some 20 s a file when the hub refuses connections), when it
    cannot be loaded. A model whose config.json is in the hub cache is left to transformers,
    which loads what is cached even while the hub is down; any other is checked as the API
    checks it at submission (`check_hub_model`): not cached offline, not found, gated, or
    the hub unreachable within `timeout`."""
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(repo_id, "config.json", cache_dir=cache_dir()), str):
        return
    check_hub_model(repo_id, timeout)


def load_failure(repo_id: str, exc: BaseException) -> HubError | None:
    """The `HubError` that a worker's failure to load hub model `repo_id` with `exc` amounts
    to, or None when `exc` is not about the hub (out of memory, a broken file, ...).

    transformers words every such failure as "We couldn't connect to '<hub>' to load the
    files", whether the hub is down, the model does not exist or offline mode found no cache;
    its causes (huggingface_hub's errors, and the connection error under them) say which. So
    the job fails with the codes and the fixes the API answers at submission, and the library's
    line is kept at the end for whoever reads the log."""
    from huggingface_hub import errors as hf

    if isinstance(exc, HubError):
        return exc
    chain: list[BaseException] = []
    link: BaseException | None = exc
    while link is not None and link not in chain and len(chain) < 20:
        chain.append(link)
        link = link.__cause__ or link.__context__
    said = (str(exc) or type(exc).__name__).splitlines()[0][:300]
    where = endpoint()
    found: HubError | None = None
    for link in chain:
        if isinstance(link, hf.GatedRepoError):  # before RepositoryNotFoundError, its base
            found = HubError(
                MODEL_GATED,
                repo_id,
                f"model {repo_id!r} is gated on the hub: accept its terms on its page with your "
                "account, and give the API and the workers a token that has (HF_TOKEN)",
            )
        elif isinstance(link, hf.RepositoryNotFoundError | hf.HFValidationError):
            found = _not_found(repo_id, where, link)
        elif isinstance(link, hf.OfflineModeIsEnabled) or (
            isinstance(link, hf.LocalEntryNotFoundError) and offline()
        ):
            found = _not_cached(repo_id, cache_dir())
        elif isinstance(link, hf.LocalEntryNotFoundError | ConnectionError | TimeoutError):
            found = _unreachable(repo_id, where, None, f"{type(link).__name__}: {link}")
        if found is not None:
            break
    if found is None and "couldn't connect to" in said:  # transformers kept no cause
        found = _not_cached(repo_id, cache_dir()) if offline() else None
        found = found or _unreachable(repo_id, where, None, said)
    if found is None:
        return None
    return HubError(
        found.code,
        repo_id,
        f"{found} [the worker could not load it: {said}]",
        found.retry_after_s,
    )
