#!/usr/bin/env bash
# upchain's node-upgrade script. The node Job copies it and the run's parameters (one
# quoted env file) to /var/lib/upchain/incoming on the node and runs it from there as root.
# Only a launch that holds the node keeps them, as upgrade-node.sh and params-<RUN_ID>.env;
# every other command, and a refused launch, removes its copies: nothing else is left.
#
#   upgrade-node.sh launch   PARAMS  start the upgrade detached from the SSH session (or
#                                    attach to the one already running for the same run),
#                                    follow its log and exit with its result
#   upgrade-node.sh run      PARAMS  the upgrade itself, started by launch, under the node lock
#   upgrade-node.sh prepare  PARAMS  checks that change nothing: OS, packages, disk, plan
#   upgrade-node.sh rollback VERSION the packages back to VERSION (docs/node-script.md)
#   upgrade-node.sh etcd-check PARAMS    etcd's members, health, leader, alarms, database
#                                        and raft progress as this node's etcd sees them;
#                                        read-only, one `upchain-etcd` line per finding
#   upgrade-node.sh etcd-snapshot PARAMS a snapshot into a private directory, read back
#                                        and test-restored; the Job copies it off the node
#
# Exit codes (docs/node-script.md; the operator names them in status):
readonly E_INPUT=2 E_OS=10 E_NOT_FOUND=11 E_LOCK=12 E_PACKAGES=13 E_REPOSITORY=14
readonly E_KUBEADM=15 E_KUBELET=16 E_VERIFY=17 E_BUSY=18 E_DISK=19 E_PLAN=20 E_LOST=21
readonly E_ETCD=22 E_SNAPSHOT=23 E_OLDER=24
set -euo pipefail
umask 022
export LC_ALL=C DEBIAN_FRONTEND=noninteractive

readonly STATE_DIR=/var/lib/upchain
readonly STATE="$STATE_DIR/state" LOG="$STATE_DIR/run.log"
readonly RUN_LOCK="$STATE_DIR/run.lock" LAUNCH_LOCK="$STATE_DIR/launch.lock"
readonly INCOMING="$STATE_DIR/incoming" DONE="$STATE_DIR/done"
readonly PACKAGES=(kubeadm kubelet kubectl)
readonly APT_SOURCES=/etc/apt/sources.list.d/kubernetes.list
readonly APT_KEYRING=/etc/apt/keyrings/kubernetes-apt-keyring.asc
readonly YUM_REPO=/etc/yum.repos.d/kubernetes.repo
readonly MANIFESTS=/etc/kubernetes/manifests

log() { echo "upchain[${NODE_NAME:-?}]: $*"; }
die() {
  local code=$1
  shift
  echo "upchain[${NODE_NAME:-?}]: error: $*" >&2
  exit "$code"
}

# --- parameters ---------------------------------------------------------------------------

# Reads KEY='value' lines: no shell evaluates them, only known keys are taken.
read_params() {
  parse_params "$1"
  apply_defaults
  validate_params
  readonly RUN_ID TARGET_VERSION UPGRADE_KIND NODE_NAME NODE_ROLE FIRST_CONTROL_PLANE
  readonly MINOR="${TARGET_VERSION%.*}"
}

parse_params() {
  local file=$1 line
  [ -f "$file" ] || die $E_INPUT "parameter file $file not found"
  while IFS= read -r line || [ -n "$line" ]; do
    [[ $line =~ ^([A-Z_]+)=\'([^\']*)\'$ ]] || die $E_INPUT "malformed parameter line: $line"
    case ${BASH_REMATCH[1]} in
      RUN_ID | TARGET_VERSION | UPGRADE_KIND | NODE_NAME | NODE_ROLE | FIRST_CONTROL_PLANE | REATTACH | \
        REPOSITORY | REPOSITORY_URL | REPOSITORY_KEY_URL | \
        LOCK_TIMEOUT | MIN_FREE_MIB | KUBELET_TIMEOUT | KUBELET_SETTLE)
        printf -v "${BASH_REMATCH[1]}" '%s' "${BASH_REMATCH[2]}"
        ;;
      *) die $E_INPUT "unknown parameter ${BASH_REMATCH[1]}" ;;
    esac
  done <"$file"
}

# What a parameter the Job did not set is.
apply_defaults() {
  : "${RUN_ID:=manual}"
  : "${FIRST_CONTROL_PLANE:=false}"
  # A Job sent after the last one lost its SSH session: it reports the run, never starts one
  # over a run that ended without a result.
  : "${REATTACH:=false}"
  : "${LOCK_TIMEOUT:=300}"
  : "${MIN_FREE_MIB:=1024}"
  # How long systemd gets to report the restarted kubelet active.
  : "${KUBELET_TIMEOUT:=60}"
  # How long the restarted kubelet must stay active, without a restart, to count as up.
  : "${KUBELET_SETTLE:=30}"
  # The defaults below are the Helm chart's nodeScript values (templates/configmap-script.yaml).
  # Leave CoreDNS (image and Corefile) alone when kubeadm upgrades the control plane.
  : "${SKIP_COREDNS_PHASE:=false}"
  # kubeadm preflight checks whose errors this installation's nodes ignore, comma-separated
  # (nodes on cgroup v1 need SystemVerification).
  : "${IGNORE_PREFLIGHT_ERRORS:=}"
  # kubeadm keeps a backup of etcd and the manifests per upgrade; keep this many.
  : "${KEEP_BACKUPS:=2}"
  # managed: point apt/dnf at the target minor's repository; unmanaged: never touch it.
  : "${REPOSITORY:=managed}"
  [ -n "${REPOSITORY_URL:-}" ] || REPOSITORY_URL='https://pkgs.k8s.io/core:/stable:'
  # {minor} in it is replaced with the target minor.
  [ -n "${REPOSITORY_KEY_URL:-}" ] || REPOSITORY_KEY_URL=''
}

matches() { [[ ${!1:-} =~ $2 ]] || die $E_INPUT "$1 '${!1:-}' is not valid: it must match $2"; }

