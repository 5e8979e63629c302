#!/usr/bin/env bash
# Install a one-node Slurm (Debian packages) for tests/test_slurm.py; called by .ci/run.
# CI runs as root on Debian.  The daemons are not started here: the tests start and stop their
# own cluster with scripts/slurm_local.sh (config, munge key, state and logs in a temp folder).
set -euo pipefail

if command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
    && command -v sbatch >/dev/null && command -v munged >/dev/null; then
    echo "slurm_setup: Slurm and munge already installed ($(slurmd -V))"
    exit 0
fi
if ((EUID != 0)); then
    echo "slurm_setup: must run as root to install packages" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# policy-rc.d: do not let the packages start (and fail to start) their system services
if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge
echo "slurm_setup: installed $(slurmd -V); munge $(munged -V | head -n 1)"
