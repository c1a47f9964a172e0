#!/usr/bin/env bash
# numa-repin lab: libvirt compute hosts, MariaDB with Stein's Nova/Placement/Neutron schemas, a real Neutron,
# Kolla-like nova containers, an sshd and an Ansible inventory, all on one Debian 12 machine, as root.
#
#   tests/lab/lab.sh up        build/start everything (idempotent; a second run takes seconds)
#   tests/lab/lab.sh status    what runs; exits 1 if something that should run is dead
#   tests/lab/lab.sh seed      recreate the standard guests (tests/lab/guests/standard.json) and their DB rows
#   tests/lab/lab.sh down      stop what the lab started (PID files), remove its containers; state stays
#   tests/lab/lab.sh down --purge   also delete LAB_DIR (DB, guests, keys) and the lab's docker images
#
# State: LAB_DIR (default /var/lib/numa-repin-lab). Caches: /var/cache/numa-repin (venvs, debootstrap tarball).
# Facts behind every choice: docs/design.md §3 (the lab). Timings: tests/lab/README.md.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
SYS_PY=/usr/bin/python3
# The lab's facts (hosts, addresses, ports, images, names) live in labspec.py, which write_files.py (lab.json,
# inventories), seed_db.py and render_guest.py import too: NODES, HOSTS (the computes), CLOUD_COMPUTES,
# CONTROL_PY27, HOST_NOVA, BRIDGE, NET, DEPLOY_ADDR, ADDR[host], PHYS_BRIDGE, PHYSNET, PHYSNET_INTERFACE,
# SSH_PORT, NOVA_SSH_PORT, LIBVIRT_PORT, MIGPORTS[host], DB_PORT, RMQ_PORT, NEUTRON_PORT, KEYSTONE_PORT,
# NEUTRON_URL, KEYSTONE_URL, PIN_SET[host], RESERVED_HOST_MEMORY_MB, DB_USER, DATABASES, REGION, LABEL,
# BASE_IMAGE, NOVA_IMAGE, CONTAINERS, CONTAINER_HOST[container], RUN_FLAGS_ALL, RUN_FLAGS_PODMAN.
LABSPEC=$($SYS_PY "$HERE/labspec.py" shell) || { echo "[lab] ERROR: $HERE/labspec.py shell failed" >&2; exit 1; }
eval "$LABSPEC"
LAB_DIR=${LAB_DIR:-$LAB_DIR_DEFAULT}
CACHE=${NUMA_REPIN_CACHE:-/var/cache/numa-repin}
export NUMA_REPIN_CACHE=$CACHE
PY37=${PY37:-$(pyenv root 2>/dev/null || echo /root/.pyenv)/versions/3.7.16}

# Separate hosts: each its own network namespace (nrl-<host>) on the lab's bridge, its own bullseye root
# filesystem, /etc/kolla, sshd and /proc. Their addresses exist only on that bridge, which has no uplink:
# no lab traffic leaves the machine. The bridge's own address is this machine, the deploy host.
# The computes (HOSTS) run libvirtd inside, the Kolla nova_libvirt way. CONTROL_PY27 (ctl27): a second
# control host like CentOS 7's, whose only Python is 2.7, for the ansible-core 2.16 run (the last
# ansible-core that manages Python 2.7 and 3.6 hosts); it shares control's /etc/kolla.
# HOST_NOVA (cmp4): a compute whose Nova is installed on the host itself, as in the field write-up: Ubuntu
# 18.04's own python-nova package (Queens, with Ubuntu's backports) under /usr/lib/python2.7/dist-packages,
# run by a systemd unit, systemd its PID 1. It has no libvirtd: it takes part in the patch rollout
# only (inventory-hostnova.yml), never in drains.
DB_HOST=$DEPLOY_ADDR                  # MariaDB listens on 127.0.0.1 and on the bridge
HOST_ROOT_INCLUDE=openssh-server,python3,iproute2,procps,netbase
HOST_ROOT_INCLUDE_PY27=openssh-server,python2.7,iproute2,procps,netbase
ANSIBLE216_VENV=$CACHE/venvs/ansible-core-2.16-py311
DEBOOTSTRAP_INCLUDE=python3,netbase,libvirt0
LAB_VENV=$CACHE/venvs/lab-py311
APT_PKGS=(libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients libvirt-dev qemu-system-x86 qemu-utils
  pkg-config mariadb-server openssh-server openssh-client debootstrap docker.io python3-venv python3-pip
  util-linux procps iproute2 ca-certificates
  podman catatonit                    # podman beside docker: the rollout tests run under both
  rabbitmq-server)                    # the message bus between neutron-server and its L2 agents
# Directories every lab host gets its own copy of (bind-mounted inside its private mount namespace).
LIBVIRT_DIRS=(/run/libvirt /var/lib/libvirt /var/log/libvirt /etc/libvirt /var/cache/libvirt)

MY=$LAB_DIR/mysql
DB_SOCK=$MY/mysqld.sock
DB_PID=$MY/mysqld.pid
KOLLA=$LAB_DIR/control/etc/kolla   # the control host's /etc/kolla
PASSWORDS=$KOLLA/passwords.yml
DOCKER_DIR=$LAB_DIR/docker
# Neutron (issue 16): RabbitMQ on this machine (as MariaDB), Keystone and neutron-server (ml2, linuxbridge, flat
# PHYSNET) in the control host, a Linux bridge agent in each compute; PHYSNET is each compute's
# PHYSNET_INTERFACE, a veth into the bridge PHYS_BRIDGE (no address, no uplink).
RMQ=$LAB_DIR/rabbitmq
TRANSPORT_URL=rabbit://openstack:openstack@$DEPLOY_ADDR:$RMQ_PORT//
SSH_DIR=$LAB_DIR/ssh

log() { printf '[lab] %s\n' "$*"; }
die() { printf '[lab] ERROR: %s\n' "$*" >&2; exit 1; }
now() { date +%s.%N; }
TIMINGS=()
phase() { # phase <name> <function> [args...]: run it and print how long it took
  local name=$1; shift
  local t0; t0=$(now)
  "$@"
  local dt; dt=$(awk -v a="$t0" -v b="$(now)" 'BEGIN{printf "%.1f", b-a}')
  TIMINGS+=("$name=${dt}s")
  log "phase $name: ${dt}s"
}
hostdir() { echo "$LAB_DIR/$1"; }
is_compute() { case " ${HOSTS[*]} " in *" $1 "*) return 0 ;; esac; return 1; }
uri() { echo "qemu+tcp://${ADDR[$1]}/system"; }
running() { # running <pid>: exists and is no zombie (PID 1 here reaps orphans late: a dead daemon lingers as Z)
  case "$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -c1)" in Z|X|"") return 1 ;; *) return 0 ;; esac
}
alive() { # alive <pidfile> [comm-regex]: the pid file names a living process (whose comm matches)
  local f=$1 pid
  [ -s "$f" ] || return 1
  pid=$(tr -dc 0-9 <"$f")
  [ -n "$pid" ] && running "$pid" || return 1
  if [ -n "${2:-}" ]; then grep -Eq "$2" "/proc/$pid/comm" 2>/dev/null || return 1; fi
  return 0
}
pidof_file() { tr -dc 0-9 <"$1"; }
stop_pidfile() { # stop_pidfile <pidfile> <comm-regex> <label>: TERM, wait up to 15 s, then KILL
  local f=$1 re=$2 what=$3 pid i
  alive "$f" "$re" || { rm -f "$f"; return 0; }
  pid=$(pidof_file "$f")
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 150); do running "$pid" || break; sleep 0.1; done
  if running "$pid"; then kill -KILL "$pid" 2>/dev/null || true; sleep 0.2; fi
  rm -f "$f"
  log "stopped $what (pid $pid)"
}
wait_for() { # wait_for <seconds> <description> <command...>
  local secs=$1 what=$2; shift 2
  local end=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $end ] || die "timed out after ${secs}s waiting for $what"
    sleep 0.3
  done
}
virsh_() { local h=$1; shift; virsh -q -c "$(uri "$h")" "$@"; }

# --------------------------------------------------------------------------------------------- packages
missing_pkgs() {
  local p
  for p in "${APT_PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || echo "$p"
  done
}
do_packages() {
  local miss; miss=$(missing_pkgs | tr '\n' ' ')
  if [ -z "${miss// /}" ]; then log "apt packages present"; return 0; fi
  log "installing apt packages: $miss"
  # Keep the packages' own services (system mariadb on 3306, system dockerd, libvirtd) from starting.
  local prc=/usr/sbin/policy-rc.d made=0
  if [ ! -e $prc ]; then printf '#!/bin/sh\nexit 101\n' >$prc; chmod +x $prc; made=1; fi
  export DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1
  local rc=0
  { apt-get update -qq && apt-get install -y -qq -o Dpkg::Options::=--force-confold $miss; } \
    >"$CACHE/apt.log" 2>&1 || rc=$?
  [ $made = 1 ] && rm -f $prc
  [ $rc = 0 ] || { tail -20 "$CACHE/apt.log" >&2; die "apt-get install failed (log: $CACHE/apt.log)"; }
}

do_users() {
  # libvirt's Debian packages (libvirt-daemon-system is not installed) create none of these.
  local g
  for g in kvm libvirt libvirt-qemu; do getent group $g >/dev/null || groupadd -r $g; done
  getent passwd libvirt-qemu >/dev/null ||
    useradd -r -g libvirt-qemu -G kvm -d /var/lib/libvirt -s /usr/sbin/nologin libvirt-qemu
  getent passwd mysql >/dev/null || useradd -r -U -d /nonexistent -s /bin/false mysql
  getent passwd sshd >/dev/null || useradd -r -d /run/sshd -s /usr/sbin/nologin sshd
  mkdir -p /run/sshd
}

