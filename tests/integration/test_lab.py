"""The lab itself works (tests/lab/lab.sh up): libvirt hosts, pinned guests, DB schemas and rows, containers,
sshd, the module/playbook runners, and `status` noticing a dead libvirtd (which `up` repairs).

    /var/cache/numa-repin/venvs/lab-py311/bin/pytest -q tests/integration/test_lab.py
"""
import glob
import json
import os
import shlex
import subprocess
import textwrap

import pytest

import lablib

STEIN_TABLES = {
    "nova": ["instances", "instance_extra", "compute_nodes", "migrations", "services"],
    "nova_api": ["cell_mappings", "host_mappings", "instance_mappings", "request_specs"],
    "nova_cell0": ["instances"],
    "placement": ["resource_providers", "inventories", "allocations", "consumers"],
    "neutron": ["ports", "ml2_port_bindings", "networks"],
}


def q(db, sql, args=()):
    with db.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchall()


@pytest.mark.parametrize("host", ["cmp1", "cmp2"])
def test_libvirt_host_answers(lab, host):
    caps = lab.virsh(host, "capabilities").stdout
    assert "<cells num='1'>" in caps
    assert lab.hosts[host]["address"] in lab.uri(host)
    # Each host is its own libvirtd, with its own host uuid.
    own = [line for line in caps.splitlines() if "<uuid>" in line][0]
    other = [h for h in lab.hosts if h != host][0]
    assert own not in lab.virsh(other, "capabilities").stdout


def test_standard_guests_run_pinned(lab):
    for g in lab.data["guests"]:
        host = lab.guest_host(g["uuid"])
        assert host is not None, "standard guest %s is defined nowhere (tests/lab/lab.sh seed)" % g["name"]
        assert lab.domstate(host, g["uuid"]) == "running", g["name"]
        xml = lab.dumpxml(host, g["uuid"])
        assert "<domain type='qemu'" in xml  # TCG
        aff = lab.affinity(host, g["uuid"])
        if host == g["host"]:  # not moved by another test: pinned as seeded
            assert aff["vcpus"] == {i: {p} for i, p in enumerate(g["pins"])}, (g["name"], aff)
            assert aff["emulator"] == set(g["pins"]), (g["name"], aff)


def test_fresh_guest_is_pinned_and_removed(lab, fresh_guest):
    g = fresh_guest("cmp2", [0])
    assert lab.domstate("cmp2", g.name) == "running"
    assert lab.affinity("cmp2", g.name) == {"vcpus": {0: {0}}, "emulator": {0}}
    assert "http://openstack.org/xmlns/libvirt/nova/1.0" in lab.dumpxml("cmp2", g.name)
    g2 = fresh_guest("cmp1", [1, 0], disk_mib=8)
    assert lab.affinity("cmp1", g2.name)["vcpus"] == {0: {1}, 1: {0}}
    assert (lab.images_dir("cmp1") / ("%s.qcow2" % g2.name)).exists()


@pytest.mark.parametrize("disk_mib", [0, 8])
def test_live_migration_between_the_hosts(lab, fresh_guest, disk_mib, tmp_path):
    """The lab's hosts migrate to each other (disk guests by block migration onto a pre-created disk)."""
    g = fresh_guest("cmp1", [1], disk_mib=disk_mib)
    xml = g.xml.replace("cpuset='1'", "cpuset='0'")  # repinned, as the modules do
    path = tmp_path / "dest.xml"
    path.write_text(xml)
    args = ["migrate", "--live", "--p2p", "--persistent", "--undefinesource", "--xml", str(path),
            "--persistent-xml", str(path)]
    if disk_mib:
        lab.create_disk("cmp2", g.name, disk_mib)
        args.append("--copy-storage-all")
    lab.virsh("cmp1", *(args + [g.name, lab.uri("cmp2")]), timeout=120)
    assert lab.guest_host(g.uuid) == "cmp2"
    assert lab.domstate("cmp2", g.name) == "running"
    assert lab.affinity("cmp2", g.name) == {"vcpus": {0: {0}}, "emulator": {0}}
    assert "cpuset='0'" in lab.dumpxml("cmp2", g.name, inactive=True)


