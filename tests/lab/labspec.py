#!/usr/bin/env python3
"""The lab's facts, in one place: its hosts and their addresses, ports, images, names.

Everything else reads them from here:
  - tests/lab/lab.sh:        eval "$(python3 tests/lab/labspec.py shell)"  (bash variables and arrays)
  - tests/lab/write_files.py (lab.json, the inventories, lab.env), tests/lab/seed_db.py,
    tests/lab/render_guest.py, tests/lab/neutron_lab.py:  import labspec
  - the tests read lab.json, which write_files.py writes from these (tests/integration/lablib.py
    imports labspec only for LAB_DIR's default).
Change a fact here and `tests/lab/lab.sh down && tests/lab/lab.sh up` applies it everywhere.

Stdlib only, and Python 2.7 as well as 3.x (render_guest.py runs under both; seed_db.py in the
Nova 19.3.2 venv's Python 3.7).
"""
from __future__ import print_function

import sys

LAB_DIR = "/var/lib/numa-repin-lab"      # default state directory (LAB_DIR overrides it)

# --------------------------------------------------------------------------- hosts and network
# Every separate host: its own network namespace (nrl-<host>) on the bridge, root filesystem, sshd.
NODES = ["control", "cmp1", "cmp2", "cmp3", "ctl27", "cmp4"]
# The computes: libvirtd inside, the Kolla nova_libvirt way.
COMPUTES = ["cmp1", "cmp2", "cmp3"]
# The standard cloud's compute group (inventory.yml): cmp1 and cmp2, where the seeded field cases live.
# cmp3 joins them only in inventory-3computes.yml: the drains whose moves go to two destinations at once.
CLOUD_COMPUTES = ["cmp1", "cmp2"]
# ctl27: a second control host like CentOS 7's, whose only Python is 2.7, for the ansible-core 2.16 run.
CONTROL_PY27 = "ctl27"
# cmp4: a compute whose Nova is installed on the host itself (Ubuntu 18.04's python-nova, under systemd).
HOST_NOVA = "cmp4"
HOST_NOVA_PATH = "/usr/lib/python2.7/dist-packages/nova"
HOST_NOVA_PYTHON = "/usr/bin/python2.7"
HOST_NOVA_SERVICES = ["nova-compute"]
CONTROL_INVENTORY_NAME = "control01"     # the inventory's name of the lab host `control` (kolla-ansible's)

BRIDGE = "nrlab0"                        # the lab's bridge: no uplink; its own address is the deploy host
NET = "10.77.0"                          # a /24
DEPLOY_ADDR = NET + ".1"
ADDR = {"control": NET + ".10", "cmp1": NET + ".11", "cmp2": NET + ".12", "ctl27": NET + ".13",
        "cmp3": NET + ".14", "cmp4": NET + ".15"}
# physnet1: eth1 of every compute, one flat L2 segment on this bridge (no address, no uplink).
PHYS_BRIDGE = "nrphys0"
PHYSNET = "physnet1"
PHYSNET_INTERFACE = "eth1"

# --------------------------------------------------------------------------- SMT NUMA hosts (tests/lab/smt.sh)
# QEMU machines under software emulation (TCG) with their own kernel and Debian root, on BRIDGE:
# multi-socket, SMT, two NUMA nodes each, 2 MiB hugepages on node 1, and layouts that differ, so a
# source's pCPU ids mean other cores and other nodes on the destination. `-cpu Skylake-Server,+ht`:
# with `max`, `qemu64` or `EPYC` the guest kernel shows no thread siblings.
SMT_HOSTS = {
    # 2 sockets x 2 cores x 2 threads; node 0 = socket 0 = CPUs 0-3, node 1 = CPUs 4-7; siblings (0,1) (2,3) ...
    "smt1": {"addr": NET + ".21", "smp": "8,sockets=2,cores=2,threads=2", "nodes": ["0-3", "4-7"],
             "node_mb": [640, 640], "hugepages": {1: 48}, "pin_set": "2-7"},
    # 1 socket x 4 cores x 2 threads, the cores dealt over the nodes: node 0 = CPUs 0-1,4-5, node 1 = 2-3,6-7.
    "smt2": {"addr": NET + ".22", "smp": "8,sockets=1,cores=4,threads=2", "nodes": ["0-1,4-5", "2-3,6-7"],
             "node_mb": [640, 640], "hugepages": {1: 48}, "pin_set": "2-7"},
}
SMT_CPU = "Skylake-Server,+ht"

