"""Build the native solvers ahead of time.

    python -m hybridmatch.solvers.build            # the CPU solver, and the CUDA one where possible
    python -m hybridmatch.solvers.build --cpu      # only the CPU solver

Builds go where first use would put them, one folder per hybridmatch version,
torch version and source hash under ``TORCH_EXTENSIONS_DIR/hybridmatch`` (default
``~/.cache/torch_extensions/hybridmatch``); later processes load them without
compiling. Run it in each environment (a container image, a job's set-up step) so
that training never waits for the compiler. Exit status 1 when a requested build fails.
"""

from __future__ import annotations

import argparse
import sys
import time

from ..errors import BackendUnavailableError
from . import _native

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Compile the native solvers now, as ``python -m hybridmatch.solvers.build`` does.

    Args:
        argv (list[str], optional): the command line; ``--cpu`` or ``--cuda`` builds only
            that solver. Default: ``sys.argv[1:]``.

    Returns:
        int: the exit status, 0 when every requested build succeeded; each build's folder
        is printed.

    Example:
        >>> from hybridmatch.solvers.build import main
        >>> main(["--help"])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        SystemExit: 0
    """
    parser = argparse.ArgumentParser(description="Build hybridmatch's native solvers ahead of time.")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--cpu", action="store_true", help="build only the CPU solver")
    which.add_argument("--cuda", action="store_true", help="build only the CUDA solver (fails without a GPU)")
    args = parser.parse_args(argv)
    targets = [
        ("native", _native.cpu_module, _native.build_directory(_native.CPU_NAME, _native.CPU_SOURCES, cuda=False)),
        ("cuda", _native.cuda_module, _native.build_directory(_native.CUDA_NAME, _native.CUDA_SOURCES, cuda=True)),
    ]
    if args.cpu:
        targets = targets[:1]
    elif args.cuda:
        targets = targets[1:]
    failed = False
    for name, build, folder in targets:
        start = time.perf_counter()
        try:
            build()
        except BackendUnavailableError as error:
            # Without --cuda, a machine with no GPU simply has no CUDA solver to build.
            optional = name == "cuda" and not args.cuda
            print(f"{name}: {'skipped' if optional else 'FAILED'}: {error}", file=sys.stderr)
            failed |= not optional
            continue
        print(f"{name}: ready ({time.perf_counter() - start:.1f} s) in {folder}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
