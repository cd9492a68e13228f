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
# report one (boot failure, timeout, crash, a guest wedged on every attempt); 2 for usage
# errors.
#
# Watchdog: a guest that wedges (seen in CI: emulated VT-d stopped its timer interrupts
# during boot) is killed and replaced by a fresh VM, up to --attempts VMs within the one
# --timeout. A guest is wedged when it has not started COMMAND --boot-timeout seconds after
# QEMU started; when the kernel reported an RCU stall or a soft lockup on the console and
# then nothing came out (console or command output) for --stall-timeout seconds; or when
# nothing came out for --silence-timeout seconds. A command that started runs again from
# the beginning in the fresh VM.
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
#   --edus N                 QEMU edu devices (1234:11e8) to plug in [FASTMAP_VMTEST_EDUS, 1]
#   --hugepages N            reserve N default-size huge pages at boot (hugepages=N)
#                            [FASTMAP_VMTEST_HUGEPAGES, 64]
#   --attempts N             VMs to try when guests wedge [FASTMAP_VMTEST_ATTEMPTS, 3]
#   --boot-timeout S         wedged if COMMAND has not started after S seconds
#                            [FASTMAP_VMTEST_BOOT_TIMEOUT, 150]
#   --stall-timeout S        wedged if silent for S seconds after an RCU stall or soft
#                            lockup report [FASTMAP_VMTEST_STALL_TIMEOUT, 60]
#   --silence-timeout S      wedged if silent for S seconds [FASTMAP_VMTEST_SILENCE_TIMEOUT, 900]
#   --qemu-prefix CMD        run CMD QEMU-ARGS... instead of QEMU (a wrapper or a fake, for
#                            testing the watchdog); repeatable, words in order
#   --qemu-arg ARG           one more QEMU argument (e.g. -S: a guest that never runs)
#
# Environment passed into the guest command: PATH, VIRTUAL_ENV, PYENV_*, PYTHONPATH,
# PYTHONHASHSEED, PYTHONFAULTHANDLER, PYTHONWARNINGS, FASTMAP_*, HYPOTHESIS_*,
# PYTEST_*, COVERAGE_*, CI, plus the names/globs in FASTMAP_VMTEST_ENV (space separated)
# and --env. The guest also sets FASTMAP_VMTEST=1, FASTMAP_VMTEST_IOMMU and
# VMTEST_OUT (= FASTMAP_VMTEST_OUT), HOME=/tmp, PYTHONDONTWRITEBYTECODE=1.
# Out directory: output.log (the command's output), console.log (kernel console),
# dmesg.txt, qemu.log (QEMU's stderr), rc, times, attempts (one line per VM: why it ended),
# the logs of replaced VMs as *.attemptN, plus what the command wrote there.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() { sed -n '2,66s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; }

iommu=${FASTMAP_VMTEST_IOMMU:-virtio}
timeout_s=${FASTMAP_VMTEST_TIMEOUT:-1200}
mem=${FASTMAP_VMTEST_MEM:-2G}
smp=${FASTMAP_VMTEST_SMP:-2}
kernel=${FASTMAP_VMTEST_KERNEL:-}
out=${FASTMAP_VMTEST_OUT:-}
accel=${FASTMAP_VMTEST_ACCEL:-tcg}
extra_append=${FASTMAP_VMTEST_APPEND:-}
edus=${FASTMAP_VMTEST_EDUS:-1}
hugepages=${FASTMAP_VMTEST_HUGEPAGES:-64}
attempts=${FASTMAP_VMTEST_ATTEMPTS:-3}
boot_timeout=${FASTMAP_VMTEST_BOOT_TIMEOUT:-150}
stall_timeout=${FASTMAP_VMTEST_STALL_TIMEOUT:-60}
silence_timeout=${FASTMAP_VMTEST_SILENCE_TIMEOUT:-900}
qemu_prefix=() qemu_extra=()
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
    --edus) need_arg "$@"; edus=$2; shift 2 ;;
    --hugepages) need_arg "$@"; hugepages=$2; shift 2 ;;
    --attempts) need_arg "$@"; attempts=$2; shift 2 ;;
    --boot-timeout) need_arg "$@"; boot_timeout=$2; shift 2 ;;
    --stall-timeout) need_arg "$@"; stall_timeout=$2; shift 2 ;;
    --silence-timeout) need_arg "$@"; silence_timeout=$2; shift 2 ;;
    --qemu-prefix) need_arg "$@"; qemu_prefix+=("$2"); shift 2 ;;
    --qemu-arg) need_arg "$@"; qemu_extra+=("$2"); shift 2 ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    *) usage >&2; vmtest_die "run.sh: unknown option $1 (the command goes after --)" ;;
  esac
