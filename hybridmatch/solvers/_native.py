"""Build, load and call the native solvers (C++ on the CPU, CUDA on the GPU).

Both compile from ``hybridmatch/csrc`` on first use with torch's extension loader.

- **Where**: one folder per build under ``<root>/hybridmatch/``, the root being
  ``TORCH_EXTENSIONS_DIR`` or torch's default (``~/.cache/torch_extensions``). The
  folder name holds the hybridmatch version, the torch version and build (CPU,
  CUDA), the Python version and a hash of the sources, headers and flags, so that
  environments sharing the cache never rebuild each other's build.
- **When**: a folder with a finished build is loaded directly, without the
  compiler or a lock; otherwise one line on stderr says that a build starts, why,
  how long it takes and how to build ahead of time (``python -m
  hybridmatch.solvers.build``). A line rather than a warning: it announces a wait,
  not a problem, and a ``-W error`` test run must not fail on a first build.
- **Locking**: a build holds ``hybridmatch.lock`` (its process id and host) in its
  folder, so that processes starting together build once. torch's own lock waits
  forever on a build that was killed part-way; this one is stale when its process
  is gone (same host) or older than ``HYBRIDMATCH_BUILD_LOCK_TIMEOUT`` seconds
  (default 900, for builds on another host), and a stale lock makes the backend
  unavailable with a message that says how to clear it (``auto`` falls back).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import json
import os
import re
import shutil
import socket
import sys
import sysconfig
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import torch

from .._version import __version__
from ..errors import BackendUnavailableError, ConfigurationError

CSRC = Path(__file__).resolve().parent.parent / "csrc"
CPU_SOURCES = [CSRC / "cpu" / "lsap_cpu.cpp"]
CUDA_SOURCES = [CSRC / "cuda" / "lsap_cuda_binding.cpp", CSRC / "cuda" / "lsap_cuda.cu"]
CPU_NAME, CUDA_NAME = "hybridmatch_native_cpu", "hybridmatch_native_cuda"

# Status codes of csrc/lsap_core.h.
OK, NAN, BAD_INFINITY, INFEASIBLE, BAD_COUNT = 0, 1, 2, 3, 4

LOCK_TIMEOUT_ENV = "HYBRIDMATCH_BUILD_LOCK_TIMEOUT"
DEFAULT_LOCK_TIMEOUT = 900.0
LOCK_FILE = "hybridmatch.lock"  # ours: who builds
TORCH_LOCK_FILE = "lock"  # torch's FileBaton, taken inside load()
COMPLETE_FILE = "hybridmatch.complete"  # written once load() has built and imported the library
_POLL_SECONDS = 0.2
_LIBRARY_SUFFIX = ".pyd" if os.name == "nt" else ".so"  # what torch names the library


def _compiler() -> str | None:
    candidates = [os.environ.get("CXX"), sysconfig.get_config_var("CXX"), "c++", "g++", "clang++"]
    for name in candidates:
        if name and shutil.which(name.split()[0]):
            return name
    return None


def cpu_missing() -> str | None:
    """Why the CPU solver cannot be built here, or None when it can."""
    if _compiler() is None:
        return "no C++ compiler found (install g++ or clang++, or set CXX)"
    from torch.utils.cpp_extension import is_ninja_available

    if not is_ninja_available():
        return "ninja, which torch's extension builder needs, was not found (pip install ninja)"
    return None


def cuda_missing() -> str | None:
    """Why the CUDA solver cannot be built or run here, or None when it can."""
    if torch.version.cuda is None:
        return f"this torch build ({torch.__version__}) has no CUDA support"
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible (torch.cuda.is_available() is False)"
    from torch.utils.cpp_extension import CUDA_HOME

    if CUDA_HOME is None or not (Path(CUDA_HOME) / "bin" / "nvcc").exists():
        return "the CUDA toolkit (nvcc) was not found: install it or set CUDA_HOME"
    return cpu_missing()


def _flags(cuda: bool) -> dict[str, list[str]]:
    flags = {"extra_cflags": ["-O3"]}
    if cuda:
        flags["extra_cuda_cflags"] = ["-O3"]
    return flags


def _build_key(sources: list[Path], cuda: bool) -> str:
    """A hash of what the build depends on besides the versions in the folder name."""
    digest = hashlib.sha256()
    headers = sorted(path for path in CSRC.rglob("*") if path.suffix in (".h", ".cuh", ".hpp"))
    for path in [*sources, *headers]:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    digest.update(json.dumps(_flags(cuda), sort_keys=True).encode())
    digest.update(str(_compiler()).encode())
    if cuda:  # the GPU architectures compiled for
        digest.update(os.environ.get("TORCH_CUDA_ARCH_LIST", "").encode())
    return digest.hexdigest()[:16]


def cache_root() -> Path:
    """Where native builds go: ``TORCH_EXTENSIONS_DIR/hybridmatch``, else torch's default root's."""
    root = os.environ.get("TORCH_EXTENSIONS_DIR")
    if not root:
        from torch.utils.cpp_extension import get_default_build_root

        root = get_default_build_root()
    return Path(root) / "hybridmatch"


def build_directory(name: str, sources: list[Path], cuda: bool) -> Path:
    """The folder of one build, keyed by hybridmatch, torch and Python versions and a source hash."""
    accelerator = f"-cu{torch.version.cuda}" if torch.version.cuda else ""
    if getattr(torch.version, "hip", None):
        accelerator = f"-rocm{torch.version.hip}"
    python = f"py{sys.version_info.major}{sys.version_info.minor}{getattr(sys, 'abiflags', '')}"
    label = (
        f"{name}-hm{__version__}-torch{torch.__version__}{accelerator}-{python}-"
        f"{_build_key(sources, cuda)}"
    )
    return cache_root() / re.sub(r"[^A-Za-z0-9._+-]", "_", label)


def _lock_timeout() -> float:
    text = os.environ.get(LOCK_TIMEOUT_ENV, "")
    if not text:
        return DEFAULT_LOCK_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise ConfigurationError(f"{LOCK_TIMEOUT_ENV} must be a number of seconds >= 0, got {text!r}")
    return value


def _alive(pid: int) -> bool:
    """Whether process ``pid`` of this host exists (unknown, so True, off POSIX)."""
    if os.name != "posix":
        return True  # os.kill would terminate it on Windows
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _stale_reason(lock: Path, timeout: float) -> str | None:
    """Why ``lock`` is left over from a build that stopped, or None while it may be live."""
    try:
        age = time.time() - lock.stat().st_mtime
        owner = json.loads(lock.read_text() or "{}")
    except FileNotFoundError:
        return None  # released meanwhile
    except (OSError, ValueError):
        owner = {}  # being written, or not ours: judged by its age
    pid = owner.get("pid") if isinstance(owner, dict) else None
    if isinstance(pid, int) and owner.get("host") == socket.gethostname() and not _alive(pid):
        return f"process {pid}, which took it, is gone"
    if age > timeout:
        return f"it was taken {age:.0f} s ago, more than {LOCK_TIMEOUT_ENV}={timeout:g} s"
    return None


def _stale_lock_error(what: str, directory: Path, lock: Path, reason: str) -> BackendUnavailableError:
    return BackendUnavailableError(
        f"backend {what!r} cannot be built: its build folder is locked by {lock}, a stale lock "
        f"({reason}): a build was stopped part-way. If no build is running, remove the folder "
        f"(rm -r '{directory}') and build again (python -m hybridmatch.solvers.build), or use backend='scipy'"
    )


@contextlib.contextmanager
def _build_lock(what: str, directory: Path) -> Iterator[None]:
    """Hold ``directory``'s build lock; wait while another live build holds it."""
    directory.mkdir(parents=True, exist_ok=True)
    lock = directory / LOCK_FILE
    timeout = _lock_timeout()
    announced = False
    while True:
        try:
            handle = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            reason = _stale_reason(lock, timeout)
            if reason is not None:
                raise _stale_lock_error(what, directory, lock, reason) from None
            if not announced:
                print(
                    f"hybridmatch: waiting for another process that builds the {what!r} solver "
                    f"(lock {lock})",
                    file=sys.stderr,
                    flush=True,
                )
                announced = True
            time.sleep(_POLL_SECONDS)
    try:
        with os.fdopen(handle, "w") as file:
            json.dump({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}, file)
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()


