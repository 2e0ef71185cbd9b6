"""Whether the Hugging Face hub or its local cache can provide a model, found out in seconds.

Without this, an uncached id with no network costs two rounds of the hub client's retries with
backoff (most of a minute, docs/LOG.md) before `from_pretrained` gives up. One HEAD request for
`config.json`, with a short timeout and no retries, tells a usable hub from an unreachable one or
a missing repo.
"""

from __future__ import annotations

from pathlib import Path

from monoscope.models.builtin import BUILTIN_MODELS

PROBE_TIMEOUT_S = 5.0
"""Seconds the probe waits for the hub to connect or answer."""


class ModelNotFoundError(ValueError):
    """Not a built-in model, not a local folder, and the hub could not provide it."""


def hub_load_options(repo_id: str) -> tuple[dict[str, str | bool], str]:
    """The `from_pretrained` options that load hub id `repo_id`, and the commit they pin.

    Raises ModelNotFoundError at once when neither the hub nor the cache has the model. A cached
    model loads from the cache when the hub is unreachable or refuses, and under the user's
    HF_HUB_OFFLINE=1. Tokenizer and weights are pinned to one commit, which names the revision.
    """
    from huggingface_hub import constants

    cached = _cached_commit(repo_id)
    if constants.HF_HUB_OFFLINE:
        if cached:
            return {"revision": cached}, cached
        raise ModelNotFoundError(
            f"{_not_here(repo_id)}, and HF_HUB_OFFLINE is set: pass the path of a folder saved "
            "with save_pretrained, or unset HF_HUB_OFFLINE to download it from the hub"
        )
    try:
        commit = _hub_commit(repo_id)
    except ModelNotFoundError:
        if cached:
            return {"revision": cached, "local_files_only": True}, cached
        raise
    return ({"revision": commit}, commit) if commit else ({}, "")


def _not_here(repo_id: str) -> str:
    from huggingface_hub import constants

    return (
        f"model {repo_id!r} is not a built-in model ({', '.join(sorted(BUILTIN_MODELS))}), a "
        f"local folder, or in the Hugging Face cache ({constants.HF_HUB_CACHE})"
    )


def _cached_commit(repo_id: str) -> str:
    """The commit of the cached copy of `repo_id`'s config (the cache keeps files under
    snapshots/<commit>/), or "" when there is none."""
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    try:
        config = try_to_load_from_cache(repo_id, "config.json")
    except HFValidationError as err:
        raise ModelNotFoundError(
            f"model {repo_id!r} is not a built-in model ({', '.join(sorted(BUILTIN_MODELS))}), "
            f"a local folder, or a Hugging Face hub id ({first_line(err)})"
        ) from None
    return Path(config).parent.name if isinstance(config, str) else ""


def _hub_commit(repo_id: str) -> str:
    """The commit the hub serves `repo_id`'s config at ("" if it does not say); one request,
    no retries. ModelNotFoundError when the hub refuses or cannot be reached."""
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import HfHubHTTPError

    hub = constants.ENDPOINT
    try:
        meta = get_hf_file_metadata(hf_hub_url(repo_id, "config.json"), timeout=PROBE_TIMEOUT_S)
    except HfHubHTTPError as err:  # the hub answered: no such repo or file, no access, a fault
        status = err.response.status_code if err.response is not None else 0
        hint = (
            "try again later, or pass the path of a folder saved with save_pretrained"
            if status >= 500
            else "check the id, or log in (`hf auth login`) for a private or gated model"
        )
        raise ModelNotFoundError(
            f"{_not_here(repo_id)}, and the hub at {hub} answered {status or 'an error'} "
            f"({type(err).__name__}: {first_line(err)}): {hint}"
        ) from err
    except Exception as err:  # any transport failure; its class differs across hub versions
        raise ModelNotFoundError(
            f"{_not_here(repo_id)}, and the hub at {hub} is unreachable "
            f"({type(err).__name__}: {first_line(err)}): pass the path of a folder saved with "
            "save_pretrained, or connect to the network (or set HF_ENDPOINT to a mirror) to "
            "download it once"
        ) from err
    return meta.commit_hash or ""


def first_line(err: BaseException) -> str:
    """The first line of an error's text: hub errors run to several lines."""
    text = str(err).strip()
    return text.splitlines()[0] if text else "no detail"
