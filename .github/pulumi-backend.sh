#!/usr/bin/env bash
# The workflows' state backend, from the repository's secrets and variables (passed as
# env): a self-managed S3-compatible bucket when PULUMI_BACKEND_URL is set (with the
# passphrase secrets provider), else Pulumi Cloud with PULUMI_ACCESS_TOKEN. Fails early,
# naming what is missing, instead of a later "stack not found". With "login", logs in.
set -euo pipefail

url="${PULUMI_BACKEND_URL:-}"
if [[ -n "${url}" ]]; then
  missing=()
  [[ -n "${PULUMI_CONFIG_PASSPHRASE:-}${PULUMI_CONFIG_PASSPHRASE_FILE:-}" ]] \
    || missing+=(PULUMI_CONFIG_PASSPHRASE)
  if [[ "${url}" == s3://* ]]; then
    [[ -n "${AWS_ACCESS_KEY_ID:-}" ]] || missing+=(AWS_ACCESS_KEY_ID)
    [[ -n "${AWS_SECRET_ACCESS_KEY:-}" ]] || missing+=(AWS_SECRET_ACCESS_KEY)
  fi
  if ((${#missing[@]})); then
    echo "::error::PULUMI_BACKEND_URL is set but these secrets are not: ${missing[*]}"
    exit 1
  fi
  echo "state backend: self-managed, ${url%%\?*}"
elif [[ -n "${PULUMI_ACCESS_TOKEN:-}" ]]; then
  echo "state backend: Pulumi Cloud"
else
  echo "::error::no state backend: set the secret PULUMI_ACCESS_TOKEN (Pulumi Cloud), or" \
    "PULUMI_BACKEND_URL with the secrets PULUMI_CONFIG_PASSPHRASE, AWS_ACCESS_KEY_ID and" \
    "AWS_SECRET_ACCESS_KEY (an S3-compatible bucket)"
  exit 1
fi

if [[ "${1:-}" == "login" ]]; then
  pulumi --non-interactive login ${url:+"${url}"}
fi
