#!/usr/bin/env bash
# The recipe_* functions are called indirectly ("recipe_$name"):
# shellcheck disable=SC2317
# Make the Pulumi engine available: the CLI, the Python language host and the
# resource plugins at the versions that the Python packages in the venv ask for.
#
#   scripts/pulumi-toolchain.sh            # find or build, then print what it used
#   scripts/pulumi-toolchain.sh command docker   # only these plugins (the local stack's)
#   source scripts/pulumi-env.sh           # the environment it chose (see below)
#
# Arguments name the resource plugins to build (each must be a pulumi-NAME==X of
# requirements.txt); with none, all of requirements.txt's. A plugin not asked for is
# neither built nor needs its source archives, so a job pays only for what it uses.
#
# Two ways, chosen by DKIM_RELAY_PULUMI (default auto):
#   path    The official Pulumi CLI on PATH (https://www.pulumi.com/docs/install/), at
#           least the Python SDK's version. Pulumi installs resource plugins itself,
#           as for every Pulumi user; nothing is built.
#   source  The offline fallback: build the CLI, the language host and the asked-for
#           plugins (command, docker, hcloud) from Go source with Go >= 1.26. The CLI
#           comes through the Go module proxy; the language host, the command provider
#           and the docker and hcloud providers with the Terraform providers they bridge,
#           whose modules the proxy does not serve, come from `git archive` exports of
#           their release tags in DKIM_RELAY_SOURCE_ARCHIVES (default:
#           ../shared/toolchain-src beside the checkout), each checked against the sha256
#           pinned below before unpacking. The cloudflare plugin has no source build
#           (reported UNAVAILABLE).
#           Automatic plugin download is then off: the engine uses only what was built.
#   auto    path when a usable CLI is on PATH, else source.
#
# Idempotent: everything it builds lives under ONE cache folder outside git,
#   ${DKIM_RELAY_CACHE:-$HOME/.cache/dkim-relay}
#     go/cache go/mod    Go build and module caches (GOCACHE, GOMODCACHE)
#     src/               build trees (wrapper module, unpacked archives)
#     bin/               pulumi, pulumi-language-python(-exec), pulumi-resource-* binaries
#     pulumi-home/       PULUMI_HOME of the source build: registered plugins, no credentials
#     stamps/            one file per part: the version it was built at
#     toolchain.env      what scripts/pulumi-env.sh sources: the chosen way's environment
# A warm run only checks stamps and binaries (well under a second, no network).
#
# Exit status: 0 all parts present; 3 some asked-for resource plugin cannot be built
# from source (reported UNAVAILABLE with the reason), the rest is set up and usable;
# anything else: an error (an unknown plugin name included).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${DKIM_RELAY_CACHE:-$HOME/.cache/dkim-relay}
VENV=${DKIM_RELAY_VENV:-$REPO/venv}
WAY=${DKIM_RELAY_PULUMI:-auto}
ARCHIVES=${DKIM_RELAY_SOURCE_ARCHIVES:-$REPO/../shared/toolchain-src}
# The Python SDK is pulumi==3.272.0; the module proxy does not serve
# github.com/pulumi/pulumi/pkg/v3@v3.272.0, the nearest served version above it
# is v3.274.0 (checked with `go list -m -versions github.com/pulumi/pulumi/pkg/v3`).
PULUMI_CLI_VERSION=${DKIM_RELAY_PULUMI_CLI_VERSION:-3.274.0}
# The source archives, pinned: name and sha256 (the tree's top folder and the release
# tag are in the name).
LANGHOST_TAG=v3.259.0
declare -A ARCHIVE_SHA256=(
  [pulumi-language-python-v3.259.0.tar.gz]=bd4e0240b7b26f35417c41568f18d435ac9bbb12c8ba54c7c554597586eecdfe
  [pulumi-command-provider-v1.2.1.tar.gz]=75a81080c65ccff6fcbec5553c291233d8cb46ac0eac88dcd5b6ae8e277e5bc5
  [pulumi-go-provider-v1.3.0.tar.gz]=9ad7bfabb046ef1ad0dbca74ede3f04b111cbfaf2d6b78f111dc4d6d22693e81
  [pulumi-docker-v5.1.0.tar.gz]=2946c6b7b8fa0047fea16e8ff01487682ebe18844cafed0d35259c99992c0773
  [terraform-provider-docker-v4.5.0.tar.gz]=287dfbb60846838ad269f9949ad8e6fe2fc2f14df6c173b0130c68828d57a7a3
  [pulumi-hcloud-v1.39.1.tar.gz]=ea2c0664d1dcdf4b84cfdbb59ebbf8b0966dc590040ba55fd4496e10917fa639
  [terraform-provider-hcloud-v1.66.1.tar.gz]=9df3838ef6bca8667e9aaadccf5f6fd94dc51b0c8152008ea009d6f068d4e3f3
)
# The archives each part is built from, by part and version ("langhost", or the plugin's
# name). Before the long CLI build, those of every asked-for part still to build must be
# there. The docker and hcloud plugins' second archive is the Terraform provider they bridge.
declare -A PART_ARCHIVES=(
  [langhost@$LANGHOST_TAG]="pulumi-language-python-v3.259.0.tar.gz"
  [command@1.2.1]="pulumi-command-provider-v1.2.1.tar.gz pulumi-go-provider-v1.3.0.tar.gz"
  [docker@5.1.0]="pulumi-docker-v5.1.0.tar.gz terraform-provider-docker-v4.5.0.tar.gz"
  [hcloud@1.39.1]="pulumi-hcloud-v1.39.1.tar.gz terraform-provider-hcloud-v1.66.1.tar.gz"
)

