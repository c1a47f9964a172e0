#!/usr/bin/env bash
# The lab's multi-socket SMT NUMA compute hosts: QEMU machines under software emulation (TCG),
# each booting Debian's cloud kernel and its own Debian root (debootstrap), with libvirtd and
# sshd inside, on the lab's bridge. Their layouts (sockets, cores, threads, NUMA nodes, CPU
# numbering, hugepages) come from tests/lab/labspec.py (SMT_HOSTS).
#
#   tests/lab/smt.sh image    build the root image once (cached under /var/cache/numa-repin/smt)
#   tests/lab/smt.sh up       boot every SMT host (after tests/lab/lab.sh up), wait for sshd and libvirtd
#   tests/lab/smt.sh status   what runs
#   tests/lab/smt.sh down     power them off
#
# Per host, the kernel command line carries what differs (name, address, the lab's SSH key,
# hugepages per node); /usr/local/sbin/nrl-init in the image applies it before sshd and libvirtd start.
set -euo pipefail
cd "$(dirname "$0")/../.."
eval "$(python3 tests/lab/labspec.py shell)"
LAB_DIR=${LAB_DIR:-$LAB_DIR_DEFAULT}
CACHE=${NUMA_REPIN_CACHE:-/var/cache/numa-repin}
IMG_DIR=$CACHE/smt
STATE=$LAB_DIR/smt
NOVA_COMPUTE_CONF=$(python3 -c 'import sys; sys.path.insert(0, "tests/lab"); import labspec; print(labspec.NOVA_COMPUTE_CONF_IN_HOST)')
SMT_RESERVED_MB=256
log() { printf '[smt] %s\n' "$*"; }
die() { printf '[smt] ERROR: %s\n' "$*" >&2; [ ! -d "$STATE" ] || printf '%s\n' "$*" >"$STATE/failed"; exit 1; }

# What the hosts run: Debian's cloud kernel, systemd, sshd, libvirt's QEMU driver, numactl (numastat),
# Python for Ansible's own modules. libvirt-daemon-system is left out on purpose: it would start the
# default network and its dnsmasq; the image carries its own units for virtlogd and libvirtd.
SMT_PACKAGES=linux-image-cloud-amd64,systemd-sysv,udev,kmod,initramfs-tools,openssh-server,libvirt-daemon,libvirt-daemon-driver-qemu,libvirt-clients,qemu-system-x86,numactl,iproute2,procps,python3,netbase
IMAGE=$IMG_DIR/bookworm-smt-$(cat "$0" | sha256sum | cut -c1-8).raw

umount_under() {
  local m
  for m in $(awk -v p="$1" '$2 ~ "^"p {print $2}' /proc/mounts | sort -r); do umount -l "$m" 2>/dev/null || true; done
}