# --------------------------------------------------------------------------- ports
SSH_PORT = 22
NOVA_SSH_PORT = 8022                     # Kolla's nova_ssh port, also served by each compute's sshd
NOVA_SSH_HOST = "cmp2"                   # lab.json's "ssh": the usual destination's nova_ssh-like endpoint
LIBVIRT_PORT = 16509
MIGRATION_PORTS = {"cmp1": (49152, 49215), "cmp2": (49216, 49279), "cmp3": (49280, 49343)}
DB_PORT = 3306                           # MariaDB on 127.0.0.1 and on the deploy address
RMQ_PORT = 5672                          # RabbitMQ on the deploy address
NEUTRON_PORT = 9696                      # neutron-server in control
KEYSTONE_PORT = 5000                     # Keystone (Stein) in control

# --------------------------------------------------------------------------- Nova on the computes
PIN_SET = {"cmp1": "0-1", "cmp2": "0-1", "cmp3": "0-1"}   # vcpu_pin_set of each compute's nova.conf
RESERVED_HOST_MEMORY_MB = 512
NOVA_COMPUTE_CONF_IN_HOST = "/etc/kolla/nova-compute/nova.conf"
NOVA_COMPUTE_ALLCPUS_CONF_IN_HOST = "/etc/kolla/nova-compute/nova-allcpus.conf"
NOVA_CONDUCTOR_CONF_IN_HOST = "/etc/kolla/nova-conductor/nova.conf"
PASSWORDS_FILE_IN_HOST = "/etc/kolla/passwords.yml"
PLACEMENT_CONF_IN_HOST = "/etc/kolla/placement-api/placement.conf"
NEUTRON_CONF_IN_HOST = "/etc/kolla/neutron-server/neutron.conf"
IMAGES_DIR_IN_HOST = "/var/lib/libvirt/images"

# --------------------------------------------------------------------------- DB, Keystone
DB_USER = "nova"                         # one DB user serves every database
DATABASES = ["nova_api", "nova", "nova_cell0", "placement", "neutron", "keystone"]
KEYSTONE_ADMIN = "admin"
KEYSTONE_PROJECT = "admin"
REGION = "RegionOne"

# --------------------------------------------------------------------------- containers
LABEL = "numa-repin-lab"                 # label of every lab container (value lab; tests' own: test)
BASE_IMAGE = "numa-repin-lab/base:bookworm"
NOVA_IMAGE = "numa-repin-lab/nova:19.3.2"
CONTAINERS = ["nova_conductor", "nova_compute"]
CONTAINER_HOSTS = {"nova_conductor": "control", "nova_compute": "cmp1"}
RUN_FLAGS = ["--init", "--network", "host"]   # `run` flags of every lab container; under podman also:
PODMAN_RUN_FLAGS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096"]
NOVA_PYTHON_IN_IMAGE = "/var/lib/kolla/venv/bin/python"
NOVA_SITE_PACKAGES_IN_IMAGE = "/var/lib/kolla/venv/lib/python3.7/site-packages"


def url(host, port, path=""):
    return "http://%s:%d%s" % (host, port, path)


NEUTRON_URL = url(ADDR["control"], NEUTRON_PORT)
KEYSTONE_URL = url(ADDR["control"], KEYSTONE_PORT, "/v3")