validate_params() {
  matches TARGET_VERSION '^[0-9]+\.[0-9]+\.[0-9]+$'
  matches NODE_NAME '^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$'
  matches NODE_ROLE '^(control-plane|worker)$'
  matches UPGRADE_KIND '^(patch|minor)$'
  matches FIRST_CONTROL_PLANE '^(true|false)$'
  matches REATTACH '^(true|false)$'
  matches SKIP_COREDNS_PHASE '^(true|false)$'
  matches IGNORE_PREFLIGHT_ERRORS '^([A-Za-z0-9-]+(,[A-Za-z0-9-]+)*)?$'
  matches RUN_ID '^[A-Za-z0-9._-]{1,128}$'
  matches REPOSITORY '^(managed|unmanaged)$'
  matches REPOSITORY_URL '^(https?|file)://[A-Za-z0-9._~:/@%+,=-]+$'
  [ -z "$REPOSITORY_KEY_URL" ] || matches REPOSITORY_KEY_URL '^(https?|file)://[A-Za-z0-9._~:/@%+,={}-]+$'
  # The backup this very upgrade made is always kept.
  matches KEEP_BACKUPS '^[1-9][0-9]{0,2}$'
  matches LOCK_TIMEOUT '^[0-9]{1,5}$'
  matches MIN_FREE_MIB '^[0-9]{1,7}$'
  matches KUBELET_TIMEOUT '^[0-9]{1,4}$'
  matches KUBELET_SETTLE '^[0-9]{1,4}$'
  if [ "$FIRST_CONTROL_PLANE" = true ] && [ "$NODE_ROLE" != control-plane ]; then
    die $E_INPUT "FIRST_CONTROL_PLANE is true for a $NODE_ROLE node"
  fi
}

# The node's role as kubeadm left it: only control-plane nodes have the API server's manifest.
check_role() {
  local actual=worker
  [ -f "$MANIFESTS/kube-apiserver.yaml" ] && actual=control-plane
  [ "$actual" = "$NODE_ROLE" ] ||
    die $E_INPUT "this node is a $actual node (by $MANIFESTS), not a $NODE_ROLE node as the Job says"
}

# --- OS families --------------------------------------------------------------------------

detect_os() {
  local id="" like=""
  if [ -r /etc/os-release ]; then
    id=$(sed -n 's/^ID="\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' /etc/os-release)
    like=$(sed -n 's/^ID_LIKE="\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' /etc/os-release)
  fi
  case " $id $like " in
    *" debian "* | *" ubuntu "*) FAMILY=apt ;;
    *" rhel "* | *" centos "* | *" fedora "* | *" rocky "* | *" almalinux "*)
      FAMILY=rpm
      PKG=dnf
      command -v dnf >/dev/null || PKG=yum
      ;;
    *) die $E_OS "unsupported OS '${id:-unknown}' (/etc/os-release): upchain upgrades Debian, Ubuntu, RHEL, Rocky, AlmaLinux and Fedora nodes; nothing was changed" ;;
  esac
  readonly FAMILY
}

# The repository of the target minor, laid out like pkgs.k8s.io.
repository_url() { echo "$REPOSITORY_URL/v$MINOR/$1/"; }
repository_key_url() {
  if [ -n "$REPOSITORY_KEY_URL" ]; then
    echo "${REPOSITORY_KEY_URL//\{minor\}/$MINOR}"
  elif [ "$FAMILY" = apt ]; then
    echo "$(repository_url deb)Release.key"
  else
    echo "$(repository_url rpm)repodata/repomd.xml.key"
  fi
}

# --- the package managers' locks ----------------------------------------------------------

# Every package-manager call goes through package_call: one bound (LOCK_TIMEOUT) for
# whichever lock another process holds, apt's, dpkg's, dnf 4's or yum's, its holder named
# in the log every few seconds; exit 12 when the bound passes, 13 on any other failure.
readonly APT_LOCKS=(/var/lib/dpkg/lock-frontend /var/lib/dpkg/lock /var/lib/apt/lists/lock
  /var/cache/apt/archives/lock)
readonly RPM_LOCKS=(/var/lib/dnf/rpmdb_lock.pid /var/cache/dnf/metadata_lock.pid
  /var/cache/dnf/download_lock.pid /var/run/dnf.pid /run/dnf.pid /var/run/yum.pid /run/yum.pid)
readonly LOCK_LOG_EVERY=5

# "PID (command)" of a process, or "PID" where /proc does not say.
describe_pid() {
  local comm
  comm=$(cat "/proc/$1/comm" 2>/dev/null || true)
  echo "$1${comm:+ ($comm)}"
}

# Who holds a package lock now, or nothing: dnf and yum write their pid into their lock
# files; apt and dpkg take fcntl locks, which /proc/locks lists by inode.
package_lock_holder() {
  local file pid inode
  for file in "${RPM_LOCKS[@]}"; do
    [ -f "$file" ] || continue
    pid=$(tr -dc 0-9 <"$file" 2>/dev/null || true)
    if [ -n "$pid" ] && [ "$pid" != $$ ] && kill -0 "$pid" 2>/dev/null; then
      echo "$(describe_pid "$pid") on $file"
      return
    fi
  done
  [ -r /proc/locks ] || return 0
  for file in "${APT_LOCKS[@]}"; do
    inode=$(stat -c %i "$file" 2>/dev/null) || continue
    pid=$(awk -v inode=":$inode" '$2 != "->" && substr($6, length($6) - length(inode) + 1) == inode {print $5; exit}' /proc/locks)
    if [ -n "$pid" ] && [ "$pid" -gt 0 ] 2>/dev/null; then
      echo "$(describe_pid "$pid") on $file"
      return
    fi
  done
}

# The holder a package command's own lock message names, or nothing when it met no lock.
lock_holder_in() {
  local pid holder
  grep -qiE 'could not get lock|unable to acquire|lock.*(held|locked)|waiting for process' "$1" || return 0
  # apt names the holder's command itself: "It is held by process 1234 (unattended-upgr)".
  holder=$(grep -oE 'held by process [0-9]+( \([^)]*\))?' "$1" | head -n 1)
  if [ -n "$holder" ]; then
    echo "${holder#held by process }"
    return
  fi
  pid=$(grep -oiE '(with pid|pid) [0-9]+' "$1" | grep -oE '[0-9]+$' | head -n 1)
  if [ -n "$pid" ]; then describe_pid "$pid"; else echo "another process"; fi
}

package_call() {
  local out deadline=$((SECONDS + LOCK_TIMEOUT)) next_log=0 holder status
  out=$(mktemp)
  while :; do
    holder=$(package_lock_holder)
    if [ -z "$holder" ]; then
      status=0
      run_package_command "$deadline" "$out" "$@" || status=$?
      if [ $status -eq 0 ]; then
        cat "$out"
        rm -f "$out"
        return 0
      fi
      holder=$(lock_holder_in "$out")
      if [ -z "$holder" ]; then
        cat "$out"
        rm -f "$out"
        die $E_PACKAGES "failed: $*"
      fi
    fi
    if [ $SECONDS -ge $deadline ]; then
      cat "$out"
      rm -f "$out"
      die $E_LOCK "the package lock stayed taken for ${LOCK_TIMEOUT}s (held by $holder): $*"
    fi
    if [ $SECONDS -ge $next_log ]; then
      # To stderr: some callers keep the command's own output out of the log.
      log "waiting for the package lock (held by $holder): $1" >&2
      next_log=$((SECONDS + LOCK_LOG_EVERY))
    fi
    sleep 1
  done
}