write_image_files() { # the parts of the root every SMT host shares
  local R=$1
  cat >"$R/usr/local/sbin/nrl-init" <<'EOF'
#!/bin/sh
# numa-repin lab: apply this host's kernel command line (nrl.*) before sshd and libvirtd start.
set -eu
arg() { tr ' ' '\n' </proc/cmdline | sed -n "s/^nrl\.$1=//p"; }
host=$(arg host); addr=$(arg addr)
hostname "$host"; echo "$host" >/etc/hostname
printf '127.0.0.1 localhost\n%s %s\n' "$addr" "$host" >/etc/hosts
ip link set lo up
dev=$(ls /sys/class/net | grep -v '^lo$' | head -1)
ip addr add "$addr/24" dev "$dev"
ip link set "$dev" up
mkdir -p /root/.ssh && chmod 700 /root/.ssh
arg key | base64 -d >/root/.ssh/authorized_keys
chmod 600 /root/.ssh/authorized_keys
# hugepages per node: nrl.hp=<node>:<count>,...
for nc in $(arg hp | tr ',' ' '); do
  echo "${nc#*:}" >"/sys/devices/system/node/node${nc%%:*}/hugepages/hugepages-2048kB/nr_hugepages"
done
uuid=$(cat /proc/sys/kernel/random/uuid)
cat >/etc/libvirt/libvirtd.conf <<CONF
listen_tls = 0
listen_tcp = 1
auth_tcp = "none"
auth_unix_rw = "none"
listen_addr = "$addr"
tcp_port = "16509"
host_uuid = "$uuid"
log_outputs = "3:file:/var/log/libvirt/libvirtd.log"
CONF
cat >/etc/libvirt/qemu.conf <<CONF
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
migration_address = "$addr"
migration_host = "$addr"
CONF
EOF
  chmod 755 "$R/usr/local/sbin/nrl-init"
  cat >"$R/etc/systemd/system/nrl-init.service" <<'EOF'
[Unit]
Description=numa-repin lab: this host's name, address, key, hugepages and libvirt configuration
DefaultDependencies=no
After=systemd-remount-fs.service
Before=ssh.service virtlogd.service libvirtd.service network.target

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/nrl-init
RemainAfterExit=yes

[Install]
WantedBy=multi-user.target
EOF
  cat >"$R/etc/systemd/system/virtlogd.service" <<'EOF'
[Unit]
Description=virtlogd (numa-repin lab)
After=nrl-init.service

[Service]
ExecStart=/usr/sbin/virtlogd
Restart=on-failure

[Install]
WantedBy=multi-user.target
EOF
  cat >"$R/etc/systemd/system/libvirtd.service" <<'EOF'
[Unit]
Description=libvirtd with its TCP listener (numa-repin lab)
After=nrl-init.service virtlogd.service

[Service]
ExecStart=/usr/sbin/libvirtd --listen -f /etc/libvirt/libvirtd.conf
Restart=on-failure

[Install]
WantedBy=multi-user.target
EOF
  mkdir -p "$R/etc/systemd/system/multi-user.target.wants" "$R/etc/libvirt" "$R/var/log/libvirt/qemu" \
    "$R/var/lib/libvirt/qemu" "$R/var/lib/libvirt/images" "$R/var/cache/libvirt"
  local u
  for u in nrl-init virtlogd libvirtd; do
    ln -sfn "/etc/systemd/system/$u.service" "$R/etc/systemd/system/multi-user.target.wants/$u.service"
  done
  # Nothing that would reach out of the lab or wait on hardware.
  for u in systemd-timesyncd.service apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer \
           systemd-networkd-wait-online.service getty@tty1.service; do
    ln -sfn /dev/null "$R/etc/systemd/system/$u"
  done
  echo "/dev/vda / ext4 rw,noatime 0 1" >"$R/etc/fstab"
  cat >"$R/etc/ssh/sshd_config.d/nrl.conf" <<'EOF'
PermitRootLogin prohibit-password
PasswordAuthentication no
UseDNS no
EOF
  # Without libvirt-daemon-system, nothing made the users and groups the QEMU driver's build names.
  local g
  for g in kvm libvirt libvirt-qemu; do chroot "$R" getent group $g >/dev/null || chroot "$R" groupadd -r $g; done
  chroot "$R" getent passwd libvirt-qemu >/dev/null ||
    chroot "$R" useradd -r -g libvirt-qemu -G kvm -d /var/lib/libvirt -s /usr/sbin/nologin libvirt-qemu
}

do_image() {
  # Two layers: the debootstrap root (slow; keyed by the package list) as a tarball, and the disk
  # image made from it with this script's files (seconds; keyed by this script).
  local tgz=$IMG_DIR/bookworm-smt-$(echo "$SMT_PACKAGES" | sha256sum | cut -c1-8).tar.gz
  if [ -s "$IMAGE" ]; then log "image $IMAGE present"; return 0; fi
  mkdir -p "$IMG_DIR"
  local root=$IMG_DIR/root.$$ t0=$SECONDS
  rm -rf "$root"
  if [ ! -s "$tgz" ]; then
    log "debootstrap bookworm (minbase + $SMT_PACKAGES)"
    debootstrap --variant=minbase --include="$SMT_PACKAGES" bookworm "$root" http://deb.debian.org/debian \
      >"$IMG_DIR/debootstrap.log" 2>&1 || { umount_under "$root"; tail "$IMG_DIR/debootstrap.log"; die "debootstrap failed"; }
    umount_under "$root"
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    ls "$root"/boot/vmlinuz-* "$root"/boot/initrd.img-* >/dev/null 2>&1 || die "no kernel or initrd in the root (see $IMG_DIR/debootstrap.log)"
    tar -C "$root" -czf "$tgz.tmp" . && mv "$tgz.tmp" "$tgz"
    log "debootstrap took $((SECONDS - t0)) s"
  else
    mkdir -p "$root" && tar -C "$root" -xzf "$tgz"
  fi
  write_image_files "$root"
  rm -f "$IMG_DIR"/bookworm-smt-*.raw*
  cp "$(ls "$root"/boot/vmlinuz-* | tail -1)" "$IMAGE.vmlinuz"
  cp "$(ls "$root"/boot/initrd.img-* | tail -1)" "$IMAGE.initrd"
  mkfs.ext4 -q -F -L nrl-smt -d "$root" "$IMAGE.tmp" 3G >/dev/null
  rm -rf "$root"
  mv "$IMAGE.tmp" "$IMAGE"
  log "image $IMAGE ($(du -sh "$IMAGE" | cut -f1) used) in $((SECONDS - t0)) s"
}