log() { printf '[pulumi-toolchain] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[[ -x "$VENV/bin/python" ]] || die "no venv at $VENV (create it from requirements.txt first)"
PY="$VENV/bin/python"
PY_SDK_VERSION=$("$PY" -c 'import importlib.metadata as m; print(m.version("pulumi"))')

mkdir -p "$CACHE"
BIN="$CACHE/bin"

# version_ge A B: A >= B for dotted versions (a leading v and any -suffix ignored).
version_ge() {
  local a=${1#v} b=${2#v}
  a=${a%%-*}; b=${b%%-*}
  [[ "$(printf '%s\n%s\n' "$a" "$b" | sort -V | head -n1)" == "$b" ]]
}

# ---------------------------------------------------------------- the official CLI
# Prints the path of a `pulumi` on PATH (not one of ours) and its version, or nothing.
ambient_cli() {
  local p v
  p=$(PATH=$(tr ':' '\n' <<<"$PATH" | grep -vxF "$BIN" | paste -sd:) command -v pulumi || true)
  [[ -n "$p" ]] || return 0
  v=$("$p" version 2>/dev/null | head -n1 || true)
  [[ "$v" =~ ^v?[0-9]+\.[0-9]+\.[0-9]+ ]] || v=unknown
  printf '%s %s\n' "$p" "$v"
}

use_path_cli() { # use_path_cli PATH VERSION
  log "pulumi CLI:     $2 ($1), plugins installed by Pulumi itself"
  # No PATH or PULUMI_HOME of ours: the user's own Pulumi install and plugin cache.
  printf '# written by scripts/pulumi-toolchain.sh: the official Pulumi CLI on PATH\n' \
    >"$CACHE/toolchain.env"
}

# ---------------------------------------------------------------- building from source
GO=${GO:-}
if [[ -z "$GO" ]]; then
  if command -v go >/dev/null 2>&1; then GO=$(command -v go)
  elif [[ -x /usr/local/go/bin/go ]]; then GO=/usr/local/go/bin/go
  fi
fi

stamp_ok() { [[ -f "$CACHE/stamps/$1" && "$(cat "$CACHE/stamps/$1")" == "$2" && -x "$BIN/$3" ]]; }
# What the language host's stamp says: its tag, the CLI's pkg/sdk, the exec shim's SDK.
LANGHOST_WANT="$LANGHOST_TAG+pkg$PULUMI_CLI_VERSION;exec$PY_SDK_VERSION"
langhost_built() {
  stamp_ok langhost "$LANGHOST_WANT" pulumi-language-python \
    && [[ -x "$BIN/pulumi-language-python-exec" && -x "$BIN/pulumi-resource-pulumi-python" ]]
}
need_go() { [[ -n "$GO" ]] || die "go is needed to build $1 (install Go >= 1.26, or the official Pulumi CLI)"; }
timed() { # timed NAME cmd...: run, keep /usr/bin/time figures in logs/NAME.time when available
  local name=$1; shift
  if [[ -x /usr/bin/time ]]; then
    /usr/bin/time -v -o "$CACHE/logs/$name.time" "$@" >>"$CACHE/logs/$name.log" 2>&1
  else
    "$@" >>"$CACHE/logs/$name.log" 2>&1
  fi
}
# check_archive ARCHIVE: it is there and has the pinned sha256, else stop.
check_archive() {
  local f="$ARCHIVES/$1" want=${ARCHIVE_SHA256[$1]} got
  [[ -f "$f" ]] || die "source archive $1 not found in $ARCHIVES (set DKIM_RELAY_SOURCE_ARCHIVES to the folder that holds it)"
  got=$(sha256sum "$f" | cut -d' ' -f1)
  [[ "$got" == "$want" ]] || die "source archive $f has sha256 $got, expected $want: not unpacking it"
}
# unpack ARCHIVE DEST: check the pinned sha256, then unpack into DEST.
unpack() {
  check_archive "$1"
  mkdir -p "$2"
  tar -xzf "$ARCHIVES/$1" -C "$2"
}

declare -A STATUS
UNAVAILABLE=0

build_cli() {
  local v=$PULUMI_CLI_VERSION
  if stamp_ok cli "v$v" pulumi; then STATUS[cli]="v$v (cached)"; return; fi
  need_go "the Pulumi CLI"
  log "building pulumi CLI v$v from github.com/pulumi/pulumi/pkg/v3 (cold: about 5 min on 2 cores)"
  local w="$CACHE/src/pulumi-cli-$v"; rm -rf "$w"; mkdir -p "$w"
  # A wrapper module: pkg/go.mod's `replace sdk => ../sdk` stops `go install`; this
  # requires pkg/v3 and sdk/v3 at v$v and copies pkg's one non-local replace.
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

sdk_dir() { # the sdk module at the Python SDK's version (exec shim, dynamic provider)
  "$GO" mod download -json "github.com/pulumi/pulumi/sdk/v3@v$PY_SDK_VERSION" \
    | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["Dir"])'
}

# pulumi-language-python from the archive of its release tag, linked against pkg/sdk at
# the CLI's version; the exec shim and pulumi-resource-pulumi-python (the provider of
# Python dynamic resources such as the DKIM key) from the sdk module at the SDK's version.
build_langhost() {
  local want=$LANGHOST_WANT
  if langhost_built; then STATUS[langhost]="$want (cached)"; return; fi
  need_go "the Python language host"
  local w="$CACHE/src/language-python-$LANGHOST_TAG"
  log "building pulumi-language-python $LANGHOST_TAG against pkg/sdk v$PULUMI_CLI_VERSION"
  rm -rf "$w"
  unpack "pulumi-language-python-$LANGHOST_TAG.tar.gz" "$w"
  w="$w/pulumi-language-python"
  (cd "$w" && "$GO" mod edit \
      -dropreplace github.com/pulumi/pulumi/pkg/v3 -dropreplace github.com/pulumi/pulumi/sdk/v3 \
      -require "github.com/pulumi/pulumi/pkg/v3@v$PULUMI_CLI_VERSION" \
      -require "github.com/pulumi/pulumi/sdk/v3@v$PULUMI_CLI_VERSION" -go 1.26)
  : >"$CACHE/logs/langhost.log"
  (cd "$w" && timed langhost "$GO" build -trimpath \
      -ldflags "-X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version=$LANGHOST_TAG" \
      -o "$BIN/pulumi-language-python.tmp" .) \
    || die "go build of the language host failed, see $CACHE/logs/langhost.log"
  mv -f "$BIN/pulumi-language-python.tmp" "$BIN/pulumi-language-python"
  local sdk; sdk=$(sdk_dir) \
    || die "cannot fetch github.com/pulumi/pulumi/sdk/v3@v$PY_SDK_VERSION for the exec shim"
  install -m 0755 "$sdk/python/cmd/pulumi-language-python-exec" "$BIN/pulumi-language-python-exec"
  install -m 0755 "$sdk/python/dist/pulumi-resource-pulumi-python" "$BIN/pulumi-resource-pulumi-python"
  echo "$want" >"$CACHE/stamps/langhost"; STATUS[langhost]="$want (built)"
}

# Each recipe builds $BIN/pulumi-resource-NAME-vVERSION or returns 3 with a reason in REASON.
REASON=""
recipe_command() {
  local v=$1 w="$CACHE/src/command-$1"
  [[ -n "${ARCHIVE_SHA256[pulumi-command-provider-v$v.tar.gz]:-}" ]] \
    || { REASON="no pinned source archive for pulumi-command v$v"; return 3; }
  rm -rf "$w"
  unpack "pulumi-command-provider-v$v.tar.gz" "$w"
  local gpv; gpv=$(cd "$w/provider" && "$GO" list -m -f '{{.Version}}' github.com/pulumi/pulumi-go-provider) \
    || { REASON="cannot read the pulumi-go-provider version from provider/go.mod"; return 1; }
  [[ -n "${ARCHIVE_SHA256[pulumi-go-provider-$gpv.tar.gz]:-}" ]] \
    || { REASON="no pinned source archive for pulumi-go-provider $gpv"; return 3; }
  # Unpacks as pulumi-go-provider/ beside provider/: the replace target (its path is
  # recorded in the binary's build info, so it stays ../pulumi-go-provider).
  unpack "pulumi-go-provider-$gpv.tar.gz" "$w"
  (cd "$w/provider" && "$GO" mod edit -replace github.com/pulumi/pulumi-go-provider=../pulumi-go-provider)
  (cd "$w/provider" && timed plugin-command "$GO" build -trimpath \
      -ldflags "-X github.com/pulumi/pulumi-command/provider/pkg/version.Version=$v" \
      -o "$BIN/pulumi-resource-command-v$v" ./cmd/pulumi-resource-command) \
    || { REASON="go build failed, see $CACHE/logs/plugin-command.log"; return 1; }
}
# The bridged Terraform provider from pulumi-docker's archive and that of its `upstream`
# submodule (kreuzwerker/terraform-provider-docker), patched with pulumi-docker's
# patches/; the rest (pulumi's terraform-plugin-sdk fork included) through the module
# proxy. The recipe of the archives' README, step by step.
recipe_docker() {
  local v=$1 w="$CACHE/src/docker-$1" archive upstream p
  read -r archive upstream <<<"${PART_ARCHIVES[docker@$v]:-}"
  [[ -n "$upstream" ]] || { REASON="no pinned source archives for pulumi-docker v$v"; return 3; }
  command -v git >/dev/null 2>&1 || { REASON="git is needed to apply pulumi-docker's patches"; return 1; }
  # Both checked before either is unpacked.
  check_archive "$archive"; check_archive "$upstream"
  rm -rf "$w"
  unpack "$archive" "$w"      # pulumi-docker/
  unpack "$upstream" "$w"     # terraform-provider-docker/
  for p in "$w"/pulumi-docker/patches/*.patch; do
    # Outside any repository (the ceiling), so paths are taken from the tree itself.
    (cd "$w/terraform-provider-docker" && GIT_CEILING_DIRECTORIES="$w" git apply "$p") \
      >>"$CACHE/logs/plugin-docker.log" 2>&1 \
      || { REASON="git apply ${p##*/} failed, see $CACHE/logs/plugin-docker.log"; return 1; }
  done
  # provider/go.mod: replace github.com/terraform-providers/terraform-provider-docker => ../upstream
  ln -s ../terraform-provider-docker "$w/pulumi-docker/upstream"
  local dir="$w/pulumi-docker/provider" mod
  mod=$(sed -n 's/^module //p' "$dir/go.mod")
  [[ -n "$mod" ]] || { REASON="no module line in pulumi-docker/provider/go.mod"; return 1; }
  : >"$CACHE/logs/plugin-docker-schema.log"
  (cd "$dir/cmd/pulumi-resource-docker" && GOFLAGS="$GOFLAGS -buildvcs=false" VERSION=$v \
      timed plugin-docker-schema "$GO" run -trimpath ./generate.go) \
    || { REASON="go run ./generate.go (schema-embed.json) failed, see $CACHE/logs/plugin-docker-schema.log"; return 1; }
  (cd "$dir" && GOFLAGS="$GOFLAGS -buildvcs=false" timed plugin-docker "$GO" build -tags no_compose -trimpath \
      -ldflags "-X $mod/pkg/version.Version=$v -s -w" \
      -o "$BIN/pulumi-resource-docker-v$v" ./cmd/pulumi-resource-docker) \
    || { REASON="go build failed, see $CACHE/logs/plugin-docker.log"; return 1; }
}
# Bridged from hetznercloud/terraform-provider-hcloud, the one module of its build that the
# proxy refuses: a directory replace points at its archive. No patches; the recipe of the
# archives' README.
recipe_hcloud() {
  local v=$1 w="$CACHE/src/hcloud-$1" archive upstream
  read -r archive upstream <<<"${PART_ARCHIVES[hcloud@$v]:-}"
  [[ -n "$upstream" ]] || { REASON="no pinned source archives for pulumi-hcloud v$v"; return 3; }
  # Both checked before either is unpacked.
  check_archive "$archive"; check_archive "$upstream"
  rm -rf "$w"
  unpack "$archive" "$w"      # pulumi-hcloud/
  unpack "$upstream" "$w"     # terraform-provider-hcloud/
  local dir="$w/pulumi-hcloud/provider" mod
  mod=$(sed -n 's/^module //p' "$dir/go.mod")
  [[ -n "$mod" ]] || { REASON="no module line in pulumi-hcloud/provider/go.mod"; return 1; }
  (cd "$dir" && "$GO" mod edit \
      -replace github.com/hetznercloud/terraform-provider-hcloud=../../terraform-provider-hcloud)
  : >"$CACHE/logs/plugin-hcloud-schema.log"
  (cd "$dir/cmd/pulumi-resource-hcloud" && GOFLAGS="$GOFLAGS -buildvcs=false" VERSION=$v \
      timed plugin-hcloud-schema "$GO" run -trimpath ./generate.go) \
    || { REASON="go run ./generate.go (schema-embed.json) failed, see $CACHE/logs/plugin-hcloud-schema.log"; return 1; }
  (cd "$dir" && GOFLAGS="$GOFLAGS -buildvcs=false" timed plugin-hcloud "$GO" build -trimpath \
      -ldflags "-X $mod/pkg/version.Version=$v -s -w" \
      -o "$BIN/pulumi-resource-hcloud-v$v" ./cmd/pulumi-resource-hcloud) \
    || { REASON="go build failed, see $CACHE/logs/plugin-hcloud.log"; return 1; }
}
recipe_cloudflare() {
  # A bridged Terraform provider like docker, but with no source archive of it or of its
  # patched upstream submodule, and modules it needs that no proxy serves (docs/toolchain.md).
  REASON="no source build: it is a bridged Terraform provider with no source archive here (docs/toolchain.md); use the official Pulumi CLI, which installs it"
  return 3
}

plugin_registered() { [[ -x "$CACHE/pulumi-home/plugins/resource-$1-v$2/pulumi-resource-$1" ]]; }
build_plugin() { # build_plugin NAME VERSION
  local name=$1 v=$2 rc=0
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
      STATUS[$name]="UNAVAILABLE v$v: $REASON"; UNAVAILABLE=1; log "pulumi-resource-$name ${STATUS[$name]}"; return
    elif (( rc != 0 )); then die "pulumi-resource-$name v$v: $REASON"; fi
    echo "$v" >"$CACHE/stamps/plugin-$name"
  fi
  # Register it so the engine never tries to download it.
  PULUMI_HOME="$CACHE/pulumi-home" "$BIN/pulumi" plugin install resource "$name" "$v" \
      --file "$BIN/$bin" --reinstall >>"$CACHE/logs/plugin-$name.log" 2>&1 \
    || die "pulumi plugin install resource $name $v failed, see $CACHE/logs/plugin-$name.log"
  STATUS[$name]="v$v (built and registered)"
}

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
    meta = json.loads(f.read_text()) if f.is_file() else {}
    if meta.get("resource"):
        print(meta["name"], meta["version"])
EOF
}

