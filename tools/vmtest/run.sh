#!/bin/bash
# Boot the fastmap test kernel under QEMU (TCG) and run one command inside it.
#
#   tools/vmtest/run.sh [options] -- COMMAND [ARGS...]
#
# The guest's root is this machine's / over virtio-9p, read-only: same paths, Python
# and virtual environments. The repository (git toplevel of this directory) is shared
# read-write at its own path and so is the run's out directory ($VMTEST_OUT), even
# when they lie under /tmp (the guest's /tmp, /run and /dev/shm are its own tmpfs).
# COMMAND runs as root in the current directory; its output (stdout and stderr, merged)
# streams to this script's stdout. Exit status: COMMAND's; 125 if the VM did not
# report one (boot failure, timeout, crash); 2 for usage errors.
#
# Options (defaults from the environment in brackets):
#   --iommu virtio|vtd|none  IOMMU model [FASTMAP_VMTEST_IOMMU, virtio]
#       virtio: virtio-iommu; mock domain, VFIO cdev + edu and legacy type1 in one boot
#       vtd:    emulated Intel VT-d (intremap); the selftest mock domain is refused
#       none:   /dev/iommu and the mock domain only; edu cannot be bound to vfio-pci
#   --timeout S              kill the VM after S seconds [FASTMAP_VMTEST_TIMEOUT, 1200]
#   --mem M                  guest memory, QEMU syntax [FASTMAP_VMTEST_MEM, 2G]
#   --smp N                  guest CPUs [FASTMAP_VMTEST_SMP, 2]
#   --kernel PATH            bzImage [FASTMAP_VMTEST_KERNEL, else kernel.sh finds one]
#   --out DIR                keep logs and results in DIR [FASTMAP_VMTEST_OUT, else a
#                            new temporary directory, removed after a successful run]
#   --keep                   keep the temporary out directory even on success
#   --share DIR, --share-ro DIR
#                            also share DIR (read-write / read-only) at its own path;
#                            <repo>/../shared is shared read-only by itself when it
#                            lies under /tmp, /run or /dev/shm
#   --env NAME[=VALUE]       pass NAME (a glob such as 'FOO_*' works) into the guest
#   --bind-edu/--no-bind-edu run guest-setup.sh (edu -> vfio-pci) before COMMAND
#                            [on, except with --iommu none]
#   --accel A                QEMU accelerator [FASTMAP_VMTEST_ACCEL, tcg]
#   --append ARGS            extra kernel command line [FASTMAP_VMTEST_APPEND]
#
# Environment passed into the guest command: PATH, VIRTUAL_ENV, PYENV_*, PYTHONPATH,
# PYTHONHASHSEED, PYTHONFAULTHANDLER, PYTHONWARNINGS, FASTMAP_*, HYPOTHESIS_*,
# PYTEST_*, COVERAGE_*, CI, plus the names/globs in FASTMAP_VMTEST_ENV (space separated)
# and --env. The guest also sets FASTMAP_VMTEST=1, FASTMAP_VMTEST_IOMMU and
# VMTEST_OUT (= FASTMAP_VMTEST_OUT), HOME=/tmp, PYTHONDONTWRITEBYTECODE=1.
# Out directory: output.log (the command's output), console.log (kernel console),
# dmesg.txt, qemu.log (QEMU's stderr), rc, times, plus what the command wrote there.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() { sed -n '2,43s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; }

iommu=${FASTMAP_VMTEST_IOMMU:-virtio}
timeout_s=${FASTMAP_VMTEST_TIMEOUT:-1200}
mem=${FASTMAP_VMTEST_MEM:-2G}
smp=${FASTMAP_VMTEST_SMP:-2}
kernel=${FASTMAP_VMTEST_KERNEL:-}
out=${FASTMAP_VMTEST_OUT:-}
accel=${FASTMAP_VMTEST_ACCEL:-tcg}
extra_append=${FASTMAP_VMTEST_APPEND:-}
bind_edu=auto keep=0
env_pats=(PATH VIRTUAL_ENV 'PYENV_*' PYTHONPATH PYTHONHASHSEED PYTHONFAULTHANDLER
          PYTHONWARNINGS 'FASTMAP_*' 'HYPOTHESIS_*' 'PYTEST_*' 'COVERAGE_*' CI)
