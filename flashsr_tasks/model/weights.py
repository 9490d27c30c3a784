"""Where FlashSR's three checkpoints come from: a given folder, else one Hub download into the cache.

Every failure becomes `ModelUnavailable` with one sentence, never a retry loop; torch-free, and huggingface_hub is
imported only for a download. `main` is `flashsr-download`. docs/model.md, "Weights", "Mirrors" and "Ahead of
time", explains the order, the repo types and the cache.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from flashsr_tasks import config
from flashsr_tasks.files.hashing import sha256_of

log = logging.getLogger(__name__)

WEIGHT_FILES = ("student_ldm.pth", "sr_vocoder.pth", "vae.pth")
DEFAULT_REPO = "jakeoneijk/FlashSR_weights"
DEFAULT_REPO_TYPE = "dataset"
REPO_TYPES = ("dataset", "model")
# Only the three files are fetched, at the top of the snapshot or in any sub-folder of it.
_PATTERNS = [pattern for name in WEIGHT_FILES for pattern in (name, f"*/{name}")]
# No commit hash of the dataset repo could be verified from here (no network), so the default
# follows the branch; the record's label still names the exact commit that was downloaded.
# Set FLASHSR_WEIGHTS_REVISION to a 40-hex commit to pin it (a commit also skips one Hub request).
DEFAULT_REVISION = "main"
DEFAULT_CACHE_DIR = ".cache/flashsr_weights"
LOCK_TIMEOUT_S = 3600.0   # a first download is ~3.3 GB; a second worker waits for it, not forever
ETAG_TIMEOUT_S = 10.0     # per metadata request; the Hub client does not retry refused connections

_WHAT_TO_DO = (
    "pass --model_dir or set FLASHSR_MODEL_DIR to a folder holding student_ldm.pth, sr_vocoder.pth "
    "and vae.pth (flashsr-download --local-dir DIR fetches them on a connected host)"
)


class ModelUnavailable(Exception):
    """The FlashSR model cannot be used here; the message is one sentence saying what to do."""


@dataclass(frozen=True)
class Weights:
    folder: Path   # holds the three files
    label: str     # for the manifest: "repo@commit" or the model folder's name, never a path

    def path(self, name: str) -> Path:
        return self.folder / name


def _missing(folder: Path) -> list[str]:
    return [name for name in WEIGHT_FILES if not (folder / name).is_file()]


def weights_in_folder(folder: str | os.PathLike[str]) -> Weights:
    """A model folder given by the user; its label is the folder's name."""
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise ModelUnavailable(f"the FlashSR model folder {folder} does not exist: {_WHAT_TO_DO}")
    missing = _missing(path)
    if missing:
        raise ModelUnavailable(
            f"the FlashSR model folder {folder} lacks {', '.join(missing)}: {_WHAT_TO_DO}")
    return Weights(folder=path, label=path.resolve().name)


def hub_settings(repo: Optional[str] = None, revision: Optional[str] = None,
                 cache_dir: Optional[str] = None, repo_type: Optional[str] = None) -> tuple[str, str, str, Path]:
    """Repo, repo type, revision and cache folder: arguments, else the environment, else the
    defaults. A `datasets/` or `models/` prefix on the repo names its type (and wins)."""
    repo = (repo or config.weights_repo() or DEFAULT_REPO).strip().strip("/")
    kind = (repo_type or config.weights_repo_type() or DEFAULT_REPO_TYPE).strip().lower()
    for prefix, prefixed_type in (("datasets/", "dataset"), ("models/", "model")):
        if repo.startswith(prefix) and repo.count("/") == 2:
            repo, kind = repo[len(prefix):], prefixed_type
    if kind not in REPO_TYPES:
        raise ModelUnavailable(f"FLASHSR_WEIGHTS_REPO_TYPE must be dataset or model, not {kind!r}")
    return (repo, kind,
            revision or config.weights_revision() or DEFAULT_REVISION,
            Path(cache_dir or config.cache_dir() or DEFAULT_CACHE_DIR).expanduser())


def _where(repo: str, repo_type: str, revision: str) -> str:
    """How messages name a repo: `owner/name@rev` for the default dataset type, else prefixed."""
    return f"{'models/' if repo_type == 'model' else ''}{repo}@{revision}"


def weights_folder_in(snapshot: Path) -> Optional[Path]:
    """The folder of `snapshot` that holds the three files: itself, else the shallowest
    sub-folder (by name among equals), None when there is none."""
    if not _missing(snapshot):
        return snapshot
    holders = sorted((p.parent for p in snapshot.rglob(WEIGHT_FILES[0]) if not _missing(p.parent)),
                     key=lambda p: (len(p.parts), str(p)))
    return holders[0] if holders else None


