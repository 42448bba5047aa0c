#!/usr/bin/env bash
# The recipe_* functions are called indirectly ("recipe_$name"):
# shellcheck disable=SC2317
# Make the real Pulumi engine available: the CLI, the Python language host and
# the resource plugins (command, docker, cloudflare) at the versions that the
# Python packages installed in the project's venv ask for.
#
#   scripts/pulumi-toolchain.sh            # build/check, then print what it used
#   source scripts/pulumi-env.sh           # PATH, PULUMI_HOME, backend, passphrase file
#
# Idempotent: everything lives under ONE cache folder outside git,
#   ${DKIM_RELAY_CACHE:-$HOME/.cache/dkim-relay}
#     go/cache go/mod    Go build and module caches (GOCACHE, GOMODCACHE)
#     src/               build trees (wrapper modules, sources taken from git mirrors)
#     bin/               pulumi, pulumi-language-python(-exec), pulumi-resource-* binaries
#     pulumi-home/       PULUMI_HOME: registered plugins, no credentials
#     stamps/            one file per part: the version it was built at
# A warm run only checks stamps and binaries (seconds, no network).
#
# Where binaries come from (no installer download site is reachable here):
#   * CLI: built with `go build` from the Go module github.com/pulumi/pulumi/pkg/v3
#     through the Go module proxy, in a small wrapper module that carries the
#     module's own replace directive (its `replace sdk => ../sdk` stops `go install`).
#   * Language host and providers: their Go modules are refused by the module
#     proxy here, so their source is taken from a git mirror of the upstream
#     repository (DKIM_RELAY_GIT_MIRRORS, default /work/.mirror/<owner>+<repo>/repo)
#     at the exact release tag; dependencies still come through the module proxy.
#     A part whose release tag or dependency is not available is reported as
#     UNAVAILABLE with the reason (exit status 3), never faked with another version.
#
# Exit status: 0 all parts present; 3 some part (a plugin, the language host)
# is unavailable here, the rest is set up and usable; anything else: an error.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${DKIM_RELAY_CACHE:-$HOME/.cache/dkim-relay}
VENV=${DKIM_RELAY_VENV:-$REPO/venv}
MIRRORS=${DKIM_RELAY_GIT_MIRRORS:-/work/.mirror}
# The Python SDK is pulumi==3.272.0; the module proxy here does not serve
# github.com/pulumi/pulumi/pkg/v3@v3.272.0, the nearest served version above it
# is v3.274.0 (checked with `go list -m -versions github.com/pulumi/pulumi/pkg/v3`).
PULUMI_CLI_VERSION=${DKIM_RELAY_PULUMI_CLI_VERSION:-3.274.0}
# The language host lives in its own Go module (refused by the proxy); the git
# mirror's newest release tag is v3.259.0. Its main package is built against
# pkg/sdk at the CLI version above.
LANGHOST_SRC_TAG=${DKIM_RELAY_LANGHOST_TAG:-v3.259.0}