# --------------------------------------------------------------------------------------------- libvirt
write_libvirt_configs() {
  local h=$1 d; d=$(hostdir "$h")
  local a=${ADDR[$h]} ports=(${MIGPORTS[$h]})
  mkdir -p "$d"/{run,lib/images,log,etc,cache}
  local f
  for f in libvirt.conf libvirt-admin.conf; do
    [ -e "$d/etc/$f" ] || [ ! -e "/etc/libvirt/$f" ] || cp "/etc/libvirt/$f" "$d/etc/$f" 2>/dev/null || true
  done
  local hu
  if [ -f "$d/host_uuid" ]; then hu=$(cat "$d/host_uuid"); else hu=$(cat /proc/sys/kernel/random/uuid); echo "$hu" >"$d/host_uuid"; fi
  cat >"$d/etc/libvirtd.conf.new" <<EOF
# written by tests/lab/lab.sh for lab host $h
listen_tls = 0
listen_tcp = 1
auth_tcp = "none"
auth_unix_rw = "none"
listen_addr = "$a"
tcp_port = "$LIBVIRT_PORT"
host_uuid = "$hu"
log_outputs = "3:file:/var/log/libvirt/libvirtd.log"
EOF
  cat >"$d/etc/qemu.conf.new" <<EOF
# written by tests/lab/lab.sh for lab host $h
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
cgroup_controllers = [ ]
security_driver = "none"
migration_address = "$a"
migration_host = "$a"
migration_port_min = ${ports[0]}
migration_port_max = ${ports[1]}
EOF
  cat >"$d/etc/virtlogd.conf.new" <<EOF
# written by tests/lab/lab.sh for lab host $h
log_outputs = "3:file:/var/log/libvirt/virtlogd.log"
EOF
  for f in libvirtd.conf qemu.conf virtlogd.conf; do
    if cmp -s "$d/etc/$f.new" "$d/etc/$f"; then rm "$d/etc/$f.new"; else mv "$d/etc/$f.new" "$d/etc/$f"; fi
  done
}

write_nova_compute_conf() {
  local h=$1 d; d=$(hostdir "$h")/etc/kolla/nova-compute
  mkdir -p "$d"
  local body
  body() { # body <vcpu_pin_set>
    cat <<EOF
# nova-compute configuration of lab host $h (written by tests/lab/lab.sh; the parts numa-repin reads)
[DEFAULT]
host = $h
my_ip = ${ADDR[$h]}
vcpu_pin_set = $1
reserved_host_memory_mb = $RESERVED_HOST_MEMORY_MB
compute_driver = libvirt.LibvirtDriver

[libvirt]
virt_type = qemu
connection_uri = $(uri "$h")
live_migration_uri = qemu+tcp://%s/system
live_migration_inbound_addr = ${ADDR[$h]}
live_migration_downtime = 500
live_migration_downtime_steps = 10
live_migration_downtime_delay = 75
live_migration_completion_timeout = 800
live_migration_timeout_action = abort
live_migration_permit_auto_converge = False
live_migration_permit_post_copy = False
cpu_mode = none

[workarounds]
enable_numa_live_migration = True
EOF
  }
  body "${PIN_SET[$h]}" >"$d/nova.conf"
  # The same host with every pCPU allowed: the positive repin case (cmp2 is full with the seed otherwise).
  body "0-1" >"$d/nova-allcpus.conf"
}

# --------------------------------------------------------------------------------------------- network
do_network() {
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link add "$BRIDGE" type bridge
    log "bridge $BRIDGE created"
  fi
  # (no `| grep -q` here: under pipefail, grep quitting early makes ip's SIGPIPE fail the test)
  [[ "$(ip -4 -o addr show dev "$BRIDGE")" == *" $DEPLOY_ADDR/24 "* ]] || ip addr add "$DEPLOY_ADDR/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  local h ns veth
  for h in "${NODES[@]}"; do
    ns=nrl-$h veth=nrl-$h
    [ -e "/run/netns/$ns" ] || ip netns add "$ns"
    if ! ip link show "$veth" >/dev/null 2>&1; then
      ip netns exec "$ns" ip link del eth0 2>/dev/null || true
      ip link add "$veth" type veth peer name eth0 netns "$ns"
      ip link set "$veth" master "$BRIDGE" up
    fi
    ip netns exec "$ns" ip link set lo up
    [[ "$(ip netns exec "$ns" ip -4 -o addr show dev eth0)" == *" ${ADDR[$h]}/24 "* ]] ||
      ip netns exec "$ns" ip addr add "${ADDR[$h]}/24" dev eth0
    ip netns exec "$ns" ip link set eth0 up
  done
  # PHYSNET: PHYSNET_INTERFACE of every compute, one flat L2 segment on PHYS_BRIDGE.
  ip link show "$PHYS_BRIDGE" >/dev/null 2>&1 || ip link add "$PHYS_BRIDGE" type bridge
  ip link set "$PHYS_BRIDGE" up
  for h in "${HOSTS[@]}"; do
    if ! ip link show "nrp-$h" >/dev/null 2>&1; then
      ip netns exec "nrl-$h" ip link del "$PHYSNET_INTERFACE" 2>/dev/null || true
      ip link add "nrp-$h" type veth peer name "$PHYSNET_INTERFACE" netns "nrl-$h"
    fi
    ip link set "nrp-$h" master "$PHYS_BRIDGE" up
    ip netns exec "nrl-$h" ip link set "$PHYSNET_INTERFACE" up
  done
  log "hosts on $BRIDGE: $(for h in "${NODES[@]}"; do printf '%s=%s ' "$h" "${ADDR[$h]}"; done)(no uplink, no default route)"
}

