#!/bin/bash
# PID 1 of one lab host (run by lab.sh inside the host's network namespace, in new mount, PID
# and UTS namespaces):  hostinit.sh <name> <host dir> <compute: 1|0> [<systemd: 1|0>]
# With systemd=1 it prepares the host and then becomes the host's systemd (its root the host's
# root, as on a machine that boots it), which starts sshd and the host's services.
#
# The host is its own root filesystem (<host dir>/root, a Debian bullseye userland with no
# libvirt package) with its own sshd, /etc/kolla and /proc (only this host's processes). On a
# compute, libvirtd runs the way Kolla's nova_libvirt does: from another userland (this
# machine's, with QEMU), in the host's network and PID namespaces, its /run/libvirt shared into
# the host's /run/libvirt (Kolla shares the host's /run), listening on TCP 16509 on the host's
# address. Everything it starts dies with it (lab.sh kills this process to stop the host).
set -euo pipefail
name=$1 d=$2 compute=$3 sysd=${4:-0}
R=$d/root
log() { printf '[%s] %s\n' "$name" "$*" >>"$d/hostinit.log"; }

# Its own UTS namespace (libvirtd and sshd see the host's name): never rename the machine itself.
[ "$(readlink /proc/self/ns/uts)" != "${OUTER_UTS:-}" ] || { echo "hostinit: not in a UTS namespace of its own" >&2; exit 1; }
hostname "$name"
mount --make-rprivate /
# systemd's root must be a mount point of its own.
if [ "$sysd" = 1 ]; then mount --bind "$R" "$R"; fi
# This PID namespace's /proc, for libvirtd's userland and for the host's own root.
mount -t proc proc /proc
mount -t proc proc "$R/proc"
if [ "$sysd" = 1 ]; then
  # A host whose systemd boots: it gets a /dev of its own and read-only /sys and /proc/sys, as a
  # container manager gives one, so nothing it starts touches this machine's devices or sysctls.
  mount -t tmpfs -o mode=755 tmpfs "$R/dev"
  for n in null zero full random urandom tty; do touch "$R/dev/$n"; mount --bind "/dev/$n" "$R/dev/$n"; done
  mkdir -p "$R/dev/pts" "$R/dev/shm"
  mount -t devpts -o newinstance,ptmxmode=0666,mode=620 devpts "$R/dev/pts"
  ln -sf pts/ptmx "$R/dev/ptmx"
  mount -t tmpfs -o mode=1777 tmpfs "$R/dev/shm"
  mount --rbind /sys "$R/sys"
  mount -o remount,bind,ro "$R/sys"
  mount --bind "$R/proc/sys" "$R/proc/sys"
  mount -o remount,bind,ro "$R/proc/sys"
else
  mount --rbind /dev "$R/dev"
  mount --rbind /sys "$R/sys"
fi
mount -t tmpfs -o mode=755 tmpfs "$R/run"
mkdir -p "$R/run/libvirt" "$R/run/sshd" "$R/run/lock" "$R/etc/kolla"
mount --bind "$d/etc/kolla" "$R/etc/kolla"
# The container engine's socket, as on a Kolla host (the lab's dockerd serves every lab host).
if [ -S /run/docker.sock ]; then
  touch "$R/run/docker.sock"
  mount --bind /run/docker.sock "$R/run/docker.sock"
fi

if [ "$compute" = 1 ]; then
  # libvirtd's own directories (its "container" volumes), and the host's view of the shared ones.
  mount --bind "$d/run" /run/libvirt
  mount --bind "$d/run" "$R/run/libvirt"
  mount --bind "$d/lib" /var/lib/libvirt
  mount --bind "$d/log" /var/log/libvirt
  mount --bind "$d/etc" /etc/libvirt
  mount --bind "$d/cache" /var/cache/libvirt
  mkdir -p "$R/var/lib/libvirt"
  mount --bind "$d/lib" "$R/var/lib/libvirt"
  virtlogd -d -f /etc/libvirt/virtlogd.conf -p /run/libvirt/virtlogd.pid
  libvirtd -d --listen -f /etc/libvirt/libvirtd.conf -p /run/libvirt/libvirtd.pid
  log "libvirtd started"
  # Kolla's nova_ssh (port 8022, qemu-img and the instances directory): this userland's sshd, here.
  mkdir -p /run/sshd
  /usr/sbin/sshd -f "$d/nova_ssh/sshd_config" -E /var/log/libvirt/nova_ssh.log
  log "nova_ssh started"
fi

if [ "$sysd" = 1 ]; then
  # The cgroup hierarchy systemd keeps its units in (this machine has cgroup v1).
  mount -t tmpfs -o mode=755 tmpfs "$R/sys/fs/cgroup"
  mkdir -p "$R/sys/fs/cgroup/systemd"
  mount -t cgroup -o none,name=systemd cgroup "$R/sys/fs/cgroup/systemd"
  log "becoming systemd"
  exec env -i container=numa-repin-lab PATH=/usr/sbin:/usr/bin:/sbin:/bin chroot "$R" /lib/systemd/systemd --system
fi
chroot "$R" /usr/sbin/sshd -E /var/log/sshd.log
log "sshd started"

# PID 1 reaps orphans (bash's SIGCHLD handler waits for any child) and ends on TERM.
trap 'exit 0' TERM INT
while :; do sleep 3600 & wait $! || true; done