SSH_CONFIG=$LAB_DIR/ssh/ssh_config
ssh_to() { local h=$1; shift; ssh -F "$SSH_CONFIG" -o ConnectTimeout=5 "root@${SMT_ADDR[$h]}" "$@"; }
qemu_pid() { local f=$STATE/$1/qemu.pid; [ -s "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null && cat "$f"; }

boot() { # boot <host>: a fresh overlay over the image, a tap on the lab's bridge, QEMU under TCG
  local h=$1 d=$STATE/$1 numa=() mb total=0 n=0 hp=${SMT_HUGEPAGES[$1]:-}
  rm -rf "$d"; mkdir -p "$d"
  qemu-img create -q -f qcow2 -F raw -b "$IMAGE" "$d/disk.qcow2"
  local nodes=(${SMT_NODES[$h]})
  for mb in ${SMT_NODE_MB[$h]}; do
    local cpus=() c
    for c in ${nodes[$n]//,/ }; do cpus+=("cpus=$c"); done
    numa+=(-object "memory-backend-ram,id=m$n,size=${mb}M" -numa "node,nodeid=$n,$(IFS=,; echo "${cpus[*]}"),memdev=m$n")
    total=$((total + mb)); n=$((n + 1))
  done
  local tap=nrs-$h
  ip link show "$tap" >/dev/null 2>&1 || ip tuntap add dev "$tap" mode tap
  ip link set "$tap" master "$BRIDGE" up
  local key; key=$(base64 -w0 <"$LAB_DIR/ssh/id_ed25519.pub")
  local last=${SMT_ADDR[$h]##*.}
  # Niced: tests/run.sh boots them while other tests run, which must keep their pace.
  nice -n 10 qemu-system-x86_64 -name "$h" -accel tcg -machine pc -cpu "$SMT_CPU" -smp "${SMT_SMP[$h]}" -m "${total}M" \
    "${numa[@]}" \
    -kernel "$IMAGE.vmlinuz" -initrd "$IMAGE.initrd" \
    -append "root=/dev/vda rw console=ttyS0 quiet nrl.host=$h nrl.addr=${SMT_ADDR[$h]} nrl.key=$key nrl.hp=$hp" \
    -drive "file=$d/disk.qcow2,if=virtio,format=qcow2,cache=unsafe" \
    -netdev "tap,id=n0,ifname=$tap,script=no,downscript=no" \
    -device "virtio-net-pci,netdev=n0,mac=52:54:00:4d:00:$(printf %02x "$last")" \
    -display none -serial "file:$d/console.log" -monitor none -daemonize -pidfile "$d/qemu.pid" 2>"$d/qemu.err" ||
    { cat "$d/qemu.err"; die "$h: QEMU did not start"; }
  log "$h: booting (pid $(cat "$d/qemu.pid"), ${SMT_SMP[$h]}, nodes ${SMT_NODES[$h]}, console $d/console.log)"
}

wait_ready() { # wait_ready <host> <deadline>: sshd answers and libvirtd has probed QEMU
  local h=$1 end=$2
  until ssh_to "$h" true 2>/dev/null; do
    [ -n "$(qemu_pid "$h")" ] || { tail -20 "$STATE/$h/console.log"; die "$h: QEMU died"; }
    [ "$SECONDS" -lt "$end" ] || { tail -20 "$STATE/$h/console.log"; die "$h: no sshd within the deadline"; }
    sleep 2
  done
  log "$h: sshd up after $((SECONDS - T0)) s"
  until ssh_to "$h" virsh -c qemu:///system capabilities >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$end" ] || die "$h: libvirtd does not answer: $(ssh_to "$h" 'journalctl -u libvirtd | tail -5')"
    sleep 2
  done
  log "$h: libvirtd up after $((SECONDS - T0)) s"
}

configure() { # configure <host>: nova.conf as the lab's computes have it (the parts numa-repin reads)
  local h=$1
  ssh_to "$h" "mkdir -p $(dirname "$NOVA_COMPUTE_CONF") && cat >$NOVA_COMPUTE_CONF" <<EOF
# nova-compute configuration of SMT lab host $h (written by tests/lab/smt.sh)
[DEFAULT]
host = $h
my_ip = ${SMT_ADDR[$h]}
vcpu_pin_set = ${SMT_PIN_SET[$h]}
reserved_host_memory_mb = $SMT_RESERVED_MB
compute_driver = libvirt.LibvirtDriver

[libvirt]
virt_type = qemu
connection_uri = qemu:///system
live_migration_uri = qemu+tcp://%s/system
live_migration_inbound_addr = ${SMT_ADDR[$h]}
cpu_mode = none

[workarounds]
enable_numa_live_migration = True
EOF
}

do_up() {
  # $STATE/ready or $STATE/failed tell a test started meanwhile (tests/run.sh boots the hosts while the
  # other tests run) when this is done.
  mkdir -p "$STATE"
  rm -f "$STATE/ready" "$STATE/failed"
  trap '[ -e "$STATE/ready" ] || echo "tests/lab/smt.sh up failed (exit $?): see its output" >"$STATE/failed"' EXIT
  [ -s "$IMAGE" ] || do_image
  ip link show "$BRIDGE" >/dev/null 2>&1 || die "the lab's bridge $BRIDGE is missing: run tests/lab/lab.sh up first"
  T0=$SECONDS
  local h
  for h in "${SMT_NAMES[@]}"; do
    # A running host keeps its guests; its tap goes back on the bridge if the lab's bridge was remade.
    if [ -n "$(qemu_pid "$h")" ]; then ip link set "nrs-$h" master "$BRIDGE" up 2>/dev/null || true; fi
    if [ -n "$(qemu_pid "$h")" ] && ssh_to "$h" true 2>/dev/null; then log "$h: running"; continue; fi
    [ -z "$(qemu_pid "$h")" ] || kill "$(qemu_pid "$h")"
    boot "$h"
  done
  for h in "${SMT_NAMES[@]}"; do wait_ready "$h" $((SECONDS + ${SMT_BOOT_TIMEOUT:-600})); configure "$h"; done
  log "up in $((SECONDS - T0)) s: ${SMT_NAMES[*]}"
  touch "$STATE/ready"
}

do_down() {
  local h pid
  for h in "${SMT_NAMES[@]}"; do
    pid=$(qemu_pid "$h") || true
    if [ -n "$pid" ]; then kill "$pid"; log "$h: powered off"; fi
    ip link del "nrs-$h" 2>/dev/null || true
  done
}

do_status() {
  local h rc=0
  for h in "${SMT_NAMES[@]}"; do
    if [ -z "$(qemu_pid "$h")" ]; then echo "  DEAD  $h (no QEMU)"; rc=1; continue; fi
    if ssh_to "$h" 'virsh -q -c qemu:///system list --all' >"$STATE/$h/list" 2>/dev/null; then
      echo "  ok    $h ${SMT_ADDR[$h]} ${SMT_SMP[$h]}: $(ssh_to "$h" 'numactl -H | head -1'), $(grep -c . "$STATE/$h/list") guests"
    else
      echo "  DEAD  $h: no sshd or libvirtd"; rc=1
    fi
  done
  return $rc
}

case "${1:-}" in
  image) do_image ;;
  up) do_up ;;
  down) do_down ;;
  status) do_status ;;
  *) echo "usage: tests/lab/smt.sh image|up|status|down" >&2; exit 2 ;;
esac