read -r -a extra <<< "${FASTMAP_VMTEST_ENV:-}"
env_pats+=("${extra[@]}")
env_set=()   # NAME=VALUE given on the command line
shares=()    # "rw DIR" / "ro DIR"

need_arg() { [ $# -ge 2 ] || vmtest_die "run.sh: $1 needs a value"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --iommu) need_arg "$@"; iommu=$2; shift 2 ;;
    --timeout) need_arg "$@"; timeout_s=$2; shift 2 ;;
    --mem) need_arg "$@"; mem=$2; shift 2 ;;
    --smp) need_arg "$@"; smp=$2; shift 2 ;;
    --kernel) need_arg "$@"; kernel=$2; shift 2 ;;
    --out) need_arg "$@"; out=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    --share) need_arg "$@"; shares+=("rw $2"); shift 2 ;;
    --share-ro) need_arg "$@"; shares+=("ro $2"); shift 2 ;;
    --env) need_arg "$@"; case "$2" in *=*) env_set+=("$2") ;; *) env_pats+=("$2") ;; esac; shift 2 ;;
    --bind-edu) bind_edu=1; shift ;;
    --no-bind-edu) bind_edu=0; shift ;;
    --accel) need_arg "$@"; accel=$2; shift 2 ;;
    --append) need_arg "$@"; extra_append+=" $2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    *) usage >&2; vmtest_die "run.sh: unknown option $1 (the command goes after --)" ;;
  esac
done
[ $# -gt 0 ] || { usage >&2; vmtest_die "run.sh: no command given"; }
[[ "$timeout_s" =~ ^[0-9]+$ ]] || vmtest_die "run.sh: --timeout must be a number of seconds"
[[ "$smp" =~ ^[0-9]+$ ]] || vmtest_die "run.sh: --smp must be a number"

case "$iommu" in
  # virtio-iommu has no MSI isolation, so iommufd and type1 must be told to accept that
  # (without these, VFIO_DEVICE_BIND_IOMMUFD and VFIO_SET_IOMMU fail with EPERM).
  virtio) iommu_dev=(-device virtio-iommu-pci)
          iommu_args="intel_iommu=off iommufd.allow_unsafe_interrupts=1 vfio_iommu_type1.allow_unsafe_interrupts=1" ;;
  vtd)    iommu_dev=(-device "intel-iommu,intremap=on")
          iommu_args="intel_iommu=on" ;;
  none)   iommu_dev=()
          iommu_args="intel_iommu=off" ;;
  *) vmtest_die "run.sh: --iommu must be virtio, vtd or none" ;;
esac
if [ "$bind_edu" = auto ]; then
  if [ "$iommu" = none ]; then bind_edu=0; else bind_edu=1; fi
fi

command -v qemu-system-x86_64 >/dev/null ||
  vmtest_die "qemu-system-x86_64 is not installed (run tools/vmtest/install-qemu.sh as root)"

if [ -z "$kernel" ]; then
  kernel=$("$vmtest_dir/kernel.sh") || vmtest_die "no kernel (see tools/vmtest/kernel.sh)"
fi
[ -r "$kernel" ] || vmtest_die "kernel $kernel is not readable"

repo=$(vmtest_repo_root)
cwd=$PWD

q() { printf '%q' "$1"; }
qpath() { printf '%s' "${1//,/,,}"; }   # QEMU option values double their commas

