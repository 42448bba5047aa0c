#!/usr/bin/env bash
# Sourced by scripts/test.sh (and safe to run on its own): the Debian packages that
# verify's end-to-end tests run for real, started by the tests themselves on loopback
# with config dirs of their own (no system service is started or needed):
#   nsd                          authoritative DNS serving the stack's zone snippet
#   postfix, sasl2-bin,          a loopback Postfix with the relay's settings and the
#   libsasl2-modules             deliberately broken variants (AUTH before TLS, open relay)

_dkr_need_pkgs=()
for _dkr_pkg in nsd postfix sasl2-bin libsasl2-modules; do
  dpkg-query -W -f='${Status}' "${_dkr_pkg}" 2>/dev/null | grep -q "ok installed" \
    || _dkr_need_pkgs+=("${_dkr_pkg}")
done
if ((${#_dkr_need_pkgs[@]})); then
  echo "setup: installing ${_dkr_need_pkgs[*]}" >&2
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  _dkr_apt=(apt-get -y -q -o DPkg::Lock::Timeout=300)
  DEBIAN_FRONTEND=noninteractive "${_dkr_apt[@]}" install --no-install-recommends \
    "${_dkr_need_pkgs[@]}" </dev/null >&2 || {
    "${_dkr_apt[@]}" update </dev/null >&2 \
      && DEBIAN_FRONTEND=noninteractive "${_dkr_apt[@]}" install --no-install-recommends \
        "${_dkr_need_pkgs[@]}" </dev/null >&2
  } || echo "setup: WARNING: apt-get install ${_dkr_need_pkgs[*]} failed" >&2
  unset _dkr_apt
fi
unset _dkr_need_pkgs _dkr_pkg