def _shell():
    """bash assignments of the facts lab.sh uses (eval'd by lab.sh)."""
    try:
        from shlex import quote
    except ImportError:  # Python 2.7
        from pipes import quote

    def scalar(name, v):
        return "%s=%s" % (name, quote(str(v)))

    def array(name, vs):
        return "%s=(%s)" % (name, " ".join(quote(str(v)) for v in vs))

    def assoc(name, d):
        return "declare -A %s=(%s)" % (name, " ".join("[%s]=%s" % (k, quote(str(v))) for k, v in sorted(d.items())))

    return [
        scalar("LAB_DIR_DEFAULT", LAB_DIR),
        array("NODES", NODES), array("HOSTS", COMPUTES), array("CLOUD_COMPUTES", CLOUD_COMPUTES),
        scalar("CONTROL_PY27", CONTROL_PY27), scalar("HOST_NOVA", HOST_NOVA),
        scalar("BRIDGE", BRIDGE), scalar("NET", NET), scalar("DEPLOY_ADDR", DEPLOY_ADDR), assoc("ADDR", ADDR),
        scalar("PHYS_BRIDGE", PHYS_BRIDGE), scalar("PHYSNET", PHYSNET), scalar("PHYSNET_INTERFACE", PHYSNET_INTERFACE),
        scalar("SSH_PORT", SSH_PORT), scalar("NOVA_SSH_PORT", NOVA_SSH_PORT), scalar("LIBVIRT_PORT", LIBVIRT_PORT),
        assoc("MIGPORTS", dict((h, "%d %d" % p) for h, p in MIGRATION_PORTS.items())),
        scalar("DB_PORT", DB_PORT), scalar("RMQ_PORT", RMQ_PORT), scalar("NEUTRON_PORT", NEUTRON_PORT),
        scalar("KEYSTONE_PORT", KEYSTONE_PORT), scalar("NEUTRON_URL", NEUTRON_URL), scalar("KEYSTONE_URL", KEYSTONE_URL),
        assoc("PIN_SET", PIN_SET), scalar("RESERVED_HOST_MEMORY_MB", RESERVED_HOST_MEMORY_MB),
        scalar("DB_USER", DB_USER), array("DATABASES", DATABASES), scalar("REGION", REGION),
        scalar("LABEL", LABEL), scalar("BASE_IMAGE", BASE_IMAGE), scalar("NOVA_IMAGE", NOVA_IMAGE),
        array("CONTAINERS", CONTAINERS), assoc("CONTAINER_HOST", CONTAINER_HOSTS),
        array("RUN_FLAGS_ALL", RUN_FLAGS), array("RUN_FLAGS_PODMAN", PODMAN_RUN_FLAGS),
        array("SMT_NAMES", sorted(SMT_HOSTS)), scalar("SMT_CPU", SMT_CPU),
        assoc("SMT_ADDR", dict((h, v["addr"]) for h, v in SMT_HOSTS.items())),
        assoc("SMT_SMP", dict((h, v["smp"]) for h, v in SMT_HOSTS.items())),
        assoc("SMT_NODES", dict((h, " ".join(v["nodes"])) for h, v in SMT_HOSTS.items())),
        assoc("SMT_NODE_MB", dict((h, " ".join(str(m) for m in v["node_mb"])) for h, v in SMT_HOSTS.items())),
        assoc("SMT_HUGEPAGES", dict((h, ",".join("%d:%d" % kv for kv in sorted(v["hugepages"].items())))
                                    for h, v in SMT_HOSTS.items())),
        assoc("SMT_PIN_SET", dict((h, v["pin_set"]) for h, v in SMT_HOSTS.items())),
    ]


if __name__ == "__main__":
    if sys.argv[1:] != ["shell"]:
        sys.exit("usage: labspec.py shell    # the lab's facts as bash assignments, for lab.sh's eval")
    print("\n".join(_shell()))
