# shellcheck shell=bash
# Source me:  source scripts/pulumi-env.sh
# Puts the toolchain built by scripts/pulumi-toolchain.sh on PATH and points
# Pulumi at a local file backend inside the project with the passphrase
# secrets provider. No Pulumi Cloud login, no downloads, no update checks.
# The passphrase lives in a 0600 file under .pulumi-state (git-ignored); it is
# never put in the environment or on a command line: only its path is.
# Does not build anything (run scripts/pulumi-toolchain.sh for that).

_dkr_repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
_dkr_cache=${DKIM_RELAY_CACHE:-$HOME/.cache/dkim-relay}

case ":$PATH:" in
  *":$_dkr_cache/bin:"*) ;;
  *) export PATH="$_dkr_cache/bin:$PATH" ;;
esac
export PULUMI_HOME="$_dkr_cache/pulumi-home"
export PULUMI_SKIP_UPDATE_CHECK=1
export PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION=true
export PULUMI_BACKEND_URL="file://$_dkr_repo/.pulumi-state"

# Passphrase file: created once, random, mode 0600, inside the ignored state folder.
(
  umask 077
  mkdir -p "$_dkr_repo/.pulumi-state"
  f="$_dkr_repo/.pulumi-state/passphrase"
  if [[ ! -s "$f" ]]; then
    head -c 32 /dev/urandom | base64 | tr -d '\n=' >"$f.tmp" && mv -f "$f.tmp" "$f"
  fi
  chmod 0600 "$f"
)
export PULUMI_CONFIG_PASSPHRASE_FILE="$_dkr_repo/.pulumi-state/passphrase"
if [[ -n "${PULUMI_CONFIG_PASSPHRASE:-}" ]]; then
  echo "pulumi-env: PULUMI_CONFIG_PASSPHRASE is set in the environment and overrides the passphrase file; unset it" >&2
fi
unset _dkr_repo _dkr_cache
