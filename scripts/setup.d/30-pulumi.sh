# shellcheck shell=bash
# Sourced by scripts/test.sh before pytest: the Pulumi engine the tests run, always
# the one built from source (DKIM_RELAY_PULUMI=source), so that they pin its exact
# versions and prove it works with plugin downloads off. No plugin names: every plugin
# of requirements.txt, since the tests preview each one (hcloud included, which the
# local stack does not use). Cold: builds into ${DKIM_RELAY_CACHE:-~/.cache/dkim-relay},
# about 10 min on 2 cores; warm: well under a second. It never stops the test run: a
# part that cannot be built is reported, and tests/test_toolchain.py then fails for it
# loudly.
_dkr_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
_dkr_rc=0
DKIM_RELAY_PULUMI=source bash "$_dkr_root/scripts/pulumi-toolchain.sh" || _dkr_rc=$?
case $_dkr_rc in
  0) ;;
  3) echo "setup.d/30-pulumi: some Pulumi plugins cannot be built from source (see above)" >&2 ;;
  *) echo "setup.d/30-pulumi: WARNING: scripts/pulumi-toolchain.sh failed (exit $_dkr_rc); the Pulumi engine tests will fail" >&2 ;;
esac
# shellcheck source=scripts/pulumi-env.sh
source "$_dkr_root/scripts/pulumi-env.sh"
unset _dkr_root _dkr_rc