def _import_library(name: str, library: Path) -> ModuleType:
    """Import a finished build without torch's loader (no compiler check, no lock)."""
    spec = importlib.util.spec_from_file_location(name, library)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {library}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _announce(what: str, directory: Path, cuda: bool) -> None:
    duration = "1-5 minutes" if cuda else "about 30 s"
    print(
        f"hybridmatch: compiling the {what!r} solver, once for hybridmatch {__version__} "
        f"with torch {torch.__version__} (no build in {directory}); this takes {duration}. "
        "Build ahead of time with: python -m hybridmatch.solvers.build",
        file=sys.stderr,
        flush=True,
    )


def _load(name: str, sources: list[Path], cuda: bool) -> ModuleType:
    """Load the build of ``sources``, compiling it first when its folder holds none."""
    what = "cuda" if cuda else "native"
    directory = build_directory(name, sources, cuda)
    library = directory / f"{name}{_LIBRARY_SUFFIX}"
    complete = directory / COMPLETE_FILE
    if not (complete.exists() and library.exists()):
        with _build_lock(what, directory):
            if not (complete.exists() and library.exists()):  # another process may have built it
                torch_lock = directory / TORCH_LOCK_FILE
                if torch_lock.exists():  # left by a killed build: torch would wait on it forever
                    raise _stale_lock_error(what, directory, torch_lock, "no build holds hybridmatch.lock")
                _announce(what, directory, cuda)
                from torch.utils.cpp_extension import load

                verbose = os.environ.get("HYBRIDMATCH_VERBOSE_BUILD", "") not in ("", "0")
                module = load(
                    name=name,
                    sources=[str(s) for s in sources],
                    build_directory=str(directory),
                    verbose=verbose,
                    **_flags(cuda),
                )
                complete.write_text(json.dumps({"torch": torch.__version__, "built": time.time()}))
                return module
    return _import_library(name, library)


