#!/usr/bin/env bash
# The local sink's delete: removes the container; the kept mail in MAIL_DIR stays.
# Parameters: WORK_DIR, CONTAINER.
set -euo pipefail
# shellcheck source=../relay/lib.sh
declare -F finish >/dev/null || . "${BASH_SOURCE[0]%/*}/../relay/lib.sh"

remove_container "${CONTAINER}"
if [[ -d "${WORK_DIR}" ]]; then
  prune_dirs '^sink-build-[0-9a-f]{16}$'
fi
finish
