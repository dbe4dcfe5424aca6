"""Build, load and call the native solvers (C++ on the CPU, CUDA on the GPU).

Both compile from ``hybridmatch/csrc`` on first use with torch's extension loader,
which caches the build (keyed by a hash of the sources) and holds a file lock while
building, so two processes starting together build once. ``python -m
hybridmatch.solvers.build`` builds ahead of time.
"""

from __future__ import annotations

import functools
import os
import shutil
import sysconfig
from pathlib import Path
from types import ModuleType

import torch

from ..errors import BackendUnavailableError

CSRC = Path(__file__).resolve().parent.parent / "csrc"
CPU_SOURCES = [CSRC / "cpu" / "lsap_cpu.cpp"]
CUDA_SOURCES = [CSRC / "cuda" / "lsap_cuda_binding.cpp", CSRC / "cuda" / "lsap_cuda.cu"]

# Status codes of csrc/lsap_core.h.
OK, NAN, BAD_INFINITY, INFEASIBLE = 0, 1, 2, 3


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


def _load(name: str, sources: list[Path], cuda: bool) -> ModuleType:
    from torch.utils.cpp_extension import load

    flags = ["-O3"]
    kwargs: dict = {"extra_cflags": flags}
    if cuda:
        kwargs["extra_cuda_cflags"] = ["-O3"]
    verbose = os.environ.get("HYBRIDMATCH_VERBOSE_BUILD", "") not in ("", "0")
    return load(name=name, sources=[str(s) for s in sources], verbose=verbose, **kwargs)


@functools.lru_cache(maxsize=None)
def _cpu_module() -> ModuleType | BackendUnavailableError:
    missing = cpu_missing()
    if missing:
        return BackendUnavailableError(f"backend 'native' is unavailable: {missing}")
    try:
        return _load("hybridmatch_native_cpu", CPU_SOURCES, cuda=False)
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
        return _load("hybridmatch_native_cuda", CUDA_SOURCES, cuda=True)
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
        # Pinned and non-blocking: the copy queues behind the cost's producers, no host wait.
        counts = torch.tensor(num_targets, dtype=torch.int64).pin_memory().to(cost.device, non_blocking=True)
        try:
            assignment, status = cuda_module().solve_batch(cost, counts, capacity, maximize)
        except RuntimeError as error:
            if "no kernel image" not in str(error):
                raise
            major, minor = torch.cuda.get_device_capability(cost.device)
            raise BackendUnavailableError(
                f"backend 'cuda' was built without code for this GPU (compute capability "
                f"{major}.{minor}): set TORCH_CUDA_ARCH_LIST='{major}.{minor}', clear the torch "
                "extension cache and rebuild (python -m hybridmatch.solvers.build --cuda)"
            ) from None
        return assignment, status.cpu()
    counts = torch.tensor(num_targets, dtype=torch.int64)
    return cpu_module().solve_batch(cost, counts, capacity, maximize)