@functools.lru_cache(maxsize=None)
def _cpu_module() -> ModuleType | BackendUnavailableError:
    missing = cpu_missing()
    if missing:
        return BackendUnavailableError(f"backend 'native' is unavailable: {missing}")
    try:
        return _load(CPU_NAME, CPU_SOURCES, cuda=False)
    except BackendUnavailableError as error:
        return error
    except Exception as error:  # the compiler's message is the useful part
        return BackendUnavailableError(
            f"backend 'native' failed to build: {str(error).strip()[-1500:]}; set "
            "HYBRIDMATCH_VERBOSE_BUILD=1 to see the whole build, or use backend='scipy'"
        )


@functools.lru_cache(maxsize=None)
def _cuda_module() -> ModuleType | BackendUnavailableError:
    missing = cuda_missing()
    if missing:
        return BackendUnavailableError(f"backend 'cuda' is unavailable: {missing}")
    try:
        return _load(CUDA_NAME, CUDA_SOURCES, cuda=True)
    except BackendUnavailableError as error:
        return error
    except Exception as error:
        return BackendUnavailableError(
            f"backend 'cuda' failed to build: {str(error).strip()[-1500:]}; set "
            "HYBRIDMATCH_VERBOSE_BUILD=1 to see the whole build, set TORCH_CUDA_ARCH_LIST to "
            "include this GPU, or use backend='native'"
        )


def cpu_module() -> ModuleType:
    """The CPU extension, built on first use; raises BackendUnavailableError if it cannot be."""
    module = _cpu_module()
    if isinstance(module, BackendUnavailableError):
        raise module
    return module


def cuda_module() -> ModuleType:
    """The CUDA extension, built on first use; raises BackendUnavailableError if it cannot be."""
    module = _cuda_module()
    if isinstance(module, BackendUnavailableError):
        raise module
    return module


def solve_batch(
    cost: torch.Tensor, num_targets: list[int], capacity: int, maximize: bool, device: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run one native call: ``(assignment (B, N) int64 on the cost's device, status (B, 3) int64 on the host)``.

    ``status[b] = (code, query, target)``; the caller turns codes into errors.
    """
    if device == "cuda":
        # Host counts: the binding checks their bounds, builds the transposed cost only for
        # the problems that need it, and copies them pinned and non-blocking (no host wait).
        counts = torch.tensor(num_targets, dtype=torch.int64)
        try:
            assignment, status = cuda_module().solve_batch(cost, counts, capacity, maximize)
        except RuntimeError as error:
            if "no kernel image" not in str(error):
                raise
            major, minor = torch.cuda.get_device_capability(cost.device)
            raise BackendUnavailableError(
                f"backend 'cuda' was built without code for this GPU (compute capability "
                f"{major}.{minor}): set TORCH_CUDA_ARCH_LIST='{major}.{minor}' (a build of its own) "
                "and rebuild (python -m hybridmatch.solvers.build --cuda) before a new process"
            ) from None
        status = status.cpu()
        if bool((status[:, 0] == BAD_COUNT).any()):  # the kernel's own check: never from host counts
            raise RuntimeError(
                f"hybridmatch CUDA solver: num_targets out of range reached the kernel ({num_targets}); "
                "this is a bug in hybridmatch, please report it"
            )
        return assignment, status
    counts = torch.tensor(num_targets, dtype=torch.int64)
    return cpu_module().solve_batch(cost, counts, capacity, maximize)
