#!/usr/bin/env bash
# The main job on this machine: the whole relay, deployed by `pulumi up --stack local`
# onto the local Docker engine, then one signed test message through it.
# Needs no VPS and no Cloudflare account; idempotent (a second run changes nothing) and
# leaves the work tree as it was (what it writes is git-ignored).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/bootstrap.sh                      # venv with the pinned requirements
bash scripts/docker-engine.sh             # Debian's docker.io, dockerd, offline base image
# The official CLI, or one built once, with only the plugins the local stack uses: any
# failure (3 included: one of these two cannot be built) stops here.
bash scripts/pulumi-toolchain.sh command docker
# shellcheck source=scripts/pulumi-env.sh
source scripts/pulumi-env.sh              # local file backend, passphrase file

venv/bin/python scripts/local_ca.py .local/letsencrypt smtp.example.test >/dev/null
if ! pulumi stack select local 2>/dev/null; then
  rm -f Pulumi.local.yaml                 # a config file left from a removed state
  pulumi stack init local --secrets-provider passphrase
fi
# The stack's config file: stacks/local.yaml plus the salt (Pulumi.local.yaml is git-ignored).
pulumi stack export --stack local | venv/bin/python scripts/local_stack.py stacks/local.yaml Pulumi.local.yaml
pulumi up --stack local --yes --skip-preview

pulumi stack output --stack local --json --show-secrets \
  | venv/bin/python scripts/send_test_mail.py --cafile .local/letsencrypt/ca.pem --sink-dir .local/local/sink

cat <<'TXT'

The relay runs on this machine. Where to look:
  pulumi stack output --stack local gmailGuide       the Gmail "Send mail as" guide
  pulumi stack output --stack local zoneSnippet      the DNS records to publish
  pulumi stack output --stack local --show-secrets smtpPassword
  ls .local/local/sink/                              every message the relay delivered
  docker logs dkim-relay                             the relay's log
  docker rm -f dkim-relay; pulumi up --stack local    the stack sees the removal and repairs it
(first: source scripts/pulumi-env.sh)   Remove it all: pulumi destroy --stack local
(it keeps the queue volume dkim-relay-queue, which may hold mail: docker volume rm it after)
TXT
