# shellcheck shell=bash
# Sourced by scripts/test.sh before pytest: make the real Pulumi engine
# available (cold: builds into ${DKIM_RELAY_CACHE:-~/.cache/dkim-relay}; warm:
# seconds) and export its environment. A plugin that cannot be built here is
# reported and left missing, so tests/test_toolchain.py fails for it loudly.
_dkr_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
_dkr_rc=0
bash "$_dkr_root/scripts/pulumi-toolchain.sh" >/dev/null || _dkr_rc=$?
case $_dkr_rc in
  0) ;;
  3) echo "setup.d/30-pulumi: some Pulumi plugins are unavailable (see above); tests needing them will fail" >&2 ;;
  *) echo "setup.d/30-pulumi: scripts/pulumi-toolchain.sh failed (exit $_dkr_rc)" >&2
     unset _dkr_root; return "$_dkr_rc" ;;
esac
# shellcheck source=scripts/pulumi-env.sh
source "$_dkr_root/scripts/pulumi-env.sh"
unset _dkr_root _dkr_rc
