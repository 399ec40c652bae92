"""Where other tools already keep model weights: torch's hub cache and the Hugging Face hub cache.

Users who ran ``torch.hub.load(...)``, torchvision or timm before already have the files; looking there
first saves them a download (a 4.5 GB ViT-g, say). Every lookup goes through the owning library's own
API (``torch.hub.get_dir``, ``huggingface_hub.try_to_load_from_cache``/``hf_hub_download``), never by
guessing folder names, except for the one rule both libraries document for their cache folder, which we
read at call time (see ``hf_cache_dir``) so a changed ``HF_HOME`` is honoured without a restart.
"""

from __future__ import annotations

import os
from pathlib import Path

from core.base.errors import MissingFileError
from core.base.progress import ProgressCallback, RateMeter, report


def torch_hub_checkpoints_dir() -> Path:
    """``$TORCH_HOME/hub/checkpoints`` (default ``~/.cache/torch/hub/checkpoints``), where torch.hub and
    torchvision save downloaded weights; ``torch.hub.get_dir`` reads ``TORCH_HOME`` on every call."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def torch_hub_file(filename: str) -> Path | None:
    """The file ``filename`` in torch's hub checkpoint cache, or None."""
    path = torch_hub_checkpoints_dir() / filename
    return path if path.is_file() else None


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache folder: ``HF_HUB_CACHE``, else ``$HF_HOME/hub``, else huggingface_hub's default.

    huggingface_hub resolves these variables once, at import; reading them here on each call means a page or
    test that changes them is obeyed, while an unset environment gives exactly huggingface_hub's own folder.
    """
    from huggingface_hub import constants

    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.path.expandvars(os.environ["HF_HUB_CACHE"])).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.path.expandvars(os.environ["HF_HOME"])).expanduser() / "hub"
    return Path(constants.HF_HUB_CACHE)


def hf_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) forbids the Hugging Face hub, read on each call."""
    from huggingface_hub import constants

    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")
    return constants.HF_HUB_OFFLINE if value is None else value.strip().upper() in {"1", "ON", "YES", "TRUE"}


def hf_cached_file(repo_id: str, filenames: tuple[str, ...]) -> Path | None:
    """The first of ``filenames`` of model repo ``repo_id`` that is in the HF hub cache (main revision), or None."""
    from huggingface_hub import try_to_load_from_cache

    for filename in filenames:
        found = try_to_load_from_cache(repo_id, filename, cache_dir=hf_cache_dir())
        if isinstance(found, str) and Path(found).is_file():  # may also be None or the "known absent" marker
            return Path(found)
    return None


def hf_endpoint() -> str | None:
    """``HF_ENDPOINT`` (a mirror of the hub) read on each call; None means huggingface_hub's default."""
    return os.environ.get("HF_ENDPOINT", "").rstrip("/") or None


def hf_url(repo_id: str, filename: str) -> str:
    from huggingface_hub import hf_hub_url

    return hf_hub_url(repo_id, filename, endpoint=hf_endpoint())


def _progress_bar_class(progress: ProgressCallback | None, what: str):
    """A tqdm class for ``hf_hub_download(tqdm_class=...)`` that turns its updates into our progress events."""
    from tqdm.std import tqdm

    class _ProgressEvents(tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **{**kwargs, "disable": True})  # draws nothing; we report instead
            self._done = int(kwargs.get("initial") or 0)
            self._meter = RateMeter()
            self._resumed_at = self._done

        def update(self, n=1):
            self._done += int(n or 0)
            total = int(self.total or 0)
            rate = self._meter.rate(self._done - self._resumed_at)
            report(
                progress,
                "download",
                self._done,
                total,
                rate=rate,
                message=f"{what}: {self._done / 1e6:.1f} of {total / 1e6:.1f} MB at {rate / 1e6:.1f} MB/s",
            )

    return _ProgressEvents


def hf_download(
    repo_id: str,
    filenames: tuple[str, ...],
    *,
    what: str,
    manual_hint: str,
    progress: ProgressCallback | None = None,
) -> Path:
    """Download the first of ``filenames`` that repo ``repo_id`` has, into the HF hub cache, with progress.

    ``hf_hub_download`` resumes an interrupted transfer from its ``.incomplete`` file and finishes atomically.

    Raises
    ------
    MissingFileError
        Offline (``HF_HUB_OFFLINE`` or no network) or the repo has none of the files; names the repo, the
        URLs and ``manual_hint``.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    urls = " or ".join(hf_url(repo_id, f) for f in filenames)
    if hf_offline():
        raise MissingFileError(
            f"Could not download {what}: HF_HUB_OFFLINE is set, and the Hugging Face cache {hf_cache_dir()} does not "
            f"hold {' or '.join(filenames)} of {repo_id} ({urls}). {manual_hint}"
        )
    last_error: Exception | None = None
    for filename in filenames:
        try:
            return Path(
                hf_hub_download(
                    repo_id,
                    filename,
                    cache_dir=hf_cache_dir(),
                    endpoint=hf_endpoint(),
                    tqdm_class=_progress_bar_class(progress, what),
                )
            )
        except (LocalEntryNotFoundError, OfflineModeIsEnabled) as exc:  # offline: the other file will not come either
            last_error = exc
            break
        except EntryNotFoundError as exc:  # the repo publishes the other format; try it
            last_error = exc
        except (HfHubHTTPError, OSError) as exc:
            last_error = exc
            break
    reason = str(last_error).splitlines()[0] if last_error else "unknown error"
    raise MissingFileError(f"Could not download {what} from {urls} ({reason}). {manual_hint}") from last_error
