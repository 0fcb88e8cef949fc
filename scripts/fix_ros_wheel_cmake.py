#!/usr/bin/env python3
"""Rewrite build-machine paths baked into the ROS 2 PyPI wheels' CMake files.

The ROS wheels were built under manylinux's /opt/python/cp311-cp311, and their
exported CMake targets (e.g. ``std_msgs__rosidl_generator_py``) carry that
interpreter's include dir and numpy include dir in INTERFACE_INCLUDE_DIRECTORIES.
Those paths do not exist here, so building our own messages fails until they
point at this venv's Python headers and numpy headers.

Usage: fix_ros_wheel_cmake.py [VENV]   (default: the running interpreter's sys.prefix)

Idempotent: files already rewritten no longer contain the baked paths, so a
second run changes nothing. Prints how many files it changed. Binary files,
compiled libraries and ament's parent_prefix_path markers are left alone.
"""

import json
import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

# The manylinux interpreter prefix the wheels were built with (any CPython 3.x tag).
BAKED_PREFIX = re.compile(r"/opt/python/cp3\d+-cp3\d+[a-z]*")
# Text files that CMake reads when our package does find_package() on the wheels.
PATTERNS = ("*.cmake", "*.cmake.in")


def _target_paths(venv: Path) -> tuple[str, str]:
    """Python include dir and numpy include dir as seen by the venv's interpreter."""
    if Path(sys.prefix).resolve() == venv.resolve():
        import numpy

        return sysconfig.get_paths()["include"], numpy.get_include()
    python = venv / "bin" / "python"
    if not python.exists():
        sys.exit(f"fix_ros_wheel_cmake: no interpreter at {python}")
    code = (
        "import json, sysconfig, numpy; "
        "print(json.dumps([sysconfig.get_paths()['include'], numpy.get_include()]))"
    )
    out = subprocess.run([str(python), "-c", code], check=True, capture_output=True, text=True)
    include, np_include = json.loads(out.stdout.strip().splitlines()[-1])
    return include, np_include


def _rewrite(text: str, include: str, np_include: str) -> str:
    # Longest paths first: the numpy include dir lives under the baked prefix too.
    # numpy 1.x used numpy/core/include, 2.x numpy/_core/include.
    text = re.sub(
        BAKED_PREFIX.pattern + r"/lib/python3\.\d+/site-packages/numpy/_?core/include",
        lambda _m: np_include,
        text,
    )
    text = re.sub(
        BAKED_PREFIX.pattern + r"/include/python3\.\d+[a-z]*",
        lambda _m: include,
        text,
    )
    return text


def main(argv: list[str]) -> int:
    venv = Path(argv[1]) if len(argv) > 1 else Path(sys.prefix)
    venv = venv.absolute()
    share = venv / "share"
    if not share.is_dir():
        sys.exit(f"fix_ros_wheel_cmake: {share} does not exist (is {venv} a venv with ROS wheels?)")
    include, np_include = _target_paths(venv)
    for path in (include, np_include):
        if not Path(path, "Python.h" if path == include else "numpy").exists():
            print(f"fix_ros_wheel_cmake: warning: {path} looks wrong", file=sys.stderr)

    changed, leftover = 0, []
    for pattern in PATTERNS:
        for f in sorted(share.rglob(pattern)):
            if not f.is_file():
                continue
            try:
                text = f.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue
            if not BAKED_PREFIX.search(text):
                continue
            new = _rewrite(text, include, np_include)
            if new != text:
                tmp = f.with_name(f.name + ".swapnet-tmp")
                tmp.write_text(new, encoding="utf-8")
                os.replace(tmp, f)
                changed += 1
            if BAKED_PREFIX.search(new):
                leftover.append(str(f))

    print(f"fix_ros_wheel_cmake: {changed} file(s) changed in {share}")
    for f in leftover:
        print(f"fix_ros_wheel_cmake: warning: other baked path remains in {f}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