# --------------------------------------------------------------------------------------------- host roots
root_include() { [ "$1" = "$CONTROL_PY27" ] && echo "$HOST_ROOT_INCLUDE_PY27" || echo "$HOST_ROOT_INCLUDE"; }
HOST_NOVA_INCLUDE=systemd,openssh-server,iproute2,procps
HOST_NOVA_PACKAGES=python-nova
host_root_tarball() {
  if [ "$1" = "$HOST_NOVA" ]; then echo "$CACHE/debootstrap/bionic-${HOST_NOVA_INCLUDE//,/-}-$HOST_NOVA_PACKAGES.tar.gz"; return; fi
  local inc; inc=$(root_include "$1"); echo "$CACHE/debootstrap/bullseye-hosts-${inc//,/-}.tar.gz"
}
make_bionic_tarball() { # Ubuntu 18.04 with its own Nova package (bionic-updates: Ubuntu's Queens build)
  local tgz=$1 root=$CACHE/debootstrap/hosts.$$.bionic
  rm -rf "$root"
  log "debootstrap bionic (minbase + $HOST_NOVA_INCLUDE), then apt-get install $HOST_NOVA_PACKAGES"
  { debootstrap --variant=minbase --include="$HOST_NOVA_INCLUDE" bionic "$root" http://archive.ubuntu.com/ubuntu &&
    printf 'deb http://archive.ubuntu.com/ubuntu bionic main universe\ndeb http://archive.ubuntu.com/ubuntu bionic-updates main universe\n' \
      >"$root/etc/apt/sources.list" &&
    mount -t proc proc "$root/proc" &&
    chroot "$root" sh -c "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $HOST_NOVA_PACKAGES"
  } >"$CACHE/debootstrap/hosts-bionic.log" 2>&1 || { umount_under "$root"; tail "$CACHE/debootstrap/hosts-bionic.log"; die "the bionic root with $HOST_NOVA_PACKAGES failed"; }
  umount_under "$root"
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/etc/ssh/ssh_host_*
  tar -C "$root" -czf "$tgz.tmp" . && mv "$tgz.tmp" "$tgz"
  rm -rf "$root"
}
make_root_tarball() { # make_root_tarball <host>: debootstrap the host's userland once, cached
  local tgz inc; tgz=$(host_root_tarball "$1") inc=$(root_include "$1")
  [ -s "$tgz" ] && return 0
  if [ "$1" = "$HOST_NOVA" ]; then make_bionic_tarball "$tgz"; return; fi
  local root=$CACHE/debootstrap/hosts.$$.$1
  rm -rf "$root"
  log "debootstrap bullseye (minbase + $inc): an old userland, no libvirt package"
  debootstrap --variant=minbase --include="$inc" bullseye "$root" http://deb.debian.org/debian \
    >"$CACHE/debootstrap/hosts-$1.log" 2>&1 || { umount_under "$root"; tail "$CACHE/debootstrap/hosts-$1.log"; die "debootstrap bullseye failed"; }
  umount_under "$root"
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/etc/ssh/ssh_host_*
  tar -C "$root" -czf "$tgz.tmp" . && mv "$tgz.tmp" "$tgz"
  rm -rf "$root"
}
do_roots() {
  mkdir -p "$CACHE/debootstrap" "$SSH_DIR"; chmod 700 "$SSH_DIR"
  # The two userlands download in parallel (each debootstrap mostly waits on the mirror).
  local p1 p2 p3
  make_root_tarball cmp1 & p1=$!
  make_root_tarball "$CONTROL_PY27" & p2=$!
  make_root_tarball "$HOST_NOVA" & p3=$!
  wait $p1 || die "the hosts' root filesystem could not be made"
  wait $p2 || die "$CONTROL_PY27's root filesystem could not be made"
  wait $p3 || die "$HOST_NOVA's root filesystem could not be made"
  [ -f "$SSH_DIR/id_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C numa-repin-lab -f "$SSH_DIR/id_ed25519"
  local dockercli; dockercli=$(command -v docker || true)
  local h d R x tgz
  for h in "${NODES[@]}"; do
    d=$(hostdir "$h") R=$(hostdir "$h")/root tgz=$(host_root_tarball "$h")
    mkdir -p "$d/etc"
    if [ "$h" = "$CONTROL_PY27" ]; then ln -sfn "$KOLLA" "$d/etc/kolla"; else mkdir -p "$d/etc/kolla"; fi
    if [ ! -f "$R/.lab-root" ] || [ "$(cat "$R/.lab-root")" != "$(basename "$tgz")" ]; then
      # Never delete a root in use: /dev, /sys and /proc are mounted inside it while the host runs.
      init_pid "$h" >/dev/null && die "$h runs on a root made from another tarball; run: $0 down, then up"
      umount_under "$R"
      grep -q " $R/" /proc/mounts && die "$R still has mounts; not deleting it"
      rm -rf --one-file-system "$R"; mkdir -p "$R"
      tar -C "$R" -xzf "$tgz"
      basename "$tgz" >"$R/.lab-root"
      log "$h: root filesystem from $(basename "$tgz")"
    fi
    echo "$h" >"$R/etc/hostname"
    printf '127.0.0.1 localhost\n%s %s\n' "${ADDR[$h]}" "$h" >"$R/etc/hosts"
    for x in "${NODES[@]}"; do [ "$x" = "$h" ] || echo "${ADDR[$x]} $x" >>"$R/etc/hosts"; done
    [ -f "$R/etc/ssh/ssh_host_ed25519_key" ] || ssh-keygen -q -t ed25519 -N '' -f "$R/etc/ssh/ssh_host_ed25519_key"
    mkdir -p "$R/root/.ssh"; chmod 700 "$R/root/.ssh"
    cp "$SSH_DIR/id_ed25519.pub" "$R/root/.ssh/authorized_keys"
    # The hosts reach each other as root with the lab key (block migration prepares the destination over SSH).
    cp "$SSH_DIR/id_ed25519" "$R/root/.ssh/id_ed25519"
    chmod 600 "$R/root/.ssh/id_ed25519" "$R/root/.ssh/authorized_keys"
    cat >"$R/etc/ssh/sshd_config" <<EOF
# sshd of lab host $h (tests/lab/lab.sh)
Port $SSH_PORT
ListenAddress ${ADDR[$h]}
HostKey /etc/ssh/ssh_host_ed25519_key
PidFile /run/sshd.pid
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PrintMotd no
Subsystem sftp /usr/lib/openssh/sftp-server
EOF
    if is_compute "$h"; then write_nova_ssh_config "$h"; fi
    if [ "$h" = "$HOST_NOVA" ]; then write_host_nova_unit "$R"; fi
    # A container engine client, as a Kolla host has (the lab's dockerd socket is bound into its /run).
    if [ -n "$dockercli" ] && ! cmp -s "$dockercli" "$R/usr/local/bin/docker"; then
      install -m 0755 "$dockercli" "$R/usr/local/bin/docker"
    fi
  done
}

write_host_nova_unit() {
  # The unit that runs the host's Nova. Not the package's nova-compute (Ubuntu's Queens would register
  # in the lab's Stein database and run its resource tracker against it): a service that loads what
  # nova-compute loads from the installed package (the modules the patch changes among them) and
  # stays up, dying like nova-compute when they do not import; systemd restarts it on failure.
  # Restart as Ubuntu's own unit does (Restart=on-failure, systemd's default RestartSec of 100 ms):
  # a unit that dies at import hits systemd's start limit within seconds, as in the field.
  local R=$1
  cat >"$R/etc/systemd/system/nova-compute.service" <<'UNIT'
[Unit]
Description=numa-repin lab: Nova compute modules of the host-installed Nova (python-nova)
After=network.target

[Service]
ExecStart=/usr/bin/python2.7 -c "import nova.compute.manager, nova.compute.resource_tracker, nova.virt.libvirt.driver, nova.conductor.tasks.live_migrate, time; time.sleep(10 ** 9)"
Restart=on-failure

[Install]
WantedBy=multi-user.target
UNIT
  mkdir -p "$R/etc/systemd/system/multi-user.target.wants"
  ln -sfn /etc/systemd/system/nova-compute.service "$R/etc/systemd/system/multi-user.target.wants/nova-compute.service"
  # Only sshd and nova-compute: nothing that would reach for this machine's clock, CPU governor,
  # devices, iSCSI or the network's DNS, nor apt's timers.
  local u
  for u in ondemand.service systemd-resolved.service systemd-timesyncd.service iscsid.service iscsid.socket \
           open-iscsi.service getty@tty1.service apt-daily.timer apt-daily-upgrade.timer fstrim.timer \
           motd-news.timer systemd-udevd.service systemd-udev-trigger.service systemd-sysctl.service \
           systemd-modules-load.service systemd-tmpfiles-setup-dev.service; do
    ln -sfn /dev/null "$R/etc/systemd/system/$u"
  done
}

write_nova_ssh_config() {
  # Kolla's nova_ssh: an sshd of its own on port 8022 in a container with the Nova/QEMU tools (qemu-img)
  # and the instances directory, in the host's network. Here: this machine's sshd and userland, started in
  # the host's namespaces next to libvirtd, seeing libvirtd's /var/lib/libvirt.
  local h=$1 d; d=$(hostdir "$1")
  mkdir -p "$d/nova_ssh"
  [ -f "$d/nova_ssh/ssh_host_ed25519_key" ] || ssh-keygen -q -t ed25519 -N '' -f "$d/nova_ssh/ssh_host_ed25519_key"
  cp "$SSH_DIR/id_ed25519.pub" "$d/nova_ssh/authorized_keys"; chmod 600 "$d/nova_ssh/authorized_keys"
  cat >"$d/nova_ssh/sshd_config" <<EOF
# nova_ssh of lab host $h (tests/lab/lab.sh), like Kolla's: port $NOVA_SSH_PORT
Port $NOVA_SSH_PORT
ListenAddress ${ADDR[$h]}
HostKey $d/nova_ssh/ssh_host_ed25519_key
PidFile /run/libvirt/nova_ssh.pid
AuthorizedKeysFile $d/nova_ssh/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PrintMotd no
EOF
}

# --------------------------------------------------------------------------------------------- hosts
init_pid() { # init_pid <host>: pid (here) of the host's PID 1, if it runs
  local f; f=$(hostdir "$1")/init.pid
  alive "$f" unshare || return 1
  local u c; u=$(pidof_file "$f")
  c=$(awk '{print $1}' "/proc/$u/task/$u/children" 2>/dev/null)
  [ -n "$c" ] && running "$c" && echo "$c"
}
ns_pid() { # ns_pid <host> <pid in the host's PID namespace>: the same process's pid here
  local init ns p; init=$(init_pid "$1") || return 1
  ns=$(readlink "/proc/$init/ns/pid")
  for p in /proc/[0-9]*; do
    [ "$(readlink "$p/ns/pid" 2>/dev/null)" = "$ns" ] || continue
    awk -v want="$2" '/^NSpid:/ { if ($NF == want) f=1 } END { exit !f }' "$p/status" 2>/dev/null && { echo "${p#/proc/}"; return 0; }
  done
  return 1
}
alive_in() { # alive_in <host> <pidfile> <comm-regex>: the pid file (a pid of the host's namespace) names a living process
  local f=$2 pid
  [ -s "$f" ] || return 1
  pid=$(ns_pid "$1" "$(tr -dc 0-9 <"$f")") || return 1
  running "$pid" && grep -Eq "$3" "/proc/$pid/comm" 2>/dev/null
}
alive_cmd_in() { # alive_cmd_in <host> <pidfile> <word>: as alive_in, the command line holding <word> (a Python
  # daemon's comm is its interpreter's path, cut)
  local f=$2 pid
  [ -s "$f" ] || return 1
  pid=$(ns_pid "$1" "$(tr -dc 0-9 <"$f")") || return 1
  running "$pid" && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$3"
}
in_host() { # in_host <host> <command...>: run in the host's namespaces (libvirtd's userland)
  local init; init=$(init_pid "$1") || die "$1 is not running"
  shift
  nsenter -t "$init" -m -p -n -u -- "$@"
}
in_root() { # in_root <host> <command...>: run inside the host's own root filesystem
  local h=$1; shift
  in_host "$h" chroot "$(hostdir "$h")/root" "$@"
}
nc_ok() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

start_host() {
  local h=$1 d; d=$(hostdir "$h")
  local c=0; is_compute "$h" && c=1
  local sysd=0; [ "$h" = "$HOST_NOVA" ] && sysd=1
  if [ $c = 1 ]; then write_libvirt_configs "$h"; write_nova_compute_conf "$h"; fi
  if init_pid "$h" >/dev/null; then
    if [ $c = 1 ]; then
      alive_in "$h" "$d/run/virtlogd.pid" virtlogd ||
        { in_host "$h" virtlogd -d -f /etc/libvirt/virtlogd.conf -p /run/libvirt/virtlogd.pid; log "$h: virtlogd restarted"; }
      alive_in "$h" "$d/run/libvirtd.pid" libvirtd ||
        { in_host "$h" libvirtd -d --listen -f /etc/libvirt/libvirtd.conf -p /run/libvirt/libvirtd.pid; log "$h: libvirtd restarted"; }
      nc_ok "${ADDR[$h]}" "$NOVA_SSH_PORT" ||
        { in_host "$h" /usr/sbin/sshd -f "$d/nova_ssh/sshd_config" -E /var/log/libvirt/nova_ssh.log; log "$h: nova_ssh restarted"; }
    fi
    nc_ok "${ADDR[$h]}" "$SSH_PORT" || { in_root "$h" /usr/sbin/sshd -E /var/log/sshd.log; log "$h: sshd restarted"; }
    log "$h: runs (its PID 1 is pid $(init_pid "$h") here)"
  else
    local dir
    for dir in "${LIBVIRT_DIRS[@]}"; do
      if [ ! -d "$dir" ]; then mkdir -p "$dir"; echo "$dir" >>"$LAB_DIR/created-mountpoints"; fi
    done
    mkdir -p "$d"/{run,lib/images,log,etc,cache}
    rm -f "$d"/run/*.pid
    log "$h: starting (network namespace nrl-$h, new mount and PID namespaces, root $d/root)"
    OUTER_UTS=$(readlink /proc/self/ns/uts) setsid ip netns exec "nrl-$h" unshare --mount --pid --uts --fork --propagation private --kill-child \
      /bin/bash "$HERE/hostinit.sh" "$h" "$d" "$c" "$sysd" </dev/null >>"$d/hostinit.log" 2>&1 &
    echo $! >"$d/init.pid"
    wait_for 15 "$h PID 1" init_pid "$h"
  fi
  wait_for 30 "$h sshd on ${ADDR[$h]}:$SSH_PORT" nc_ok "${ADDR[$h]}" "$SSH_PORT"
  if [ $c = 1 ]; then
    wait_for 30 "$h libvirtd pid file" alive_in "$h" "$d/run/libvirtd.pid" libvirtd
    wait_for 30 "$h nova_ssh on ${ADDR[$h]}:$NOVA_SSH_PORT" nc_ok "${ADDR[$h]}" "$NOVA_SSH_PORT"
  fi
}

do_hosts() {
  local h
  for h in "${NODES[@]}"; do start_host "$h"; done
  for h in "${HOSTS[@]}"; do
    wait_for 90 "$(uri "$h")" virsh -c "$(uri "$h")" capabilities
    log "$h: $(uri "$h") answers"
  done
}

# --------------------------------------------------------------------------------------------- guests
guest_host() { # guest_host <uuid>: which lab host has it defined (tests may have migrated it)
  local h
  for h in "${HOSTS[@]}"; do
    virsh_ "$h" domname "$1" >/dev/null 2>&1 && { echo "$h"; return 0; }
  done
  return 1
}
ensure_guest() { # ensure_guest <name> <home host> <uuid> <disk_mib>
  local name=$1 home=$2 uuid=$3 disk=$4 h
  if h=$(guest_host "$uuid"); then
    if [ "$(virsh_ "$h" domstate "$uuid")" != running ]; then
      virsh_ "$h" start "$uuid" >/dev/null; log "$name: started on $h"
    fi
    return 0
  fi
  local d; d=$(hostdir "$home")
  if [ "$disk" != 0 ]; then
    [ -f "$d/lib/images/$name.qcow2" ] || qemu-img create -q -f qcow2 "$d/lib/images/$name.qcow2" "${disk}M"
  fi
  local x; x=$(mktemp)
  $SYS_PY "$HERE/render_guest.py" --standard "$name" --neutron "$LAB_DIR/neutron.json" >"$x"
  virsh_ "$home" define "$x" >/dev/null
  rm -f "$x"
  virsh_ "$home" start "$name" >/dev/null
  log "$name: defined and started on $home"
}
do_guests() {
  local name host uuid vcpus pins mem disk fmt
  while IFS=$'\t' read -r name host uuid vcpus pins mem disk fmt; do
    ensure_guest "$name" "$host" "$uuid" "$disk"
  done < <($SYS_PY "$HERE/render_guest.py" --list)
}
remove_standard_guests() {
  local name host uuid rest h
  while IFS=$'\t' read -r name host uuid rest; do
    for h in "${HOSTS[@]}"; do
      if virsh_ "$h" domname "$uuid" >/dev/null 2>&1; then
        virsh_ "$h" destroy "$uuid" >/dev/null 2>&1 || true
        virsh_ "$h" undefine "$uuid" >/dev/null 2>&1 || true
        log "$name: removed from $h"
      fi
      rm -f "$(hostdir "$h")/lib/images/$name.qcow2"
    done
  done < <($SYS_PY "$HERE/render_guest.py" --list)
}
# Domains that are not standard guests: test guests and destination claims (numa-repin-claim) left by a
# test run that was killed. Their pins and claims would change every later plan, so up and seed remove
# them (disks kept): the lab starts from the standard guests only.
remove_leftover_domains() {
  local h d keep
  keep=$($SYS_PY "$HERE/render_guest.py" --list | cut -f1)
  for h in "${HOSTS[@]}"; do
    while read -r d; do
      [ -n "$d" ] || continue
      grep -qxF "$d" <<<"$keep" && continue
      virsh_ "$h" destroy "$d" >/dev/null 2>&1 || true
      virsh_ "$h" undefine "$d" >/dev/null 2>&1 || true
      log "$d: left over on $h by an earlier run, removed"
    done < <(virsh_ "$h" list --all --name)
  done
}

# --------------------------------------------------------------------------------------------- mariadb
db_password() {
  if [ -f "$PASSWORDS" ] && grep -q '^nova_database_password:' "$PASSWORDS"; then
    sed -n 's/^nova_database_password: *//p' "$PASSWORDS" | tr -d "\"'"
  else
    head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 24
  fi
}
sql() { mariadb --no-defaults --socket="$DB_SOCK" -uroot -N -B "$@"; }
do_mariadb() {
  mkdir -p "$MY" "$KOLLA"
  if alive "$DB_PID" mariadbd; then
    log "mariadbd runs (pid $(pidof_file "$DB_PID"))"
  else
    if [ ! -d "$MY/data/mysql" ]; then
      log "initialising datadir $MY/data"
      mariadb-install-db --no-defaults --user=mysql --datadir="$MY/data" --skip-test-db \
        --auth-root-authentication-method=socket >"$MY/install.log" 2>&1 ||
        { tail "$MY/install.log" >&2; die "mariadb-install-db failed"; }
    fi
    chown -R mysql:mysql "$MY"
    if (exec 3<>/dev/tcp/127.0.0.1/$DB_PORT) 2>/dev/null; then
      die "something else listens on 127.0.0.1:$DB_PORT (a system MariaDB?); stop it first"
    fi
    setsid mariadbd --no-defaults --user=mysql --datadir="$MY/data" --socket="$DB_SOCK" --pid-file="$DB_PID" \
      --port=$DB_PORT --bind-address=127.0.0.1,$DEPLOY_ADDR --skip-name-resolve --log-error="$MY/mysqld.err" \
      --character-set-server=utf8 --collation-server=utf8_general_ci --max-connections=500 \
      </dev/null >/dev/null 2>&1 &
    wait_for 60 "mariadbd" mariadb-admin --no-defaults --socket="$DB_SOCK" -uroot ping
    log "mariadbd started (pid $(pidof_file "$DB_PID"))"
  fi
  local pw; pw=$(db_password)
  local db s=""
  for db in "${DATABASES[@]}"; do s="$s CREATE DATABASE IF NOT EXISTS \`$db\` CHARACTER SET utf8;"; done
  sql <<EOF
$s
CREATE USER IF NOT EXISTS '$DB_USER'@'%' IDENTIFIED BY '$pw';
CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$pw';
ALTER USER '$DB_USER'@'%' IDENTIFIED BY '$pw';
ALTER USER '$DB_USER'@'localhost' IDENTIFIED BY '$pw';
GRANT ALL PRIVILEGES ON *.* TO '$DB_USER'@'%';
GRANT ALL PRIVILEGES ON *.* TO '$DB_USER'@'localhost';
FLUSH PRIVILEGES;
EOF
  write_credentials "$pw"
}
dburl() { echo "mysql+pymysql://$DB_USER:$1@$DB_HOST/$2"; }
write_credentials() {
  local pw=$1
  mkdir -p "$KOLLA"/{nova-conductor,placement-api,neutron-server,keystone}
  umask 077
  cat >"$PASSWORDS" <<EOF
---
# Kolla-style passwords of the numa-repin lab (tests/lab/lab.sh). One DB user, $DB_USER, serves every database.
nova_database_password: $pw
nova_api_database_password: $pw
placement_database_password: $pw
neutron_database_password: $pw
keystone_database_password: $pw
keystone_admin_password: $pw
neutron_keystone_password: $pw
EOF
  # What kolla-ansible post-deploy writes, and the two globals the modules read without it.
  cat >"$KOLLA/admin-openrc.sh" <<EOF
# admin credentials of the numa-repin lab (tests/lab/lab.sh), as kolla-ansible post-deploy writes them
export OS_PROJECT_DOMAIN_NAME=Default
export OS_USER_DOMAIN_NAME=Default
export OS_PROJECT_NAME=admin
export OS_TENANT_NAME=admin
export OS_USERNAME=admin
export OS_PASSWORD=$pw
export OS_AUTH_URL=$KEYSTONE_URL
export OS_INTERFACE=internal
export OS_ENDPOINT_TYPE=internalURL
export OS_IDENTITY_API_VERSION=3
export OS_REGION_NAME=$REGION
export OS_AUTH_PLUGIN=password
EOF
  cat >"$KOLLA/globals.yml" <<EOF
---
# the lab's kolla globals (tests/lab/lab.sh): the internal VIP is the control host
kolla_internal_vip_address: "${ADDR[control]}"
kolla_enable_tls_internal: "no"
EOF
  cat >"$KOLLA/nova-conductor/nova.conf" <<EOF
# nova-conductor configuration of the lab (tests/lab/lab.sh)
[DEFAULT]
transport_url = rabbit://openstack:openstack@127.0.0.1:$RMQ_PORT//
state_path = $LAB_DIR/nova-state

[database]
connection = $(dburl "$pw" nova)

[api_database]
connection = $(dburl "$pw" nova_api)

[workarounds]
enable_numa_live_migration = True
EOF
  # No [placement_database] here: Stein's nova-manage api_db sync would put Nova's API schema into it.
  cat >"$KOLLA/placement-api/placement.conf" <<EOF
# placement-api configuration of the lab (tests/lab/lab.sh)
[placement_database]
connection = $(dburl "$pw" placement)
EOF
  cat >"$KOLLA/neutron-server/neutron.conf" <<EOF
# neutron-server configuration of the lab (tests/lab/lab.sh)
[database]
connection = $(dburl "$pw" neutron)
EOF
  umask 022
}

# --------------------------------------------------------------------------------------------- schemas
has_table() { [ "$(sql -e "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema='$1' AND table_name='$2'")" != 0 ]; }
venv() { "$HERE/venv.sh" "$1"; }
do_schemas() {
  local pw; pw=$(db_password)
  local conf=$KOLLA/nova-conductor/nova.conf
  local nova placement neutron t0
  if ! has_table nova_api cell_mappings || ! has_table nova instances || ! has_table nova_cell0 instances ||
     [ "$(sql -e "SELECT COUNT(*) FROM nova_api.cell_mappings")" -lt 2 ]; then
    nova=$(venv nova)
    local nm="$nova/bin/nova-manage --config-file $conf"
    has_table nova_api cell_mappings || { log "nova-manage api_db sync"; $nm api_db sync >"$LAB_DIR/nova-manage.log" 2>&1 || { tail "$LAB_DIR/nova-manage.log"; die "api_db sync failed"; }; }
    if [ "$(sql -e "SELECT COUNT(*) FROM nova_api.cell_mappings WHERE uuid='00000000-0000-0000-0000-000000000000'")" = 0 ]; then
      $nm cell_v2 map_cell0 --database_connection "$(dburl "$pw" nova_cell0)" >>"$LAB_DIR/nova-manage.log" 2>&1
    fi
    if ! has_table nova instances || ! has_table nova_cell0 instances; then
      log "nova-manage db sync (nova + nova_cell0)"
      $nm db sync >>"$LAB_DIR/nova-manage.log" 2>&1 || { tail "$LAB_DIR/nova-manage.log"; die "db sync failed"; }
    fi
    if [ "$(sql -e "SELECT COUNT(*) FROM nova_api.cell_mappings WHERE name='cell1'")" = 0 ]; then
      $nm cell_v2 create_cell --name cell1 --database_connection "$(dburl "$pw" nova)" \
        --transport-url rabbit://openstack:openstack@127.0.0.1:$RMQ_PORT// >>"$LAB_DIR/nova-manage.log" 2>&1
    fi
  else
    log "nova schemas present"
  fi
  if ! has_table placement allocations; then
    placement=$(venv placement)
    log "placement-manage db sync"
    "$placement/bin/placement-manage" --config-file "$KOLLA/placement-api/placement.conf" db sync \
      >"$LAB_DIR/placement-manage.log" 2>&1 || { tail "$LAB_DIR/placement-manage.log"; die "placement db sync failed"; }
  else
    log "placement schema present"
  fi
  if ! has_table neutron ml2_port_bindings; then
    neutron=$(venv neutron)
    log "neutron-db-manage upgrade heads"
    "$neutron/bin/neutron-db-manage" --database-connection "$(dburl "$pw" neutron)" upgrade heads \
      >"$LAB_DIR/neutron-db-manage.log" 2>&1 || { tail "$LAB_DIR/neutron-db-manage.log"; die "neutron-db-manage failed"; }
  else
    log "neutron schema present"
  fi
}
PREFETCH_PIDS=()
do_prefetch() {
  # Build missing venvs in the background (venv.sh locks, so a later `venv <name>` waits for the same build);
  # they take most of a cold run and overlap with libvirt, MariaDB and debootstrap.
  local n
  for n in nova placement neutron keystone; do
    # venv.sh's own name (name-<12 hex of its requirements>): `nova-*` would also match the harness's nova-func-*.
    if ! ls "$CACHE"/venvs/$n-????????????/.complete >/dev/null 2>&1; then
      log "building the $n venv in the background (log: $CACHE/venv-$n.log)"
      mkdir -p "$CACHE"
      "$HERE/venv.sh" $n >"$CACHE/venv-$n.log" 2>&1 &
      PREFETCH_PIDS+=($!)
    fi
  done
  true
}
do_seed_db() { # do_seed_db [--reset]
  if [ $# = 0 ]; then
    # Everything seeded already: leave the DB as tests left it (`seed` resets it).
    local uuids; uuids=$($SYS_PY "$HERE/render_guest.py" --list | cut -f3 | sed "s/.*/'&'/" | paste -sd,)
    local n; n=$(sql -e "SELECT (SELECT COUNT(*) FROM nova.instances WHERE deleted=0 AND uuid IN ($uuids))
      + (SELECT COUNT(DISTINCT consumer_id) FROM placement.allocations WHERE consumer_id IN ($uuids))
      + (SELECT COUNT(*) FROM neutron.ports WHERE device_id IN ($uuids))
      + (SELECT COUNT(*) FROM nova.compute_nodes WHERE deleted=0 AND host IN ($(printf "'%s'," "${HOSTS[@]}" | sed 's/,$//')))" 2>/dev/null || echo 0)
    if [ "$n" = $(( 3 * $(echo "$uuids" | tr ',' '\n' | wc -l) + ${#HOSTS[@]} )) ]; then log "seed rows present"; return 0; fi
  fi
  local nova; nova=$(venv nova)
  "$nova/bin/python" "$HERE/seed_db.py" --nova-conf "$KOLLA/nova-conductor/nova.conf" \
    --lab-dir "$LAB_DIR" --hosts "${HOSTS[*]}" "$@"
}

# --------------------------------------------------------------------------------------------- neutron
rmq_ok() { nc_ok "$DEPLOY_ADDR" "$RMQ_PORT"; }
do_rabbitmq() {
  if alive "$RMQ/rabbitmq.pid" beam && rmq_ok; then log "rabbitmq runs (pid $(pidof_file "$RMQ/rabbitmq.pid"))"; return 0; fi
  mkdir -p "$RMQ"/{mnesia,log}
  # The user the agents and neutron-server log in as comes from the config: no rabbitmqctl (whose Debian
  # wrapper looks for the Erlang cookie in /var/lib/rabbitmq, not here).
  cat >"$RMQ/rabbitmq.conf" <<EOF
# RabbitMQ of the numa-repin lab (tests/lab/lab.sh)
listeners.tcp.1 = $DEPLOY_ADDR:$RMQ_PORT
default_user = openstack
default_pass = openstack
loopback_users = none
EOF
  echo '[].' >"$RMQ/enabled_plugins"
  chown -R rabbitmq:rabbitmq "$RMQ"
  HOME=$RMQ RABBITMQ_MNESIA_BASE=$RMQ/mnesia RABBITMQ_LOG_BASE=$RMQ/log RABBITMQ_NODENAME=rabbit@localhost \
    RABBITMQ_PID_FILE=$RMQ/rabbitmq.pid RABBITMQ_CONFIG_FILE=$RMQ/rabbitmq RABBITMQ_ENABLED_PLUGINS_FILE=$RMQ/enabled_plugins \
    ERL_EPMD_ADDRESS=127.0.0.1 setsid runuser -u rabbitmq --preserve-environment -- /usr/sbin/rabbitmq-server \
    </dev/null >"$RMQ/log/stdout.log" 2>&1 &
  wait_for 90 "rabbitmq on $DEPLOY_ADDR:$RMQ_PORT" rmq_ok
  log "rabbitmq started (log: $RMQ/log)"
}
stop_rabbitmq() {
  stop_pidfile "$RMQ/rabbitmq.pid" beam rabbitmq
  # epmd, which the broker started, goes with it (only the lab's broker uses this machine's epmd).
  pkill -x epmd 2>/dev/null || true
}
KEYSTONE_VENV=""
keystone_ok() { nc_ok "${ADDR[control]}" "$KEYSTONE_PORT"; }
do_keystone() { # Keystone of Stein in control, as Kolla's keystone container: db_sync, keys, bootstrap, then the
  # service project, neutron's user and the network endpoints (keystone_lab.py)
  KEYSTONE_VENV=$(venv keystone)
  local pw; pw=$(db_password)
  local c; c=$(hostdir control)
  local d=$KOLLA/keystone
  mkdir -p "$d" "$c/keystone"/{fernet-keys,credential-keys,log}
  umask 077
  cat >"$d/keystone.conf" <<EOF
# keystone configuration of the lab (tests/lab/lab.sh)
[DEFAULT]
log_file = $c/keystone/log/keystone.log

[database]
connection = $(dburl "$pw" keystone)

[token]
provider = fernet

[fernet_tokens]
key_repository = $c/keystone/fernet-keys

[credential]
key_repository = $c/keystone/credential-keys
EOF
  umask 022
  local km="$KEYSTONE_VENV/bin/keystone-manage --config-file $d/keystone.conf"
  if ! has_table keystone project; then
    log "keystone-manage db_sync"
    $km db_sync >"$LAB_DIR/keystone-manage.log" 2>&1 || { tail "$LAB_DIR/keystone-manage.log"; die "keystone db_sync failed"; }
  fi
  [ -e "$c/keystone/fernet-keys/0" ] || $km fernet_setup --keystone-user root --keystone-group root >>"$LAB_DIR/keystone-manage.log" 2>&1
  [ -e "$c/keystone/credential-keys/0" ] || $km credential_setup --keystone-user root --keystone-group root >>"$LAB_DIR/keystone-manage.log" 2>&1
  $km bootstrap --bootstrap-password "$pw" --bootstrap-region-id "$REGION" \
    --bootstrap-admin-url "$KEYSTONE_URL" --bootstrap-internal-url "$KEYSTONE_URL" --bootstrap-public-url "$KEYSTONE_URL" \
    >>"$LAB_DIR/keystone-manage.log" 2>&1 || { tail "$LAB_DIR/keystone-manage.log"; die "keystone bootstrap failed"; }
  if ! alive_cmd_in control "$c/keystone/server.pid" keystone-wsgi-public || ! keystone_ok; then
    # keystone-wsgi-public's own server (wsgiref, one request at a time): the lab's requests are few; Kolla
    # runs the same application under Apache's mod_wsgi.
    SVC_VENV=$KEYSTONE_VENV start_in control "$c/keystone/server.pid" "$c/keystone/log/stdout.log" \
      env OS_KEYSTONE_CONFIG_FILES="$d/keystone.conf" "$KEYSTONE_VENV/bin/keystone-wsgi-public" --host "${ADDR[control]}" --port "$KEYSTONE_PORT"
    wait_for 60 "keystone on $KEYSTONE_URL" keystone_ok
    log "keystone started in control ($KEYSTONE_URL)"
  fi
  $SYS_PY "$HERE/keystone_lab.py" --auth-url "$KEYSTONE_URL" --admin-password "$pw" --neutron-password "$pw" \
    --neutron-url "$NEUTRON_URL"
}

neutron_ok() { nc_ok "${ADDR[control]}" "$NEUTRON_PORT"; }
# start_in <host> <pid file> <log> <command...>: a daemon in the host's namespaces; its pid (of the host's
# PID namespace, as alive_in reads it) in <pid file>. It ends with the host (down kills the host's PID 1).
start_in() {
  local h=$1 pf=$2 logf=$3; shift 3
  local init; init=$(init_pid "$h") || die "$h is not running"
  setsid nsenter -t "$init" -m -p -n -u -- /bin/sh -c 'echo $$ >"$0"; exec "$@"' "$pf" \
    env PATH="${SVC_VENV:-$NEUTRON_VENV}/bin:/usr/sbin:/usr/bin:/sbin:/bin" "$@" </dev/null >>"$logf" 2>&1 &
}
write_neutron_confs() {
  local pw=$1 h d
  d=$KOLLA/neutron-server
  mkdir -p "$d" "$LAB_DIR/control/neutron"/{state,log}
  umask 077
  cat >"$d/neutron.conf" <<EOF
# neutron-server configuration of the lab (tests/lab/lab.sh): ml2 + linuxbridge, a flat $PHYSNET, Keystone tokens
[DEFAULT]
core_plugin = ml2
service_plugins =
auth_strategy = keystone
api_paste_config = $NEUTRON_VENV/etc/neutron/api-paste.ini
transport_url = $TRANSPORT_URL
bind_host = ${ADDR[control]}
bind_port = $NEUTRON_PORT
api_workers = 1
rpc_workers = 1
rpc_state_report_workers = 1
agent_down_time = 30
notify_nova_on_port_status_changes = false
notify_nova_on_port_data_changes = false
state_path = $LAB_DIR/control/neutron/state
log_file = $LAB_DIR/control/neutron/log/neutron-server.log

[database]
connection = $(dburl "$pw" neutron)

[keystone_authtoken]
www_authenticate_uri = http://${ADDR[control]}:$KEYSTONE_PORT
auth_url = http://${ADDR[control]}:$KEYSTONE_PORT
auth_type = password
project_domain_name = Default
user_domain_name = Default
project_name = service
username = neutron
password = $pw

[ml2]
type_drivers = flat
tenant_network_types =
mechanism_drivers = linuxbridge
extension_drivers = port_security

[ml2_type_flat]
flat_networks = $PHYSNET

[oslo_concurrency]
lock_path = $LAB_DIR/control/neutron/state/lock
EOF
  for h in "${HOSTS[@]}"; do
    d=$(hostdir "$h")/etc/kolla/neutron-linuxbridge-agent
    mkdir -p "$d" "$(hostdir "$h")/neutron"/{state,log}
    cat >"$d/linuxbridge_agent.ini" <<EOF
# neutron-linuxbridge-agent of $h (tests/lab/lab.sh). Root already: no sudo, privsep-helper run directly.
[DEFAULT]
host = $h
transport_url = $TRANSPORT_URL
state_path = $(hostdir "$h")/neutron/state
log_file = $(hostdir "$h")/neutron/log/neutron-linuxbridge-agent.log

[agent]
root_helper =
report_interval = 10
polling_interval = 2

[privsep]
helper_command = privsep-helper --config-file $d/linuxbridge_agent.ini

[linux_bridge]
physical_interface_mappings = $PHYSNET:$PHYSNET_INTERFACE

[vxlan]
enable_vxlan = false

[securitygroup]
firewall_driver = noop
enable_security_group = false

[oslo_concurrency]
lock_path = $(hostdir "$h")/neutron/state/lock
EOF
  done
  umask 022
}
neutron_settle() { # the standard guests' ports ACTIVE: wired by their agents, nothing left in flight
  $SYS_PY "$HERE/neutron_lab.py" --url "$NEUTRON_URL" --out "$LAB_DIR/neutron.json" \
    --auth-url "$KEYSTONE_URL" --admin-password "$(db_password)" --settle
}
NEUTRON_VENV=""
do_neutron() { # do_neutron [--reset]: server, agents, the network and the standard guests' ports (neutron_lab.py)
  NEUTRON_VENV=$(venv neutron)
  write_neutron_confs "$(db_password)"
  local c; c=$(hostdir control)
  if ! alive_cmd_in control "$c/neutron/server.pid" neutron-server || ! neutron_ok; then
    start_in control "$c/neutron/server.pid" "$c/neutron/log/stdout.log" \
      "$NEUTRON_VENV/bin/neutron-server" --config-file "$KOLLA/neutron-server/neutron.conf"
    wait_for 90 "neutron-server on $NEUTRON_URL" neutron_ok
    log "neutron-server started in control ($NEUTRON_URL)"
  fi
  local h d
  for h in "${HOSTS[@]}"; do
    d=$(hostdir "$h")
    alive_cmd_in "$h" "$d/neutron/agent.pid" neutron-linuxbridge-agent && continue
    start_in "$h" "$d/neutron/agent.pid" "$d/neutron/log/stdout.log" \
      "$NEUTRON_VENV/bin/neutron-linuxbridge-agent" --config-file "$d/etc/kolla/neutron-linuxbridge-agent/linuxbridge_agent.ini"
    log "$h: neutron-linuxbridge-agent started"
  done
  $SYS_PY "$HERE/neutron_lab.py" --url "$NEUTRON_URL" --out "$LAB_DIR/neutron.json" \
    --auth-url "$KEYSTONE_URL" --admin-password "$(db_password)" \
    --agents "$(IFS=,; echo "${HOSTS[*]}")" "$@"
  # The network's bridge on every compute, as where some port of the network is plugged already (os-vif
  # creates it before a guest's first port on a host; the playbooks' plug step does the same before a move).
  local br; br=$($SYS_PY -c 'import json,sys; print(json.load(open(sys.argv[1]))["bridge"])' "$LAB_DIR/neutron.json")
  for h in "${HOSTS[@]}"; do
    in_host "$h" ip link show "$br" >/dev/null 2>&1 || in_host "$h" ip link add "$br" type bridge
    in_host "$h" ip link set "$br" up
  done
}

# --------------------------------------------------------------------------------------------- containers
ENGINE=""
ENGINE_OWNER=""
docker_ok() { docker info >/dev/null 2>&1; }
do_engine() {
  mkdir -p "$DOCKER_DIR"
  if alive "$DOCKER_DIR/dockerd.pid" dockerd && docker_ok; then
    ENGINE=docker ENGINE_OWNER=lab; log "dockerd (lab) runs"; return 0
  fi
  if ! alive "$DOCKER_DIR/dockerd.pid" dockerd && docker_ok; then
    ENGINE=docker ENGINE_OWNER=system; log "using the system's running dockerd"; return 0
  fi
  if ! alive "$DOCKER_DIR/dockerd.pid" dockerd; then
    # No bridge and no iptables rules: the lab's containers use --network host, and down leaves nothing behind.
    setsid dockerd --pidfile "$DOCKER_DIR/dockerd.pid" --bridge=none --iptables=false --ip6tables=false \
      </dev/null >>"$DOCKER_DIR/dockerd.log" 2>&1 &
  fi
  local end=$((SECONDS + 40))
  until docker_ok; do
    if [ $SECONDS -ge $end ]; then break; fi
    sleep 0.3
  done
  if docker_ok; then ENGINE=docker ENGINE_OWNER=lab; log "dockerd started (pid $(pidof_file "$DOCKER_DIR/dockerd.pid"))"; return 0; fi
  log "dockerd did not come up (log: $DOCKER_DIR/dockerd.log); trying podman"
  command -v podman >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman >>"$CACHE/apt.log" 2>&1 ||
    die "neither docker nor podman works (see $DOCKER_DIR/dockerd.log, $CACHE/apt.log)"
  podman info >/dev/null 2>&1 || die "podman does not work either: $(podman info 2>&1 | tail -1)"
  ENGINE=podman ENGINE_OWNER=lab
}
engine() { "$ENGINE" "$@"; }
RUN_FLAGS=()
run_flags() { RUN_FLAGS=("${RUN_FLAGS_ALL[@]}"); [ "$ENGINE" = podman ] && RUN_FLAGS+=("${RUN_FLAGS_PODMAN[@]}"); true; }

do_base_image() {
  if engine image inspect "$BASE_IMAGE" >/dev/null 2>&1; then log "$BASE_IMAGE present"; return 0; fi
  local tgz=$CACHE/debootstrap/bookworm-minbase-${DEBOOTSTRAP_INCLUDE//,/-}.tar.gz
  mkdir -p "$CACHE/debootstrap"
  if [ ! -s "$tgz" ]; then
    local root=$CACHE/debootstrap/root.$$
    rm -rf "$root"
    log "debootstrap bookworm (minbase + $DEBOOTSTRAP_INCLUDE)"
    debootstrap --variant=minbase --include=$DEBOOTSTRAP_INCLUDE bookworm "$root" http://deb.debian.org/debian \
      >"$CACHE/debootstrap/debootstrap.log" 2>&1 || { umount_under "$root"; tail "$CACHE/debootstrap/debootstrap.log"; die "debootstrap failed"; }
    umount_under "$root"
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    tar -C "$root" -czf "$tgz.tmp" . && mv "$tgz.tmp" "$tgz"
    rm -rf "$root"
  fi
  engine import -c 'CMD ["/bin/bash"]' "$tgz" "$BASE_IMAGE" >/dev/null
  log "imported $BASE_IMAGE"
}
umount_under() { # unmount everything mounted under $1 (deepest first)
  local m
  for m in $(awk -v p="$1" '$2 ~ "^"p {print $2}' /proc/mounts | sort -r); do umount -l "$m" 2>/dev/null || true; done
}

nova_image_key() { echo "$(basename "$1")-py$(cat "$PY37/bin/python3.7" | sha256sum | cut -c1-8)"; }
do_nova_image() {
  local nova; nova=$(venv nova)
  local key; key=$(nova_image_key "$nova")
  if [ "$(engine image inspect -f '{{index .Config.Labels "numa-repin-lab.key"}}' "$NOVA_IMAGE" 2>/dev/null)" = "$key" ]; then
    log "$NOVA_IMAGE present"; return 0
  fi
  log "building $NOVA_IMAGE (Python 3.7.16 at $PY37, Nova venv at /var/lib/kolla/venv)"
  local st=$CACHE/image-staging
  rm -rf "$st"; mkdir -p "$st/var/lib/kolla" "$st$(dirname "$PY37")"
  cp -a "$PY37" "$st$PY37"
  cp -a "$nova" "$st/var/lib/kolla/venv"
  rm -f "$st/var/lib/kolla/venv/.complete"
  # Relocate the venv: scripts' shebangs, and pyvenv.cfg's home (python keeps its path, so libpython's RUNPATH holds).
  grep -rlI --include='*' "^#!$nova/bin/python" "$st/var/lib/kolla/venv/bin" | xargs -r sed -i "1s|^#!$nova/bin/python|#!/var/lib/kolla/venv/bin/python|"
  sed -i "s|^home = .*|home = $PY37/bin|" "$st/var/lib/kolla/venv/pyvenv.cfg"
  local b=numa-repin-lab-build-$$
  engine rm -f "$b" >/dev/null 2>&1 || true
  engine create --name "$b" "$BASE_IMAGE" /bin/true >/dev/null
  tar -C "$st" -c . | engine cp - "$b:/"
  engine commit -c "LABEL numa-repin-lab.key=$key" -c 'ENV PATH=/var/lib/kolla/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    -c 'CMD ["sleep","infinity"]' "$b" "$NOVA_IMAGE" >/dev/null
  engine rm -f "$b" >/dev/null
  rm -rf "$st"
  engine run --rm "$NOVA_IMAGE" /var/lib/kolla/venv/bin/python -c \
    'import nova.conductor.tasks.live_migrate, nova.virt.libvirt.driver' ||
    die "Nova does not import inside $NOVA_IMAGE"
  log "built $NOVA_IMAGE (Nova imports inside)"
}

do_containers() {
  run_flags
  local c conf
  for c in "${CONTAINERS[@]}"; do
    case $c in
      nova_conductor) conf=$(hostdir "${CONTAINER_HOST[$c]}")/etc/kolla/nova-conductor/nova.conf ;;
      nova_compute) conf=$(hostdir "${CONTAINER_HOST[$c]}")/etc/kolla/nova-compute/nova.conf ;;
    esac
    if [ "$(engine inspect -f '{{.State.Running}} {{index .Config.Labels "'$LABEL'"}}' "$c" 2>/dev/null)" = "true lab" ]; then
      continue
    fi
    if engine inspect "$c" >/dev/null 2>&1; then
      [ "$(engine inspect -f '{{index .Config.Labels "'$LABEL'"}}' "$c")" = lab ] ||
        die "a container named $c exists and is not the lab's; remove it first"
      if [ "$(engine inspect -f '{{.Config.Image}}' "$c")" = "$NOVA_IMAGE" ] &&
         [ "$(engine inspect -f '{{.Image}}' "$c")" = "$(engine image inspect -f '{{.Id}}' "$NOVA_IMAGE")" ]; then
        engine start "$c" >/dev/null; log "$c: started"; continue
      fi
      engine rm -f "$c" >/dev/null
    fi
    engine run -d "${RUN_FLAGS[@]}" --name "$c" --label "$LABEL=lab" \
      -v "$conf:/etc/nova/nova.conf:ro" "$NOVA_IMAGE" sleep infinity >/dev/null
    log "$c: created"
  done
}

# --------------------------------------------------------------------------------------------- ssh client
do_ssh_client() {
  # Each lab host runs its own sshd (started with the host); this is the deploy machine's client side.
  local h
  {
    echo "# ssh to the lab hosts (tests/lab/lab.sh): ssh -F $SSH_DIR/ssh_config cmp1"
    for h in "${NODES[@]}"; do
      printf 'Host %s %s\n  HostName %s\n' "$h" "${ADDR[$h]}" "${ADDR[$h]}"
    done
    cat <<EOF
Host *
  User root
  IdentityFile $SSH_DIR/id_ed25519
  IdentitiesOnly yes
  StrictHostKeyChecking no
  UserKnownHostsFile /dev/null
  LogLevel ERROR
EOF
  } >"$SSH_DIR/ssh_config"
  for h in "${NODES[@]}"; do
    ssh -F "$SSH_DIR/ssh_config" -o ConnectTimeout=10 "$h" true || die "ssh to $h (${ADDR[$h]}) fails"
  done
  log "ssh to ${NODES[*]} works"
}

# --------------------------------------------------------------------------------------------- ansible + files
do_tools() {
  # Python 3.11 tools (Debian's python3 is externally managed: a cached venv instead of the system site).
  local want="ansible-core pytest PyMySQL"
  if [ ! -f "$LAB_VENV/.complete" ]; then
    rm -rf "$LAB_VENV"
    $SYS_PY -m venv "$LAB_VENV"
    "$LAB_VENV/bin/pip" install -q --disable-pip-version-check $want
    touch "$LAB_VENV/.complete"
    log "tools venv $LAB_VENV: $want"
  else
    log "tools venv present ($LAB_VENV)"
  fi
  # ansible-core 2.16: the playbooks must also run with it (it still manages Python 2.7 / 3.6 hosts).
  if [ ! -f "$ANSIBLE216_VENV/.complete" ]; then
    rm -rf "$ANSIBLE216_VENV"
    $SYS_PY -m venv "$ANSIBLE216_VENV"
    "$ANSIBLE216_VENV/bin/pip" install -q --disable-pip-version-check 'ansible-core>=2.16,<2.17'
    touch "$ANSIBLE216_VENV/.complete"
    log "ansible-core 2.16 venv $ANSIBLE216_VENV"
  fi
  # The python3 on PATH (pyenv's 3.11 here) gets pytest + PyMySQL too when it is not externally managed.
  local py; py=$(command -v python3 || true)
  if [ -n "$py" ] && [ "$py" != "$SYS_PY" ] &&
     "$py" -c 'import sys,os,sysconfig; sys.exit(os.path.exists(os.path.join(sysconfig.get_path("stdlib"),"EXTERNALLY-MANAGED")))' 2>/dev/null; then
    "$py" -c 'import pytest, pymysql' 2>/dev/null ||
      { "$py" -m pip install -q --disable-pip-version-check pytest PyMySQL && log "pytest + PyMySQL installed for $py" ||
        log "warning: could not pip install pytest PyMySQL for $py (the tools venv has them)"; }
  fi
}

do_files() {
  local pw; pw=$(db_password)
  mkdir -p "$LAB_DIR"
  cat >"$LAB_DIR/ansible.cfg" <<EOF
# Lab Ansible configuration (tests/lab/lab.sh): export ANSIBLE_CONFIG=$LAB_DIR/ansible.cfg
[defaults]
inventory = $LAB_DIR/inventory.yml
library = $REPO/library
roles_path = $REPO/roles
host_key_checking = False
retry_files_enabled = False
stdout_callback = default
[ssh_connection]
pipelining = True
EOF
  local novavenv; novavenv=$(venv nova)
  # The lab's facts come from labspec.py; what this run found or made, from here.
  NOVA_VENV=$novavenv ENGINE=${ENGINE:-docker} LAB_DIR=$LAB_DIR REPO=$REPO LAB_VENV=$LAB_VENV PW=$pw \
    ENGINE_OWNER=$ENGINE_OWNER KOLLA=$KOLLA ANSIBLE216_VENV=$ANSIBLE216_VENV \
    $SYS_PY "$HERE/write_files.py"
}

# --------------------------------------------------------------------------------------------- status
STATUS_BAD=0
st() { # st <ok|dead|info> <text>
  case $1 in ok) printf '  %-5s %s\n' ok "$2" ;; dead) printf '  %-5s %s\n' DEAD "$2"; STATUS_BAD=1 ;; *) printf '  %-5s %s\n' '' "$2" ;; esac
}
cmd_status() {
  [ -d "$LAB_DIR" ] || { echo "lab: not set up ($LAB_DIR missing); run: $0 up"; exit 1; }
  echo "lab: $LAB_DIR"
  local h d pid
  for h in "${NODES[@]}"; do
    d=$(hostdir "$h")
    if pid=$(init_pid "$h"); then st ok "$h: PID 1 is pid $pid here, netns nrl-$h, ${ADDR[$h]}"; else st dead "$h (not running)"; continue; fi
    if nc_ok "${ADDR[$h]}" "$SSH_PORT"; then st ok "$h sshd ${ADDR[$h]}:$SSH_PORT"; else st dead "$h sshd"; fi
    if [ "$h" = control ]; then
      if alive_cmd_in control "$d/keystone/server.pid" keystone-wsgi-public && keystone_ok; then st ok "control keystone $KEYSTONE_URL"; else st dead "control keystone"; fi
      if alive_cmd_in control "$d/neutron/server.pid" neutron-server && neutron_ok; then st ok "control neutron-server $NEUTRON_URL"; else st dead "control neutron-server"; fi
    fi
    if [ "$h" = "$HOST_NOVA" ]; then
      if [ "$(in_root "$h" systemctl is-active nova-compute 2>/dev/null)" = active ]; then st ok "$h systemd unit nova-compute (Ubuntu's python-nova)"; else st dead "$h systemd unit nova-compute"; fi
    fi
    is_compute "$h" || continue
    if alive_cmd_in "$h" "$d/neutron/agent.pid" neutron-linuxbridge-agent; then st ok "$h neutron-linuxbridge-agent"; else st dead "$h neutron-linuxbridge-agent"; fi
    if nc_ok "${ADDR[$h]}" "$NOVA_SSH_PORT"; then st ok "$h nova_ssh ${ADDR[$h]}:$NOVA_SSH_PORT"; else st dead "$h nova_ssh"; fi
    if alive_in "$h" "$d/run/virtlogd.pid" virtlogd; then st ok "$h virtlogd"; else st dead "$h virtlogd"; fi
    if alive_in "$h" "$d/run/libvirtd.pid" libvirtd; then
      if timeout 20 virsh -c "$(uri "$h")" version >/dev/null 2>&1; then
        st ok "$h libvirtd $(uri "$h")"
        local g
        for g in $(virsh_ "$h" list --all --name 2>/dev/null); do
          st info "   guest $g: $(virsh_ "$h" domstate "$g" 2>/dev/null)"
        done
      else
        st dead "$h libvirtd does not answer on $(uri "$h")"
      fi
    else
      st dead "$h libvirtd"
    fi
  done
  if alive "$DB_PID" mariadbd && mariadb-admin --no-defaults --socket="$DB_SOCK" -uroot ping >/dev/null 2>&1; then
    st ok "mariadbd pid $(pidof_file "$DB_PID") $DB_HOST:$DB_PORT socket $DB_SOCK"
  else
    st dead "mariadbd"
  fi
  if alive "$RMQ/rabbitmq.pid" beam && rmq_ok; then st ok "rabbitmq $DEPLOY_ADDR:$RMQ_PORT"; else st dead "rabbitmq"; fi
  if alive "$DOCKER_DIR/dockerd.pid" dockerd; then
    if docker_ok; then st ok "dockerd (lab) pid $(pidof_file "$DOCKER_DIR/dockerd.pid")"; ENGINE=docker; else st dead "dockerd (lab) does not answer"; fi
  elif docker_ok; then st ok "dockerd (system)"; ENGINE=docker
  elif command -v podman >/dev/null && [ "$(podman ps -a -q --filter label=$LABEL=lab 2>/dev/null)" ]; then st ok "podman"; ENGINE=podman
  else st dead "container engine (dockerd)"
  fi
  if [ -n "$ENGINE" ]; then
    local c
    for c in "${CONTAINERS[@]}"; do
      if [ "$(engine inspect -f '{{.State.Running}}' "$c" 2>/dev/null)" = true ]; then
        st ok "container $c ($ENGINE, $(engine inspect -f '{{.Config.Image}}' "$c"))"
      else
        st dead "container $c"
      fi
    done
  fi
  [ -f "$LAB_DIR/lab.json" ] && st info "lab.json: $LAB_DIR/lab.json" || st dead "lab.json missing"
  [ $STATUS_BAD = 0 ] && echo "lab: up" || echo "lab: DEGRADED (run: $0 up)"
  return $STATUS_BAD
}

# --------------------------------------------------------------------------------------------- down
stop_host() {
  local h=$1 d; d=$(hostdir "$h")
  if is_compute "$h" && alive_in "$h" "$d/run/libvirtd.pid" libvirtd; then
    local g pids=()
    for g in $(timeout 20 virsh -q -c "$(uri "$h")" list --name 2>/dev/null); do
      timeout 20 virsh -q -c "$(uri "$h")" destroy "$g" >/dev/null 2>&1 &
      pids+=($!)
    done
    [ ${#pids[@]} = 0 ] || wait "${pids[@]}" || true
  fi
  # The host's PID 1 dies with unshare (--kill-child; unshare does not pass TERM on), and with it every
  # process of its PID namespace.
  local init; init=$(init_pid "$h" || true)
  if alive "$d/init.pid" unshare; then kill -KILL "$(pidof_file "$d/init.pid")" 2>/dev/null || true; fi
  [ -z "$init" ] || wait_for 15 "$h's PID 1 to end" sh -c "! kill -0 $init"
  rm -f "$d/init.pid"
  [ -z "$init" ] || log "stopped $h"
  umount_under "$d/root"
}
cmd_down() {
  local purge=0; [ "${1:-}" = --purge ] && purge=1
  [ -d "$LAB_DIR" ] || { log "nothing to stop ($LAB_DIR missing)"; return 0; }
  phase containers down_containers "$@"
  local h
  for h in "${NODES[@]}"; do phase "$h" stop_host "$h"; done
  phase mariadb stop_pidfile "$DB_PID" mariadbd mariadbd
  phase rabbitmq stop_rabbitmq
  if [ $purge = 1 ]; then
    for h in "${NODES[@]}"; do ip netns del "nrl-$h" 2>/dev/null || true; done
    ip link del "$BRIDGE" 2>/dev/null || true
    ip link del "$PHYS_BRIDGE" 2>/dev/null || true
  fi
  umount_under "$LAB_DIR"
  umount_under "$CACHE"
  if [ -f "$LAB_DIR/created-mountpoints" ]; then
    local m
    sort -ru "$LAB_DIR/created-mountpoints" | while read -r m; do rmdir "$m" 2>/dev/null || true; done
    rm -f "$LAB_DIR/created-mountpoints"
  fi
  if [ $purge = 1 ]; then rm -rf "$LAB_DIR"; log "purged $LAB_DIR"; fi
  log "down"
}
down_containers() {
  local purge=0; [ "${1:-}" = --purge ] && purge=1
  if docker_ok; then
    local ids; ids=$(docker ps -aq --filter "label=$LABEL")
    [ -z "$ids" ] || { docker rm -f $ids >/dev/null; log "removed lab containers"; }
    if [ $purge = 1 ]; then docker rmi -f "$NOVA_IMAGE" "$BASE_IMAGE" >/dev/null 2>&1 || true; fi
  fi
  if command -v podman >/dev/null; then
    local pids; pids=$(podman ps -aq --filter "label=$LABEL" 2>/dev/null || true)
    [ -z "$pids" ] || podman rm -f $pids >/dev/null 2>&1 || true
  fi
  stop_pidfile "$DOCKER_DIR/dockerd.pid" dockerd dockerd
}

# --------------------------------------------------------------------------------------------- up
cmd_up() {
  [ "$(id -u)" = 0 ] || die "run as root"
  mkdir -p "$LAB_DIR" "$CACHE"; chmod 755 "$LAB_DIR"
  local t0; t0=$(now)
  phase packages do_packages
  phase users do_users
  phase prefetch do_prefetch
  phase network do_network
  phase engine do_engine
  phase roots do_roots
  phase mariadb do_mariadb
  phase rabbitmq do_rabbitmq
  phase hosts do_hosts
  phase leftovers remove_leftover_domains
  phase base-image do_base_image
  phase schemas do_schemas
  phase keystone do_keystone
  phase neutron do_neutron
  phase guests do_guests
  phase seed-db do_seed_db
  phase nova-image do_nova_image
  phase containers do_containers
  phase ssh-client do_ssh_client
  phase tools do_tools
  phase files do_files
  # Prefetches not needed after all (their schema existed) still finish before up returns.
  [ ${#PREFETCH_PIDS[@]} = 0 ] || wait "${PREFETCH_PIDS[@]}" || true
  log "up in $(awk -v a="$t0" -v b="$(now)" 'BEGIN{printf "%.1f", b-a}')s: ${TIMINGS[*]}"
  echo "export ANSIBLE_CONFIG=$LAB_DIR/ansible.cfg"
  echo "source $LAB_DIR/lab.env    # everything else (lab.json: $LAB_DIR/lab.json)"
}
cmd_seed() {
  [ -f "$LAB_DIR/lab.json" ] || die "the lab is not up: run $0 up first"
  phase remove-guests remove_standard_guests
  phase leftovers remove_leftover_domains
  phase keystone do_keystone
  phase neutron do_neutron --reset
  phase guests do_guests
  phase neutron-settle neutron_settle
  phase seed-db do_seed_db --reset
}

# One up/down/seed at a time (several engineers and test runs share the lab). flock -o: the daemons started
# below do not inherit the lock.
case "${1:-}" in up|down|seed)
  if [ -z "${LAB_LOCKED:-}" ]; then
    mkdir -p /run/lock
    LAB_LOCKED=1 exec flock -o -w 1800 /run/lock/numa-repin-lab.lock "$0" "$@"
  fi ;;
esac
case "${1:-}" in
  up) cmd_up ;;
  down) shift; cmd_down "$@" ;;
  status) cmd_status ;;
  seed) cmd_seed ;;
  _phase) shift; mkdir -p "$LAB_DIR" "$CACHE"; for p in "$@"; do phase "$p" "do_${p//-/_}"; done ;;  # development: run single phases
  *) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
