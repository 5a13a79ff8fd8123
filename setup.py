"""Builds the native gRPC frontend (``warpserve.server.native._frontend``) where gRPC's
C++ library is installed (Debian/Ubuntu: ``apt-get install libgrpc++-dev pkg-config g++``).

Everything else is pure Python and configured in pyproject.toml. Without the library, or
with ``WARPSERVE_NATIVE=0``, the extension is left out and the server runs its gRPC port on
grpcio's asyncio server instead (it says so when it starts).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys

from setuptools import Extension, setup


def _pkg_config(*args: str) -> list[str] | None:
    try:
        found = subprocess.run(
            ["pkg-config", *args, "grpc++"], capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return shlex.split(found.stdout)


def _native_extensions() -> list[Extension]:
    if os.environ.get("WARPSERVE_NATIVE", "1") == "0":
        return []
    cflags, libs = _pkg_config("--cflags"), _pkg_config("--libs")
    if cflags is None or libs is None:
        print(
            "warpserve: gRPC's C++ library not found (pkg-config grpc++): building without "
            "the native gRPC frontend",
            file=sys.stderr,
        )
        return []
    import pybind11

    return [
        Extension(
            "warpserve.server.native._frontend",
            sources=["server/native/frontend.cpp"],
            include_dirs=[pybind11.get_include()],
            language="c++",
            extra_compile_args=["-std=c++17", "-O2", "-fvisibility=hidden", *cflags],
            extra_link_args=libs,
            # A failed build leaves the pure-Python server, never a failed install.
            optional=True,
        )
    ]


setup(ext_modules=_native_extensions())