# Runs one package command into $2. dnf and yum wait for their lock without a bound: one
# found waiting past the deadline is stopped, as it has changed nothing yet.
run_package_command() {
  local deadline=$1 out=$2 pid
  shift 2
  "$@" >"$out" 2>&1 </dev/null &
  pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    if [ $SECONDS -ge "$deadline" ] && grep -qi 'waiting for process with pid' "$out"; then
      kill "$pid" 2>/dev/null || true
      wait "$pid" 2>/dev/null || true
      return 1
    fi
    sleep 0.5
  done
  wait "$pid"
}

# apt and dpkg are told not to wait: package_call does, within its bound, and says who for.
apt_get() { package_call apt-get -q -y -o DPkg::Lock::Timeout=0 "$@"; }

repair_packages() {
  if [ "$FAMILY" = apt ]; then package_call dpkg --configure -a; else package_call true; fi
}

rpm_pkg() { package_call "$PKG" -y -q --disableexcludes=kubernetes "$@"; }

has_versionlock() { [ "$FAMILY" = rpm ] && "$PKG" -q versionlock list >/dev/null 2>&1; }

# The installed version of a package ("" when not installed).
installed_version() {
  if [ "$FAMILY" = apt ]; then
    dpkg-query -W -f='${db:Status-Abbrev} ${Version}\n' "$1" 2>/dev/null |
      awk '$1 ~ /^.i/ {print $2}' | sed 's/-[^-]*$//'
  else
    rpm -q --qf '%{VERSION}\n' "$1" 2>/dev/null | grep -E '^[0-9]' || true
  fi
}

# The repository's exact version string of a package at $1 ("" when it has none).
available_version() {
  local package=$1 version=$2
  shift 2
  if [ "$FAMILY" = apt ]; then
    apt-cache "$@" madison "$package" | awk -F' *[|] *' '{print $2}' |
      grep -E "^${version//./\\.}-" | head -n 1 || true
  else
    "$PKG" -q "$@" --disableexcludes=kubernetes list --showduplicates "$package" 2>/dev/null |
      awk '{print $2}' | grep -E "^([0-9]+:)?${version//./\\.}-" | head -n 1 || true
  fi
}

# Writes the target minor's repository configuration (managed mode only). The key is
# downloaded before anything is replaced: a failed download leaves the node as it was.
configure_repository() {
  [ "$REPOSITORY" = managed ] || { log "repository configuration left to the node (unmanaged)"; return; }
  local key_url tmp
  key_url=$(repository_key_url)
  if [ "$FAMILY" = apt ]; then
    local line
    line="deb [signed-by=$APT_KEYRING] $(repository_url deb) /"
    if [ -f "$APT_SOURCES" ] && [ -s "$APT_KEYRING" ] && grep -qxF "$line" "$APT_SOURCES"; then
      log "apt repository already at v$MINOR"
      return
    fi
    log "switching the apt repository to $(repository_url deb)"
    tmp=$(mktemp)
    curl -fsSL -o "$tmp" "$key_url" || die $E_REPOSITORY "cannot download the repository key $key_url"
    mkdir -p "$(dirname "$APT_KEYRING")" "$(dirname "$APT_SOURCES")"
    install -m 0644 "$tmp" "$APT_KEYRING"
    rm -f "$tmp"
    echo "$line" >"$APT_SOURCES.upchain-new"
    mv -f "$APT_SOURCES.upchain-new" "$APT_SOURCES"
  else
    local wanted
    wanted=$(rpm_repository_file "$key_url")
    if [ -f "$YUM_REPO" ] && [ "$(cat "$YUM_REPO")" = "$wanted" ]; then
      log "$PKG repository already at v$MINOR"
      return
    fi
    log "switching the $PKG repository to $(repository_url rpm)"
    curl -fsSL -o /dev/null "$key_url" || die $E_REPOSITORY "cannot download the repository key $key_url"
    mkdir -p "$(dirname "$YUM_REPO")"
    echo "$wanted" >"$YUM_REPO.upchain-new"
    mv -f "$YUM_REPO.upchain-new" "$YUM_REPO"
  fi
}

# The exclude line is how pkgs.k8s.io's rpm repositories hold the packages.
rpm_repository_file() {
  printf '%s\n' "[kubernetes]" "name=Kubernetes" "baseurl=$(repository_url rpm)" "enabled=1" \
    "gpgcheck=1" "gpgkey=$1" "exclude=kubelet kubeadm kubectl cri-tools kubernetes-cni"
}

refresh_index() {
  if [ "$FAMILY" = apt ]; then
    apt_get update
  else
    package_call "$PKG" -q makecache --disableexcludes=kubernetes
  fi
}

unhold() {
  if [ "$FAMILY" = apt ]; then
    package_call apt-mark unhold "$@" >/dev/null
  elif has_versionlock; then
    package_call "$PKG" -q versionlock delete "$@" >/dev/null
  fi
}

hold() {
  if [ "$FAMILY" = apt ]; then
    package_call apt-mark hold "$@" >/dev/null
  elif has_versionlock; then
    package_call "$PKG" -q versionlock add "$@" >/dev/null
  fi
}

# The Kubernetes packages present in any state, half-installed or half-configured ones
# (a dpkg killed mid-way) included: each must be held again.
present_packages() {
  local package
  for package in "${PACKAGES[@]}"; do
    if [ "$FAMILY" = apt ]; then
      dpkg-query -W -f='${db:Status-Abbrev}\n' "$package" 2>/dev/null | grep -q '^.[^nc]' || continue
    else
      rpm -q "$package" >/dev/null 2>&1 || continue
    fi
    echo "$package"
  done
}

# Holds every present Kubernetes package again: run on every exit path. In a subshell, so
# that a lock timeout here cannot end the caller's own exit handling.
hold_present() {
  local present
  present=$(present_packages | tr '\n' ' ')
  [ -n "${present// /}" ] || return 0
  # shellcheck disable=SC2086 # one word per package
  (hold $present) || echo "upchain[$NODE_NAME]: warning: could not hold $present again" >&2
}