# select_plugins [NAME...]: WANTED becomes the "NAME VERSION" lines of the plugins asked
# for (all of requirements.txt's when none is named), in requirements.txt's order, so that
# a job builds only what it uses (scripts/local-up.sh: command and docker).
WANTED=""
select_plugins() {
  local all name v ask
  all=$(wanted_plugins) || die "cannot read the wanted plugin versions from $VENV"
  if (( $# == 0 )); then WANTED=$all; return; fi
  local -A named=()
  while read -r name v; do [[ -z "$name" ]] || named[$name]=$v; done <<<"$all"
  for ask in "$@"; do
    [[ -n "$ask" && -n "${named[$ask]:-}" ]] \
      || die "no resource plugin '$ask' in requirements.txt (it names: $(cut -d' ' -f1 <<<"$all" | paste -sd' '))"
  done
  while read -r name v; do
    for ask in "$@"; do
      if [[ $ask == "$name" ]]; then WANTED+="$name $v"$'\n'; break; fi
    done
  done <<<"$all"
}

build_from_source() {
  mkdir -p "$CACHE"/{go/cache,go/mod,src,bin,pulumi-home,stamps,logs}
  export GOCACHE="$CACHE/go/cache" GOMODCACHE="$CACHE/go/mod"
  export GOFLAGS="-mod=mod -p=2" GOTOOLCHAIN=local CGO_ENABLED=0
  export PULUMI_HOME="$CACHE/pulumi-home" PULUMI_SKIP_UPDATE_CHECK=1
  export PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION=true
  local name v plugins=()
  # Before the long CLI build: the archives of every asked-for part still to build are there.
  local parts=() part f what missing=()
  langhost_built || parts+=("langhost@$LANGHOST_TAG")
  while read -r name v; do
    [[ -n "$name" ]] || continue
    stamp_ok "plugin-$name" "$v" "pulumi-resource-$name-v$v" || parts+=("$name@$v")
  done <<<"$WANTED"
  for part in "${parts[@]}"; do
    what="the ${part%@*} plugin"; [[ $part != langhost@* ]] || what="the language host"
    for f in ${PART_ARCHIVES[$part]:-}; do
      [[ -f "$ARCHIVES/$f" ]] || missing+=("$f (for $what)")
    done
  done
  if (( ${#missing[@]} )); then
    die "source archive not found in $ARCHIVES: $(printf '%s, ' "${missing[@]}" | sed 's/, $//'); set DKIM_RELAY_SOURCE_ARCHIVES to the folder that holds it"
  fi
  build_cli
  build_langhost
  while read -r name v; do
    [[ -n "$name" ]] || continue
    plugins+=("$name"); build_plugin "$name" "$v"
  done <<<"$WANTED"
  (( ${#plugins[@]} )) || die "requirements.txt names no Pulumi resource plugin"
  cat >&2 <<EOF
[pulumi-toolchain] built from source into $CACHE (the offline fallback)
[pulumi-toolchain] pulumi CLI:     ${STATUS[cli]}
[pulumi-toolchain] language host:  ${STATUS[langhost]}
EOF
  for name in "${plugins[@]}"; do printf '[pulumi-toolchain] plugin %-11s %s\n' "$name:" "${STATUS[$name]}" >&2; done
  # Only the engine built here, and no plugin downloads: it must work offline.
  cat >"$CACHE/toolchain.env" <<EOF
# written by scripts/pulumi-toolchain.sh: the engine built from source
case ":\$PATH:" in *":$BIN:"*) ;; *) export PATH="$BIN:\$PATH" ;; esac
export PULUMI_HOME="$CACHE/pulumi-home"
export PULUMI_SKIP_UPDATE_CHECK=1
export PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION=true
EOF
}

main() {
  local found="" path="" v=""
  select_plugins "$@"
  case $WAY in
    auto | path) found=$(ambient_cli) ;;
    source) ;;
    *) die "DKIM_RELAY_PULUMI=$WAY: use auto, path or source" ;;
  esac
  if [[ -n "$found" ]]; then
    read -r path v <<<"$found"
    if [[ "$v" != unknown ]] && version_ge "$v" "$PY_SDK_VERSION"; then
      use_path_cli "$path" "$v"
      log "to use it:      source $REPO/scripts/pulumi-env.sh"
      return 0
    fi
    if [[ $WAY == path ]]; then
      die "$path is Pulumi $v; this project needs at least v$PY_SDK_VERSION (the Python SDK's version): upgrade it (https://www.pulumi.com/docs/install/) or set DKIM_RELAY_PULUMI=source"
    fi
    log "$path is Pulumi $v, older than the minimum v$PY_SDK_VERSION (the Python SDK's version): building from source instead"
  elif [[ $WAY == path ]]; then
    die "no pulumi on PATH; install the official CLI (https://www.pulumi.com/docs/install/), at least v$PY_SDK_VERSION, or set DKIM_RELAY_PULUMI=source"
  fi
  build_from_source
  log "to use it:      source $REPO/scripts/pulumi-env.sh"
  if (( UNAVAILABLE )); then return 3; fi
}

# Called last, so that the whole file is parsed before anything runs.
main "$@"; exit $?
