#!/bin/bash
# PID 1 of the fastmap test VM (started by run.sh through init=...; not for the host).
#
# The root filesystem is the host's / over virtio-9p, read-only. This script mounts
# proc, sys, devtmpfs and fresh tmpfs on /tmp, /run and /dev/shm; the run's out
# directory (9p tag vmtest_out) at /run/vmtest-out and then, read-write, the repository
# (tag fastmap_repo) and the out directory at their host paths, so those paths work in
# the guest even when they lie under /tmp. It then optionally binds the edu device to
# vfio-pci (guest-setup.sh), runs cmd.sh with its output on /dev/ttyS1 (run.sh streams
# it to its stdout), stores the exit status and dmesg in the out directory, prints
# "VMTEST-DONE rc=N" on the console and powers off.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/tmp TERM=dumb LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1

ctl=/run/vmtest-out
p9opts=trans=virtio,version=9p2000.L,msize=512000

uptime_s() { cut -d' ' -f1 /proc/uptime; }

power_off() {
  sync
  echo o > /proc/sysrq-trigger
  sleep 60
}

# Report an infrastructure failure (run.sh then exits 125) and stop.
init_fail() {
  echo "VMTEST-INIT-ERROR $*"
  [ -d "$ctl" ] && dmesg > "$ctl/dmesg.txt" 2>/dev/null
  power_off
}

mount -t proc proc /proc
mount -t sysfs sysfs /sys
grep -q '^[^ ]* /dev ' /proc/mounts || mount -t devtmpfs devtmpfs /dev
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /tmp
mount -t tmpfs -o mode=755,nosuid,nodev tmpfs /run
mkdir -p /dev/shm 2>/dev/null
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /dev/shm
mkdir -p "$ctl"
mount -t 9p -o "$p9opts" vmtest_out "$ctl" || init_fail "cannot mount the out directory"
echo "VMTEST-INIT-START uptime=$(uptime_s)"

# VMTEST_OUT, VMTEST_IOMMU, VMTEST_BIND_EDU, VMTEST_SETUP and the mounts, outer first:
# VMTEST_MOUNT_KIND[i] (rw, ro: a 9p share; out: the out directory), _TAG[i], _PATH[i].
# shellcheck source=/dev/null
. "$ctl/vmtest.conf" || init_fail "cannot read $ctl/vmtest.conf"

for i in "${!VMTEST_MOUNT_PATH[@]}"; do
  kind=${VMTEST_MOUNT_KIND[$i]} tag=${VMTEST_MOUNT_TAG[$i]} path=${VMTEST_MOUNT_PATH[$i]}
  mkdir -p "$path" 2>/dev/null   # exists already unless under a guest tmpfs
  case "$kind" in
    out) mount --bind "$ctl" "$path" ;;
    rw)  mount -t 9p -o "$p9opts,cache=loose" "$tag" "$path" ;;
    ro)  mount -t 9p -o "$p9opts,cache=loose,ro" "$tag" "$path" ;;
  esac || init_fail "cannot mount $tag ($kind) at $path"
done
echo "VMTEST-MOUNTED uptime=$(uptime_s)"

# The command's own channel: the second serial port, raw (no \n -> \r\n).
exec 3<>/dev/ttyS1 || init_fail "cannot open /dev/ttyS1"
stty raw -echo <&3 2>/dev/null

if [ "$VMTEST_BIND_EDU" = 1 ]; then
  "$VMTEST_SETUP" || echo "vmtest: warning: $VMTEST_SETUP failed (rc=$?); see console.log" >&3
  echo "VMTEST-SETUP-DONE uptime=$(uptime_s)"
fi

echo "VMTEST-START uptime=$(uptime_s)"
/bin/bash "$ctl/cmd.sh" </dev/null >&3 2>&3 3>&-
rc=$?
end=$(uptime_s)
exec 3>&-   # the last close waits until the serial port has sent everything
echo "$rc" > "$ctl/rc"
dmesg > "$ctl/dmesg.txt" 2>/dev/null
echo "VMTEST-DONE rc=$rc uptime=$end"
power_off
