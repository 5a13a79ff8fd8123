"""Regenerate the committed Python stubs from the .proto sources in this folder.

Run: ``python protos/generate.py`` (needs grpcio-tools, pinned in the dev extra).
``python protos/generate.py --check`` exits 1 when the committed stubs are stale.

The stubs register their descriptors in a private pool (``_pool.POOL``) instead
of protobuf's default one: tritonclient ships its own ``inference.*`` messages,
and two modules defining the same symbols in one pool refuse to import together.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PACKAGE = ("warpserve", "protos")
PROTOS = ("model_config.proto", "grpc_service.proto", "admin.proto")
_POOL_IMPORT = "from warpserve.protos._pool import POOL as _POOL\n"


def _rewrite(text: str) -> str:
    text = text.replace("_descriptor_pool.Default()", "_POOL")
    if "_POOL" in text and _POOL_IMPORT not in text:
        text = text.replace(
            "from google.protobuf import symbol_database as _symbol_database\n",
            "from google.protobuf import symbol_database as _symbol_database\n" + _POOL_IMPORT,
        )
    return re.sub(r"[ \t]+\n", "\n", text)


def generate(out_dir: Path) -> list[Path]:
    """Compile every proto into ``out_dir`` and return the files written."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp, "src", *PACKAGE)
        src.mkdir(parents=True)
        for name in PROTOS:
            shutil.copy(HERE / name, src / name)
        gen = Path(tmp, "gen")
        gen.mkdir()
        cmd = [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{Path(tmp, 'src')}",
            f"--python_out={gen}",
            f"--pyi_out={gen}",
            f"--grpc_python_out={gen}",
            *[str(Path(*PACKAGE, name)) for name in PROTOS],
        ]
        subprocess.run(cmd, check=True)
        written = []
        for path in sorted(Path(gen, *PACKAGE).iterdir()):
            target = out_dir / path.name
            target.write_text(_rewrite(path.read_text()))
            written.append(target)
        return written


def stale_files() -> list[str]:
    """Names of committed stubs that differ from a fresh generation."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        return [
            f.name
            for f in fresh
            if not (HERE / f.name).exists() or (HERE / f.name).read_text() != f.read_text()
        ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the stubs are stale")
    args = parser.parse_args()
    if args.check:
        stale = stale_files()
        if stale:
            print("stale stubs: " + ", ".join(stale) + "; run python protos/generate.py")
            return 1
        return 0
    for path in generate(HERE):
        print(f"wrote {path.relative_to(HERE.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