def test_db_has_the_stein_schemas(db):
    for schema, tables in STEIN_TABLES.items():
        have = {r[0] for r in q(db, "SELECT table_name FROM information_schema.tables WHERE table_schema=%s",
                                (schema,))}
        missing = set(tables) - have
        assert not missing, "%s lacks %s" % (schema, sorted(missing))
    cells = {r[0] for r in q(db, "SELECT name FROM nova_api.cell_mappings")}
    assert {"cell0", "cell1"} <= cells


def test_seeded_rows(lab, db):
    for g in lab.data["guests"]:
        rows = q(db, "SELECT i.host, i.vcpus, i.memory_mb, i.vm_state, e.numa_topology FROM nova.instances i JOIN"
                     " nova.instance_extra e ON e.instance_uuid=i.uuid WHERE i.uuid=%s AND i.deleted=0", (g["uuid"],))
        assert len(rows) == 1, g["name"]
        host, vcpus, mem, state, numa = rows[0]
        assert (vcpus, mem, state) == (g["vcpus"], g["memory_mib"], "active")
        top = json.loads(numa)
        cell = top["nova_object.data"]["cells"][0]
        if g["numa_format"] == "victoria":
            assert cell["nova_object.version"] == "1.5"
            assert cell["nova_object.data"]["pcpuset"] == list(range(g["vcpus"]))
        else:
            assert cell["nova_object.version"] == "1.4" and "pcpuset" not in cell["nova_object.data"]
        if host == g["host"]:
            assert cell["nova_object.data"]["cpu_pinning_raw"] == {str(i): p for i, p in enumerate(g["pins"])}
        alloc = q(db, "SELECT resource_class_id, used FROM placement.allocations WHERE consumer_id=%s", (g["uuid"],))
        assert (1, g["memory_mib"]) in alloc
        binding = q(db, "SELECT b.host FROM neutron.ml2_port_bindings b JOIN neutron.ports p ON p.id=b.port_id"
                        " WHERE p.device_id=%s", (g["uuid"],))
        assert binding == ((host,),)
    nodes = dict(q(db, "SELECT host, numa_topology FROM nova.compute_nodes WHERE deleted=0"))
    assert set(nodes) == set(lab.data["host_names"])  # every compute, cmp3 too
    c2 = json.loads(nodes["cmp2"])["nova_object.data"]["cells"][0]
    assert c2["nova_object.version"] == "1.3" and c2["nova_object.data"]["cpuset"] == [0, 1]  # cmp2's vcpu_pin_set


