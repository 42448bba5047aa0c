# shellcheck shell=bash
# Sourced by scripts/test.sh before pytest: make the real Pulumi engine
# available (cold: builds into ${DKIM_RELAY_CACHE:-~/.cache/dkim-relay}, about
# 5 min on 2 cores; warm: well under a second) and export its environment.
# It never stops the test run: a part that cannot be built here is reported
# and left missing, and tests/test_toolchain.py then fails for it loudly.
_dkr_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
_dkr_rc=0
bash "$_dkr_root/scripts/pulumi-toolchain.sh" >/dev/null || _dkr_rc=$?
case $_dkr_rc in
  0) ;;
  3) echo "setup.d/30-pulumi: WARNING: some Pulumi parts are unavailable (see above); the tests that need them will fail" >&2 ;;
  *) echo "setup.d/30-pulumi: WARNING: scripts/pulumi-toolchain.sh failed (exit $_dkr_rc); the Pulumi engine tests will fail" >&2 ;;
esac
# shellcheck source=scripts/pulumi-env.sh
source "$_dkr_root/scripts/pulumi-env.sh"
unset _dkr_root _dkr_rc
