#!/usr/bin/env bash
# The workflows' ssh-agent: the Docker provider reaches the VPS's engine over ssh://
# and takes the key from an agent (no key file, nothing on a command line). Loads the
# stack's sshPrivateKey (a Pulumi secret) from the stack config straight into a new agent
# and hands the agent to the later steps. Needs the CLI, the backend login and
# PULUMI_STACK. A stack without sshPrivateKey (a local target) needs no agent.
set -euo pipefail
: "${PULUMI_STACK:?set the repository variable PULUMI_STACK}"
if ! pulumi config get sshPrivateKey --stack "${PULUMI_STACK}" >/dev/null 2>&1; then
  echo "the stack has no sshPrivateKey: no ssh-agent needed"
  exit 0
fi
eval "$(ssh-agent -s)" >/dev/null
pulumi config get sshPrivateKey --stack "${PULUMI_STACK}" | ssh-add -q -
if [[ -n "${GITHUB_ENV:-}" ]]; then
  {
    echo "SSH_AUTH_SOCK=${SSH_AUTH_SOCK}"
    echo "SSH_AGENT_PID=${SSH_AGENT_PID}"
  } >>"${GITHUB_ENV}"
fi
echo "ssh-agent holds the stack's SSH key"
