#!/usr/bin/env bash
# numa-repin lab: two libvirt compute hosts, MariaDB with Stein's Nova/Placement/Neutron schemas,
# Kolla-like nova containers, an sshd and an Ansible inventory, all on one Debian 12 machine, as root.
#
#   tests/lab/lab.sh up        build/start everything (idempotent; a second run takes seconds)
#   tests/lab/lab.sh status    what runs; exits 1 if something that should run is dead
#   tests/lab/lab.sh seed      recreate the standard guests (tests/lab/guests/standard.json) and their DB rows
#   tests/lab/lab.sh down      stop what the lab started (PID files), remove its containers; state stays
#   tests/lab/lab.sh down --purge   also delete LAB_DIR (DB, guests, keys) and the lab's docker images
#
# State: LAB_DIR (default /var/lib/numa-repin-lab). Caches: /var/cache/numa-repin (venvs, debootstrap tarball).
# Facts behind every choice: DESIGN.md section 3. Timings: tests/lab/README.md.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
LAB_DIR=${LAB_DIR:-/var/lib/numa-repin-lab}
CACHE=${NUMA_REPIN_CACHE:-/var/cache/numa-repin}
export NUMA_REPIN_CACHE=$CACHE
SYS_PY=/usr/bin/python3
PY37=${PY37:-$(pyenv root 2>/dev/null || echo /root/.pyenv)/versions/3.7.16}

HOSTS=(cmp1 cmp2)
declare -A ADDR=([cmp1]=127.0.0.2 [cmp2]=127.0.0.3)
declare -A MIGPORTS=([cmp1]="49152 49215" [cmp2]="49216 49279")
declare -A PIN_SET=([cmp1]="0-1" [cmp2]="0-1")
LIBVIRT_PORT=16509
SSH_ADDR=127.0.0.4
SSH_PORT=8022
DB_HOST=127.0.0.1
DB_PORT=3306
DB_USER=nova
DATABASES=(nova_api nova nova_cell0 placement neutron)
LABEL=numa-repin-lab
BASE_IMAGE=numa-repin-lab/base:bookworm
NOVA_IMAGE=numa-repin-lab/nova:19.3.2
CONTAINERS=(nova_conductor nova_compute)
DEBOOTSTRAP_INCLUDE=python3,netbase,libvirt0
LAB_VENV=$CACHE/venvs/lab-py311
APT_PKGS=(libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients libvirt-dev qemu-system-x86 qemu-utils
  pkg-config mariadb-server openssh-server openssh-client debootstrap docker.io python3-venv python3-pip
  util-linux procps iproute2 ca-certificates)
# Directories every lab host gets its own copy of (bind-mounted inside its private mount namespace).
LIBVIRT_DIRS=(/run/libvirt /var/lib/libvirt /var/log/libvirt /etc/libvirt /var/cache/libvirt)

MY=$LAB_DIR/mysql
DB_SOCK=$MY/mysqld.sock
DB_PID=$MY/mysqld.pid
KOLLA=$LAB_DIR/etc/kolla
PASSWORDS=$KOLLA/passwords.yml
DOCKER_DIR=$LAB_DIR/docker
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
reserved_host_memory_mb = 512
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

