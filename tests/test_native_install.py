"""The native solvers are compiled when the package is installed, never at run time.

What a user of a built install sees: a first solve in a new process loads the
extension with no compiler, no build message and nothing written under torch's
extensions folder; the extension links no libtorch (one build serves every torch
version); the status codes are the C++ enum, defined once; the solver is a
``torch.library`` custom op that ``torch.compile(fullgraph=True)`` traces through.
What a source install does: without a C++ compiler it still installs (the Python
package, no extension), and with ``HYBRIDMATCH_CUDA=1`` and nvcc it builds the CUDA
solver too (a compile check: this machine has no GPU). The two install tests build
wheels with scikit-build-core and are marked slow.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from hybridmatch.matchers import Hungarian
from hybridmatch.solvers import _native, batched_linear_sum_assignment
from scipy.optimize import linear_sum_assignment as scipy_lsa

ROOT = Path(__file__).resolve().parent.parent
CORE = ROOT / "hybridmatch" / "csrc" / "lsap_core.h"
needs_extension = pytest.mark.skipif(_native.cpu_missing() is not None, reason="installed without the extension")


def _have(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


needs_build_tools = pytest.mark.skipif(
    not (_have("scikit_build_core") and _have("nanobind")), reason="scikit-build-core and nanobind not installed"
)

# A child process that sees an installed package in `folder` rather than this checkout
# or an editable install (whose import hook comes first).
ISOLATED = """
import sys
sys.meta_path[:] = [f for f in sys.meta_path if not type(f).__module__.startswith("_editable")]
sys.path[:] = [{folder!r}] + [p for p in sys.path if p not in ("", {root!r})]
"""


def run_python(code: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    full.pop("PYTHONPATH", None)
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=full, capture_output=True, text=True,
                          timeout=300)


def build_wheel(folder: Path, env: dict[str, str], *config: str) -> Path:
    """``pip wheel`` of this checkout into ``folder`` (no build isolation: offline)."""
    command = [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q",
               "-w", str(folder), "-C", f"build-dir={folder / 'build'}", *config]
    done = subprocess.run(command, env={**os.environ, **env}, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (wheel,) = folder.glob("hybridmatch-*.whl")
    return wheel


# ------------------------------------------------------------------ built install


@needs_extension
def test_first_solve_in_a_new_process_compiles_nothing(tmp_path: Path) -> None:
    extensions = tmp_path / "torch_extensions"
    extensions.mkdir()
    code = textwrap.dedent("""
        import sys, torch
        from hybridmatch.solvers import batched_linear_sum_assignment
        cost = torch.tensor([[[4.0, 1.0], [2.0, 0.0], [5.0, 2.5]]])
        print(batched_linear_sum_assignment(cost, backend="native").tolist())
        print("cpp_extension" in " ".join(sys.modules))
    """)
    done = run_python(code, ROOT, {"TORCH_EXTENSIONS_DIR": str(extensions)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["[[1, 0, -1]]", "False"]  # torch's JIT loader never imported
    assert done.stderr == ""  # no build notice, no warning
    assert list(extensions.iterdir()) == []


@needs_extension
def test_extension_links_no_libtorch() -> None:
    # One build for every torch version: the module reads tensors through DLPack only.
    readelf = shutil.which("readelf")
    if readelf is None:
        pytest.skip("readelf not installed")
    needed = subprocess.run([readelf, "-d", _native._cpu.__file__], capture_output=True, text=True).stdout
    libraries = re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]", needed)
    assert libraries and not [name for name in libraries if re.match(r"lib(torch|c10|python)", name)], libraries


@needs_extension
def test_status_codes_are_the_core_enum_and_defined_once() -> None:
    # The reference: the enum in csrc/lsap_core.h, read as text.
    block = re.search(r"enum Status : int64_t \{(.*?)\};", CORE.read_text(), re.S).group(1)
    declared = {name: int(value) for name, value in re.findall(r"k(\w+) = (\d+)", block)}
    exported = {member.name: int(member) for member in _native.Status}
    assert exported == {"OK": declared["Ok"], "NAN": declared["NaN"], "BAD_INFINITY": declared["BadInfinity"],
                        "INFEASIBLE": declared["Infeasible"], "BAD_COUNT": declared["BadCount"]}
    # No Python file spells them out a second time.
    copies = [str(path.relative_to(ROOT)) for folder in ("hybridmatch", "tests", "benchmarks")
              for path in (ROOT / folder).rglob("*.py")
              if re.search(r"^\s*(\w+\s*,\s*)*(OK|INFEASIBLE)\b(\s*,\s*\w+)*\s*=\s*[0-9]", path.read_text(), re.M)]
    assert copies == []


@needs_extension
def test_solver_threads_release_the_gil() -> None:
    # A Python thread keeps counting while the batch is solved: the GIL is free.
    import threading

    rng = np.random.default_rng(0)
    cost = torch.from_numpy(rng.random((4, 600, 60)))
    ticks = 0
    done = threading.Event()

    def count() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1

    thread = threading.Thread(target=count)
    thread.start()
    try:
        result = batched_linear_sum_assignment(cost, capacity=5, backend="native")
    finally:
        done.set()
        thread.join()
    assert ticks > 1000
    for b in range(4):  # and the answer is optimal (scipy on the repeated targets)
        tiled = np.tile(cost[b].numpy(), (1, 5))
        rows, cols = scipy_lsa(tiled)
        got = float(cost[b].numpy()[np.arange(600)[result[b] >= 0], result[b][result[b] >= 0]].sum())
        assert got == pytest.approx(float(tiled[rows, cols].sum()), rel=1e-12)


# ------------------------------------------------------------------ torch.compile


def test_solver_is_a_torch_library_op_with_a_fake_implementation() -> None:
    op = torch.ops.hybridmatch.batched_linear_sum_assignment.default
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode:
        cost = mode.from_tensor(torch.rand(3, 7, 4))
        out = op(cost, [4, 2, 0], None, 2, False, "auto", "raise", True)
    assert out.shape == (3, 7) and out.dtype == torch.int64


def test_op_called_directly_equals_the_entry_point() -> None:
    rng = np.random.default_rng(2)
    cost = torch.from_numpy(rng.random((3, 9, 4)))
    op = torch.ops.hybridmatch.batched_linear_sum_assignment
    direct = op(cost, [4, 1, 0], None, 2, True, "native", "raise", True)
    assert torch.equal(direct, batched_linear_sum_assignment(cost, [4, 1, 0], capacity=2, maximize=True))
    from hybridmatch.errors import InvalidCostError

    cost[1, 2, 0] = float("nan")
    with pytest.raises(InvalidCostError, match=r"cost\[1, 2, 0\] is NaN"):  # errors keep their type
        op(cost, None, torch.tensor([4, 1, 0]), 1, False, "auto", "raise", True)


@pytest.mark.parametrize("backend", ["auto", "scipy"])
def test_errors_name_the_call_once(backend: str) -> None:
    from hybridmatch.errors import InvalidCostError

    cost = torch.rand(2, 3, 2)
    cost[1, 0, 1] = float("nan")
    for given in (cost, cost.numpy(), cost[1], cost[1].numpy()):
        with pytest.raises(InvalidCostError) as info:
            batched_linear_sum_assignment(given, backend=backend)
        shape = tuple(given.shape)
        assert str(info.value).count("[cost ") == 1 and f"{shape}" in str(info.value).split("[cost ")[1]


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["auto", "scipy"])
def test_compile_fullgraph_traces_the_solver_and_a_matchers_assignment(backend: str) -> None:
    torch._dynamo.reset()
    assigner = Hungarian(capacity=2, backend=backend)

    def step(cost: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        one = batched_linear_sum_assignment(cost * 2.0, counts, backend=backend)
        many = assigner(cost, [3, 1])
        return (one >= 0).sum(-1), many

    rng = np.random.default_rng(1)
    cost = torch.from_numpy(rng.random((2, 6, 3)).astype(np.float32))
    counts = torch.tensor([3, 2])
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")  # a graph break raises
    got = compiled(cost, counts)
    want = step(cost, counts)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    # The reference: scipy on each problem (capacity 1, then 2 as repeated columns).
    for b, m in enumerate([3, 2]):
        rows, _ = scipy_lsa(cost[b, :, :m].numpy() * 2.0)
        assert int(got[0][b]) == len(rows)


# ------------------------------------------------------------------ source installs


@pytest.mark.slow
@needs_build_tools
def test_source_install_without_a_compiler_installs_the_python_package(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path, {"CXX": str(tmp_path / "no-such-compiler")})
    names = zipfile.ZipFile(wheel).namelist()
    assert "hybridmatch/solvers/__init__.py" in names
    assert not [name for name in names if "_lsap" in name or "/csrc/" in name], names
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    # A user's script: auto falls back with one warning naming the script's own line.
    script = ISOLATED.format(folder=str(site), root=str(ROOT)) + textwrap.dedent("""
        import warnings, torch
        import hybridmatch
        from hybridmatch import available_backends, batched_linear_sum_assignment
        from hybridmatch.errors import BackendUnavailableError
        assert hybridmatch.__file__.startswith({site!r}), hybridmatch.__file__
        print("native" in available_backends())
        cost = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(3):
                result = batched_linear_sum_assignment(cost)
        print(result.tolist(), len(caught), caught[0].filename, caught[0].lineno)
        try:
            batched_linear_sum_assignment(cost, backend="native")
        except BackendUnavailableError as error:
            print("raised:", error)
    """).format(site=str(site))
    done = run_python(script, tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "False"
    values, count, filename, lineno = lines[1].rsplit(" ", 3)
    assert (values, count, filename) == ("[[1, 0]]", "1", "<string>")
    line_of_call = script.splitlines().index("        result = batched_linear_sum_assignment(cost)") + 1
    assert int(lineno) == line_of_call
    assert "without its compiled solver" in lines[2] and "reinstall" in lines[2]


@pytest.mark.slow
@needs_build_tools
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")
def test_cuda_solver_builds_when_requested_and_is_skipped_otherwise(tmp_path: Path) -> None:
    # Compile check only (no GPU here): one architecture, the build the package ships.
    wheel = build_wheel(tmp_path / "cuda", {"HYBRIDMATCH_CUDA": "1", "HYBRIDMATCH_CUDA_ARCHITECTURES": "90"})
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    assert list((site / "hybridmatch").glob("_lsap_cuda*")), "no CUDA module in the wheel"
    script = ISOLATED.format(folder=str(site), root=str(ROOT)) + textwrap.dedent("""
        from hybridmatch import _lsap_cuda
        print(*_lsap_cuda.workspace_bytes(300, 30, 1), *_lsap_cuda.workspace_bytes(1500, 100, 6))
    """)
    done = run_python(script, tmp_path)
    assert done.returncode == 0, done.stderr

    def expected(n: int, m: int, k: int) -> tuple[int, int]:
        # lsap_launch.h, by hand: columns max(N, M*K) x 25 bytes; rows max(N, M) x 16
        # from the next 8-byte boundary, then 4 bytes per column; rounded up to 256.
        cols, rows = max(n, m * k), max(n, m)
        column_bytes = 25 * cols
        end = (column_bytes + 7) // 8 * 8 + 16 * rows + 4 * cols
        return (end + 255) // 256 * 256, column_bytes

    assert [int(x) for x in done.stdout.split()] == [*expected(300, 30, 1), *expected(1500, 100, 6)]
    # Not requested: skipped, said in one line of the build log.
    plain = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-v", "-w",
         str(tmp_path / "plain"), "-C", f"build-dir={tmp_path / 'plain' / 'build'}"],
        env={k: v for k, v in os.environ.items() if k != "HYBRIDMATCH_CUDA"}, capture_output=True, text=True,
        timeout=900,
    )
    log = plain.stdout + plain.stderr
    said = [line.strip() for line in log.splitlines() if "CUDA solver not built" in line]
    assert said == ["-- hybridmatch: CUDA solver not built (set HYBRIDMATCH_CUDA=1, with the CUDA toolkit, to build it)"]
