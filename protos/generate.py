"""Regenerates the Python stubs for protos/recsys/v1/*.proto: `python -m protos.generate`.

protoc names the message module by the proto's path (`recsys/v1/recommender.proto` →
`recsys.v1.recommender_pb2`), which would collide with this project's `recsys` package,
so the generated gRPC module's import is rewritten to the installed location
`protos.recsys.v1`. The descriptor keeps the clean name `recsys/v1/recommender.proto`
(what reflection clients such as grpcurl see). A test regenerates into a temporary
directory and fails when the checked-in files differ.
"""
from __future__ import annotations

import argparse
import importlib.resources
import pathlib
import re
import subprocess
import sys

PROTO_ROOT = pathlib.Path(__file__).resolve().parent
PROTOS = ("recsys/v1/recommender.proto",)
_IMPORT_RE = re.compile(r"^from recsys\.v1 import ", re.MULTILINE)


def generate(out_root: str | pathlib.Path = PROTO_ROOT) -> list[pathlib.Path]:
    """Runs protoc (from grpcio-tools) on PROTOS into `out_root`; returns the files written."""
    out = pathlib.Path(out_root)
    well_known = str(importlib.resources.files("grpc_tools") / "_proto")
    written: list[pathlib.Path] = []
    for proto in PROTOS:
        (out / proto).parent.mkdir(parents=True, exist_ok=True)
        # A subprocess: grpc_tools' in-process compiler can crash a process that has
        # already loaded other native protobuf code.
        done = subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO_ROOT}", f"-I{well_known}",
                               f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}",
                               str(PROTO_ROOT / proto)], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"protoc failed on {proto} (exit {done.returncode}): {done.stderr.strip()}")
        stem = out / proto[: -len(".proto")]
        files = [stem.with_name(stem.name + suffix) for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")]
        grpc_file = files[2]
        grpc_file.write_text(_IMPORT_RE.sub("from protos.recsys.v1 import ", grpc_file.read_text()))
        written.extend(files)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(PROTO_ROOT), help="output root (default: the protos package)")
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