# True when version $1 is older than $2.
older() { [ "$1" != "$2" ] && [ "$(printf '%s\n' "$1" "$2" | sort -V | head -n 1)" = "$1" ]; }

# install_at VERSION up|down PACKAGE...: installs the packages at VERSION, leaving them
# held. Only a rollback passes `down`: an upgrade never installs an older package.
install_at() {
  local version=$1 direction=$2 package exact specs=() downgrade=()
  shift 2
  for package in "$@"; do
    exact=$(available_version "$package" "$version")
    [ -n "$exact" ] || die $E_NOT_FOUND "$package $version is not in the configured repository ($(repository_url "$([ "$FAMILY" = apt ] && echo deb || echo rpm)")); nothing was installed"
    if [ "$FAMILY" = apt ]; then specs+=("$package=$exact"); else specs+=("$package-${exact#*:}"); fi
  done
  [ "$direction" = up ] || downgrade=(--allow-downgrades)
  unhold "$@"
  if [ "$FAMILY" = apt ]; then
    apt_get install --allow-change-held-packages "${downgrade[@]}" \
      -o Dpkg::Options::=--force-confold "${specs[@]}"
  elif [ "$direction" = down ]; then
    rpm_pkg downgrade "${specs[@]}"
  else
    rpm_pkg install "${specs[@]}"
  fi
  hold "$@"
}