mount_ns_holder() { # print a pid living in host $1's mount namespace, if any
  local d; d=$(hostdir "$1")
  local f pid
  for f in "$d/run/libvirtd.pid" "$d/run/virtlogd.pid" "$d"/run/qemu/*.pid; do
    [ -s "$f" ] || continue
    pid=$(pidof_file "$f")
    [ -n "$pid" ] && [ -d "/proc/$pid" ] || continue
    grep -Eq '^(libvirtd|virtlogd|qemu-system-x86)' "/proc/$pid/comm" 2>/dev/null || continue
    # It must see the host's own /run/libvirt, i.e. live in that namespace.
    [ "$(stat -L -c %d:%i "/proc/$pid/root/run/libvirt" 2>/dev/null)" = "$(stat -c %d:%i "$d/run")" ] || continue
    echo "$pid"; return 0
  done
  return 1
}

start_host() {
  local h=$1 d; d=$(hostdir "$h")
  write_libvirt_configs "$h"
  write_nova_compute_conf "$h"
  local lv=0 vl=0
  alive "$d/run/libvirtd.pid" libvirtd && lv=1
  alive "$d/run/virtlogd.pid" virtlogd && vl=1
  if [ $lv = 1 ] && [ $vl = 1 ]; then log "$h: libvirtd + virtlogd run"; return 0; fi
  local m dir
  for dir in "${LIBVIRT_DIRS[@]}"; do
    if [ ! -d "$dir" ]; then mkdir -p "$dir"; echo "$dir" >>"$LAB_DIR/created-mountpoints"; fi
  done
  local start='
    [ -n "$VL" ] || virtlogd -d -f /etc/libvirt/virtlogd.conf -p /run/libvirt/virtlogd.pid
    [ -n "$LV" ] || libvirtd -d --listen -f /etc/libvirt/libvirtd.conf -p /run/libvirt/libvirtd.pid'
  local holder
  if holder=$(mount_ns_holder "$h"); then
    log "$h: restarting $([ $lv = 1 ] || echo libvirtd) $([ $vl = 1 ] || echo virtlogd) in its namespace (via pid $holder)"
    VL=$([ $vl = 1 ] && echo 1 || true) LV=$([ $lv = 1 ] && echo 1 || true) \
      nsenter -t "$holder" -m /bin/sh -ec "$start"
  else
    log "$h: starting libvirtd + virtlogd in a new private mount namespace"
    m="mount --bind $d/run /run/libvirt; mount --bind $d/lib /var/lib/libvirt; mount --bind $d/log /var/log/libvirt;"
    m="$m mount --bind $d/etc /etc/libvirt; mount --bind $d/cache /var/cache/libvirt;"
    VL="" LV="" unshare -m --propagation private /bin/sh -ec "$m $start"
  fi
  wait_for 30 "$h libvirtd pid file" alive "$d/run/libvirtd.pid" libvirtd
}

do_libvirt() {
  local h
  for h in "${HOSTS[@]}"; do start_host "$h"; done
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
  $SYS_PY "$HERE/render_guest.py" --standard "$name" >"$x"
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
    if (exec 3<>/dev/tcp/$DB_HOST/$DB_PORT) 2>/dev/null; then
      die "something else listens on $DB_HOST:$DB_PORT (a system MariaDB?); stop it first"
    fi
    setsid mariadbd --no-defaults --user=mysql --datadir="$MY/data" --socket="$DB_SOCK" --pid-file="$DB_PID" \
      --port=$DB_PORT --bind-address=$DB_HOST --skip-name-resolve --log-error="$MY/mysqld.err" \
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
  mkdir -p "$KOLLA"/{nova-conductor,placement-api,neutron-server}
  umask 077
  cat >"$PASSWORDS" <<EOF
---
# Kolla-style passwords of the numa-repin lab (tests/lab/lab.sh). One DB user, $DB_USER, serves every database.
nova_database_password: $pw
nova_api_database_password: $pw
placement_database_password: $pw
neutron_database_password: $pw
EOF
  cat >"$KOLLA/nova-conductor/nova.conf" <<EOF
# nova-conductor configuration of the lab (tests/lab/lab.sh)
[DEFAULT]
transport_url = rabbit://openstack:openstack@127.0.0.1:5672//
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
        --transport-url rabbit://openstack:openstack@127.0.0.1:5672// >>"$LAB_DIR/nova-manage.log" 2>&1
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
  for n in nova placement neutron; do
    if ! ls "$CACHE"/venvs/$n-*/.complete >/dev/null 2>&1; then
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
      + (SELECT COUNT(*) FROM nova.compute_nodes WHERE deleted=0 AND host IN ('cmp1','cmp2'))" 2>/dev/null || echo 0)
    if [ "$n" = $(( 3 * $(echo "$uuids" | tr ',' '\n' | wc -l) + 2 )) ]; then log "seed rows present"; return 0; fi
  fi
  local nova; nova=$(venv nova)
  "$nova/bin/python" "$HERE/seed_db.py" --nova-conf "$KOLLA/nova-conductor/nova.conf" \
    --lab-dir "$LAB_DIR" "$@"
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
run_flags() { RUN_FLAGS=(--init --network host); [ "$ENGINE" = podman ] && RUN_FLAGS+=(--ulimit nofile=1024:1024 --ulimit nproc=4096:4096); true; }

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
      nova_conductor) conf=$KOLLA/nova-conductor/nova.conf ;;
      nova_compute) conf=$(hostdir cmp1)/etc/kolla/nova-compute/nova.conf ;;
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