log() { printf '[pulumi-toolchain] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

mkdir -p "$CACHE"/{go/cache,go/mod,src,bin,pulumi-home,stamps,logs}
export GOCACHE="$CACHE/go/cache" GOMODCACHE="$CACHE/go/mod"
export GOFLAGS="-mod=mod -p=2" GOTOOLCHAIN=local CGO_ENABLED=0
export PULUMI_HOME="$CACHE/pulumi-home" PULUMI_SKIP_UPDATE_CHECK=1
export PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION=true
BIN="$CACHE/bin"

GO=${GO:-}
if [[ -z "$GO" ]]; then
  if command -v go >/dev/null 2>&1; then GO=$(command -v go)
  elif [[ -x /usr/local/go/bin/go ]]; then GO=/usr/local/go/bin/go
  fi
fi

[[ -x "$VENV/bin/python" ]] || die "no venv at $VENV (create it from requirements.txt first)"
PY="$VENV/bin/python"

# Versions, read from the installed Python packages (single source of truth).
PY_SDK_VERSION=$("$PY" -c 'import importlib.metadata as m; print(m.version("pulumi"))')
# The resource plugins: every pulumi-NAME==X in requirements.txt whose installed
# package ships a pulumi-plugin.json; printed as "NAME VERSION" lines.
wanted_plugins() {
  "$PY" - "$REPO/requirements.txt" <<'EOF'
import json, pathlib, re, sys, importlib.util
for line in pathlib.Path(sys.argv[1]).read_text().splitlines():
    m = re.match(r"\s*pulumi-([a-z0-9-]+)\s*==\s*([^\s;#]+)", line, re.I)
    if not m:
        continue
    mod = "pulumi_" + m.group(1).lower().replace("-", "_")
    spec = importlib.util.find_spec(mod)
    if spec is None or spec.origin is None:
        sys.exit("requirements.txt names pulumi-%s but the venv lacks %s" % (m.group(1), mod))
    f = pathlib.Path(spec.origin).parent / "pulumi-plugin.json"
    if not f.is_file():
        continue
    meta = json.loads(f.read_text())
    if meta.get("resource"):
        print(meta["name"], meta["version"])
EOF
}
declare -A WANT
PLUGINS=()
_wanted=$(wanted_plugins) || die "cannot read the wanted plugin versions from $VENV"
while read -r _n _v; do
  [[ -n "$_n" ]] || continue
  WANT[$_n]=$_v; PLUGINS+=("$_n")
done <<<"$_wanted"
(( ${#PLUGINS[@]} )) || die "requirements.txt names no Pulumi resource plugin"

stamp_ok() { [[ -f "$CACHE/stamps/$1" && "$(cat "$CACHE/stamps/$1")" == "$2" && -x "$BIN/$3" ]]; }
need_go() { [[ -n "$GO" ]] || die "go is needed to build $1 (install Go >= 1.26)"; }
timed() { # timed NAME cmd...: run, keep /usr/bin/time figures in logs/NAME.time when available
  local name=$1; shift
  if [[ -x /usr/bin/time ]]; then
    /usr/bin/time -v -o "$CACHE/logs/$name.time" "$@" >>"$CACHE/logs/$name.log" 2>&1
  else
    "$@" >>"$CACHE/logs/$name.log" 2>&1
  fi
}
mirror_repo() { # mirror_repo owner/name -> path of a git dir holding that repository, or ""
  local d="$MIRRORS/${1/\//+}/repo"
  if [[ -d "$d" ]] && git -C "$d" rev-parse --git-dir >/dev/null 2>&1; then echo "$d"; fi
}
export_tree() { # export_tree GITDIR REV PATHSPEC DEST: extract a tree from a mirror (no work tree there)
  rm -rf "$4"; mkdir -p "$4"
  git -C "$1" archive "$2:$3" | tar -x -C "$4"
}

declare -A STATUS
UNAVAILABLE=0

# ---------------------------------------------------------------- CLI
build_cli() {
  local v=$PULUMI_CLI_VERSION
  local ambient; ambient=$(PATH=${PATH//$BIN:/} command -v pulumi || true)
  if [[ -n "$ambient" && "$ambient" != "$BIN/pulumi" ]] \
     && [[ "$("$ambient" version 2>/dev/null)" == "v$v" ]]; then
    ln -sf "$ambient" "$BIN/pulumi"; echo "v$v" >"$CACHE/stamps/cli"
    STATUS[cli]="v$v (found on PATH: $ambient)"; return
  fi
  if stamp_ok cli "v$v" pulumi; then STATUS[cli]="v$v (cached)"; return; fi
  need_go "the Pulumi CLI"
  log "building pulumi CLI v$v from github.com/pulumi/pulumi/pkg/v3 (cold: about 5 min on 2 cores)"
  local w="$CACHE/src/pulumi-cli-$v"; rm -rf "$w"; mkdir -p "$w"
  # wrapper module: requires pkg/v3 and sdk/v3 at v$v and copies pkg's non-local replace
  cat >"$w/go.mod" <<EOF
module dkimrelay.invalid/toolchain/pulumi-cli

go 1.26

replace github.com/atotto/clipboard => github.com/tgummerer/clipboard v0.0.0-20241001131231-d02d263e614e
EOF
  : >"$CACHE/logs/cli.log"
  (cd "$w" && timed cli-get "$GO" get "github.com/pulumi/pulumi/pkg/v3/cmd/pulumi@v$v" "github.com/pulumi/pulumi/sdk/v3@v$v") \
    || die "go get of the CLI failed, see $CACHE/logs/cli-get.log"
  (cd "$w" && timed cli "$GO" build -trimpath \
      -ldflags "-X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version=v$v" \
      -o "$BIN/pulumi.tmp" github.com/pulumi/pulumi/pkg/v3/cmd/pulumi) \
    || die "go build of the CLI failed, see $CACHE/logs/cli.log"
  mv -f "$BIN/pulumi.tmp" "$BIN/pulumi"
  echo "v$v" >"$CACHE/stamps/cli"; STATUS[cli]="v$v (built)"
}

# ---------------------------------------------------------------- language host
# pulumi-resource-pulumi-python: the provider plugin of Python dynamic resources
# (`pulumi.dynamic`, e.g. the DKIM key), a shell script shipped next to the exec
# shim in the sdk module; without it `pulumi up` fails with "no resource plugin
# 'pulumi-resource-pulumi-python' found". Installed from the same sdk version.
install_dynamic_provider() {
  local sdkdir=${1:-} dyn="$BIN/pulumi-resource-pulumi-python"
  [[ -z "$sdkdir" && -x "$dyn" ]] && return 0
  if [[ -z "$sdkdir" ]]; then
    need_go "the dynamic provider script (from the sdk module)"
    sdkdir=$("$GO" mod download -json "github.com/pulumi/pulumi/sdk/v3@v$PY_SDK_VERSION" \
             | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["Dir"])') \
      || die "cannot fetch github.com/pulumi/pulumi/sdk/v3@v$PY_SDK_VERSION for the dynamic provider"
  fi
  install -m 0755 "$sdkdir/python/dist/pulumi-resource-pulumi-python" "$dyn"
}

build_langhost() {
  local want="$LANGHOST_SRC_TAG+pkg$PULUMI_CLI_VERSION;exec$PY_SDK_VERSION"
  if stamp_ok langhost "$want" pulumi-language-python && [[ -x "$BIN/pulumi-language-python-exec" ]]; then
    install_dynamic_provider
    STATUS[langhost]="$want (cached)"; return
  fi
  need_go "the Python language host"
  local m; m=$(mirror_repo pulumi/pulumi)
  if [[ -z "$m" ]] || ! git -C "$m" rev-parse -q --verify "refs/tags/$LANGHOST_SRC_TAG" >/dev/null; then
    STATUS[langhost]="UNAVAILABLE: its Go module is refused by the module proxy and there is no git mirror of pulumi/pulumi with tag $LANGHOST_SRC_TAG under $MIRRORS"
    UNAVAILABLE=1; log "${STATUS[langhost]}"; return
  fi
  local w="$CACHE/src/language-python-$LANGHOST_SRC_TAG"
  log "building pulumi-language-python from $LANGHOST_SRC_TAG against pkg/sdk v$PULUMI_CLI_VERSION"
  export_tree "$m" "$LANGHOST_SRC_TAG" sdk/python/cmd/pulumi-language-python "$w"
  (cd "$w" && "$GO" mod edit \
      -dropreplace github.com/pulumi/pulumi/pkg/v3 -dropreplace github.com/pulumi/pulumi/sdk/v3 \
      -require "github.com/pulumi/pulumi/pkg/v3@v$PULUMI_CLI_VERSION" \
      -require "github.com/pulumi/pulumi/sdk/v3@v$PULUMI_CLI_VERSION" -go 1.26)
  : >"$CACHE/logs/langhost.log"
  (cd "$w" && timed langhost "$GO" build -trimpath \
      -ldflags "-X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version=$LANGHOST_SRC_TAG" \
      -o "$BIN/pulumi-language-python.tmp" .) \
    || die "go build of the language host failed, see $CACHE/logs/langhost.log"
  mv -f "$BIN/pulumi-language-python.tmp" "$BIN/pulumi-language-python"
  # The exec shim is a Python script that drives the Python SDK: take it from the
  # sdk module at exactly the Python SDK's version.
  local sdkdir
  sdkdir=$("$GO" mod download -json "github.com/pulumi/pulumi/sdk/v3@v$PY_SDK_VERSION" \
           | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["Dir"])') \
    || die "cannot fetch github.com/pulumi/pulumi/sdk/v3@v$PY_SDK_VERSION for the exec shim"
  install -m 0755 "$sdkdir/python/cmd/pulumi-language-python-exec" "$BIN/pulumi-language-python-exec"
  install_dynamic_provider "$sdkdir"
  echo "$want" >"$CACHE/stamps/langhost"; STATUS[langhost]="$want (built)"
}

# ---------------------------------------------------------------- resource plugins
# Each recipe builds $BIN/pulumi-resource-NAME-vVERSION or returns 3 with a reason in REASON.
REASON=""
recipe_command() {
  local v=$1 m g
  m=$(mirror_repo pulumi/pulumi-command); g=$(mirror_repo pulumi/pulumi-go-provider)
  [[ -n "$m" && -n "$g" ]] || { REASON="no git mirror of pulumi/pulumi-command and pulumi/pulumi-go-provider (module proxy refuses both)"; return 3; }
  git -C "$m" rev-parse -q --verify "refs/tags/v$v" >/dev/null || { REASON="tag v$v not in $m"; return 3; }
  local w="$CACHE/src/command-$v"
  export_tree "$m" "v$v" provider "$w/provider" || { REASON="cannot export provider/ at v$v from $m"; return 1; }
  local gpv; gpv=$(cd "$w/provider" && "$GO" list -m -f '{{.Version}}' github.com/pulumi/pulumi-go-provider) \
    || { REASON="cannot read the pulumi-go-provider version from provider/go.mod"; return 1; }
  git -C "$g" rev-parse -q --verify "refs/tags/$gpv" >/dev/null || { REASON="pulumi-go-provider $gpv not in $g"; return 3; }
  export_tree "$g" "$gpv" "" "$w/pulumi-go-provider" || { REASON="cannot export $gpv from $g"; return 1; }
  (cd "$w/provider" && "$GO" mod edit -replace github.com/pulumi/pulumi-go-provider=../pulumi-go-provider)
  (cd "$w/provider" && timed plugin-command "$GO" build -trimpath \
      -ldflags "-X github.com/pulumi/pulumi-command/provider/pkg/version.Version=$v" \
      -o "$BIN/pulumi-resource-command-v$v" ./cmd/pulumi-resource-command) \
    || { REASON="go build failed, see $CACHE/logs/plugin-command.log"; return 1; }
}
recipe_bridged() { # docker and cloudflare are bridged Terraform providers
  local name=$1 v=$2 m mod="github.com/pulumi/pulumi-$1/provider/v${2%%.*}"
  # Even where the module proxy serves $mod, its go.mod replaces the upstream
  # Terraform provider with ../upstream (a patched git submodule that a module
  # zip does not carry), so `go install`/a wrapper module cannot build it.
  m=$(mirror_repo "pulumi/pulumi-$name")
  [[ -n "$m" ]] || { REASON="$mod is refused by the module proxy and there is no git mirror of pulumi/pulumi-$name"; return 3; }
  if ! git -C "$m" rev-parse -q --verify "refs/tags/v$v" >/dev/null; then
    REASON="the module proxy refuses $mod and the git mirror's newest release is $(git -C "$m" describe --tags --abbrev=0 HEAD 2>/dev/null || echo none), not v$v"
    return 3
  fi
  # A tagged tree also needs the upstream Terraform provider (a git submodule,
  # patched) and pulumi's terraform-plugin-sdk fork; both are refused by the
  # module proxy at the pinned commits.
  REASON="v$v is tagged in $m, but its build needs pulumi's terraform-plugin-sdk/v2 fork at the pinned commit, which neither the module proxy nor the mirrors have (see docs/toolchain.md)"
  return 3
}
recipe_docker() { recipe_bridged docker "$1"; }
recipe_cloudflare() { recipe_bridged cloudflare "$1"; }

plugin_registered() { [[ -x "$PULUMI_HOME/plugins/resource-$1-v$2/pulumi-resource-$1" ]]; }
build_plugin() {
  local name=$1 v=${WANT[$1]} rc=0
  local bin="pulumi-resource-$name-v$v"
  if stamp_ok "plugin-$name" "$v" "$bin" && plugin_registered "$name" "$v"; then
    STATUS[$name]="v$v (cached)"; return
  fi
  if ! stamp_ok "plugin-$name" "$v" "$bin"; then
    need_go "pulumi-resource-$name"
    log "pulumi-resource-$name v$v: not built yet, trying"
    : >"$CACHE/logs/plugin-$name.log"
    REASON=""
    if declare -F "recipe_$name" >/dev/null; then "recipe_$name" "$v" || rc=$?
    else REASON="no build recipe for this plugin in scripts/pulumi-toolchain.sh"; rc=3; fi
    if (( rc == 3 )); then
      STATUS[$name]="UNAVAILABLE v$v: $REASON"; UNAVAILABLE=1; log "${STATUS[$name]}"; return
    elif (( rc != 0 )); then die "pulumi-resource-$name v$v: $REASON"; fi
    echo "$v" >"$CACHE/stamps/plugin-$name"
  fi
  # Register it so the engine never tries to download it.
  "$BIN/pulumi" plugin install resource "$name" "$v" --file "$BIN/$bin" --reinstall >>"$CACHE/logs/plugin-$name.log" 2>&1 \
    || die "pulumi plugin install resource $name $v failed, see $CACHE/logs/plugin-$name.log"
  STATUS[$name]="v$v (built and registered)"
}

main() {
  build_cli
  build_langhost
  for p in "${PLUGINS[@]}"; do build_plugin "$p"; done

  cat >&2 <<EOF
[pulumi-toolchain] cache:          $CACHE
[pulumi-toolchain] venv:           $VENV (pulumi SDK $PY_SDK_VERSION)
[pulumi-toolchain] pulumi CLI:     ${STATUS[cli]}
[pulumi-toolchain] language host:  ${STATUS[langhost]}
EOF
  for p in "${PLUGINS[@]}"; do printf '[pulumi-toolchain] plugin %-11s %s\n' "$p:" "${STATUS[$p]}" >&2; done
  log "to use it:      source $REPO/scripts/pulumi-env.sh"
  # Lines a caller can eval (also what scripts/pulumi-env.sh sets).
  echo "export PATH=\"$BIN:\$PATH\""
  echo "export PULUMI_HOME=\"$PULUMI_HOME\""
  if (( UNAVAILABLE )); then return 3; fi
}

# Called last, so that the whole file is parsed before anything runs.
main "$@"; exit $?
