# shellcheck shell=bash
# Source me:  source scripts/pulumi-env.sh
# The Pulumi environment that scripts/pulumi-toolchain.sh chose (the official CLI on
# PATH, or the engine it built from source, with plugin downloads off), plus, unless
# another backend is chosen, a local file backend inside the project with the
# passphrase secrets provider.
# The passphrase lives in a 0600 file under .pulumi-state (git-ignored); it is
# never put in the environment or on a command line: only its path is.
# Builds nothing (run scripts/pulumi-toolchain.sh for that).

_dkr_repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
_dkr_cache=${DKIM_RELAY_CACHE:-$HOME/.cache/dkim-relay}

if [[ -f "$_dkr_cache/toolchain.env" ]]; then
  # shellcheck source=/dev/null
  source "$_dkr_cache/toolchain.env"
else
  echo "pulumi-env: run scripts/pulumi-toolchain.sh first (it finds or builds the Pulumi CLI)" >&2
fi
# The local folder, unless a backend was chosen already (Pulumi Cloud after `pulumi login`
# is left alone too: PULUMI_ACCESS_TOKEN set; an s3:// bucket: PULUMI_BACKEND_URL set).
if [[ -z "${PULUMI_BACKEND_URL:-}" && -z "${PULUMI_ACCESS_TOKEN:-}" ]]; then
  export PULUMI_BACKEND_URL="file://$_dkr_repo/.pulumi-state"
fi

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
