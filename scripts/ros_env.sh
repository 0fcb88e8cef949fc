# shellcheck shell=bash
# Source me (bash or zsh):   source scripts/ros_env.sh
#
# Sets up the environment for ROS 2 from the PyPI wheels in the repo's .venv (SWAPNET_DISTRO=jazzy:
# .venv-jazzy and install-jazzy/, the Jazzy build that make test-jazzy makes):
#   AMENT_PREFIX_PATH / CMAKE_PREFIX_PATH  -> .venv prepended (unless already there)
#   PATH                                   -> .venv/bin first (moved there, no duplicates)
#   ROS_AUTOMATIC_DISCOVERY_RANGE          -> LOCALHOST unless already set
#   FASTDDS_DEFAULT_PROFILES_FILE          -> config/fastdds.xml if it exists (unless already set)
# and then sources install/setup.bash (the colcon build of this package) if it exists.
# Safe under `set -u` and `set -e` callers; sourcing it twice changes nothing.

# Repo root, derived from this file's own location.
if [ -n "${BASH_VERSION:-}" ]; then
  eval '_swapnet_env_src="${BASH_SOURCE[0]}"'
elif [ -n "${ZSH_VERSION:-}" ]; then
  eval '_swapnet_env_src="${(%):-%x}"'
elif [ -f "${PWD}/scripts/ros_env.sh" ]; then
  # POSIX sh cannot tell a sourced file its own path: assume we are at the repo root.
  _swapnet_env_src="${PWD}/scripts/ros_env.sh"
else
  echo "ros_env.sh: source me from bash or zsh, or from the repo root in sh" >&2
  return 1 2>/dev/null || exit 1
fi
SWAPNET_ROOT="$(cd "$(dirname "${_swapnet_env_src}")/.." && pwd -P)"
export SWAPNET_ROOT
case "${SWAPNET_DISTRO:-kilted}" in
  kilted) _swapnet_suffix="" ;;
  jazzy) _swapnet_suffix="-jazzy" ;;
  *) echo "ros_env.sh: SWAPNET_DISTRO must be kilted or jazzy, not ${SWAPNET_DISTRO}" >&2
     return 1 2>/dev/null || exit 1 ;;
esac
SWAPNET_VENV="${SWAPNET_ROOT}/.venv${_swapnet_suffix}"
SWAPNET_INSTALL="${SWAPNET_ROOT}/install${_swapnet_suffix}"
export SWAPNET_VENV SWAPNET_INSTALL
unset _swapnet_env_src _swapnet_suffix

if [ ! -x "${SWAPNET_VENV}/bin/python" ]; then
  echo "ros_env.sh: warning: no virtual environment at ${SWAPNET_VENV}" >&2
fi

# _swapnet_prepend VAR DIR: put DIR first in the colon list VAR, removing other copies.
_swapnet_prepend() {
  local _var="$1" _dir="$2" _old
  eval "_old=\":\${${_var}:-}:\""
  while :; do
    case "${_old}" in
      *":${_dir}:"*) _old="${_old%%":${_dir}:"*}:${_old#*":${_dir}:"}" ;;
      *) break ;;
    esac
  done
  while :; do case "${_old}" in ::*) _old="${_old#:}" ;; *) break ;; esac; done
  while :; do case "${_old}" in *::) _old="${_old%:}" ;; *) break ;; esac; done
  _old="${_old#:}"; _old="${_old%:}"
  eval "export ${_var}=\"\${_dir}\${_old:+:\${_old}}\""
}

# _swapnet_add VAR DIR: prepend DIR to the colon list VAR unless it is already there
# (install/setup.bash puts install/ in front of the venv; sourcing again keeps that order).
_swapnet_add() {
  local _var="$1" _dir="$2" _old
  eval "_old=\":\${${_var}:-}:\""
  case "${_old}" in
    *":${_dir}:"*) ;;
    *) _swapnet_prepend "${_var}" "${_dir}" ;;
  esac
}

_swapnet_add AMENT_PREFIX_PATH "${SWAPNET_VENV}"
_swapnet_add CMAKE_PREFIX_PATH "${SWAPNET_VENV}"
_swapnet_prepend PATH "${SWAPNET_VENV}/bin"
unset -f _swapnet_prepend _swapnet_add

# Kilted ignores ROS_LOCALHOST_ONLY; this keeps DDS discovery on this machine.
export ROS_AUTOMATIC_DISCOVERY_RANGE="${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}"

# FastDDS profile with a larger shared-memory segment (images), if the repo ships one.
if [ -z "${FASTDDS_DEFAULT_PROFILES_FILE:-}" ] && [ -f "${SWAPNET_ROOT}/config/fastdds.xml" ]; then
  export FASTDDS_DEFAULT_PROFILES_FILE="${SWAPNET_ROOT}/config/fastdds.xml"
fi

# The built package (generated messages, swapnet_ros, swapnet_core). colcon's
# setup scripts read unset variables, so relax `set -u` around them.
if [ -f "${SWAPNET_INSTALL}/setup.bash" ] || [ -f "${SWAPNET_INSTALL}/setup.sh" ]; then
  case "$-" in *u*) _swapnet_had_u=1; set +u ;; *) _swapnet_had_u=0 ;; esac
  if [ -n "${BASH_VERSION:-}" ]; then
    # shellcheck disable=SC1091
    . "${SWAPNET_INSTALL}/setup.bash"
  elif [ -n "${ZSH_VERSION:-}" ] && [ -f "${SWAPNET_INSTALL}/setup.zsh" ]; then
    # shellcheck disable=SC1091
    . "${SWAPNET_INSTALL}/setup.zsh"
  elif [ -f "${SWAPNET_INSTALL}/setup.sh" ]; then
    # shellcheck disable=SC1091
    . "${SWAPNET_INSTALL}/setup.sh"
  fi
  if [ "${_swapnet_had_u}" = 1 ]; then set -u; fi
  unset _swapnet_had_u
  # colcon leaves an empty entry ("lib:") when the variable was unset; an empty entry
  # means "the current directory", which would let a source tree shadow the build.
  for _swapnet_var in LD_LIBRARY_PATH PYTHONPATH; do
    eval "_swapnet_val=\"\${${_swapnet_var}:-}\""
    while :; do
      case "${_swapnet_val}" in
        *::*) _swapnet_val="${_swapnet_val%%::*}:${_swapnet_val#*::}" ;;
        :*) _swapnet_val="${_swapnet_val#:}" ;;
        *:) _swapnet_val="${_swapnet_val%:}" ;;
        *) break ;;
      esac
    done
    if [ -n "${_swapnet_val}" ]; then eval "export ${_swapnet_var}=\"\${_swapnet_val}\""; fi
  done
  unset _swapnet_var _swapnet_val
fi