def file_digests(weights: "Weights") -> list[tuple[str, int, str]]:
    """(name, size in bytes, sha256) of each of the three files, to compare a pinned set across hosts."""
    digests = []
    for name in WEIGHT_FILES:
        path = weights.path(name)
        digests.append((name, path.stat().st_size, sha256_of(path)))
    return digests


def locate_weights(model_dir: Optional[str] = None) -> Weights:
    """The weights to load: `model_dir`, else `FLASHSR_MODEL_DIR`, else the Hub cache (downloading once)."""
    folder = model_dir or config.model_dir()
    if folder:
        return weights_in_folder(folder)
    return download_weights()


def download_weights(repo: Optional[str] = None, revision: Optional[str] = None,
                     cache_dir: Optional[str] = None, local_dir: Optional[str] = None,
                     repo_type: Optional[str] = None) -> Weights:
    """The three files of `repo@revision` from the cache, downloading them first if needed.

    With `local_dir`, the files are placed in that plain folder (for `--model_dir`) instead of
    the Hub cache layout under `cache_dir`.
    """
    repo, repo_type, revision, cache = hub_settings(repo, revision, cache_dir, repo_type)
    try:
        import huggingface_hub  # noqa: F401  (lazy: cpu workers need not have it)
        from filelock import FileLock, Timeout
    except ImportError as exc:
        raise ModelUnavailable(
            f"downloading the FlashSR weights needs huggingface_hub ({exc}): install the 'model' extra, "
            f"or {_WHAT_TO_DO}") from None

    # A complete snapshot already on disk needs no network (and no lock).
    found = _from_cache(repo, repo_type, revision, cache, local_dir)
    if found is not None:
        return found
    if config.hf_hub_offline():
        raise ModelUnavailable(
            f"the FlashSR weights ({_where(repo, repo_type, revision)}) are not in the cache (FLASHSR_CACHE_DIR) and "
            f"HF_HUB_OFFLINE is set: {_WHAT_TO_DO}")

    cache.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(cache / ".flashsr_download.lock"), timeout=LOCK_TIMEOUT_S)
    try:
        with lock:
            # Another process may have finished the download while this one waited.
            found = _from_cache(repo, repo_type, revision, cache, local_dir)
            if found is not None:
                return found
            log.info("downloading the FlashSR weights from %s (about 3.3 GB)", _where(repo, repo_type, revision))
            return _download(repo, repo_type, revision, cache, local_dir)
    except Timeout:
        raise ModelUnavailable(
            f"another process has held the FlashSR download lock for over {LOCK_TIMEOUT_S:.0f} s: "
            f"remove {cache / '.flashsr_download.lock'} if no download is running, or {_WHAT_TO_DO}") from None


def _snapshot(repo: str, repo_type: str, revision: str, cache: Path, local_dir: Optional[str],
              offline: bool) -> Weights:
    from huggingface_hub import snapshot_download

    snapshot = Path(snapshot_download(
        repo_id=repo, repo_type=repo_type, revision=revision,
        cache_dir=str(cache), local_dir=local_dir, allow_patterns=_PATTERNS,
        local_files_only=offline, etag_timeout=ETAG_TIMEOUT_S,
        # HF_ENDPOINT is read when huggingface_hub is imported; read it again so it can change later.
        endpoint=config.hf_endpoint(),
    ))
    folder = weights_folder_in(snapshot)
    if folder is None:
        raise ModelUnavailable(
            f"{_where(repo, repo_type, revision)} has no folder holding all of {', '.join(WEIGHT_FILES)}: "
            f"check FLASHSR_WEIGHTS_REPO, FLASHSR_WEIGHTS_REPO_TYPE and FLASHSR_WEIGHTS_REVISION, or {_WHAT_TO_DO}")
    # In the cache layout the snapshot folder is named after the commit: the exact revision used.
    commit = snapshot.name if local_dir is None else revision
    sub = folder.relative_to(snapshot).as_posix()
    return Weights(folder=folder, label=_where(repo, repo_type, commit) + ("" if sub == "." else f":{sub}"))


def _from_cache(repo: str, repo_type: str, revision: str, cache: Path, local_dir: Optional[str]) -> Optional[Weights]:
    if local_dir is not None:
        folder = weights_folder_in(Path(local_dir)) if Path(local_dir).is_dir() else None
        return None if folder is None else weights_in_folder(folder)
    try:
        return _snapshot(repo, repo_type, revision, cache, None, offline=True)
    except Exception:  # not (completely) cached: LocalEntryNotFoundError, IncompleteSnapshotError, …
        return None


