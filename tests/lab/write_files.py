"""Write the lab's lab.json, inventory.yml and lab.env (run by `lab.sh up`, phase files).

The lab's facts (hosts, addresses, ports, images, names) come from labspec.py; what the run found
or made (LAB_DIR, the DB password, venvs, the container engine) from the environment lab.sh passes.
lab.json is the one description of the lab that tests (tests/integration/lablib.py) read.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import labspec as S  # noqa: E402

E = os.environ
L, R, pw = E["LAB_DIR"], E["REPO"], E["PW"]
venv, engine = E["LAB_VENV"], E["ENGINE"]
addr = S.ADDR  # host -> address on the lab bridge
computes = S.COMPUTES
cloud_computes = S.CLOUD_COMPUTES  # inventory.yml's compute group; every compute in inventory-3computes.yml
nodes = S.NODES
deploy, kolla = S.DEPLOY_ADDR, E["KOLLA"]
db_host = S.DEPLOY_ADDR  # MariaDB as the lab hosts reach it: on the bridge, at the deploy host's address
ssh_dir = os.path.join(L, "ssh")
key = os.path.join(ssh_dir, "id_ed25519")
std = json.load(open(os.path.join(R, "tests/lab/guests/standard.json")))

KOLLA_COMPUTE_CONF = S.NOVA_COMPUTE_CONF_IN_HOST
CONTROL_INV = S.CONTROL_INVENTORY_NAME  # the inventory's name of the lab host `control`


def node(h):
    d = os.path.join(L, h)
    return {"name": h, "address": addr[h], "dir": d, "root": os.path.join(d, "root"),
            "init_pid_file": os.path.join(d, "init.pid"), "netns": "nrl-" + h,
            "ssh_port": S.SSH_PORT, "nova_ssh_port": S.NOVA_SSH_PORT}


hosts = {}
for h in computes:
    d = os.path.join(L, h)
    hosts[h] = dict(node(h), **{
        # libvirt_uri: how every other machine reaches the host's libvirtd (TCP 16509 on its address);
        # on the host itself modules use its socket, qemu:///system (/run/libvirt/libvirt-sock).
        "libvirt_uri": "qemu+tcp://%s/system" % addr[h], "local_uri": "qemu:///system",
        "migrate_address": addr[h],
        # nova_conf: the file seen from this machine; nova_conf_in_host: the same file on the host.
        "nova_conf": os.path.join(d, "etc/kolla/nova-compute/nova.conf"),
        "nova_conf_in_host": KOLLA_COMPUTE_CONF,
        "nova_conf_allcpus": os.path.join(d, "etc/kolla/nova-compute/nova-allcpus.conf"),
        "nova_conf_allcpus_in_host": S.NOVA_COMPUTE_ALLCPUS_CONF_IN_HOST,
        "vcpu_pin_set": S.PIN_SET[h], "images_dir": os.path.join(d, "lib/images"),
        "images_dir_in_host": S.IMAGES_DIR_IN_HOST,
        # pid files hold pids of the host's own PID namespace (lablib translates them).
        "libvirtd_pid_file": os.path.join(d, "run/libvirtd.pid"),
        "virtlogd_pid_file": os.path.join(d, "run/virtlogd.pid"),
        "qemu_pid_dir": os.path.join(d, "run/qemu"), "log_dir": os.path.join(d, "log"),
    })


def url(db, host=db_host):
    return "mysql+pymysql://nova:%s@%s/%s" % (pw, host, db)


dbs = {k: k for k in S.DATABASES if k != "keystone"}
# Neutron (tests/lab/neutron_lab.py writes neutron.json: network, bridge, the standard guests' ports).
neutron_url = S.NEUTRON_URL
lab = {
    "lab_dir": L, "repo": R,
    "hosts": hosts, "host_names": computes, "cloud_computes": cloud_computes,
    "nodes": {h: node(h) for h in nodes}, "node_names": nodes, "deploy_address": deploy,
    "control": dict(node("control"), **{
        "nova_conductor_conf_in_host": S.NOVA_CONDUCTOR_CONF_IN_HOST,
        "passwords_file_in_host": S.PASSWORDS_FILE_IN_HOST}),
    "db": {"host": "127.0.0.1", "port": S.DB_PORT, "address_for_hosts": db_host,
           "socket": os.path.join(L, "mysql/mysqld.sock"),
           "pid_file": os.path.join(L, "mysql/mysqld.pid"), "user": S.DB_USER, "password": pw,
           "databases": dbs, "urls": {k: url(v) for k, v in dbs.items()},
           "passwords_file": os.path.join(kolla, "passwords.yml"),
           "nova_conductor_conf": os.path.join(kolla, "nova-conductor/nova.conf"),
           "placement_conf": os.path.join(kolla, "placement-api/placement.conf"),
           "neutron_conf": os.path.join(kolla, "neutron-server/neutron.conf")},
    "containers": {"engine": engine, "engine_owner": E.get("ENGINE_OWNER") or "unknown",
                   "base_image": S.BASE_IMAGE, "nova_image": S.NOVA_IMAGE,
                   "names": S.CONTAINERS, "label": S.LABEL,
                   "run_flags": S.RUN_FLAGS + (S.PODMAN_RUN_FLAGS if engine == "podman" else []),
                   "nova_python": S.NOVA_PYTHON_IN_IMAGE,
                   "nova_site_packages": S.NOVA_SITE_PACKAGES_IN_IMAGE,
                   "nova_compute_host": S.CONTAINER_HOSTS["nova_compute"],
                   "nova_conductor_host": S.CONTAINER_HOSTS["nova_conductor"]},
    # cmp4: Nova installed on the host (Ubuntu 18.04's python-nova), run by the systemd unit nova-compute.
    "host_nova": {"host": S.HOST_NOVA, "path": S.HOST_NOVA_PATH, "python": S.HOST_NOVA_PYTHON,
                  "services": S.HOST_NOVA_SERVICES, "inventory": os.path.join(L, "inventory-hostnova.yml")},
    # Inventory names of lab hosts where they differ from the host's own name.
    "inventory_names": {"control": CONTROL_INV},
    # A Kolla nova_ssh-like endpoint: the usual destination's own sshd (port 8022 as Kolla's).
    "ssh": {"address": addr[S.NOVA_SSH_HOST], "port": S.NOVA_SSH_PORT, "user": "root", "key": key,
            "config": os.path.join(ssh_dir, "ssh_config"), "host": S.NOVA_SSH_HOST},
    "ansible": {"config": os.path.join(L, "ansible.cfg"), "inventory": os.path.join(L, "inventory.yml"),
                "inventory_3computes": os.path.join(L, "inventory-3computes.yml"),
                "venv": venv, "playbook": os.path.join(venv, "bin/ansible-playbook"),
                "library": os.path.join(R, "library"), "roles_path": os.path.join(R, "roles")},
    "ansible216": {"inventory": os.path.join(L, "inventory-ansible-2.16.yml"), "venv": E["ANSIBLE216_VENV"],
                   "playbook": os.path.join(E["ANSIBLE216_VENV"], "bin/ansible-playbook"),
                   "control_host": S.CONTROL_PY27, "control_python": "/usr/bin/python2.7"},
    "python": {"tools": os.path.join(venv, "bin/python"), "py37": "/root/.pyenv/versions/3.7.16/bin/python3",
               "py27": "/root/.pyenv/versions/2.7.18/bin/python", "nova_venv": E["NOVA_VENV"]},
    "guests": std["guests"], "project_id": std["project_id"], "user_id": std["user_id"],
    # neutron-server (in control) and its Linux bridge agents: neutron.json is rewritten by `seed`.
    "neutron": {"url": neutron_url, "file": os.path.join(L, "neutron.json"), "physnet_bridge": S.PHYS_BRIDGE,
                "physnet_interface": S.PHYSNET_INTERFACE, "kolla_config_dir": kolla},
    # Keystone (in control): the admin (project admin) has the DB password, as every lab secret.
    "keystone": {"auth_url": S.KEYSTONE_URL, "username": S.KEYSTONE_ADMIN, "password": pw,
                 "project_name": S.KEYSTONE_PROJECT},
}
# The SMT NUMA hosts (tests/lab/smt.sh): their facts for the tests.
smt = S.SMT_HOSTS
lab["smt"] = {"inventory": os.path.join(L, "inventory-smt.yml"),
              "hosts": {h: {"address": v["addr"], "libvirt_uri": "qemu+tcp://%s/system" % v["addr"],
                            "nova_conf": KOLLA_COMPUTE_CONF, "vcpu_pin_set": v["pin_set"], "smp": v["smp"],
                            "nodes": v["nodes"], "hugepages": {str(k): n for k, n in v["hugepages"].items()}}
                        for h, v in sorted(smt.items())}}
tmp = os.path.join(L, "lab.json.tmp")
with open(tmp, "w") as f:
    json.dump(lab, f, indent=2, sort_keys=True)
os.chmod(tmp, 0o600)
os.rename(tmp, os.path.join(L, "lab.json"))

# The inventory: every host over SSH (its own sshd, the lab key); only localhost is local.
head = ["---", "# numa-repin lab inventory (tests/lab/lab.sh): separate hosts, reached over SSH", "all:",
        "  vars:",
        "    ansible_user: root",
        "    ansible_ssh_private_key_file: %s" % key,
        "    ansible_ssh_common_args: '-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR'",
        "    ansible_python_interpreter: /usr/bin/python3",
        "    container_engine: %s" % engine,
        "  hosts:",
        "    localhost:",
        "      ansible_connection: local",
        "      ansible_python_interpreter: %s/bin/python" % venv,
        "  children:", "    compute:", "      hosts:"]


def compute_lines(h):
    v = hosts[h]
    out = ["        %s:" % h, "          ansible_host: %s" % v["address"],
           "          libvirt_uri: %s" % v["libvirt_uri"], "          nova_conf: %s" % KOLLA_COMPUTE_CONF,
           "          migrate_address: %s" % v["migrate_address"], "          vcpu_pin_set: '%s'" % v["vcpu_pin_set"]]
    if h != lab["containers"]["nova_compute_host"]:
        # One nova_compute container in the lab, on its host; the Nova patch rollout skips the others.
        out += ["          nova_patch_containers: {}"]
    return out


# The control host goes by kolla-ansible's multinode name: a host named like its group ("control")
# makes Ansible warn on every run.
tail = ["    control:", "      hosts:", "        %s:" % CONTROL_INV,
        "          ansible_host: %s" % addr["control"],
        "          nova_conductor_conf: %s" % S.NOVA_CONDUCTOR_CONF_IN_HOST,
        "          kolla_passwords: %s" % S.PASSWORDS_FILE_IN_HOST,
        "          placement_conf: %s" % S.PLACEMENT_CONF_IN_HOST,
        "          neutron_conf: %s" % S.NEUTRON_CONF_IN_HOST, ""]
inv = head + [x for h in cloud_computes for x in compute_lines(h)] + tail
with open(os.path.join(L, "inventory.yml"), "w") as f:
    f.write("\n".join(inv))
# The same cloud with every lab compute (cmp3 too) in the compute group: drains with two destinations.
inv3 = head + [x for h in computes for x in compute_lines(h)] + tail
with open(os.path.join(L, "inventory-3computes.yml"), "w") as f:
    f.write("\n".join(inv3).replace("reached over SSH", "reached over SSH; every compute"))

# The same cloud for ansible-core 2.16 (the last release that manages Python 2.7 and 3.6 hosts): its
# control host is ctl27, whose only Python is 2.7 (as on CentOS 7), with the same /etc/kolla.
inv216 = "\n".join(inv).replace("          ansible_host: %s\n" % addr["control"],
                                "          ansible_host: %s\n          ansible_python_interpreter: /usr/bin/python2.7\n"
                                % addr[S.CONTROL_PY27])
assert addr[S.CONTROL_PY27] in inv216
with open(os.path.join(L, "inventory-ansible-2.16.yml"), "w") as f:
    f.write(inv216.replace("reached over SSH", "reached over SSH; control is ctl27 (Python 2.7 only)"))

# cmp4 (Nova installed on the host), with inventory.yml for the patch rollout: -i inventory.yml -i this.
hn = lab["host_nova"]
invhn = head[:head.index("  hosts:")] + ["  children:", "    compute:", "      hosts:"] + [
    "        %s:" % hn["host"], "          ansible_host: %s" % addr[hn["host"]],
    "          nova_patch_containers: {}", "          nova_patch_host_installed:",
    "            - path: %s" % hn["path"], "              python: %s" % hn["python"],
    "              services: [%s]" % ", ".join(hn["services"]),
    "              parts: [compute/, virt/, numa_repin_patch.py]", ""]
with open(hn["inventory"], "w") as f:
    f.write("\n".join(invhn).replace("reached over SSH", "reached over SSH; cmp4, whose Nova is installed on the host"))

# The SMT NUMA hosts (tests/lab/smt.sh) as the compute group, with the same control host.
invsmt = head + [x for h in sorted(smt) for x in [
    "        %s:" % h, "          ansible_host: %s" % smt[h]["addr"],
    "          libvirt_uri: qemu+tcp://%s/system" % smt[h]["addr"], "          nova_conf: %s" % KOLLA_COMPUTE_CONF,
    "          migrate_address: %s" % smt[h]["addr"], "          vcpu_pin_set: '%s'" % smt[h]["pin_set"],
    "          nova_patch_containers: {}"]] + tail
with open(lab["smt"]["inventory"], "w") as f:
    f.write("\n".join(invsmt).replace("reached over SSH", "reached over SSH; the computes are the SMT NUMA hosts"))
env = {"LAB_DIR": L, "LAB_JSON": os.path.join(L, "lab.json"), "ANSIBLE_CONFIG": lab["ansible"]["config"],
       "LAB_CMP1_URI": hosts["cmp1"]["libvirt_uri"], "LAB_CMP2_URI": hosts["cmp2"]["libvirt_uri"],
       "LAB_CMP1_NOVA_CONF": hosts["cmp1"]["nova_conf"], "LAB_CMP2_NOVA_CONF": hosts["cmp2"]["nova_conf"],
       "LAB_DB_HOST": "127.0.0.1", "LAB_DB_PORT": str(S.DB_PORT), "LAB_DB_SOCKET": lab["db"]["socket"],
       "LAB_DB_USER": S.DB_USER,
       "LAB_DB_PASSWORD": pw, "LAB_CONTAINER_ENGINE": engine, "LAB_NOVA_IMAGE": S.NOVA_IMAGE,
       "LAB_SSH_CONFIG": lab["ssh"]["config"], "LAB_SSH_KEY": key, "LAB_TOOLS_VENV": venv}
with open(os.path.join(L, "lab.env"), "w") as f:
    f.write("# source me: numa-repin lab settings (tests/lab/lab.sh)\n")
    for k, v in env.items():
        f.write("export %s='%s'\n" % (k, v))
    f.write("export PATH='%s/bin':\"$PATH\"\n" % venv)
os.chmod(os.path.join(L, "lab.env"), 0o600)
