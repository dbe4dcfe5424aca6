"""Building the native solvers: the build folder's key, the build notice, stale locks.

Only ``test_a_fresh_environment_compiles_once_then_loads_silently`` compiles for
real (in a subprocess, in a fresh folder); the others replace torch's ``load``
with a stand-in that records its calls.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import hybridmatch
from hybridmatch.errors import BackendUnavailableError, HybridMatchWarning
from hybridmatch.solvers import _native, batched_linear_sum_assignment

ROOT = Path(__file__).resolve().parent.parent
NAME, SOURCES = _native.CPU_NAME, _native.CPU_SOURCES
needs_compiler = pytest.mark.skipif(_native.cpu_missing() is not None, reason="no C++ compiler")
NOTICE = "hybridmatch: compiling the 'native' solver"


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A fresh extensions root and a fresh process-wide build cache; restored afterwards."""
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    _native._cpu_module.cache_clear()
    yield tmp_path
    monkeypatch.undo()
    _native._cpu_module.cache_clear()


@pytest.fixture
def fake_build(cache: Path, monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """torch's ``load`` and the direct import replaced: count the builds and the imports."""
    calls = SimpleNamespace(builds=[], imports=[])

    def load(name, sources, build_directory, **kwargs):
        (Path(build_directory) / f"{name}.so").write_bytes(b"")
        calls.builds.append(build_directory)
        return SimpleNamespace(origin="built")

    def import_library(name, library):
        calls.imports.append(library)
        return SimpleNamespace(origin="cached")

    import torch.utils.cpp_extension as cpp_extension

    monkeypatch.setattr(cpp_extension, "load", load)
    monkeypatch.setattr(_native, "_import_library", import_library)
    monkeypatch.setattr(_native, "cpu_missing", lambda: None)
    return calls


# ------------------------------------------------------------------ build folder


def test_build_folder_is_keyed_by_versions_and_sources(
    cache: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    base = _native.build_directory(NAME, SOURCES, cuda=False)
    assert base.parent == cache / "hybridmatch"
    assert base == _native.build_directory(NAME, SOURCES, cuda=False)  # stable
    assert f"hm{hybridmatch.__version__}" in base.name and f"torch{torch.__version__}" in base.name

    changed = tmp_path / "lsap_cpu.cpp"
    changed.write_text(SOURCES[0].read_text() + "\n// edited\n")
    assert _native.build_directory(NAME, [changed], cuda=False) != base

    with monkeypatch.context() as patch:
        patch.setattr(torch, "__version__", "2.99.0+cu999")
        other_torch = _native.build_directory(NAME, SOURCES, cuda=False)
    with monkeypatch.context() as patch:
        patch.setattr(_native, "__version__", "9.9.9")  # the version the build folder reads
        other_hybridmatch = _native.build_directory(NAME, SOURCES, cuda=False)
    with monkeypatch.context() as patch:
        patch.setattr(torch.version, "cuda", "12.8")
        cuda_torch = _native.build_directory(NAME, SOURCES, cuda=False)
    assert len({base, other_torch, other_hybridmatch, cuda_torch}) == 4
    assert all(folder.parent == base.parent for folder in (other_torch, other_hybridmatch, cuda_torch))

    cuda = _native.build_directory(_native.CUDA_NAME, _native.CUDA_SOURCES, cuda=True)
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0")
    assert _native.build_directory(_native.CUDA_NAME, _native.CUDA_SOURCES, cuda=True) != cuda


def test_without_torch_extensions_dir_builds_go_under_torchs_root(monkeypatch: pytest.MonkeyPatch) -> None:
    from torch.utils.cpp_extension import get_default_build_root

    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    folder = _native.build_directory(NAME, SOURCES, cuda=False)
    assert folder.parent == Path(get_default_build_root()) / "hybridmatch"


# ------------------------------------------------------------------- the notice


def test_notice_once_when_a_build_starts_and_never_when_cached(
    fake_build: SimpleNamespace, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _native.build_directory(NAME, SOURCES, cuda=False)
    assert _native._load(NAME, SOURCES, cuda=False).origin == "built"
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(NOTICE)  # one line
    assert str(folder) in err and "python -m hybridmatch.solvers.build" in err  # where, how ahead of time
    assert f"hybridmatch {hybridmatch.__version__}" in err and f"torch {torch.__version__}" in err  # why
    assert "about 30 s" in err  # how long
    assert fake_build.builds == [str(folder)]
    assert not (folder / _native.LOCK_FILE).exists()  # released

    for _ in range(2):  # later processes: loaded directly, silently
        assert _native._load(NAME, SOURCES, cuda=False).origin == "cached"
    assert capsys.readouterr().err == ""
    assert len(fake_build.builds) == 1 and len(fake_build.imports) == 2


def test_a_failed_build_releases_the_lock_and_leaves_no_finished_mark(
    fake_build: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch.utils.cpp_extension as cpp_extension

    def broken(**kwargs):
        raise RuntimeError("Error building extension: lsap_cpu.cpp:1: error: expected ';'")

    monkeypatch.setattr(cpp_extension, "load", broken)
    with pytest.raises(BackendUnavailableError, match="failed to build: .*expected ';'"):
        _native.cpu_module()
    folder = _native.build_directory(NAME, SOURCES, cuda=False)
    assert not (folder / _native.LOCK_FILE).exists() and not (folder / _native.COMPLETE_FILE).exists()


# ------------------------------------------------------------------ stale locks


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # reaped: its pid names no process
    return child.pid


def _leave_lock(folder: Path, pid: int, host: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / _native.LOCK_FILE
    lock.write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(), "started": 0}))
    return lock


def test_lock_of_a_killed_build_falls_back_at_once(fake_build: SimpleNamespace) -> None:
    folder = _native.build_directory(NAME, SOURCES, cuda=False)
    lock = _leave_lock(folder, _dead_pid())
    (folder / "lock").touch()  # torch's, left by the same killed build
    start = time.monotonic()
    dead = r"skips 'native': .*stale lock \(process \d+, which took it, is gone\)"
    with pytest.warns(HybridMatchWarning, match=dead):
        assert batched_linear_sum_assignment(torch.tensor([[4.0, 1.0], [2.0, 0.0]])).tolist() == [1, 0]
    assert time.monotonic() - start < 30  # no waiting on a dead process
    named = rf"locked by {re.escape(str(lock))}.*rm -r '{re.escape(str(folder))}'"
    with pytest.raises(BackendUnavailableError, match=named):
        batched_linear_sum_assignment(torch.zeros(2, 2), backend="native")
    assert fake_build.builds == [] and lock.exists()  # nothing built, nothing removed behind the user's back


def test_an_old_lock_times_out(fake_build: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> None:
    # A lock taken on another host (a shared home folder): its process cannot be checked.
    folder = _native.build_directory(NAME, SOURCES, cuda=False)
    _leave_lock(folder, os.getpid(), host="another-node")
    monkeypatch.setenv(_native.LOCK_TIMEOUT_ENV, "0.5")
    start = time.monotonic()
    old = r"stale lock \(it was taken \d+ s ago, more than HYBRIDMATCH_BUILD_LOCK_TIMEOUT=0.5 s\)"
    with pytest.raises(BackendUnavailableError, match=old):
        _native.cpu_module()
    assert 0.4 < time.monotonic() - start < 30  # waited for the live-looking build, then gave up
    assert fake_build.builds == []


def test_torchs_lock_alone_is_stale(fake_build: SimpleNamespace) -> None:
    # torch's FileBaton would wait on it forever; no hybridmatch build holds the folder.
    folder = _native.build_directory(NAME, SOURCES, cuda=False)
    folder.mkdir(parents=True)
    (folder / "lock").touch()
    with pytest.raises(BackendUnavailableError, match=r"locked by .*/lock, a stale lock"):
        _native.cpu_module()
    assert not (folder / _native.LOCK_FILE).exists()


def test_waits_for_a_live_build_then_loads_its_result(
    fake_build: SimpleNamespace, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _native.build_directory(NAME, SOURCES, cuda=False)
    lock = _leave_lock(folder, os.getpid())  # a live process holds it

    def finish() -> None:
        time.sleep(0.5)
        (folder / f"{NAME}.so").write_bytes(b"")
        (folder / _native.COMPLETE_FILE).write_text("{}")
        lock.unlink()

    other = threading.Thread(target=finish)
    other.start()
    try:
        assert _native._load(NAME, SOURCES, cuda=False).origin == "cached"
    finally:
        other.join()
    assert fake_build.builds == []  # built once, by the other process
    err = capsys.readouterr().err
    assert "waiting for another process" in err and NOTICE not in err


def test_bad_lock_timeout_is_named(fake_build: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _native.build_directory(NAME, SOURCES, cuda=False)
    _leave_lock(folder, os.getpid())
    monkeypatch.setenv(_native.LOCK_TIMEOUT_ENV, "ten minutes")
    with pytest.raises(ValueError, match="HYBRIDMATCH_BUILD_LOCK_TIMEOUT must be a number of seconds"):
        _native._load(NAME, SOURCES, cuda=False)


# ------------------------------------------------------------- one real compile

_SOLVE = (
    "import torch; from hybridmatch.solvers import batched_linear_sum_assignment as solve; "
    "print(solve(torch.tensor([[4.0, 1.0], [2.0, 0.0], [5.0, 2.5]]), backend='native').tolist())"
)


@pytest.mark.slow
@needs_compiler
def test_a_fresh_environment_compiles_once_then_loads_silently(tmp_path: Path) -> None:
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    runs = [
        subprocess.run([sys.executable, "-c", _SOLVE], env=env, capture_output=True, text=True, timeout=900)
        for _ in range(2)
    ]
    for run in runs:
        assert run.returncode == 0, run.stderr[-3000:]
        assert run.stdout.strip() == "[1, 0, -1]"
    assert runs[0].stderr.count(NOTICE) == 1
    assert NOTICE not in runs[1].stderr and "waiting" not in runs[1].stderr
    (folder,) = (tmp_path / "hybridmatch").iterdir()
    assert (folder / _native.COMPLETE_FILE).exists() and not (folder / _native.LOCK_FILE).exists()