def _download(repo: str, repo_type: str, revision: str, cache: Path, local_dir: Optional[str]) -> Weights:
    from huggingface_hub import errors

    where = _where(repo, repo_type, revision)
    try:
        return _snapshot(repo, repo_type, revision, cache, local_dir, offline=False)
    except ModelUnavailable:
        raise
    except errors.GatedRepoError:
        raise ModelUnavailable(
            f"{repo} is gated and this host is not authorised: set HF_TOKEN to a token of an account "
            f"that accepted its terms, or {_WHAT_TO_DO}") from None
    except errors.RepositoryNotFoundError:
        raise ModelUnavailable(
            f"{_where(repo, repo_type, revision).rsplit('@', 1)[0]} was not found or refused access (401): "
            f"check FLASHSR_WEIGHTS_REPO (a dataset repo unless FLASHSR_WEIGHTS_REPO_TYPE=model or it starts "
            f"with models/), set HF_TOKEN, or {_WHAT_TO_DO}") from None
    except errors.RevisionNotFoundError:
        raise ModelUnavailable(
            f"{repo} has no revision {revision}: check FLASHSR_WEIGHTS_REVISION, or {_WHAT_TO_DO}") from None
    except errors.HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        hint = "set HF_TOKEN, " if status in (401, 403) else ""
        raise ModelUnavailable(
            f"the Hub refused the FlashSR weights download ({where}, HTTP {status}): "
            f"{hint}{_WHAT_TO_DO}") from None
    except (errors.LocalEntryNotFoundError, OSError) as exc:
        # No network, DNS failure, refused connection, timeout, Hub down, or a full disk.
        cause = exc.__cause__ or exc
        status = getattr(getattr(cause, "response", None), "status_code", None)
        if status == 404:
            why = "the Hub answered HTTP 404: check FLASHSR_WEIGHTS_REPO and FLASHSR_WEIGHTS_REPO_TYPE"
        elif status:
            why = f"the Hub answered HTTP {status}"
        elif isinstance(cause, OSError) and cause.errno:  # e.g. no space left in the cache
            why = f"{cause.strerror} in {cache}"
        else:
            why = f"{type(cause).__name__}: no network?"
        raise ModelUnavailable(
            f"the FlashSR weights could not be downloaded from {where} ({why}): "
            f"{_WHAT_TO_DO}") from None
    except Exception as exc:  # anything else from the client: still one sentence, never a crash
        first_line = (str(exc).strip().splitlines() or [""])[0][:200]
        raise ModelUnavailable(
            f"the FlashSR weights download from {where} failed ({type(exc).__name__}: {first_line}): "
            f"{_WHAT_TO_DO}") from None


def main(argv: Optional[Sequence[str]] = None) -> int:
    """`flashsr-download`: fetch the FlashSR weights ahead of time."""
    parser = argparse.ArgumentParser(
        prog="flashsr-download",
        description="Download FlashSR's weights (student_ldm.pth, sr_vocoder.pth, vae.pth) ahead of "
                    "time, for images and air-gapped hosts. Without --local-dir they go into the cache "
                    "that workers use when no --model_dir is given. Prints the folder holding them.",
    )
    parser.add_argument("--cache-dir", default=None,
                        help=f"download cache (default: env FLASHSR_CACHE_DIR, else {DEFAULT_CACHE_DIR})")
    parser.add_argument("--local-dir", default=None,
                        help="put the three files in this plain folder instead, for --model_dir / FLASHSR_MODEL_DIR")
    parser.add_argument("--repo", default=None,
                        help=f"Hugging Face repo, owner/name, or datasets/owner/name or models/owner/name "
                             f"(default: env FLASHSR_WEIGHTS_REPO, else {DEFAULT_REPO})")
    parser.add_argument("--repo-type", choices=REPO_TYPES, default=None,
                        help=f"what --repo is, when it has no prefix (default: env FLASHSR_WEIGHTS_REPO_TYPE, "
                             f"else {DEFAULT_REPO_TYPE}); the three files may lie in a sub-folder of it")
    parser.add_argument("--verify", action="store_true",
                        help="also print each file's size and sha256, to compare a pinned set across hosts")
    parser.add_argument("--revision", default=None,
                        help=f"branch, tag or commit (default: env FLASHSR_WEIGHTS_REVISION, else {DEFAULT_REVISION})")
    args = parser.parse_args(argv)  # exits 2 on a usage error
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        weights = download_weights(args.repo, args.revision, args.cache_dir, args.local_dir, args.repo_type)
        digests = file_digests(weights) if args.verify else []
    except ModelUnavailable as exc:
        print(f"flashsr-download: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"flashsr-download: cannot read the weights to verify them ({exc.strerror}: {exc.filename})",
              file=sys.stderr)
        return 1
    print(weights.folder)
    for name, size, digest in digests:
        print(f"{name}\t{size}\tsha256:{digest}")
    print(f"flashsr-download: weights ready ({weights.label})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