# Paths that exist in the guest only through a share: tell the user early.
in_dir() { case "$1/" in "$2"/*) return 0 ;; *) return 1 ;; esac; }
guest_private() { case "$1/" in /tmp/*|/run/*|/dev/shm/*) return 0 ;; *) return 1 ;; esac; }

# --- out directory --------------------------------------------------------------------
temp_out=0
if [ -z "$out" ]; then
  out=$(mktemp -d "${TMPDIR:-/tmp}/fastmap-vmtest.XXXXXX")
  temp_out=1
else
  mkdir -p "$out"
  out=$(cd "$out" && pwd)
  rm -f "$out/rc" "$out/console.log" "$out/output.log" "$out/dmesg.txt" "$out/qemu.log" "$out/times"
fi
case "$out/" in /proc/*|/sys/*|/dev/*) case "$out/" in /dev/shm/*) ;; *) vmtest_die "out directory $out is not usable";; esac ;; esac

# --- what is shared besides / (read-only) ----------------------------------------------
mounts=("rw fastmap_repo $repo" "out - $out")   # "KIND TAG PATH"
qemu_shares=()
sibling=$(cd "$repo/.." && pwd)/shared
if [ -d "$sibling" ] && guest_private "$sibling"; then shares+=("ro $sibling"); fi
n=0
for sh in "${shares[@]}"; do
  mode=${sh%% *} dir=${sh#* }
  [ -d "$dir" ] || vmtest_die "--share $dir: not a directory"
  dir=$(cd "$dir" && pwd)
  if in_dir "$dir" "$repo" && [ "$mode" = rw ]; then continue; fi   # already shared
  ro=""
  [ "$mode" = ro ] && ro=",readonly=on"
  mounts+=("$mode share$n $dir")
  qemu_shares+=(-fsdev "local,id=share$n,path=$(qpath "$dir"),security_model=none,multidevs=remap$ro"
                -device "virtio-9p-pci,fsdev=share$n,mount_tag=share$n")
  n=$((n + 1))
done
reachable() {
  local m
  guest_private "$1" || return 0
  for m in "${mounts[@]}"; do in_dir "$1" "${m#* * }" && return 0; done
  return 1
}
if ! reachable "$cwd"; then
  vmtest_log "warning: the current directory $cwd is under the guest's own tmpfs and not shared (see --share); the command will not find it"
fi

# --- what the guest reads -------------------------------------------------------------
{
  echo "VMTEST_OUT=$(q "$out")"
  echo "VMTEST_IOMMU=$(q "$iommu")"
  echo "VMTEST_BIND_EDU=$bind_edu"
  echo "VMTEST_SETUP=$(q "$vmtest_dir/guest-setup.sh")"
  # Outer paths first, so that a mount inside another lands on top of it.
  i=0
  while IFS=' ' read -r _ kind tag path; do
    echo "VMTEST_MOUNT_KIND[$i]=$kind VMTEST_MOUNT_TAG[$i]=$tag VMTEST_MOUNT_PATH[$i]=$path"
    i=$((i + 1))
  done < <(for m in "${mounts[@]}"; do
             read -r kind tag path <<< "$m"
             slashes=${path//[!\/]/}
             echo "${#slashes} $kind $tag $(q "$path")"
           done | sort -n -s -k1,1)
} > "$out/vmtest.conf"

{
  echo "# generated by tools/vmtest/run.sh"
  while IFS= read -r name; do
    for pat in "${env_pats[@]}"; do
      # shellcheck disable=SC2053  # $pat is a glob on purpose
      if [[ $name == $pat ]]; then echo "export $name=$(q "${!name}")"; break; fi
    done
  done < <(compgen -e)
  for kv in "${env_set[@]}"; do echo "export ${kv%%=*}=$(q "${kv#*=}")"; done
  echo "export FASTMAP_VMTEST=1 FASTMAP_VMTEST_IOMMU=$(q "$iommu")"
  echo "export VMTEST_OUT=$(q "$out") FASTMAP_VMTEST_OUT=$(q "$out")"
  echo "cd $(q "$cwd") || { echo \"vmtest: cannot enter $(q "$cwd") in the guest\" >&2; exit 99; }"
  printf 'exec'; printf ' %q' "$@"; echo
} > "$out/cmd.sh"

# --- QEMU -----------------------------------------------------------------------------
init=$vmtest_dir/guest-init.sh
case "$init" in *[[:space:]]*) init="\"$init\"" ;; esac
case "$init" in *\"*\"*\"*) vmtest_die "the path $vmtest_dir cannot be passed on the kernel command line" ;; esac

p9=trans=virtio,version=9p2000.L,msize=512000
append="root=/dev/root rootfstype=9p rootflags=$p9,cache=loose ro console=ttyS0"
append+=" panic=-1 mitigations=off $iommu_args $extra_append init=$init"

qemu=(qemu-system-x86_64
  -machine "q35,kernel-irqchip=split" -accel "$accel" -cpu max -smp "$smp" -m "$mem"
  -nodefaults -display none -no-reboot
  "${iommu_dev[@]}" -device edu
  -fsdev "local,id=root,path=/,security_model=none,readonly=on,multidevs=remap"
  -device "virtio-9p-pci,fsdev=root,mount_tag=/dev/root"
  -fsdev "local,id=repo,path=$(qpath "$repo"),security_model=none,multidevs=remap"
  -device "virtio-9p-pci,fsdev=repo,mount_tag=fastmap_repo"
  -fsdev "local,id=out,path=$(qpath "$out"),security_model=none,multidevs=remap"
  -device "virtio-9p-pci,fsdev=out,mount_tag=vmtest_out"
  "${qemu_shares[@]}"
  -chardev "file,id=console,path=$(qpath "$out/console.log")" -serial chardev:console
  -chardev "stdio,id=cmdout,signal=off" -serial chardev:cmdout
  -kernel "$kernel" -append "$append")

# Stop the VM too when we are interrupted (the trap runs at once because we `wait`).
# shellcheck disable=SC2317  # invoked through trap
on_signal() {
  trap - INT TERM HUP
  [ -s "$out/qemu.pid" ] && kill "$(cat "$out/qemu.pid")" 2>/dev/null
  wait 2>/dev/null
  vmtest_log "interrupted; out=$out"
  exit 130
}
start_ns=$(date +%s%N)
rm -f "$out/qemu.status" "$out/qemu.pid"
trap on_signal INT TERM HUP
# The pipe keeps QEMU's stdio settings off our own stdout; tee keeps a copy.
{
  st=0
  timeout --foreground -k 10 "$timeout_s" "${qemu[@]}" -pidfile "$out/qemu.pid" \
    </dev/null 2>"$out/qemu.log" || st=$?
  echo "$st" > "$out/qemu.status"
} | tee "$out/output.log" &
wait $! || true
trap - INT TERM HUP
qemu_status=$(cat "$out/qemu.status" 2>/dev/null || echo '?')
total=$(( ($(date +%s%N) - start_ns) / 1000000 ))

rc=""
if [ -s "$out/rc" ]; then
  rc=$(tr -dc 0-9 < "$out/rc")
elif [ -r "$out/console.log" ]; then
  rc=$(sed -n 's/.*VMTEST-DONE rc=\([0-9]*\).*/\1/p' "$out/console.log" | tail -n1)
fi
up_start=$(sed -n 's/.*VMTEST-START uptime=\([0-9.]*\).*/\1/p' "$out/console.log" 2>/dev/null | tail -n1)
up_done=$(sed -n 's/.*VMTEST-DONE rc=[0-9]* uptime=\([0-9.]*\).*/\1/p' "$out/console.log" 2>/dev/null | tail -n1)
times="boot_to_command=${up_start:-?}s command=$(awk -v a="${up_start:-0}" -v b="${up_done:-0}" 'BEGIN { if (b > 0) printf "%.2f", b - a; else printf "?" }')s total=$(awk -v t="$total" 'BEGIN { printf "%.2f", t / 1000 }')s"
echo "$times" > "$out/times"

if [ -z "$rc" ]; then
  rc=125
  if [ "$qemu_status" = 124 ] || [ "$qemu_status" = 137 ]; then
    vmtest_log "the VM timed out after ${timeout_s}s (--timeout)"
  else
    vmtest_log "the VM stopped without reporting an exit status (qemu status $qemu_status)"
  fi
  if [ -s "$out/qemu.log" ]; then vmtest_log "qemu.log:"; tail -n 20 "$out/qemu.log" >&2; fi
  if [ -s "$out/console.log" ]; then vmtest_log "console.log (last lines):"; tail -n 40 "$out/console.log" >&2; fi
fi
grep -h 'VMTEST-INIT-ERROR' "$out/console.log" 2>/dev/null | sed 's/^/vmtest: /' >&2 || true

if [ "$rc" = 0 ] && [ "$temp_out" = 1 ] && [ "$keep" = 0 ]; then
  rm -rf "$out"
  vmtest_log "rc=0 iommu=$iommu $times"
else
  vmtest_log "rc=$rc iommu=$iommu $times out=$out"
fi
exit "$rc"