def test_labdb_json_is_novas(lab):
    """labdb's JSON (used by fresh_instance_rows) equals what Nova 19.3.2's objects write."""
    code = textwrap.dedent("""
        import json
        from nova import objects
        objects.register_all()
        c = objects.InstanceNUMACell(id=0, cpuset=set([0, 1]), memory=128, pagesize=None,
            cpu_topology=objects.VirtCPUTopology(sockets=1, cores=2, threads=1), cpu_pinning={0: 1, 1: 0},
            cpu_policy='dedicated', cpu_thread_policy=None, cpuset_reserved=None)
        print(objects.InstanceNUMATopology(cells=[c], emulator_threads_policy=None)._to_json())
    """)
    r = subprocess.run([lab.data["python"]["nova_venv"] + "/bin/python", "-c", code], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    nova = json.loads(r.stdout.strip().splitlines()[-1])
    ours = lablib.labdb.instance_numa_primitive({0: 1, 1: 0}, 128)
    assert lablib.labdb.same_primitive(nova, ours), (nova, ours)


def test_fresh_instance_rows(lab, db, fresh_instance_rows):
    u = fresh_instance_rows("cmp2", [0], fmt="victoria")
    numa = q(db, "SELECT numa_topology FROM nova.instance_extra WHERE instance_uuid=%s", (u,))[0][0]
    assert json.loads(numa)["nova_object.data"]["cells"][0]["nova_object.data"]["cpu_pinning_raw"] == {"0": 0}
    assert q(db, "SELECT host FROM nova.instances WHERE uuid=%s", (u,)) == (("cmp2",),)
    assert sorted(q(db, "SELECT resource_class_id, used FROM placement.allocations WHERE consumer_id=%s", (u,))) \
        == [(1, 64), (14, 1)]
    assert q(db, "SELECT COUNT(*) FROM nova_api.instance_mappings WHERE instance_uuid=%s", (u,)) == ((1,),)


def test_containers_run_nova(lab, fresh_container):
    c = lab.data["containers"]
    imp = "import nova.conductor.tasks.live_migrate, nova.virt.libvirt.driver, nova, libvirt; print(nova.__file__)"
    for name in c["names"]:
        assert lab.engine("inspect", "-f", "{{.State.Running}}", name).stdout.strip() == "true"
        r = lab.engine("exec", name, c["nova_python"], "-c", imp)
        assert r.stdout.strip() == c["nova_site_packages"] + "/nova/__init__.py"
    t = fresh_container()
    r = lab.engine("exec", t, c["nova_python"], "-c",
                   "import libvirt; print(len(libvirt.open('%s').listAllDomains()) >= 0)" % lab.uri("cmp1"))
    assert r.stdout.strip() == "True"  # host network: the container reaches the lab's libvirt hosts


def test_sshd_accepts_the_lab_key(lab):
    r = lab.ssh("id -u")
    assert r.returncode == 0 and r.stdout.strip() == "0", r.stderr


def test_run_module_runs_a_library_binary(lab, run_module):
    rc, res = run_module("numa_facts", {"uri": lab.uri("cmp2"), "nova_conf": lab.nova_conf("cmp2")})
    assert isinstance(res, dict)
    assert rc == 0 and not res.get("failed"), res


def test_ansible_playbook_uses_the_lab_inventory(lab, ansible_playbook, tmp_path):
    """Every lab host is reached over SSH and the tasks run there (its own hostname, its own root)."""
    pb = tmp_path / "pb.yml"
    pb.write_text(textwrap.dedent("""
        - hosts: compute:control
          gather_facts: false
          tasks:
            - ansible.builtin.command: cat /etc/hostname
              register: hn
              changed_when: false
            - ansible.builtin.debug:
                msg: "{{ inventory_hostname }} runs on {{ hn.stdout }} via {{ ansible_connection | default('ssh') }} {{ marker }}"
    """))
    r = ansible_playbook(pb, {"marker": "xyzzy"})
    assert r.returncode == 0, r.stdout + r.stderr
    for inv, h in (("cmp1", "cmp1"), ("cmp2", "cmp2"), ("control01", "control")):
        assert "%s runs on %s via ssh xyzzy" % (inv, h) in r.stdout, r.stdout
    assert "Found both group and host with same name" not in r.stdout + r.stderr
    r = ansible_playbook(pb, {"marker": "x"}, check=True, diff=True)
    assert r.returncode == 0, r.stdout + r.stderr
    inv = open(lab.data["ansible"]["inventory"]).read()
    assert inv.count("ansible_connection: local") == 1  # localhost only


@pytest.mark.parametrize("host", ["control", "cmp1", "cmp2"])
def test_hosts_are_separate_old_userlands(lab, host):
    """Each lab host: its own network namespace and address, its own bullseye root (glibc 2.31, no libvirt
    package), its own /proc; a compute has libvirtd's socket in its /run/libvirt (shared the Kolla way) and
    libvirtd on TCP 16509 at its address, and sees only its own guests' QEMUs."""
    n = lab.nodes[host]
    r = lab.ssh("cat /etc/hostname; ldd --version | head -1; ls /usr/lib/x86_64-linux-gnu | grep -c '^libvirt' || true;"
                " ip -4 -o addr show dev eth0; ip route; cat /proc/1/cmdline | tr '\\0' ' '; echo;"
                " test -S /run/libvirt/libvirt-sock && echo SOCKET; true", host=host)
    assert r.returncode == 0, r.stderr
    out = r.stdout.splitlines()
    assert out[0] == host
    assert "2.31" in out[1], out[1]  # bullseye's glibc
    assert out[2] == "0"  # no libvirt library at all
    assert n["address"] + "/24" in out[3]
    assert "default" not in r.stdout  # no route out of the lab's bridge
    assert "hostinit.sh" in out[-2] or "hostinit.sh" in r.stdout  # PID 1 is the host's own init
    if host in lab.hosts:
        assert out[-1] == "SOCKET"
        qemus = lab.ssh("grep -l qemu-system /proc/[0-9]*/comm 2>/dev/null | wc -l", host=host).stdout.strip()
        here = [g for g in lab.virsh(host, "list", "--name").stdout.split() if g]
        assert int(qemus) == len(here), (qemus, here)
    else:
        assert "SOCKET" not in r.stdout


def test_status_detects_a_killed_libvirtd_and_up_repairs_it(lab):
    """Last on purpose: briefly kills cmp2's libvirtd (its guests keep running), then `up` restarts it."""
    st = lab.lab_sh("status")
    assert st.returncode == 0, st.stdout + st.stderr
    pid = lab.daemon_pid("cmp2")
    guest_pids = {g["name"]: lab.qemu_pid("cmp2", g["name"]) for g in lab.data["guests"]
                  if lab.guest_host(g["uuid"]) == "cmp2"}
    subprocess.run(["kill", "-KILL", str(pid)], check=True)
    try:
        st = lab.lab_sh("status")
        assert st.returncode != 0
        assert "DEAD" in st.stdout and "cmp2 libvirtd" in st.stdout, st.stdout
    finally:
        up = lab.lab_sh("up")
    assert up.returncode == 0, up.stdout + up.stderr
    assert "cmp2: libvirtd restarted" in up.stdout, up.stdout
    st = lab.lab_sh("status")
    assert st.returncode == 0, st.stdout
    # libvirtd came back in the same namespace and found the guests QEMU kept running.
    for name, gpid in guest_pids.items():
        assert lab.domstate("cmp2", name) == "running"
        assert lab.qemu_pid("cmp2", name) == gpid


def _hide_libvirt_so_and_run(cmd):
    """Run cmd in a private mount namespace where every libvirt*.so* is /dev/null (not loadable)."""
    libs = sorted(glob.glob("/usr/lib/*/libvirt*.so*") + glob.glob("/usr/lib/libvirt*.so*") +
                  glob.glob("/lib/*/libvirt*.so*"))
    script = "".join("mount --bind /dev/null %s && " % shlex.quote(p) for p in libs)
    # The control proves the hiding works: loading libvirt.so.0 must fail inside the namespace.
    control = "! python3 -c 'import ctypes; ctypes.CDLL(\"libvirt.so.0\")' 2>/dev/null && "
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                           script + control + " ".join(shlex.quote(c) for c in cmd)],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("host", ["cmp1", "cmp2"])
@pytest.mark.parametrize("via", ["tcp", "unix"])
def test_numa_facts_without_libvirt_library(lab, host, via, tmp_path):
    """numa_facts speaks libvirtd's protocol itself: no libvirt.so linked (ldd), and with every libvirt*.so
    made unloadable it still reads the lab host's guests, through the TCP URI and through the unix socket."""
    binary = lab.repo / "library" / "numa_facts"
    ldd = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=True).stdout
    assert "libvirt" not in ldd, ldd
    if via == "tcp":
        uri = lab.uri(host)
        assert uri.startswith("qemu+tcp://")
    else:
        sock = os.path.join(lab.data["lab_dir"], host, "run", "libvirt-sock")
        assert os.path.exists(sock), sock
        uri = "qemu+unix:///system?socket=" + sock
    args = tmp_path / "args.json"
    args.write_text(json.dumps({"uri": uri, "host": host}))
    r = _hide_libvirt_so_and_run([str(binary), str(args)])
    assert r.returncode == 0, (r.stdout, r.stderr)
    out = json.loads(r.stdout)
    numa = out["ansible_facts"]["numa"]
    assert numa["libvirt_uri"] == uri and numa["topology_source"] == "capabilities"
    names = sorted(n for n in lab.virsh(host, "list", "--all", "--name").stdout.split() if n)
    assert sorted(g["name"] for g in numa["guests"]) == names
    assert names, "the lab host has no guests (tests/lab/lab.sh seed)"
    for g in numa["guests"]:
        assert g["uuid"] and g["state"] in ("running", "shutoff", "paused"), g


def test_seed_removes_what_a_killed_run_left(lab):
    """A test guest and a destination claim left by a killed test run would change every later plan: seed
    (and up) remove them and keep the standard guests."""
    g = lab.define_guest("cmp1", "t-left-%s" % os.urandom(3).hex(), [0], start=False)
    try:
        assert lab.guest_host(g.name) == "cmp1"
        assert lab.lab_sh("seed").returncode == 0
        assert lab.guest_host(g.name) is None
        for s in lab.data["guests"]:
            assert lab.guest_host(s["name"]) == s["host"]
    finally:
        lab.remove_guest(g.name)
