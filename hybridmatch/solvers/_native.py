"""Load and call the compiled solvers: C++ on the CPU, CUDA on the GPU.

Both are built when the package is installed (``CMakeLists.txt``, run by
scikit-build-core) as nanobind extensions, ``hybridmatch._lsap`` and
``hybridmatch._lsap_cuda``. They read tensors through DLPack and link no libtorch,
so one build serves every torch version; nothing compiles at run time. A package
installed without them (no C++ compiler at install time, ``HYBRIDMATCH_NATIVE=0``;
for CUDA: built without ``HYBRIDMATCH_CUDA=1``) reports why here, and the entry
point falls back or raises.

The status codes are the extension's ``Status`` enum (``csrc/lsap_core.h``), the
one definition of them.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import torch

from ..errors import BackendUnavailableError

_REINSTALL = (
    "reinstall hybridmatch where a C++ compiler is present (pip install --force-reinstall "
    "--no-binary hybridmatch hybridmatch, or pip install . from a checkout)"
)


def _import(name: str) -> tuple[ModuleType | None, str | None]:
    try:
        return importlib.import_module(f"hybridmatch.{name}"), None
    except ModuleNotFoundError as error:
        if error.name != f"hybridmatch.{name}":
            raise
        return None, None
    except ImportError as error:  # built, but not loadable here (another platform, a missing library)
        return None, f"{type(error).__name__}: {error}"


_cpu, _cpu_error = _import("_lsap")
_cuda, _cuda_error = _import("_lsap_cuda") if _cpu is not None else (None, None)

#: The per-problem outcome codes of the native cores (``csrc/lsap_core.h``), or None
#: when the package was installed without its compiled solver.
Status = _cpu.Status if _cpu is not None else None


def cpu_missing() -> str | None:
    """Why the CPU solver cannot run here, or None when it can."""
    if _cpu is not None:
        return None
    if _cpu_error is not None:
        return f"its compiled module hybridmatch._lsap does not load ({_cpu_error}); {_REINSTALL}"
    return (
        "hybridmatch was installed without its compiled solver (no C++ compiler at install "
        f"time, or HYBRIDMATCH_NATIVE=0); {_REINSTALL}"
    )


def cuda_missing() -> str | None:
    """Why the CUDA solver cannot run here, or None when it can."""
    if _cuda is None:
        if _cuda_error is not None:
            return f"its compiled module hybridmatch._lsap_cuda does not load ({_cuda_error})"
        return (
            "hybridmatch was installed without its CUDA solver: reinstall with the CUDA toolkit and "
            "HYBRIDMATCH_CUDA=1 (HYBRIDMATCH_CUDA=1 pip install --no-binary hybridmatch hybridmatch, "
            "or pip install . from a checkout)"
        )
    if torch.version.cuda is None:
        return f"this torch build ({torch.__version__}) has no CUDA support"
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible (torch.cuda.is_available() is False)"
    return None


def _require(missing: str | None, name: str) -> None:
    if missing is not None:
        raise BackendUnavailableError(f"backend {name!r} is unavailable: {missing}")


def _solver_input(cost: torch.Tensor) -> torch.Tensor:
    """``cost`` as the cores read it: contiguous float32 or float64, no autograd.

    float16 and bfloat16 widen exactly to float32, integers to float64 (as every other
    backend reads them); the algorithm itself works in double.
    """
    cost = cost.detach()
    if cost.dtype in (torch.float16, torch.bfloat16):
        cost = cost.float()
    elif cost.dtype not in (torch.float32, torch.float64):
        cost = cost.double()
    return cost.contiguous()


def solve_batch(
    cost: torch.Tensor, num_targets: list[int], capacity: int, maximize: bool, device: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run one native call: ``(assignment (B, N) int64, status (B, 3) int64)``, both on the cost's device.

    ``num_targets`` holds B ints in ``[0, M]`` (checked by the caller);
    ``status[b] = (code, query, target)`` with ``code`` a :data:`Status`; the caller
    turns codes into errors. Raises BackendUnavailableError when the solver is missing.
    """
    batch, n, m = cost.shape
    if device == "cuda":
        _require(cuda_missing(), "cuda")
        return _solve_cuda(cost, num_targets, capacity, maximize)
    _require(cpu_missing(), "native")
    assignment = torch.full((batch, n), -1, dtype=torch.int64)
    status = torch.zeros((batch, 3), dtype=torch.int64)
    counts = torch.tensor(num_targets, dtype=torch.int64)
    # Threads over the batch, as many as torch uses; the GIL is released meanwhile.
    # numpy views: nanobind reads them faster than torch's __dlpack__ (same memory, no copy).
    _cpu.solve_batch(_solver_input(cost).numpy(), counts.numpy(), capacity, maximize, torch.get_num_threads(),
                     assignment.numpy(), status.numpy())
    return assignment, status


def _solve_cuda(
    cost: torch.Tensor, num_targets: list[int], capacity: int, maximize: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    device = cost.device
    batch, n, m = cost.shape
    assignment = torch.full((batch, n), -1, dtype=torch.int64, device=device)
    status = torch.full((batch, 3), -1, dtype=torch.int64, device=device)
    status[:, 0] = int(Status.OK)  # what the kernel writes for an empty problem
    if batch == 0 or n == 0:
        return assignment, status
    with torch.cuda.device(device):
        cost = _solver_input(cost)
        # The targets x queries copy is read only by problems solved targets-side
        # (num_targets[b] * capacity <= N): built only if one is.
        need_transpose = any(0 < count and count * capacity <= n for count in num_targets)
        cost_t = cost.transpose(1, 2).contiguous() if need_transpose else None
        # Host counts, copied pinned and non-blocking: no wait for the GPU.
        counts = torch.tensor(num_targets, dtype=torch.int64).pin_memory().to(device, non_blocking=True)
        stride, _ = _cuda.workspace_bytes(n, m, capacity)
        workspace = torch.empty(max(batch * stride, 1), dtype=torch.uint8, device=device)
        stream = torch.cuda.current_stream(device).cuda_stream
        try:
            _cuda.launch(cost, cost_t, counts, capacity, maximize, assignment, status, workspace, stride, -1, stream)
        except RuntimeError as error:
            if "no kernel image" not in str(error):
                raise
            major, minor = torch.cuda.get_device_capability(device)
            raise BackendUnavailableError(
                f"backend 'cuda' was built without code for this GPU (compute capability {major}.{minor}): "
                f"reinstall with HYBRIDMATCH_CUDA_ARCHITECTURES={major}{minor} HYBRIDMATCH_CUDA=1"
            ) from None
    return assignment, status