done
[ $# -gt 0 ] || { usage >&2; vmtest_die "run.sh: no command given"; }
[[ "$timeout_s" =~ ^[0-9]+$ ]] || vmtest_die "run.sh: --timeout must be a number of seconds"
[[ "$smp" =~ ^[0-9]+$ ]] || vmtest_die "run.sh: --smp must be a number"
for v in edus hugepages attempts boot_timeout stall_timeout silence_timeout; do
  [[ "${!v}" =~ ^[0-9]+$ ]] || vmtest_die "run.sh: --${v//_/-} must be a number"
done
[ "$attempts" -ge 1 ] || vmtest_die "run.sh: --attempts must be at least 1"

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

[ ${#qemu_prefix[@]} -gt 0 ] || command -v qemu-system-x86_64 >/dev/null ||
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
  rm -f "$out/rc" "$out/console.log" "$out/output.log" "$out/dmesg.txt" "$out/qemu.log" \
    "$out/times" "$out/attempts" "$out"/*.attempt[0-9]*
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
# no_timer_check: the boot-time timer-interrupt check panics when a TCG vCPU on a loaded host
# misses it ("IO-APIC + timer doesn't work"); it tests QEMU's timing, not the kernel under test.
append+=" panic=-1 mitigations=off no_timer_check hugepages=$hugepages $iommu_args"
append+=" $extra_append init=$init"

# --edus 2 lets the lifecycle tests that need two devices (in groups of their own) run on
# the real kernel too.
edu_devs=()
for ((i = 0; i < edus; i++)); do edu_devs+=(-device edu); done

qemu=("${qemu_prefix[@]}" qemu-system-x86_64
  -machine "q35,kernel-irqchip=split" -accel "$accel" -cpu max -smp "$smp" -m "$mem"
  -nodefaults -display none -no-reboot
  "${iommu_dev[@]}" "${edu_devs[@]}"
  -fsdev "local,id=root,path=/,security_model=none,readonly=on,multidevs=remap"
  -device "virtio-9p-pci,fsdev=root,mount_tag=/dev/root"
  -fsdev "local,id=repo,path=$(qpath "$repo"),security_model=none,multidevs=remap"
  -device "virtio-9p-pci,fsdev=repo,mount_tag=fastmap_repo"
  -fsdev "local,id=out,path=$(qpath "$out"),security_model=none,multidevs=remap"
  -device "virtio-9p-pci,fsdev=out,mount_tag=vmtest_out"
  "${qemu_shares[@]}"
  -chardev "file,id=console,path=$(qpath "$out/console.log")" -serial chardev:console
  -chardev "stdio,id=cmdout,signal=off" -serial chardev:cmdout
  -kernel "$kernel" -append "$append" "${qemu_extra[@]}")

# Stop the VM too when we are interrupted (the trap runs at once because we `wait`).
qpid="" tpid=""
# A child that exited stays a zombie until waited for, and kill -0 still reaches it.
alive() { local st; st=$(ps -o stat= -p "$1" 2>/dev/null) || return 1; [[ $st != Z* ]]; }
stop_qemu() {
  local pid
  for pid in "$qpid" "$(cat "$out/qemu.pid" 2>/dev/null)"; do
    if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; fi
  done
  # QEMU stops at once on SIGTERM; a wrapper that ignores it gets SIGKILL.
  for _ in 1 2 3 4 5 6 7 8 9 10; do
    alive "$qpid" || return 0
    sleep 1
  done
  kill -9 "$qpid" 2>/dev/null || true
}
# shellcheck disable=SC2317  # invoked through trap
on_signal() {
  trap - INT TERM HUP
  stop_qemu
  wait 2>/dev/null
  vmtest_log "interrupted; out=$out"
  exit 130
}

size_of() { stat -c %s "$1" 2>/dev/null || echo 0; }
now() { date +%s; }

# Runs one VM to its end or until it wedges or the deadline passes. Sets `ended` to
# done (QEMU exited), timeout or wedged, and `why` to a sentence.
run_attempt() {
  local t0 last_out=-1 last_con=-1 last_change started=0 stalled=0 s_out s_con t
  rm -f "$out/qemu.status" "$out/qemu.pid" "$out/rc" "$out/.stdout"
  : > "$out/console.log"
  mkfifo "$out/.stdout"
  # tee keeps a copy and keeps QEMU's stdio settings off our own stdout.
  tee "$out/output.log" < "$out/.stdout" &
  tpid=$!
  "${qemu[@]}" -pidfile "$out/qemu.pid" </dev/null >"$out/.stdout" 2>"$out/qemu.log" &
  qpid=$!
  t0=$(now) last_change=$t0
  ended="" why=""
  while [ -z "$ended" ]; do
    if ! alive "$qpid"; then
      st=0; wait "$qpid" || st=$?
      echo "$st" > "$out/qemu.status"
      ended=done why="QEMU exited with status $st"
      break
    fi
    sleep 1
    t=$(now)
    s_out=$(size_of "$out/output.log") s_con=$(size_of "$out/console.log")
    if [ "$s_out" != "$last_out" ] || [ "$s_con" != "$last_con" ]; then
      last_out=$s_out last_con=$s_con last_change=$t
      if [ "$started" = 0 ] && grep -q 'VMTEST-START' "$out/console.log"; then started=1; fi
      if [ "$stalled" = 0 ] && grep -Eq 'detected stalls? on CPU|self-detected stall|soft lockup' "$out/console.log"; then
        stalled=1
        vmtest_log "the guest kernel reported an RCU stall or soft lockup (see console.log)"
      fi
    fi
    if [ "$t" -ge "$deadline" ]; then
      ended=timeout why="the VM timed out after ${timeout_s}s (--timeout)"
    elif [ "$started" = 0 ] && [ $((t - t0)) -ge "$boot_timeout" ]; then
      ended=wedged why="the guest did not start the command within ${boot_timeout}s (--boot-timeout)"
    elif [ "$stalled" = 1 ] && [ $((t - last_change)) -ge "$stall_timeout" ]; then
      ended=wedged why="the guest reported a stall and then was silent for ${stall_timeout}s (--stall-timeout)"
    elif [ $((t - last_change)) -ge "$silence_timeout" ]; then
      ended=wedged why="the guest was silent for ${silence_timeout}s (--silence-timeout)"
    fi
  done
  if [ "$ended" != done ]; then
    stop_qemu
    wait "$qpid" 2>/dev/null || true
    # A wrapper's own children may still hold the pipe: a wedged VM's last output can go.
    sleep 1
    if alive "$tpid"; then kill "$tpid" 2>/dev/null || true; fi
  fi
  wait "$tpid" 2>/dev/null || true
  rm -f "$out/.stdout"
  vm_started=$started
}

start_ns=$(date +%s%N)
deadline=$(( $(now) + timeout_s ))
trap on_signal INT TERM HUP
attempt=0
while :; do
  attempt=$((attempt + 1))
  run_attempt
  echo "attempt $attempt: $ended: $why" >> "$out/attempts"
  # Retry only what a fresh VM can mend: a wedged guest, or one that died before the
  # command started. A command that ran to its end (any status) is final.
  retry=0
  if [ "$ended" = wedged ]; then retry=1; fi
  if [ "$ended" = done ] && [ "$vm_started" = 0 ] && [ ! -s "$out/rc" ]; then retry=1; fi
  if [ "$retry" = 0 ] || [ "$attempt" -ge "$attempts" ] || [ "$(now)" -ge "$deadline" ]; then break; fi
  vmtest_log "attempt $attempt/$attempts: $why; starting a fresh VM"
  for f in console.log output.log qemu.log dmesg.txt; do
    if [ -e "$out/$f" ]; then mv -f "$out/$f" "$out/$f.attempt$attempt"; fi
  done
done
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
times="attempts=$attempt boot_to_command=${up_start:-?}s command=$(awk -v a="${up_start:-0}" -v b="${up_done:-0}" 'BEGIN { if (b > 0) printf "%.2f", b - a; else printf "?" }')s total=$(awk -v t="$total" 'BEGIN { printf "%.2f", t / 1000 }')s"
echo "$times" > "$out/times"

if [ -z "$rc" ]; then
  rc=125
  if [ "$ended" = done ]; then
    vmtest_log "the VM stopped without reporting an exit status (qemu status $qemu_status)"
  else
    vmtest_log "attempt $attempt/$attempts: $why; giving up"
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
