"""Build hook of recurd-client: the protobuf modules are generated from recurd's proto/ files
when the package is built (nothing generated is committed).

Where the .proto files come from, first found:
  $RECURD_PROTO_DIR; ./proto (an sdist carries a copy, made by the sdist command below);
  ../../proto (the recurd repository: this file is clients/python/setup.py).
Which protoc generates them: $PROTOC if set, else grpcio-tools (`python -m grpc_tools.protoc`,
the build requirement pip installs in an isolated build), else `protoc` on PATH (Debian:
protobuf-compiler, for `pip install --no-build-isolation`).

Generated: recurd_client/_proto/inference_pb2.py and health_pb2.py (+ .pyi type stubs). The gRPC
stubs are built at run time from the service descriptors in those modules (client.py), so
no grpc_python_out plugin is needed and the modules import nothing but protobuf.
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile

from setuptools import setup
from setuptools.command.build_py import build_py as _build_py
from setuptools.command.sdist import sdist as _sdist

HERE = os.path.dirname(os.path.abspath(__file__))
PROTOS = {  # proto file -> generated module name inside recurd_client._proto
    "recurd/v1/inference.proto": "inference_pb2",
    "grpc/health/v1/health.proto": "health_pb2",
}


def proto_dir():
    cands = [os.environ.get("RECURD_PROTO_DIR"), os.path.join(HERE, "proto"),
             os.path.join(HERE, "..", "..", "proto")]
    for d in cands:
        if d and all(os.path.isfile(os.path.join(d, p)) for p in PROTOS):
            return os.path.abspath(d)
    raise SystemExit("recurd-client: the .proto files (%s) were not found in $RECURD_PROTO_DIR, "
                     "./proto or ../../proto; build from the recurd repository or an sdist"
                     % ", ".join(PROTOS))


def protoc_cmd():
    """The protoc to run (a command list), or None."""
    if os.environ.get("PROTOC"):
        return [os.environ["PROTOC"]]
    try:
        import grpc_tools.protoc  # noqa: F401
        return [sys.executable, "-m", "grpc_tools.protoc"]
    except ImportError:
        pass
    p = shutil.which("protoc")
    return [p] if p else None


def protobuf_floor(cmd):
    """The oldest protobuf (Python) runtime that loads what `cmd` generates. Since protoc 22
    a generated module names its Python version in its header ("Protobuf Python Version:
    5.29.0"; since 5.26 it refuses an older runtime at import), so one module is generated
    here to read it; older protoc: 3.21 is Python 4.21, 3.x (x <= 20) is 3.x."""
    try:
        with tempfile.TemporaryDirectory(prefix="recurd-client-ver-") as tmp:
            p = "recurd/v1/inference.proto"
            subprocess.run(cmd + ["-I", proto_dir(), "--python_out", tmp, p],
                           capture_output=True, timeout=120, check=True)
            with open(os.path.join(tmp, "recurd/v1/inference_pb2.py")) as f:
                head = f.read(2000)
        m = re.search(r"Protobuf Python Version: (\d+)\.(\d+)", head)
        if m:
            return "%s.%s" % (m.group(1), m.group(2))
        out = subprocess.run(cmd + ["--version"], capture_output=True, text=True,
                             timeout=60).stdout
    except (OSError, subprocess.SubprocessError, SystemExit):
        return "4.21"
    m = re.search(r"(\d+)\.(\d+)", out)
    if m and int(m.group(1)) == 3 and int(m.group(2)) <= 20:
        return "3.%s" % m.group(2)
    return "4.21"


def generate(dest):
    """Runs protoc over PROTOS and writes the modules (flat) into dest."""
    cmd = protoc_cmd()
    if cmd is None:
        raise SystemExit("recurd-client: no protoc: install grpcio-tools (the build requirement) "
                         "or protoc (Debian: protobuf-compiler), or set $PROTOC")
    src = proto_dir()
    os.makedirs(dest, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="recurd-client-gen-") as tmp:
        args = ["-I", src, "--python_out", tmp, "--pyi_out", tmp] + list(PROTOS)
        r = subprocess.run(cmd + args, capture_output=True, text=True)
        if r.returncode != 0 and "pyi_out" in r.stderr:  # protoc before 3.20: no type stubs
            args = ["-I", src, "--python_out", tmp] + list(PROTOS)
            r = subprocess.run(cmd + args, capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit("recurd-client: %s failed:\n%s" % (" ".join(cmd), r.stderr))
        for proto, mod in PROTOS.items():
            base = os.path.join(tmp, proto[:-len(".proto")] + "_pb2")
            for ext in (".py", ".pyi"):
                if os.path.exists(base + ext):
                    shutil.copyfile(base + ext, os.path.join(dest, mod + ext))
    with open(os.path.join(dest, "__init__.py"), "w") as f:
        f.write('"""Generated at build time from proto/ by recurd-client\'s setup.py."""\n')


class build_py(_build_py):
    def run(self):
        super().run()
        # An editable install (pip install -e) imports from src/: generate there.
        root = os.path.join(HERE, "src") if getattr(self, "editable_mode", False) else self.build_lib
        generate(os.path.join(root, "recurd_client", "_proto"))


class sdist(_sdist):
    def make_release_tree(self, base_dir, files):
        super().make_release_tree(base_dir, files)
        src = proto_dir()
        for p in PROTOS:
            out = os.path.join(base_dir, "proto", p)
            os.makedirs(os.path.dirname(out), exist_ok=True)
            shutil.copyfile(os.path.join(src, p), out)


_cmd = protoc_cmd()
setup(
    cmdclass={"build_py": build_py, "sdist": sdist},
    install_requires=["grpcio>=1.51",
                      "protobuf>=%s" % (protobuf_floor(_cmd) if _cmd else "4.21")],
)