# --------------------------------------------------------------------------------------------- sshd
do_sshd() {
  mkdir -p "$SSH_DIR"; chmod 700 "$SSH_DIR"
  [ -f "$SSH_DIR/ssh_host_ed25519_key" ] || ssh-keygen -q -t ed25519 -N '' -f "$SSH_DIR/ssh_host_ed25519_key"
  [ -f "$SSH_DIR/id_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C numa-repin-lab -f "$SSH_DIR/id_ed25519"
  cp "$SSH_DIR/id_ed25519.pub" "$SSH_DIR/authorized_keys"; chmod 600 "$SSH_DIR/authorized_keys"
  cat >"$SSH_DIR/sshd_config.new" <<EOF
# sshd of the numa-repin lab (like Kolla's nova_ssh), written by tests/lab/lab.sh
ListenAddress $SSH_ADDR:$SSH_PORT
HostKey $SSH_DIR/ssh_host_ed25519_key
PidFile $SSH_DIR/sshd.pid
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
AuthorizedKeysFile $SSH_DIR/authorized_keys
UsePAM no
PrintMotd no
Subsystem sftp internal-sftp
EOF
  if ! cmp -s "$SSH_DIR/sshd_config.new" "$SSH_DIR/sshd_config"; then
    mv "$SSH_DIR/sshd_config.new" "$SSH_DIR/sshd_config"
    stop_pidfile "$SSH_DIR/sshd.pid" sshd sshd
  else
    rm "$SSH_DIR/sshd_config.new"
  fi
  cat >"$SSH_DIR/ssh_config" <<EOF
Host lab-ssh $SSH_ADDR
  HostName $SSH_ADDR
  Port $SSH_PORT
  User root
  IdentityFile $SSH_DIR/id_ed25519
  IdentitiesOnly yes
  StrictHostKeyChecking no
  UserKnownHostsFile /dev/null
  LogLevel ERROR
EOF
  if alive "$SSH_DIR/sshd.pid" sshd; then log "sshd runs"; return 0; fi
  mkdir -p /run/sshd
  /usr/sbin/sshd -f "$SSH_DIR/sshd_config" -E "$SSH_DIR/sshd.log"
  wait_for 10 "sshd" alive "$SSH_DIR/sshd.pid" sshd
  log "sshd started on $SSH_ADDR:$SSH_PORT"
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
interpreter_python = $LAB_VENV/bin/python
stdout_callback = default
EOF
  local novavenv; novavenv=$(venv nova)
  NOVA_VENV=$novavenv ENGINE=${ENGINE:-docker} LAB_DIR=$LAB_DIR REPO=$REPO LAB_VENV=$LAB_VENV PW=$pw ENGINE_OWNER=$ENGINE_OWNER \
    $SYS_PY - <<'EOF'
import json, os
L, R = os.environ["LAB_DIR"], os.environ["REPO"]
pw = os.environ["PW"]
std = json.load(open(os.path.join(R, "tests/lab/guests/standard.json")))
hosts = {}
for h, a, pins in (("cmp1", "127.0.0.2", "0-1"), ("cmp2", "127.0.0.3", "0-1")):
    d = os.path.join(L, h)
    hosts[h] = {
        "name": h, "address": a, "libvirt_uri": "qemu+tcp://%s/system" % a, "migrate_address": a,
        "nova_conf": os.path.join(d, "etc/kolla/nova-compute/nova.conf"),
        "nova_conf_allcpus": os.path.join(d, "etc/kolla/nova-compute/nova-allcpus.conf"),
        "vcpu_pin_set": pins, "dir": d, "images_dir": os.path.join(d, "lib/images"),
        "images_dir_in_host": "/var/lib/libvirt/images",
        "libvirtd_pid_file": os.path.join(d, "run/libvirtd.pid"),
        "virtlogd_pid_file": os.path.join(d, "run/virtlogd.pid"),
        "qemu_pid_dir": os.path.join(d, "run/qemu"), "log_dir": os.path.join(d, "log"),
    }
def url(db): return "mysql+pymysql://nova:%s@127.0.0.1/%s" % (pw, db)
dbs = {"nova_api": "nova_api", "nova": "nova", "nova_cell0": "nova_cell0", "placement": "placement", "neutron": "neutron"}
kolla = os.path.join(L, "etc/kolla")
venv = os.environ["LAB_VENV"]
lab = {
    "lab_dir": L, "repo": R,
    "hosts": hosts, "host_names": ["cmp1", "cmp2"],
    "db": {"host": "127.0.0.1", "port": 3306, "socket": os.path.join(L, "mysql/mysqld.sock"),
           "pid_file": os.path.join(L, "mysql/mysqld.pid"), "user": "nova", "password": pw,
           "databases": dbs, "urls": {k: url(v) for k, v in dbs.items()},
           "passwords_file": os.path.join(kolla, "passwords.yml"),
           "nova_conductor_conf": os.path.join(kolla, "nova-conductor/nova.conf"),
           "placement_conf": os.path.join(kolla, "placement-api/placement.conf"),
           "neutron_conf": os.path.join(kolla, "neutron-server/neutron.conf")},
    "containers": {"engine": os.environ["ENGINE"], "engine_owner": os.environ.get("ENGINE_OWNER") or "unknown",
                   "base_image": "numa-repin-lab/base:bookworm", "nova_image": "numa-repin-lab/nova:19.3.2",
                   "names": ["nova_conductor", "nova_compute"], "label": "numa-repin-lab",
                   "run_flags": ["--init", "--network", "host"] + (["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096"] if os.environ["ENGINE"] == "podman" else []),
                   "nova_python": "/var/lib/kolla/venv/bin/python",
                   "nova_site_packages": "/var/lib/kolla/venv/lib/python3.7/site-packages",
                   "nova_compute_host": "cmp1"},
    "ssh": {"address": "127.0.0.4", "port": 8022, "user": "root", "key": os.path.join(L, "ssh/id_ed25519"),
            "config": os.path.join(L, "ssh/ssh_config"), "pid_file": os.path.join(L, "ssh/sshd.pid")},
    "ansible": {"config": os.path.join(L, "ansible.cfg"), "inventory": os.path.join(L, "inventory.yml"),
                "venv": venv, "playbook": os.path.join(venv, "bin/ansible-playbook"),
                "library": os.path.join(R, "library"), "roles_path": os.path.join(R, "roles")},
    "python": {"tools": os.path.join(venv, "bin/python"), "py37": "/root/.pyenv/versions/3.7.16/bin/python3",
               "py27": "/root/.pyenv/versions/2.7.18/bin/python", "nova_venv": os.environ["NOVA_VENV"]},
    "guests": std["guests"], "project_id": std["project_id"], "user_id": std["user_id"],
}
tmp = os.path.join(L, "lab.json.tmp")
with open(tmp, "w") as f:
    json.dump(lab, f, indent=2, sort_keys=True)
os.chmod(tmp, 0o600)
os.rename(tmp, os.path.join(L, "lab.json"))

inv = ["---", "# numa-repin lab inventory (tests/lab/lab.sh)", "all:", "  vars:",
       "    ansible_connection: local", "    ansible_python_interpreter: %s/bin/python" % venv,
       "  children:", "    compute:", "      hosts:"]
for h in ("cmp1", "cmp2"):
    v = hosts[h]
    inv += ["        %s:" % h, "          libvirt_uri: %s" % v["libvirt_uri"], "          nova_conf: %s" % v["nova_conf"],
            "          migrate_address: %s" % v["migrate_address"], "          vcpu_pin_set: '%s'" % v["vcpu_pin_set"]]
    if h != lab["containers"]["nova_compute_host"]:
        # One nova_compute container in the lab, on its host; the Nova patch rollout skips the other.
        inv += ["          nova_patch_containers: {}"]
inv += ["    control:", "      hosts:", "        control:",
        "          nova_conductor_conf: %s" % lab["db"]["nova_conductor_conf"],
        "          kolla_passwords: %s" % lab["db"]["passwords_file"],
        "          placement_conf: %s" % lab["db"]["placement_conf"],
        "          neutron_conf: %s" % lab["db"]["neutron_conf"],
        "          db_host: 127.0.0.1", "          db_port: 3306", "          db_socket: %s" % lab["db"]["socket"],
        "          db_user: nova", "          container_engine: %s" % os.environ["ENGINE"], ""]
with open(os.path.join(L, "inventory.yml"), "w") as f:
    f.write("\n".join(inv))

env = {"LAB_DIR": L, "LAB_JSON": os.path.join(L, "lab.json"), "ANSIBLE_CONFIG": lab["ansible"]["config"],
       "LAB_CMP1_URI": hosts["cmp1"]["libvirt_uri"], "LAB_CMP2_URI": hosts["cmp2"]["libvirt_uri"],
       "LAB_CMP1_NOVA_CONF": hosts["cmp1"]["nova_conf"], "LAB_CMP2_NOVA_CONF": hosts["cmp2"]["nova_conf"],
       "LAB_DB_HOST": "127.0.0.1", "LAB_DB_PORT": "3306", "LAB_DB_SOCKET": lab["db"]["socket"], "LAB_DB_USER": "nova",
       "LAB_DB_PASSWORD": pw, "LAB_CONTAINER_ENGINE": os.environ["ENGINE"], "LAB_NOVA_IMAGE": "numa-repin-lab/nova:19.3.2",
       "LAB_SSH_ADDR": "127.0.0.4", "LAB_SSH_PORT": "8022", "LAB_SSH_KEY": lab["ssh"]["key"],
       "LAB_TOOLS_VENV": venv}
with open(os.path.join(L, "lab.env"), "w") as f:
    f.write("# source me: numa-repin lab settings (tests/lab/lab.sh)\n")
    for k, v in env.items():
        f.write("export %s='%s'\n" % (k, v))
    f.write("export PATH='%s/bin':\"$PATH\"\n" % venv)
os.chmod(os.path.join(L, "lab.env"), 0o600)
EOF
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
  for h in "${HOSTS[@]}"; do
    d=$(hostdir "$h")
    if alive "$d/run/virtlogd.pid" virtlogd; then st ok "$h virtlogd pid $(pidof_file "$d/run/virtlogd.pid")"; else st dead "$h virtlogd"; fi
    if alive "$d/run/libvirtd.pid" libvirtd; then
      if timeout 20 virsh -c "$(uri "$h")" version >/dev/null 2>&1; then
        st ok "$h libvirtd pid $(pidof_file "$d/run/libvirtd.pid") $(uri "$h")"
        local g
        for g in $(virsh_ "$h" list --all --name 2>/dev/null); do
          st info "   guest $g: $(virsh_ "$h" domstate "$g" 2>/dev/null)"
        done
      else
        st dead "$h libvirtd pid $(pidof_file "$d/run/libvirtd.pid") does not answer on $(uri "$h")"
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
  if alive "$SSH_DIR/sshd.pid" sshd; then st ok "sshd pid $(pidof_file "$SSH_DIR/sshd.pid") $SSH_ADDR:$SSH_PORT"; else st dead "sshd"; fi
  [ -f "$LAB_DIR/lab.json" ] && st info "lab.json: $LAB_DIR/lab.json" || st dead "lab.json missing"
  [ $STATUS_BAD = 0 ] && echo "lab: up" || echo "lab: DEGRADED (run: $0 up)"
  return $STATUS_BAD
}

# --------------------------------------------------------------------------------------------- down
stop_host() {
  local h=$1 d; d=$(hostdir "$h")
  local ns="" holder
  holder=$(mount_ns_holder "$h") && ns=$(readlink "/proc/$holder/ns/mnt")
  if alive "$d/run/libvirtd.pid" libvirtd; then
    local g
    local g pids=()
    for g in $(timeout 20 virsh -q -c "$(uri "$h")" list --name 2>/dev/null); do
      timeout 20 virsh -q -c "$(uri "$h")" destroy "$g" >/dev/null 2>&1 &
      pids+=($!)
    done
    [ ${#pids[@]} = 0 ] || wait "${pids[@]}" || true
  fi
  stop_pidfile "$d/run/libvirtd.pid" libvirtd "$h libvirtd"
  stop_pidfile "$d/run/virtlogd.pid" virtlogd "$h virtlogd"
  local f
  for f in "$d"/run/qemu/*.pid; do [ -e "$f" ] && stop_pidfile "$f" qemu-system "$h qemu $(basename "$f" .pid)"; done
  if [ -n "$ns" ]; then # anything else left in the host's namespace is the lab's
    local p
    for p in /proc/[0-9]*; do
      [ "$(readlink "$p/ns/mnt" 2>/dev/null)" = "$ns" ] || continue
      kill -KILL "${p#/proc/}" 2>/dev/null && log "killed leftover pid ${p#/proc/} in $h's namespace" || true
    done
  fi
}
cmd_down() {
  local purge=0; [ "${1:-}" = --purge ] && purge=1
  [ -d "$LAB_DIR" ] || { log "nothing to stop ($LAB_DIR missing)"; return 0; }
  phase containers down_containers "$@"
  local h
  for h in "${HOSTS[@]}"; do phase "$h" stop_host "$h"; done
  phase mariadb stop_pidfile "$DB_PID" mariadbd mariadbd
  phase sshd stop_pidfile "$SSH_DIR/sshd.pid" sshd sshd
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
  phase libvirt do_libvirt
  phase guests do_guests
  phase mariadb do_mariadb
  phase engine do_engine
  phase base-image do_base_image
  phase schemas do_schemas
  phase seed-db do_seed_db
  phase nova-image do_nova_image
  phase containers do_containers
  phase sshd do_sshd
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
  phase guests do_guests
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
