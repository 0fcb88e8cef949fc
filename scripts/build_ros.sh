#!/usr/bin/env bash
# Build the swapnet_ros package (messages + Python packages) with colcon, using the
# ROS 2 PyPI wheels in the repo's .venv. Output goes to build/ install/ log/ at the repo root
# (SWAPNET_DISTRO=jazzy: .venv-jazzy, and build-jazzy/ install-jazzy/ log-jazzy/).
#
#   bash scripts/build_ros.sh [extra colcon build args, e.g. --cmake-clean-cache]
#   source scripts/ros_env.sh     # afterwards, to use the result
#
# Exits non-zero on failure and then prints the tail of the build log.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "${ROOT}"

case "${SWAPNET_DISTRO:-kilted}" in
  kilted) SUFFIX="" ;;
  jazzy) SUFFIX="-jazzy" ;;
  *) echo "build_ros.sh: SWAPNET_DISTRO must be kilted or jazzy, not ${SWAPNET_DISTRO}" >&2; exit 1 ;;
esac
VENV="${ROOT}/.venv${SUFFIX}"
PY="${VENV}/bin/python"
if [ ! -x "${PY}" ]; then
  echo "build_ros.sh: no virtual environment at ${VENV} (create it and pip install -r requirements.txt)" >&2
  exit 1
fi

# shellcheck source=scripts/ros_env.sh
source "${ROOT}/scripts/ros_env.sh"

# One-time rewrite of build-machine paths baked into the ROS wheels' CMake files.
# Rerun if the stamp is missing or if a reinstalled wheel brought the baked paths back.
STAMP="${VENV}/.swapnet_ros_cmake_fixed"
if [ ! -f "${STAMP}" ] || grep -rqs --include='*.cmake' '/opt/python/cp3' "${VENV}/share"; then
  "${PY}" "${ROOT}/scripts/fix_ros_wheel_cmake.py" "${VENV}"
  date -u +%Y-%m-%dT%H:%M:%SZ > "${STAMP}"
fi

if ! command -v colcon >/dev/null 2>&1; then
  echo "build_ros.sh: colcon not found in ${VENV}/bin (pip install colcon-common-extensions)" >&2
  exit 1
fi

# Build only this package: the .venv holds the wheels' package.xml files, and
# colcon must never mistake them for packages of this workspace.
set +e
colcon --log-base "${ROOT}/log${SUFFIX}" build \
  --base-paths "${ROOT}" \
  --build-base "${ROOT}/build${SUFFIX}" \
  --install-base "${ROOT}/install${SUFFIX}" \
  --packages-select swapnet_ros \
  --event-handlers console_direct- console_cohesion- desktop_notification- status- \
  "$@" \
  --cmake-args \
    "-DPython3_EXECUTABLE=${PY}" \
    "-DBUILD_TESTING=ON"
rc=$?
set -e

if [ "${rc}" -ne 0 ]; then
  log="${ROOT}/log${SUFFIX}/latest_build/swapnet_ros/stdout_stderr.log"
  echo "build_ros.sh: colcon build failed (exit ${rc}); last lines of ${log}:" >&2
  if [ -f "${log}" ]; then tail -n 25 "${log}" >&2; fi
  exit "${rc}"
fi
echo "build_ros.sh: OK — now: source scripts/ros_env.sh"
