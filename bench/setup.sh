#!/usr/bin/env bash
# One-time setup for mailframe's benchmark (bench/run.py), on Debian or Ubuntu.
#
#   bench/setup.sh            # apt packages (as root or with sudo) + the bench venv
#   bench/setup.sh --no-apt   # only the venv (smtp-source is already installed)
#   bench/setup.sh --no-plot  # without matplotlib (run.py then skips the PNG)
#   bench/setup.sh --rev HEAD # install mailframe from a commit, not the work tree
#
# 1. apt: postfix (for /usr/sbin/smtp-source and smtp-sink, and the private
#    instance of the postfix-durable peer) and swaks.  Installing postfix may
#    start its system daemon on port 25; if it was not running before, this
#    script stops it again, so nothing is left listening.  The bench never
#    uses the system instance (/etc/postfix, /var/spool/postfix).
# 2. a venv at ${BENCH_VENV:-bench/.venv} with twisted, aiosmtpd, matplotlib
#    and mailframe itself, installed from this checkout the way a user
#    installs it (`pip install .`, not editable: twistd finds the mailframe
#    plug-in through twisted/plugins).  Re-run this script after changing
#    mailframe so that the bench measures the current code; run.py warns when
#    the installed copy differs from the checkout.  --rev REV installs the
#    files of commit REV (git archive) instead of the working tree, so that
#    uncommitted edits are not measured.  What was installed is written to
#    $VENV/mailframe-source.txt, and run.py records it with the results.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
VENV=${BENCH_VENV:-$HERE/.venv}
PYTHON=${PYTHON:-python3}
APT=1
PLOT=1
REV=
while [ $# -gt 0 ]; do
  case "$1" in
    --no-apt) APT=0 ;;
    --no-plot) PLOT=0 ;;
    --rev) REV=${2:?--rev wants a commit}; shift ;;
    -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
    *) echo "unknown option: $1" >&2; exit 2 ;;
  esac
  shift
done

postfix_running() { postfix status >/dev/null 2>&1; }

if [ "$APT" = 1 ] && { ! [ -x /usr/sbin/smtp-source ] || ! command -v swaks >/dev/null; }; then
  SUDO=
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || { echo "need root (or sudo) for apt-get" >&2; exit 1; }
    SUDO=sudo
  fi
  was_running=0
  if command -v postfix >/dev/null && postfix_running; then was_running=1; fi
  $SUDO apt-get update
  # "Local only": the daemon would listen on loopback only; we stop it below anyway.
  echo "postfix postfix/main_mailer_type select Local only" | $SUDO debconf-set-selections
  echo "postfix postfix/mailname string localhost" | $SUDO debconf-set-selections
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y postfix swaks
  if [ "$was_running" = 0 ] && postfix_running; then
    echo "stopping the postfix daemon that the install started"
    $SUDO postfix stop
  fi
fi
[ -x /usr/sbin/smtp-source ] || { echo "/usr/sbin/smtp-source is missing (apt-get install postfix)" >&2; exit 1; }

if ! [ -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
pkgs=(twisted aiosmtpd)
[ "$PLOT" = 1 ] && pkgs+=(matplotlib)
"$VENV/bin/python" -m pip install -q "${pkgs[@]}"
SRC=$REPO
if [ -n "$REV" ]; then
  sha=$(git -C "$REPO" rev-parse --verify "$REV^{commit}")
  SRC=$(mktemp -d)
  trap 'rm -rf "$SRC"' EXIT
  git -C "$REPO" archive "$sha" | tar -x -C "$SRC"
  source_desc="commit $sha"
elif git -C "$REPO" rev-parse HEAD >/dev/null 2>&1; then
  source_desc="working tree at $(git -C "$REPO" rev-parse HEAD)"
  if [ -n "$(git -C "$REPO" status --porcelain -- mailframe twisted setup.cfg pyproject.toml)" ]; then
    source_desc="$source_desc with uncommitted changes"
  fi
else
  source_desc="directory $REPO"
fi
# always reinstall mailframe, so that a re-run picks up the checkout's changes
"$VENV/bin/python" -m pip install -q --force-reinstall --no-deps "$SRC"
"$VENV/bin/python" -m pip install -q "$SRC"   # its dependencies, if new
echo "$source_desc" > "$VENV/mailframe-source.txt"
echo "mailframe installed from the $source_desc"
"$VENV/bin/twistd" mailframe --help >/dev/null
"$VENV/bin/python" - <<'EOF'
import importlib.metadata as m
import importlib.util as u

names = ["mailframe", "twisted", "aiosmtpd", "matplotlib"]
print("bench venv ok:", ", ".join(
    f"{n} {m.version(n)}" if u.find_spec(n) else f"{n} (not installed)" for n in names))
EOF
echo "venv: $VENV   next: $VENV/bin/python $HERE/run.py"
