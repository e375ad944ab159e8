#!/usr/bin/env bash
# tests/harness/ci_services.sh -- install and start what `pytest --slurm --browser` needs, on
# Debian 12 as root (CI containers: no systemd needed). Idempotent: packages already installed
# are skipped and running daemons are left alone, so it is safe to call before every test run.
# Fails loudly (non-zero exit, the failing step named) when anything is missing afterwards.
#
#   bash tests/harness/ci_services.sh        # then: PYTEST_ADDOPTS="--slurm --browser" make test
#
# What it sets up:
#   * headless browser: Debian's chromium + chromium-driver (same version; selenium drives them)
#   * Slurm: tests/harness/slurm.sh -- munge, slurmctld, slurmd, slurmdbd + MariaDB (sacct),
#     2 fake GPUs, partition "debug", account "bnstudy" -- then a one-GPU self-test job
# The Python side (selenium, snakemake, the slurm executor plugin) comes from `make test`
# (pip install -e ".[test]").
set -euo pipefail
cd "$(dirname "$0")/../.."

log() { echo "[ci_services $(date +%T)] $*"; }
die() { echo "[ci_services] FAILED: $*" >&2; exit 1; }
trap 'die "line $LINENO: $BASH_COMMAND"' ERR

if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null || die "must run as root (apt-get, Slurm daemons)"
  exec sudo -E bash "$0" "$@"
fi
export DEBIAN_FRONTEND=noninteractive

# ---- 1. packages: the browser (tests/harness/slurm.sh installs the Slurm packages itself) ---
PKGS="chromium chromium-driver fonts-dejavu-core"
MISSING=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || MISSING="$MISSING $p"
done
if [ -n "$MISSING" ]; then
  log "apt-get install:$MISSING"
  apt-get update -q >/dev/null
  # shellcheck disable=SC2086
  apt-get install -y -q --no-install-recommends $MISSING >/dev/null
fi

# ---- 2. browser: both binaries present, same major version -------------------------
command -v chromium >/dev/null || die "chromium not on PATH"
command -v chromedriver >/dev/null || die "chromedriver not on PATH"
BROWSER_V=$(chromium --version 2>/dev/null | grep -oE '[0-9]+\.[0-9.]+' | head -1)
DRIVER_V=$(chromedriver --version | grep -oE '[0-9]+\.[0-9.]+' | head -1)
[ "${BROWSER_V%%.*}" = "${DRIVER_V%%.*}" ] \
  || die "chromium $BROWSER_V and chromedriver $DRIVER_V differ in major version"
log "chromium $BROWSER_V, chromedriver $DRIVER_V"

# ---- 3. Slurm cluster (with accounting and fake GPUs), checked with a real job --------
bash tests/harness/slurm.sh selftest
log "services ready: run the tests with --slurm --browser"
