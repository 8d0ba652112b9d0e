"""Where model and SAE files come from: hub ids, local paths, the operator's allowed directories, offline safety.

Three rules, applied here and nowhere else:

1. **Allowed directories.** A local path is read only when it lies inside a directory the operator allowed:
   the shipped ``assets/``, the Hugging Face cache (what the app itself downloaded), the directories given
   with ``--allow-dir`` or in ``$CSW_ALLOWED_DIRS`` (separated by ``os.pathsep``), and paths the operator
   named on the command line. Symbolic links are resolved first, so a link cannot point outside.
2. **Never hang offline.** Before anything touches the hub, :func:`hub_guard` checks (once per minute, in
   under 3 s) that the hub's host answers; when it does not, the load runs in huggingface_hub's offline mode
   and fails at once from the local cache instead of retrying DNS for a minute.
3. **Say how to fix it.** A model or SAE that is neither cached nor fetchable raises
   :class:`ModelUnavailableError` naming it and saying how to provide it locally.

An SAE source is a local path or ``hf:OWNER/REPO[/PATH/IN/REPO]`` (a file or a folder of a hub repository).

>>> parse_hub_source("hf:osunlp/SAE_CLIP_24K_ViT-B-16_IN1K/sae.pt")
('osunlp/SAE_CLIP_24K_ViT-B-16_IN1K', 'sae.pt')
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlparse

from engine.errors import ModelUnavailableError, PathNotAllowedError, UserInputError
from engine.specs import ASSETS, ModelSpec

T = TypeVar("T")

log = logging.getLogger(__name__)
ALLOWED_DIRS_ENV = "CSW_ALLOWED_DIRS"
HUB_PREFIX = "hf:"
REACHABILITY_TIMEOUT_S = 3.0

_guard_lock = threading.Lock()  # taken only to read or switch the offline flag, never during a load
_reachability: dict[str, tuple[float, bool]] = {}
_forced_offline = 0  # loads now running in the offline mode that hub_guard switched on


def hf_cache_dir() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


@dataclass(frozen=True)
class AllowedDirs:
    """The directories (resolved) from which model and SAE files may be read."""

    dirs: tuple[Path, ...]

    @classmethod
    def default(cls, extra: Iterable[str | Path] = ()) -> AllowedDirs:
        from_env = [p for p in os.environ.get(ALLOWED_DIRS_ENV, "").split(os.pathsep) if p.strip()]
        candidates = [ASSETS, hf_cache_dir(), *from_env, *extra]
        return cls(tuple(dict.fromkeys(Path(p).expanduser().resolve() for p in candidates)))

    def with_paths(self, paths: Iterable[str | Path]) -> AllowedDirs:
        """These plus the given paths (what the operator named on the command line)."""
        return AllowedDirs(tuple(dict.fromkeys([*self.dirs, *(Path(p).expanduser().resolve() for p in paths)])))

    def check(self, path: str | Path) -> Path:
        """The resolved path, when it lies inside an allowed directory; otherwise a clear refusal."""
        resolved = Path(path).expanduser().resolve()
        if any(resolved == d or resolved.is_relative_to(d) for d in self.dirs):
            return resolved
        allowed = ", ".join(str(d) for d in self.dirs)
        raise PathNotAllowedError(
            f"{path} is outside the directories the operator allowed ({allowed}); "
            f"start the app with --allow-dir DIR (or set {ALLOWED_DIRS_ENV}) to allow another one"
        )


def local_model_paths(spec: ModelSpec) -> list[Path]:
    """The local files a model spec names (they must lie in allowed directories)."""
    if spec.family == "open_clip":
        paths = [spec.name[len("local-dir:") :]] if spec.name.startswith("local-dir:") else []
        if spec.pretrained and ("/" in spec.pretrained or Path(spec.pretrained).exists()):
            paths.append(spec.pretrained)
        return [Path(p) for p in paths]
    if spec.name.startswith(("/", ".", "~")) or Path(spec.name).exists():
        return [Path(spec.name)]
    return []


def parse_hub_source(source: str) -> tuple[str, str]:
    """``hf:OWNER/REPO[/PATH]`` -> (repo id, path inside the repository, '' for all of it)."""
    if not source.startswith(HUB_PREFIX):
        raise UserInputError(f"not a hub source: {source!r}; expected hf:OWNER/REPO[/PATH]")
    parts = source[len(HUB_PREFIX) :].strip("/").split("/")
    if len(parts) < 2 or not all(parts[:2]):
        raise UserInputError(f"a hub source needs an owner and a repository: hf:OWNER/REPO[/PATH]; got {source!r}")
    if any(part in ("..", ".") for part in parts):
        raise UserInputError(f"a hub source may not contain '.' or '..' segments; got {source!r}")
    return "/".join(parts[:2]), "/".join(parts[2:])


def hub_reachable(timeout_s: float = REACHABILITY_TIMEOUT_S) -> bool:
    """Whether the hub's host accepts a TCP connection (remembered for a minute)."""
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    cached = _reachability.get(host)
    if cached and time.monotonic() - cached[0] < 60:
        return cached[1]
    answer: list[bool] = []

    def connect() -> None:  # in a thread: the timeout of create_connection does not bound the DNS lookup
        try:
            with socket.create_connection((host, port), timeout=timeout_s):
                answer.append(True)
        except OSError:
            answer.append(False)

    probe = threading.Thread(target=connect, daemon=True)
    probe.start()
    probe.join(timeout_s)
    reachable = bool(answer and answer[0])
    _reachability[host] = (time.monotonic(), reachable)
    return reachable