# Installs packages at the target unless every one is there already.
ensure_packages() {
  local package missing=()
  for package in "$@"; do
    [ "$(installed_version "$package")" = "$TARGET_VERSION" ] || missing+=("$package")
  done
  if [ ${#missing[@]} -eq 0 ]; then
    log "$* already at $TARGET_VERSION"
    return
  fi
  step "install ${missing[*]}"
  install_at "$TARGET_VERSION" up "${missing[@]}"
}

# --- the run's record on the node ---------------------------------------------------------

# state KEY VALUE...: updates the state file atomically (values carry no quotes).
state() {
  local tmp="$STATE.new" key
  declare -A values=()
  if [ -f "$STATE" ]; then
    while IFS='=' read -r key value; do values[$key]=$value; done <"$STATE"
  fi
  while [ $# -ge 2 ]; do
    values[$1]=$2
    shift 2
  done
  for key in "${!values[@]}"; do echo "$key=${values[$key]}"; done | sort >"$tmp"
  mv -f "$tmp" "$STATE"
}

state_of() { if [ -f "$STATE" ]; then sed -n "s/^$1=//p" "$STATE" | head -n 1; fi; }

step() {
  log "step: $1"
  state STEP "$1"
}

# Done markers say which steps this run finished, so that a later attempt of the same run
# skips them. They are keyed by run, a rollback clears them, and each is trusted only while
# the node agrees (kubeadm_done, kubelet_restarted).
done_marker() { echo "$DONE/$RUN_ID/$1"; }
mark_done() {
  mkdir -p "$DONE/$RUN_ID"
  date +%s >"$(done_marker "$1")"
}

run_is_going() { ! flock -n "$RUN_LOCK" true; }

# --- launch: start or attach --------------------------------------------------------------

# The copies a Job brought (the script and its parameters, in $INCOMING): a launch that
# holds the node adopts them, anything else removes them.
discard_incoming() {
  case $SCRIPT in "$INCOMING"/*) rm -f -- "$SCRIPT" "$PARAMS" ;; esac
}

adopt_incoming() {
  case $SCRIPT in "$INCOMING"/*) ;; *) return 0 ;; esac
  mv -f "$SCRIPT" "$STATE_DIR/upgrade-node.sh"
  mv -f "$PARAMS" "$STATE_DIR/params-$RUN_ID.env"
  # The newest run's parameters are the ones a rollback reads; older runs' go.
  find "$STATE_DIR" -maxdepth 1 -name 'params-*.env' ! -name "params-$RUN_ID.env" -delete
  SCRIPT="$STATE_DIR/upgrade-node.sh"
  PARAMS="$STATE_DIR/params-$RUN_ID.env"
}

# An upgrade never takes a node back: the target must not be older than any Kubernetes
# package the node has. A rollback is its own command.
refuse_older_target() {
  local package installed
  detect_os
  for package in kubelet kubeadm; do
    installed=$(installed_version "$package")
    [ -n "$installed" ] || continue
    if older "$TARGET_VERSION" "$installed"; then
      die $E_OLDER "$NODE_NAME has $package $installed, newer than the target $TARGET_VERSION: upchain does not downgrade a node (see docs/node-script.md, Rollback); nothing was changed"
    fi
  done
}

launch() {
  mkdir -p "$STATE_DIR"
  exec 9>>"$LAUNCH_LOCK"
  flock -w 60 9 || die $E_BUSY "another Job is starting an upgrade on this node; nothing was changed"
  if run_is_going; then
    [ "$(state_of RUN_ID)" = "$RUN_ID" ] ||
      die $E_BUSY "upgrade run $(state_of RUN_ID) holds this node; nothing was changed"
    log "attaching to the upgrade already running (pid $(state_of PID))"
  elif [ "$(state_of RUN_ID)" = "$RUN_ID" ] && [ "$(state_of STATUS)" = succeeded ]; then
    log "this upgrade already finished on this node"
    cat "$LOG" 2>/dev/null || true
    exit 0
  elif [ "$REATTACH" = true ] && [ "$(state_of RUN_ID)" = "$RUN_ID" ] && [ "$(state_of STATUS)" != starting ]; then
    log "re-attached after a lost session: the run already ended"
    exec 9>&-
    follow_run
  else
    refuse_older_target
    if [ "$(state_of RUN_ID)" = "$RUN_ID" ] && [ "$(state_of STATUS)" = running ]; then
      log "the previous attempt ended without a result (step $(state_of STEP)); starting again"
    fi
    adopt_incoming
    start_detached
  fi
  exec 9>&-
  follow_run
}

# Follows the run's log until the run ends and exits with its result. The follower (tail)
# can die while the run goes on: the run's lock and state file are what say it ended.
follow_run() {
  local pid status code
  pid=$(state_of PID)
  tail -n +1 -F --pid="$pid" "$LOG" 2>/dev/null || true
  if run_is_going; then
    log "the log follower stopped; waiting for the run (pid $pid) by its state file"
    while run_is_going; do sleep 1; done
    tail -n 20 "$LOG" 2>/dev/null || true
  fi
  status=$(state_of STATUS)
  code=$(state_of EXIT_CODE)
  case $status in
    succeeded) exit 0 ;;
    failed) exit "${code:-1}" ;;
    *) die $E_LOST "the upgrade (pid $pid) ended without a result at step $(state_of STEP); the next attempt repairs and resumes" ;;
  esac
}

# Starts `run` where it outlives the SSH session: a transient systemd unit where systemd
# runs, a new session otherwise. Returns once the run holds the node lock.
start_detached() {
  local deadline
  [ "$(state_of RUN_ID)" = "$RUN_ID" ] || state VERSION_BEFORE ""
  state RUN_ID "$RUN_ID" STATUS starting STEP start EXIT_CODE "" PID ""
  if [ -d /run/systemd/system ] && command -v systemd-run >/dev/null; then
    log "starting the upgrade as systemd unit upchain-node-upgrade-$RUN_ID"
    systemd-run --quiet --collect --unit="upchain-node-upgrade-$RUN_ID-$(date +%s)" \
      --description="upchain node upgrade to $TARGET_VERSION" \
      /bin/bash "$SCRIPT" run "$PARAMS"
  else
    log "starting the upgrade in its own session"
    # Without the launch lock: the run must not hold it for its whole life.
    setsid -f /bin/bash "$SCRIPT" run "$PARAMS" </dev/null >/dev/null 2>&1 9>&-
  fi
  deadline=$((SECONDS + 30))
  until [ "$(state_of STATUS)" != starting ] && run_is_going; do
    [ "$(state_of STATUS)" = starting ] || [ "$(state_of STATUS)" = running ] || break
    [ $SECONDS -lt $deadline ] || die $E_LOST "the upgrade did not start within 30s"
    sleep 0.2
  done
}

# --- run: the upgrade ---------------------------------------------------------------------

finish_run() {
  local code=$?
  trap - EXIT
  [ -z "${FAMILY:-}" ] || hold_present
  if [ $code -eq 0 ]; then
    state STATUS succeeded EXIT_CODE 0 VERSION_AFTER "$(kubelet_version)" FINISHED_AT "$(date -u +%FT%TZ)"
  else
    state STATUS failed EXIT_CODE "$code" VERSION_AFTER "$(kubelet_version)" FINISHED_AT "$(date -u +%FT%TZ)"
    log "failed with exit code $code at step $(state_of STEP)"
  fi
  exit $code
}

# record_start STEP TARGET BEFORE: the run (holding the run lock) on record in the state
# file; its end is recorded on every exit path, a stop by signal included.
record_start() {
  state RUN_ID "$RUN_ID" STATUS running PID $$ STEP "$1" EXIT_CODE "" TARGET "$2" \
    VERSION_BEFORE "$3" VERSION_AFTER "" STARTED_AT "$(date -u +%FT%TZ)" FINISHED_AT ""
  trap finish_run EXIT
  trap 'exit 143' TERM
  trap 'exit 129' HUP
  trap 'exit 130' INT
}

kubelet_version() {
  command -v kubelet >/dev/null || return 0
  kubelet --version 2>/dev/null | sed -n 's/^Kubernetes v//p'
}

run_upgrade() {
  exec 8>>"$RUN_LOCK"
  flock -n 8 || die $E_BUSY "another upgrade run holds this node"
  [ ! -f "$LOG" ] || mv -f "$LOG" "$LOG.1"
  exec </dev/null >>"$LOG" 2>&1
  local before
  before=$(kubelet_version)
  # A later attempt of the same run keeps the version the node had before the first.
  if [ "$(state_of RUN_ID)" = "$RUN_ID" ] && [ -n "$(state_of VERSION_BEFORE)" ]; then
    before=$(state_of VERSION_BEFORE)
  fi
  record_start start "$TARGET_VERSION" "$before"
  log "upgrading $NODE_ROLE node to $TARGET_VERSION ($UPGRADE_KIND)"
  detect_os
  check_role
  step repair
  repair_packages
  if [ "$UPGRADE_KIND" = minor ]; then
    step "repository v$MINOR"
    configure_repository
  fi
  step "refresh package index"
  refresh_index
  ensure_packages kubeadm
  if kubeadm_done; then
    log "kubeadm already upgraded this node to $TARGET_VERSION in this run"
  else
    upgrade_kubeadm_configuration
    mark_done kubeadm
  fi
  ensure_packages kubelet kubectl
  restart_kubelet
  step verify
  verify
  reclaim_backups
  log "done: $NODE_NAME runs kubelet $TARGET_VERSION"
}

# The static Pod manifests name the target's images.
manifests_at_target() {
  local component
  for component in kube-apiserver kube-controller-manager kube-scheduler; do
    grep -qE "image: .*/$component:v${TARGET_VERSION//./\\.}\$" "$MANIFESTS/$component.yaml" 2>/dev/null ||
      return 1
  done
}

# The version kube-system/kubeadm-config records, read with the node's admin.conf (the
# first control-plane node has one), or nothing where it cannot be read.
kubeadm_config_version() {
  [ -f /etc/kubernetes/admin.conf ] || return 0
  kubectl --kubeconfig=/etc/kubernetes/admin.conf -n kube-system get configmap kubeadm-config \
    -o jsonpath='{.data.ClusterConfiguration}' 2>/dev/null | sed -n 's/^kubernetesVersion: *//p' || true
}

# kubeadm's step of this run is trusted as done only where the node shows it: on a
# control-plane node, the manifests at the target and, after `kubeadm upgrade apply`,
# kubeadm-config recording it where it can be read. `kubeadm upgrade node` on a worker is
# quick and safe to repeat, so a worker's marker is never taken as proof.
kubeadm_done() {
  [ -e "$(done_marker kubeadm)" ] && [ "$NODE_ROLE" = control-plane ] && manifests_at_target || return 1
  if [ "$FIRST_CONTROL_PLANE" = true ] && [ -f /etc/kubernetes/admin.conf ]; then
    [ "$(kubeadm_config_version)" = "v$TARGET_VERSION" ] || return 1
  fi
}

upgrade_kubeadm_configuration() {
  local flags ignore
  if [ "$FIRST_CONTROL_PLANE" = true ]; then
    flags=(upgrade apply -y "v$TARGET_VERSION")
    if [ "$SKIP_COREDNS_PHASE" = true ]; then
      flags+=(--skip-phases=addon/coredns)
    fi
  else
    flags=(upgrade node)
  fi
  ignore=$(ignored_preflight_errors)
  [ -z "$ignore" ] || flags+=("$ignore")
  step "kubeadm ${flags[*]}"
  kubeadm "${flags[@]}" || die $E_KUBEADM "kubeadm ${flags[*]} failed; kubeadm rolled back its own changes where it could"
}

# One --ignore-preflight-errors flag (its value a comma-separated list), or nothing.
ignored_preflight_errors() {
  local ignored=$IGNORE_PREFLIGHT_ERRORS
  if [ "$SKIP_COREDNS_PHASE" = true ]; then
    ignored=${ignored:+$ignored,}CoreDNSMigration,CoreDNSUnsupportedPlugins
  fi
  [ -z "$ignored" ] || echo "--ignore-preflight-errors=$ignored"
}

# When systemd last started the kubelet (seconds since the epoch), or nothing.
kubelet_started_at() {
  local since
  since=$(systemctl show -p ActiveEnterTimestamp --value kubelet 2>/dev/null || true)
  [ -n "$since" ] && date -d "$since" +%s 2>/dev/null
}

# This run's restart is trusted only while the kubelet that runs is the target's and was
# started at or after it: a kubelet restarted since is not ours to skip.
kubelet_restarted() {
  local marker started
  marker=$(cat "$(done_marker kubelet-restart)" 2>/dev/null) || return 1
  [ "$(kubelet_version)" = "$TARGET_VERSION" ] && systemctl is-active --quiet kubelet || return 1
  started=$(kubelet_started_at) || return 1
  [ "$started" -ge "$marker" ]
}

restart_kubelet() {
  if kubelet_restarted; then
    log "kubelet already restarted at $TARGET_VERSION in this run"
    return
  fi
  step "restart kubelet"
  systemctl daemon-reload
  # The marker's time is taken before the restart, so the kubelet's start is never older.
  mark_done kubelet-restart
  systemctl restart kubelet || die $E_KUBELET "systemctl restart kubelet failed"
}

# The node reports success only when it runs what was asked, and keeps running it: the
# kubelet must stay active, without a restart, for KUBELET_SETTLE seconds.
verify() {
  local deadline=$((SECONDS + KUBELET_TIMEOUT)) version started settled
  version=$(kubelet_version)
  [ "$version" = "$TARGET_VERSION" ] ||
    die $E_VERIFY "kubelet --version says ${version:-nothing}, not $TARGET_VERSION"
  if [ "$NODE_ROLE" = control-plane ]; then
    manifests_at_target ||
      die $E_VERIFY "the static Pod manifests in $MANIFESTS do not all run v$TARGET_VERSION (kube-apiserver, kube-controller-manager, kube-scheduler); the next attempt runs kubeadm again"
    log "verified: the static Pods run v$TARGET_VERSION"
  fi
  until systemctl is-active --quiet kubelet; do
    [ $SECONDS -lt $deadline ] ||
      die $E_KUBELET "the kubelet unit is $(systemctl is-active kubelet || true) ${KUBELET_TIMEOUT}s after its restart"
    sleep 1
  done
  started=$(kubelet_started_at || true)
  settled=$((SECONDS + KUBELET_SETTLE))
  log "kubelet $version is active; watching it for ${KUBELET_SETTLE}s"
  while [ $SECONDS -lt $settled ]; do
    sleep 1
    if ! systemctl is-active --quiet kubelet || [ "$(kubelet_started_at || true)" != "$started" ]; then
      die $E_KUBELET "the kubelet stopped or restarted within ${KUBELET_SETTLE}s of its restart (unit $(systemctl is-active kubelet || true), restarts $(systemctl show -p NRestarts --value kubelet 2>/dev/null || echo unknown)): see journalctl -u kubelet"
    fi
  done
  log "verified: kubelet $version is active"
}

# kubeadm leaves /etc/kubernetes/tmp/kubeadm-backup-{etcd,manifests}-<date> behind on
# every upgrade; on small control-plane disks they add up.
reclaim_backups() {
  local kind backups=/etc/kubernetes/tmp
  [ -d "$backups" ] || return 0
  for kind in etcd manifests; do
    find "$backups" -maxdepth 1 -name "kubeadm-backup-$kind-*" -print | sort -r |
      tail -n "+$((KEEP_BACKUPS + 1))" | while read -r old; do
        log "removing old backup $old"
        rm -rf -- "$old"
      done
  done
}

# --- prepare: nothing is changed ----------------------------------------------------------

prepare() {
  local tmp package missing=() opts=()
  detect_os
  check_role
  log "checking that $NODE_NAME can be upgraded to $TARGET_VERSION ($FAMILY)"
  check_disk
  tmp=$(mktemp -d)
  # apt fetches as the _apt user.
  chmod 0755 "$tmp"
  PREPARE_DIR=$tmp
  trap 'rm -rf "$PREPARE_DIR"' EXIT
  if [ "$FAMILY" = apt ]; then
    mkdir -p "$tmp/lists/partial" "$tmp/archives/partial"
    opts=(-o Dir::State::Lists="$tmp/lists" -o Dir::Cache="$tmp" -o Dir::Cache::Archives="$tmp/archives")
    if [ "$REPOSITORY" = managed ]; then
      curl -fsSL -o "$tmp/key.asc" "$(repository_key_url)" ||
        die $E_REPOSITORY "cannot download the repository key $(repository_key_url)"
      echo "deb [signed-by=$tmp/key.asc] $(repository_url deb) /" >"$tmp/sources.list"
      opts+=(-o Dir::Etc::SourceList="$tmp/sources.list" -o Dir::Etc::SourceParts="$tmp/none")
    fi
    package_call apt-get -q -o DPkg::Lock::Timeout=0 "${opts[@]}" update
  else
    opts=(--setopt=cachedir="$tmp/cache")
    if [ "$REPOSITORY" = managed ]; then
      rpm_repository_file "$(repository_key_url)" >"$tmp/kubernetes.repo"
      opts+=(--setopt=reposdir="$tmp")
    fi
  fi
  for package in "${PACKAGES[@]}"; do
    [ -n "$(available_version "$package" "$TARGET_VERSION" "${opts[@]}")" ] || missing+=("$package")
  done
  [ ${#missing[@]} -eq 0 ] ||
    die $E_NOT_FOUND "${missing[*]} $TARGET_VERSION not found in the configured repository ($REPOSITORY, $REPOSITORY_URL); nothing was changed"
  log "packages available: ${PACKAGES[*]} $TARGET_VERSION"
  if [ "$FIRST_CONTROL_PLANE" = true ]; then
    check_plan "$tmp" "${opts[@]}"
  fi
  log "ready for $TARGET_VERSION"
}

check_disk() {
  local free need=$MIN_FREE_MIB etcd=0
  if [ "$NODE_ROLE" = control-plane ] && [ -d /var/lib/etcd ]; then
    # kubeadm copies etcd's data into its backup before it upgrades etcd.
    etcd=$(du -sm /var/lib/etcd | awk '{print $1}')
    need=$((need + etcd))
  fi
  free=$(df -Pm /var/lib | awk 'NR == 2 {print $4}')
  [ "$free" -ge "$need" ] ||
    die $E_DISK "/var/lib has ${free} MiB free; the upgrade needs ${need} MiB (MIN_FREE_MIB $MIN_FREE_MIB + etcd ${etcd} MiB)"
  log "disk: ${free} MiB free on /var/lib, ${need} MiB needed"
}

# kubeadm upgrade plan, run by the target's kubeadm unpacked in a temporary directory:
# the installed kubeadm is older and nothing may be installed yet.
check_plan() {
  local tmp=$1 exact
  shift
  exact=$(available_version kubeadm "$TARGET_VERSION" "$@")
  mkdir -p "$tmp/kubeadm"
  if [ "$FAMILY" = apt ]; then
    (cd "$tmp/archives" && package_call apt-get -q "$@" download "kubeadm=$exact")
    dpkg-deb -x "$tmp"/archives/kubeadm_*.deb "$tmp/kubeadm"
  else
    package_call "$PKG" -q "$@" --disableexcludes=kubernetes download --destdir "$tmp/archives" "kubeadm-${exact#*:}"
    (cd "$tmp/kubeadm" && rpm2cpio "$tmp"/archives/kubeadm-*.rpm | cpio -idm --quiet)
  fi
  # shellcheck disable=SC2046 # one flag or none
  "$tmp/kubeadm/usr/bin/kubeadm" upgrade plan "v$TARGET_VERSION" $(ignored_preflight_errors) ||
    die $E_PLAN "kubeadm upgrade plan does not offer v$TARGET_VERSION; see its output above; nothing was changed"
}

# --- rollback: packages back to an older version ------------------------------------------

rollback() {
  local version=${1:-} installed previous
  # The last upgrade's parameters (a launch keeps only its own): a mirror stays the mirror.
  for previous in "$STATE_DIR"/params-*.env; do
    [ ! -f "$previous" ] || parse_params "$previous"
  done
  TARGET_VERSION=$version
  NODE_NAME=$(uname -n)
  apply_defaults
  matches TARGET_VERSION '^[0-9]+\.[0-9]+\.[0-9]+$'
  matches REPOSITORY '^(managed|unmanaged)$'
  MINOR="${TARGET_VERSION%.*}"
  detect_os
  if [ -f "$MANIFESTS/kube-apiserver.yaml" ]; then
    die $E_INPUT "this is a control-plane node: kubeadm cannot downgrade a control plane. Restore it from the etcd snapshot and kubeadm's backups instead (docs/node-script.md, Rollback)"
  fi
  installed=$(installed_version kubelet)
  older "$version" "$installed" || die $E_INPUT "kubelet is at ${installed:-nothing}; $version is not older"
  mkdir -p "$STATE_DIR"
  exec 8>>"$RUN_LOCK"
  flock -n 8 || die $E_BUSY "an upgrade run holds this node"
  # No step of an earlier upgrade counts as done once the node has gone back.
  rm -rf -- "$DONE"
  # On record, so that a Job arriving meanwhile is refused rather than attached.
  RUN_ID="rollback-$version"
  record_start rollback "$version" "$installed"
  log "rolling back kubeadm, kubelet and kubectl from $installed to $version"
  configure_repository
  refresh_index
  install_at "$version" down "${PACKAGES[@]}"
  systemctl daemon-reload
  systemctl restart kubelet || die $E_KUBELET "systemctl restart kubelet failed"
  [ "$(kubelet_version)" = "$version" ] || die $E_VERIFY "kubelet --version says $(kubelet_version)"
  log "rolled back: kubelet $version; uncordon the node when it is Ready"
}

# --- etcd: read-only checks and the snapshot ---------------------------------------------

readonly ETCD_MANIFEST="$MANIFESTS/etcd.yaml" SNAPSHOT_ROOT="$STATE_DIR/snapshot"

# A flag of the etcd static Pod (`- --name=value` in its manifest), or $2.
etcd_flag() {
  local value
  value=$(sed -n "s/^[[:space:]]*-[[:space:]]*--$1=//p" "$ETCD_MANIFEST" | head -n 1 | tr -d "\"'\r")
  echo "${value:-${2:-}}"
}

# An etcd tool ($1: etcdctl or etcdutl): the one in the running etcd container's image (it
# matches the server), else one on the node's PATH. Empty when there is none.
etcd_tool() {
  local pid dir
  for pid in $(pgrep -x etcd 2>/dev/null || true); do
    for dir in /usr/local/bin /usr/bin /bin; do
      if [ -x "/proc/$pid/root$dir/$1" ]; then
        echo "/proc/$pid/root$dir/$1"
        return
      fi
    done
  done
  command -v "$1" 2>/dev/null || true
}

# Finds etcdctl and this member's client endpoint and certificates, from the etcd static
# Pod's own manifest: the member kubeadm runs on this node, as it runs it.
etcd_setup() {
  [ -f "$ETCD_MANIFEST" ] ||
    die $E_ETCD "$ETCD_MANIFEST does not exist: $NODE_NAME runs no etcd member (with external etcd, use spec.gates.externalEtcdCheck); nothing was changed"
  ETCDCTL=$(etcd_tool etcdctl)
  [ -n "$ETCDCTL" ] ||
    die $E_ETCD "no etcdctl: neither the etcd container's image nor $NODE_NAME's PATH has one; install etcd-client on the node; nothing was changed"
  ETCDUTL=$(etcd_tool etcdutl)
  ETCD_ENDPOINT=$(etcd_flag advertise-client-urls)
  ETCD_ENDPOINT=${ETCD_ENDPOINT%%,*}
  ETCD_CERT=$(etcd_flag cert-file)
  ETCD_KEY=$(etcd_flag key-file)
  ETCD_CA=$(etcd_flag trusted-ca-file)
  local flag
  for flag in ETCD_ENDPOINT ETCD_CERT ETCD_KEY ETCD_CA; do
    [ -n "${!flag}" ] || die $E_ETCD "$ETCD_MANIFEST has no ${flag#ETCD_} flag etcdctl could use; nothing was changed"
  done
}

etcdctl_() {
  ETCDCTL_API=3 "$ETCDCTL" --endpoints="$ETCD_ENDPOINT" --cacert="$ETCD_CA" --cert="$ETCD_CERT" \
    --key="$ETCD_KEY" --dial-timeout=5s --command-timeout=15s "$@"
}

# etcdutl where the image has it (etcd 3.5 and later), else etcdctl's older commands.
snapshot_tool() {
  if [ -n "$ETCDUTL" ]; then ETCDCTL_API=3 "$ETCDUTL" "$@"; else ETCDCTL_API=3 "$ETCDCTL" "$@"; fi
}

# One `upchain-etcd KIND FIELDS...` line per member, endpoint, health result and alarm,
# compact enough for the Job's termination message. The operator judges them.
report_endpoints() {
  local kind=$1 out
  out=$(etcdctl_ endpoint status --cluster -w fields 2>&1) || true
  awk -v kind="$kind" -F' : ' '
    /^"MemberID"/ {id=$2} /^"DBSize"/ {db=$2} /^"Leader"/ {leader=$2}
    /^"IsLearner"/ {learner=$2} /^"RaftIndex"/ {index_=$2} /^"RaftAppliedIndex"/ {applied=$2}
    /^"Endpoint"/ {gsub(/"/, "", $2); print "upchain-etcd " kind " " $2 " " id " " leader " " db " " index_ " " applied " " learner}
    /^(Failed|Error|\{)/ {print "upchain-etcd error " kind ": " $0}' <<<"$out" | cut -c1-300
}

etcd_check() {
  local out line
  etcd_setup
  log "checking etcd through $NODE_NAME's member ($ETCD_ENDPOINT)" >&2
  out=$(etcdctl_ member list -w simple 2>&1) ||
    die $E_ETCD "etcdctl member list failed: $(head -c 300 <<<"$out")"
  while IFS= read -r line; do
    [ -z "$line" ] || echo "upchain-etcd member ${line//, /|}"
  done <<<"$out"
  report_endpoints status
  out=$(etcdctl_ endpoint health --cluster -w fields 2>&1) || true
  awk -F' : ' '
    /^"Endpoint"/ {gsub(/"/, "", $2); endpoint=$2} /^"Health"/ {health=$2}
    /^"Error"/ {print "upchain-etcd health " endpoint " " health " " $2}
    /^(Failed|Error)/ {print "upchain-etcd error health: " $0}' <<<"$out" | cut -c1-300
  out=$(etcdctl_ alarm list 2>&1) || echo "upchain-etcd error alarm list: $(head -c 200 <<<"$out")"
  grep -o 'memberID:[0-9]* alarm:[A-Z0-9]*' <<<"$out" | sed 's/memberID:/upchain-etcd alarm /; s/ alarm:/ /' || true
  echo "upchain-etcd quota $(etcd_flag quota-backend-bytes 2147483648)"
  # A second look: every member must reach what the leader had committed at the first.
  sleep 2
  report_endpoints later
}

# The snapshot, into a private directory; read back; restored into a scratch directory,
# whose revision and key count must equal the snapshot's. The Job copies the file off the
# node and removes it (docs/gates.md, The etcd snapshot).
etcd_snapshot() {
  local dir file status restored sha size
  etcd_setup
  install -d -m 0700 "$SNAPSHOT_ROOT"
  dir="$SNAPSHOT_ROOT/$RUN_ID"
  rm -rf -- "$dir"
  install -d -m 0700 "$dir"
  file="$dir/etcd.db"
  check_snapshot_space
  log "saving an etcd snapshot from $ETCD_ENDPOINT" >&2
  etcdctl_ snapshot save "$file" >&2 || die $E_SNAPSHOT "etcdctl snapshot save failed; nothing was changed"
  chmod 0600 "$file"
  status=$(snapshot_tool snapshot status "$file" -w json 2>/dev/null) ||
    die $E_SNAPSHOT "snapshot status cannot read $file: the snapshot is unusable"
  snapshot_tool snapshot restore "$file" --data-dir "$dir/restore" --name upchain-restore-check \
    --initial-cluster upchain-restore-check=http://127.0.0.1:2380 \
    --initial-advertise-peer-urls http://127.0.0.1:2380 >/dev/null 2>&1 ||
    die $E_SNAPSHOT "the test restore of $file failed: the snapshot cannot be restored"
  restored=$(snapshot_tool snapshot status "$dir/restore/member/snap/db" -w json 2>/dev/null) ||
    die $E_SNAPSHOT "the test restore of $file left no readable database"
  rm -rf -- "$dir/restore"
  sha=$(sha256sum "$file" | cut -d' ' -f1)
  size=$(stat -c %s "$file")
  echo "upchain-snapshot-file $file $size $sha"
  echo "upchain-snapshot-status $status"
  echo "upchain-snapshot-restored $restored"
}

# The snapshot and its test restore each take about the database's size.
check_snapshot_space() {
  local free need db
  db=0
  [ ! -d /var/lib/etcd ] || db=$(du -sm /var/lib/etcd | awk '{print $1}')
  need=$((2 * db + 64))
  free=$(df -Pm "$SNAPSHOT_ROOT" | awk 'NR == 2 {print $4}')
  [ "$free" -ge "$need" ] ||
    die $E_DISK "$SNAPSHOT_ROOT has ${free} MiB free; the snapshot and its test restore need ${need} MiB"
}

# --- main ---------------------------------------------------------------------------------

command=${1:-}
case $command in
  launch | run | prepare | etcd-check | etcd-snapshot)
    [ $# -eq 2 ] || die $E_INPUT "usage: $0 $command PARAMS_FILE"
    SCRIPT=$(readlink -f "$0")
    PARAMS=$(readlink -f "$2")
    trap discard_incoming EXIT
    read_params "$PARAMS"
    # Read once, the parameters' copy can go; bash reads this script from its open file.
    [ "$command" = launch ] || discard_incoming
    case $command in
      launch) launch ;;
      run) run_upgrade ;;
      prepare) prepare ;;
      etcd-check) etcd_check ;;
      etcd-snapshot) etcd_snapshot ;;
    esac
    ;;
  rollback)
    [ $# -eq 2 ] || die $E_INPUT "usage: $0 rollback VERSION (for example 1.34.2)"
    rollback "$2"
    ;;
  *) die $E_INPUT "usage: $0 launch|run|prepare|etcd-check|etcd-snapshot PARAMS_FILE, or $0 rollback VERSION" ;;
esac