@contextlib.contextmanager
def hub_guard() -> Iterator[bool]:
    """Run a load in huggingface_hub's offline mode when the hub cannot be reached; yields whether offline.

    huggingface_hub (and transformers and open_clip through it) read ``constants.HF_HUB_OFFLINE`` at call
    time, so switching it here turns a minute of DNS retries into an immediate cache miss. The flag is
    process-wide, so it is switched on while at least one guarded load needs it and off when the last one
    ends; the lock covers only that bookkeeping, so one slow download never blocks another user's load.
    """
    global _forced_offline
    from huggingface_hub import constants

    with _guard_lock:
        set_by_user = bool(constants.HF_HUB_OFFLINE) and _forced_offline == 0
    if set_by_user:
        yield True
        return
    if hub_reachable():
        yield False
        return
    log.warning("the model hub is unreachable: loading from the local cache only")
    with _guard_lock:
        _forced_offline += 1
        constants.HF_HUB_OFFLINE = True
    try:
        yield True
    finally:
        with _guard_lock:
            _forced_offline -= 1
            if _forced_offline == 0:
                constants.HF_HUB_OFFLINE = False


def how_to_provide(name: str, offline: bool) -> str:
    why = "the hub is not reachable from here (or HF_HUB_OFFLINE is set)" if offline else "the hub refused it"
    return (
        f"{name} is not in the local cache and {why}. On a machine with network, run "
        f"`hf download {name} --local-dir DIR`, copy DIR here and pass the directory instead "
        "(inside a directory allowed with --allow-dir)"
    )


def load_pretrained(name: str, from_pretrained: Callable[[str, bool], T], what: str, contents: str) -> T:
    """``from_pretrained(source, local_files_only)`` for a ``save_pretrained`` directory, or a hub id from the local
    cache first and the hub (through :func:`hub_guard`) second; a failure says how to provide the files.
    ``what`` names the kind of model in messages, ``contents`` what such a directory must hold."""
    path = Path(name).expanduser()
    if path.is_dir():
        try:
            return from_pretrained(str(path), True)
        except (OSError, ValueError) as error:
            raise ModelUnavailableError(
                f"could not load the {what} in {path}: {error}. The directory must hold {contents}."
            ) from error
    if name.startswith(("/", ".", "~")) or name.count("/") > 1:  # a path, not a hub id ("owner/name")
        raise ModelUnavailableError(
            f"{what} directory {name!r} does not exist; pass a directory written by save_pretrained "
            "(e.g. by `hf download <hub id> --local-dir DIR`) or a hub id"
        )
    try:  # the cache first: no network check for a model that is already here
        return from_pretrained(name, True)
    except (OSError, ValueError) as cached_error:
        log.debug("%s is not in the local cache: %s", name, cached_error)
    with hub_guard() as offline:
        try:
            return from_pretrained(name, offline)
        except (OSError, ValueError) as error:
            raise ModelUnavailableError(f"{what} {how_to_provide(name, offline)}") from error


def resolve_sae_source(source: str, allowed: AllowedDirs) -> Path:
    """A local path to the SAE's file or folder: checked against the allowed directories, or fetched from
    (or found in the cache of) the hub."""
    if not source.startswith(HUB_PREFIX):
        path = allowed.check(source)
        if not path.exists():
            raise FileNotFoundError(f"SAE not found: {source}")
        return path
    repo_id, inner = parse_hub_source(source)
    from huggingface_hub import snapshot_download

    patterns = None if not inner else [inner, f"{inner}/*"]
    with hub_guard() as offline:
        try:
            root = Path(snapshot_download(repo_id, allow_patterns=patterns))
        except Exception as error:  # huggingface_hub raises many types for "not here and not fetchable"
            raise ModelUnavailableError(f"SAE {source}: {how_to_provide(repo_id, offline)}. ({error})") from error
    path = root / inner if inner else root
    if not path.exists():
        raise ModelUnavailableError(f"SAE {source}: the repository {repo_id} has no {inner!r}")
    return path
