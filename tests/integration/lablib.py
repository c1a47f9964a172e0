"""Helpers for integration tests against the real lab (tests/lab/lab.sh up). Python 3.11, PyMySQL.

Everything a test needs about the lab is in lab.json (LAB_JSON, default $LAB_DIR/lab.json,
LAB_DIR default /var/lib/numa-repin-lab); `Lab` wraps it. The fixtures in conftest.py are thin wrappers of these.
"""
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid as uuidlib
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LAB_SH = REPO / "tests" / "lab" / "lab.sh"
sys.path.insert(0, str(REPO / "tests" / "lab"))
import keystone_lab  # noqa: E402
import labdb  # noqa: E402  (shared with tests/lab/seed_db.py)
import labspec  # noqa: E402  (the lab's facts; tests read them from lab.json, which lab.sh writes from these)
import render_guest  # noqa: E402

LAB_DIR = os.environ.get("LAB_DIR", labspec.LAB_DIR)
LAB_JSON = os.environ.get("LAB_JSON", os.path.join(LAB_DIR, "lab.json"))


BOOT_SECTOR = bytes.fromhex(
    # 16-bit: cli; ds=0; lgdt; cr0.PE=1; ljmp to 32-bit flat code, which loops forever:
    #   edi=0x200000; ecx=8 MiB/4; eax=ebx; rep stosl; inc ebx  -> rewrites 8 MiB of RAM with a new pattern
    # (assembled with GNU as from bs.S in the commit message of this test; GDT: null, code, data, flat 4 GiB)
    "fa31c08ed80f0116507c0f20c06683c8010f22c066ea1c7c0000080066b810008ed88ec031dbbf00002000b90000200089d8f3ab"
    "43ebef900000000000000000ffff0000009acf00ffff00000092cf001700387c")


class LabNotUp(Exception):
    pass


def cpuset(spec):
    """'0-2,5' -> {0, 1, 2, 5}"""
    return render_guest._expand(spec)


class Lab:
    """The lab as lab.json describes it (`lab.data` is the raw dict)."""

    def __init__(self, data):
        self.data = data
        self.hosts = data["hosts"]          # the computes
        self.nodes = data["nodes"]          # every separate lab host (control, cmp1, cmp2)
        self.db_info = data["db"]
        # The checkout these tests belong to (its library/ and roles/), not the one that ran `lab.sh up`:
        # a worktree's tests run its own binaries against the shared lab.
        self.repo = REPO
        self.lab_repo = Path(data["repo"])

    @classmethod
    def load(cls, path=LAB_JSON, check=True):
        if not os.path.exists(path):
            raise LabNotUp("the lab is not up: %s is missing. Start it with: %s up" % (path, LAB_SH))
        lab = cls(json.load(open(path)))
        if check:
            lab.check()
        return lab

    def check(self):
        """Quick liveness: both libvirtds answer and the DB accepts the nova user."""
        bad = []
        for h in self.hosts:
            r = self.virsh(h, "version", check=False, timeout=30)
            if r.returncode != 0:
                bad.append("%s libvirtd (%s): %s" % (h, self.uri(h), r.stderr.strip()))
        try:
            self.connect_db().close()
        except Exception as e:  # noqa: BLE001
            bad.append("MariaDB at %s:%s: %s" % (self.db_info["host"], self.db_info["port"], e))
        if bad:
            raise LabNotUp("the lab is not (fully) up: %s. Repair it with: %s up (then %s status)"
                           % ("; ".join(bad), LAB_SH, LAB_SH))

    # ------------------------------------------------------------------ libvirt
    def uri(self, host):
        return self.hosts[host]["libvirt_uri"]

    def nova_conf(self, host):
        return self.hosts[host]["nova_conf"]

    def virsh(self, host, *args, check=True, timeout=120):
        r = subprocess.run(["virsh", "-q", "-c", self.uri(host)] + [str(a) for a in args],
                           capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise RuntimeError("virsh -c %s %s: %s" % (self.uri(host), " ".join(map(str, args)), r.stderr.strip()))
        return r

    def guest_host(self, name_or_uuid):
        """The lab host that has the guest defined, or None."""
        for h in self.hosts:
            if self.virsh(h, "dominfo", name_or_uuid, check=False).returncode == 0:
                return h
        return None

    def domstate(self, host, name):
        return self.virsh(host, "domstate", name).stdout.strip()

    def dumpxml(self, host, name, inactive=False):
        return self.virsh(host, "dumpxml", *(["--inactive"] if inactive else []), name).stdout

    def init_pid(self, host):
        """PID (on this machine) of the lab host's PID 1: the child of the `unshare` in its init.pid."""
        u = int(Path(self.nodes[host]["init_pid_file"]).read_text().strip())
        return int(Path("/proc/%d/task/%d/children" % (u, u)).read_text().split()[0])

    def host_pid(self, host, ns_pid):
        """This machine's PID of the process that is `ns_pid` in the lab host's own PID namespace."""
        ns = os.readlink("/proc/%d/ns/pid" % self.init_pid(host))
        for p in Path("/proc").iterdir():
            if not p.name.isdigit():
                continue
            try:
                if os.readlink(str(p / "ns/pid")) != ns:
                    continue
                for line in (p / "status").read_text().splitlines():
                    if line.startswith("NSpid:") and line.split()[-1] == str(ns_pid):
                        return int(p.name)
            except OSError:
                continue
        raise LookupError("no process %s in %s's PID namespace" % (ns_pid, host))

    def qemu_pid(self, host, name):
        """PID, on this machine, of the guest's QEMU (libvirt's pid file holds the pid in the host's namespace)."""
        if re.match(r"^[0-9a-f-]{36}$", name):
            name = self.virsh(host, "domname", name).stdout.strip()
        p = Path(self.hosts[host]["qemu_pid_dir"]) / ("%s.pid" % name)
        return self.host_pid(host, int(p.read_text().strip()))

    def daemon_pid(self, host, daemon="libvirtd"):
        """PID, on this machine, of the host's libvirtd (or virtlogd)."""
        f = Path(self.hosts[host]["%s_pid_file" % daemon])
        return self.host_pid(host, int(f.read_text().strip()))

    def affinity(self, host, name):
        """The real pinning, read from the kernel (no cgroups here: libvirt pins by affinity).
        Returns {"vcpus": {vcpu: {pcpus}}, "emulator": {pcpus}} from /proc/<qemu>/task/*/{comm,status}."""
        pid = self.qemu_pid(host, name)
        vcpus, emulator = {}, None
        for t in sorted(Path("/proc/%d/task" % pid).iterdir()):
            comm = (t / "comm").read_text().strip()
            allowed = None
            for line in (t / "status").read_text().splitlines():
                if line.startswith("Cpus_allowed_list:"):
                    allowed = cpuset(line.split(":", 1)[1].strip())
            m = re.match(r"CPU (\d+)/", comm)
            if m:
                vcpus[int(m.group(1))] = allowed
            elif t.name == str(pid):
                emulator = allowed
        return {"vcpus": vcpus, "emulator": emulator}

    def wait_running(self, host, name, timeout=30):
        end = time.time() + timeout
        while time.time() < end:
            if self.domstate(host, name) == "running":
                return
            time.sleep(0.2)
        raise TimeoutError("%s on %s is %s" % (name, host, self.domstate(host, name)))

    def images_dir(self, host):
        """Where the host's /var/lib/libvirt/images lives on the machine."""
        return Path(self.hosts[host]["images_dir"])

    def create_disk(self, host, name, size_mib=16):
        """A qcow2 disk for guest `name` in the host's images dir; returns its path as libvirt sees it.
        (For a block migration, create it on the destination too, same size, before migrating.)"""
        p = self.images_dir(host) / ("%s.qcow2" % name)
        if not p.exists():
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(p), "%dM" % size_mib], check=True)
        return "%s/%s.qcow2" % (self.hosts[host]["images_dir_in_host"], name)

    def define_xml(self, host, xml):
        """virsh define of a domain XML text on the host."""
        with tempfile.NamedTemporaryFile("w", suffix=".xml", delete=False) as f:
            f.write(xml)
        try:
            self.virsh(host, "define", f.name)
        finally:
            os.unlink(f.name)

    def define_guest(self, host, name, pins, vcpus=None, memory_mib=64, disk_mib=0, uuid=None, start=True,
                     nodeset="0"):
        """Define (and start) a pinned TCG guest; pins: one pCPU (or cpuset string) per vCPU."""
        vcpus = vcpus or len(pins)
        uuid = uuid or str(uuidlib.uuid4())
        disk = self.create_disk(host, name, disk_mib) if disk_mib else None
        xml = render_guest.render(name, uuid, vcpus, list(pins), memory_mib, disk, nodeset)
        self.define_xml(host, xml)
        if start:
            self.virsh(host, "start", name)
        return Guest(name=name, uuid=uuid, host=host, uri=self.uri(host), vcpus=vcpus, pins=list(pins),
                     memory_mib=memory_mib, disk_path=disk, xml=xml)

    def busy_guest(self, host, pins, once=False):
        """A guest that dirties 8 MiB of memory in a tight loop (a boot sector), on a raw disk outside the
        per-host bind mounts, seen by every lab host, read-only (libvirt then calls the migration safe without a
        shared filesystem). Migrations of it converge only with enough bandwidth.
        once=True: it fills the 8 MiB once (not with zeros, which migrate for free) and halts: an idle guest
        whose migration takes 8 MiB / bandwidth, and then converges. Returns (name, cleanup)."""
        name = "t-busy-%s" % os.urandom(3).hex()
        shared = Path(self.data["lab_dir"]) / "repin-test-shared"
        shared.mkdir(parents=True, exist_ok=True)
        img = shared / ("%s.img" % name)
        code = BOOT_SECTOR
        if once:  # mov eax,ebx; rep stosl; inc ebx; jmp loop  ->  not eax; rep stosl; hlt; jmp hlt
            assert code.count(bytes.fromhex("89d8f3ab43ebef")) == 1
            code = code.replace(bytes.fromhex("89d8f3ab43ebef"), bytes.fromhex("f7d0f3abf4ebfd"))
        sector = code + b"\0" * (510 - len(code)) + b"\x55\xaa"
        img.write_bytes(sector + b"\0" * (1024 * 1024 - 512))
        xml = render_guest.render(name, None, len(pins), list(pins), 64, str(img)).replace(
            "type='qcow2'", "type='raw'").replace("<target dev='vda'", "<readonly/>\n      <target dev='vda'")
        self.define_xml(host, xml)
        self.virsh(host, "start", name)

        def cleanup():
            self.remove_guest(name)
            img.unlink(missing_ok=True)
        time.sleep(1.0)  # let it boot into the loop
        return name, cleanup

    def remove_guest(self, name):
        """Destroy and undefine the guest wherever it is (it may have migrated); delete its disk files."""
        for h in self.hosts:
            if self.virsh(h, "dominfo", name, check=False).returncode == 0:
                self.virsh(h, "destroy", name, check=False)
                self.virsh(h, "undefine", name, check=False)
            d = self.images_dir(h) / ("%s.qcow2" % name)
            if d.exists():
                d.unlink()

    # ------------------------------------------------------------------ DB
    def connect_db(self, database=None, autocommit=True):
        import pymysql
        return pymysql.connect(host=self.db_info["host"], port=self.db_info["port"], user=self.db_info["user"],
                               password=self.db_info["password"], database=database, autocommit=autocommit,
                               charset="utf8", connect_timeout=10)

    # Rows a running service rewrites by itself: the L2 agents' heartbeats (every report_interval).
    LIVE_TABLES = {("neutron", "agents")}

    def db_fingerprint(self, schemas=("nova", "nova_api", "placement", "neutron")):
        """Every table's CHECKSUM and AUTO_INCREMENT: equal before and after means nothing was written, not even
        a rolled-back INSERT (InnoDB does not give back the AUTO_INCREMENT step)."""
        with self.connect_db() as conn, conn.cursor() as c:
            c.execute("SELECT TABLE_SCHEMA, TABLE_NAME, AUTO_INCREMENT FROM information_schema.TABLES WHERE"
                      " TABLE_SCHEMA IN (%s) AND TABLE_TYPE='BASE TABLE'" % ",".join(["%s"] * len(schemas)), schemas)
            tables = c.fetchall()
            out = {}
            for schema, name, auto in tables:
                if (schema, name) in self.LIVE_TABLES:
                    continue
                c.execute("CHECKSUM TABLE `%s`.`%s`" % (schema, name))
                out["%s.%s" % (schema, name)] = (c.fetchone()[1], auto)
        return out

    @staticmethod
    def fingerprint_diff(before, after):
        return {t: (before.get(t), after.get(t)) for t in set(before) | set(after) if before.get(t) != after.get(t)}

    def nova_accounting(self, nodes=None):
        """Nova 19.3.2's own resource-tracker accounting over the lab DB (tests/nova_objects/node_accounting.py):
        {node: {"errors": [...], "mismatch": [...], "pinned": {...}}}."""
        venv = subprocess.run([str(REPO / "tests/lab/venv.sh"), "nova"], capture_output=True, text=True,
                              check=True).stdout.strip()
        req = {"db": {k: self.db_info[k] for k in ("host", "port", "user", "password")}, "nodes": nodes}
        p = subprocess.run([f"{venv}/bin/python", str(REPO / "tests/nova_objects/node_accounting.py")],
                           input=json.dumps(req), capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr[-2000:]
        return json.loads(p.stdout.strip().splitlines()[-1])

    def assert_nova_accepts_nodes(self, nodes=None):
        """Zero errors and zero mismatches in Nova's own accounting of these nodes (all when None)."""
        r = self.nova_accounting(nodes)
        bad = {n: v for n, v in r.items() if v["errors"] or v["mismatch"]}
        assert not bad, json.dumps(bad, indent=1)
        return r

    def insert_instance_rows(self, conn, host, pins, uuid=None, name=None, vcpus=None, memory_mb=64, fmt="stein",
                             allocations=True, port=True):
        """Instance rows like Nova's (labdb.insert_instance), plus placement allocations on the host's provider
        and a bound neutron port. pins: {vcpu: pcpu} or a list (vCPU i -> pins[i]). Returns the uuid."""
        if isinstance(pins, (list, tuple)):
            pins = {i: p for i, p in enumerate(pins)}
        uuid = uuid or str(uuidlib.uuid4())
        name = name or "t-%s" % uuid[:8]
        vcpus = vcpus or len(pins)
        with conn.cursor() as cur:
            labdb.insert_instance(cur, uuid, name, host, pins, vcpus, memory_mb, fmt=fmt,
                                  project_id=self.data["project_id"], user_id=self.data["user_id"])
            if allocations:
                cur.execute("SELECT uuid FROM nova.compute_nodes WHERE host=%s AND deleted=0", (host,))
                rp = cur.fetchone()[0]
                cls = labdb.PCPU if fmt == "victoria" else labdb.VCPU
                labdb.set_allocations(cur, uuid, rp, {cls: vcpus, labdb.MEMORY_MB: memory_mb},
                                      self.data["project_id"], self.data["user_id"])
            if port:
                labdb.insert_port(cur, uuid, host, self.data["project_id"])
        conn.commit()
        return uuid

    def delete_instance_rows(self, conn, uuid):
        with conn.cursor() as cur:
            labdb.delete_instance(cur, uuid)
        conn.commit()

    # ------------------------------------------------------------------ modules, ansible
    def run_module(self, name, args, check_mode=False, diff=False, timeout=600):
        """Run <repo>/library/<name> <args.json> like Ansible does. Returns (rc, result dict); a module that prints
        no JSON gives {"failed": True, "msg": ..., "stdout": ..., "stderr": ...}."""
        path = self.repo / "library" / name
        if not path.exists():
            raise FileNotFoundError("no module %s (build and install the binaries into library/)" % path)
        a = dict(args)
        if check_mode:
            a.setdefault("_ansible_check_mode", True)
        if diff:
            a.setdefault("_ansible_diff", True)
        with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="args-%s-" % name, delete=False) as f:
            json.dump(a, f)
        try:
            r = subprocess.run([str(path), f.name], capture_output=True, text=True, timeout=timeout)
        finally:
            os.unlink(f.name)
        return module_result(r)

    def numa_facts(self, host, nova_conf=None):
        """ansible_facts.numa of lab compute `host`: numa_facts on its libvirt URI with its nova.conf (or
        `nova_conf`, e.g. a variant written by the test), reported under the host's lab name; asserts it ran."""
        rc, res = self.run_module("numa_facts", {"uri": self.uri(host), "nova_conf": nova_conf or self.nova_conf(host),
                                                 "host": host})
        assert rc == 0, res
        return res["ansible_facts"]["numa"]

    def ansible_playbook(self, playbook, extra_vars=None, check=False, diff=False, limit=None, timeout=1800,
                         extra_args=(), ansible="ansible", inventory=None, inventory_path=None):
        """ansible-playbook with the lab inventory and ANSIBLE_CONFIG; returns the CompletedProcess (text).
        ansible="ansible216": ansible-core 2.16 with its inventory (control is ctl27, Python 2.7 only).
        inventory="inventory_3computes": another inventory of lab.json's "ansible" (cmp3 in the compute group);
        inventory_path: any inventory file."""
        an = self.data["ansible"]
        alt = self.data[ansible]
        env = dict(os.environ, ANSIBLE_CONFIG=an["config"], ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0",
                   ANSIBLE_LIBRARY=str(self.repo / "library"), ANSIBLE_ROLES_PATH=str(self.repo / "roles"))
        inv = inventory_path or (an[inventory] if inventory else alt["inventory"])
        cmd = [alt["playbook"], "-i", str(inv), str(playbook)]
        tmp = None
        if extra_vars:
            with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
                json.dump(extra_vars, f)
            tmp = f.name
            cmd += ["-e", "@" + tmp]
        if check:
            cmd.append("--check")
        if diff:
            cmd.append("--diff")
        if limit:
            cmd += ["--limit", limit]
        cmd += list(extra_args)
        try:
            return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=str(self.repo))
        finally:
            if tmp:
                os.unlink(tmp)

    # ------------------------------------------------------------------ containers, ssh
    def engine(self, *args, check=True, timeout=300):
        r = subprocess.run([self.data["containers"]["engine"]] + [str(a) for a in args],
                           capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise RuntimeError("%s %s: %s" % (self.data["containers"]["engine"], " ".join(map(str, args)),
                                              r.stderr.strip()))
        return r

    def start_container(self, name=None, image=None, volumes=(), labels=None, flags=(), command=("sleep", "infinity"),
                        prefix="nrl-test"):
        """A fresh long-lived container of the lab's Nova image (or `image`), host network, --init, with extra
        `run` flags and a command (default: sleep). Labelled numa-repin-lab=test so `lab.sh down` removes it if a
        test does not. Returns its name (`name`, or <prefix>-<8 hex>)."""
        c = self.data["containers"]
        name = name or "%s-%s" % (prefix, uuidlib.uuid4().hex[:8])
        cmd = ["run", "-d"] + c["run_flags"] + ["--name", name, "--label", "%s=test" % c["label"]]
        for k, v in (labels or {}).items():
            cmd += ["--label", "%s=%s" % (k, v)]
        for v in volumes:
            cmd += ["-v", v]
        self.engine(*(cmd + list(flags) + [image or c["nova_image"]] + list(command)))
        return name

    def container_running(self, name):
        """The container exists and runs (its engine says so)."""
        return self.engine("inspect", "-f", "{{.State.Running}}", name).stdout.strip() == "true"

    def nova_dir(self):
        """The nova package inside the lab's Nova image (its venv's site-packages/nova)."""
        return self.data["containers"]["nova_site_packages"] + "/nova"

    def patch_leftovers(self, name):
        """Backup copies (*.numa-repin.orig) deploy_patched_nova left in container `name`'s nova tree."""
        return self.engine("exec", name, "sh", "-c", "find %s -name '*.numa-repin.orig'" % self.nova_dir()).stdout.split()

    def remove_container(self, name):
        self.engine("rm", "-f", name, check=False)

    def ssh(self, command, timeout=60, host=None):
        """Run `command` on a lab host over SSH (default: the lab's nova_ssh-like endpoint, data["ssh"])."""
        s = self.data["ssh"]
        if host is None:
            target, port = "%s@%s" % (s["user"], s["address"]), s["port"]
        else:
            target, port = "root@%s" % self.nodes[host]["address"], self.nodes[host]["ssh_port"]
        return subprocess.run(["ssh", "-F", s["config"], "-i", s["key"], "-p", str(port), target, command],
                              capture_output=True, text=True, timeout=timeout)

    def run_module_on(self, host, name, args, check_mode=False, timeout=600):
        """Run <repo>/library/<name> on lab host `host` the way Ansible does: copy the binary and the args
        file there over SSH, execute it there. Returns (rc, result dict) like run_module."""
        path = self.repo / "library" / name
        a = dict(args)
        if check_mode:
            a.setdefault("_ansible_check_mode", True)
        s = self.data["ssh"]
        tag = uuidlib.uuid4().hex[:8]
        remote = "/tmp/numa-repin-%s-%s" % (name, tag)
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(a, f)
        try:
            addr = self.nodes[host]["address"]
            subprocess.run(["scp", "-q", "-F", s["config"], "-i", s["key"], str(path), f.name,
                            "root@%s:/tmp/" % addr], check=True, capture_output=True, timeout=60)
            cmd = "mv /tmp/%s %s && mv /tmp/%s %s.json && %s %s.json; rc=$?; rm -f %s %s.json; exit $rc" % (
                name, remote, os.path.basename(f.name), remote, remote, remote, remote, remote)
            r = self.ssh(cmd, timeout=timeout, host=host)
        finally:
            os.unlink(f.name)
        return module_result(r)

    # ------------------------------------------------------------------------------------------- neutron
    def neutron_json(self):
        """tests/lab/neutron_lab.py's record: network, bridge, the standard guests' ports (seed rewrites it)."""
        with open(self.data["neutron"]["file"]) as f:
            return json.load(f)

    def keystone_token(self):
        """An admin token from the lab's Keystone (cached; Keystone's tokens live an hour)."""
        if getattr(self, "_token", None) and time.time() - self._token[1] < 1800:
            return self._token[0]
        k = self.data["keystone"]
        self._token = (keystone_lab.admin_token(k["auth_url"], k["password"], k["username"], k["project_name"]),
                       time.time())
        return self._token[0]

    def neutron_api(self, method, path, body=None):
        """neutron-server's API as the cloud's admin: (HTTP status, decoded body or None)."""
        import urllib.error
        import urllib.request
        req = urllib.request.Request(self.data["neutron"]["url"] + "/v2.0" + path, method=method,
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Content-Type": "application/json", "X-Auth-Token": self.keystone_token()})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                raw = r.read()
                return r.status, (json.loads(raw) if raw else None)
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def port_of(self, instance_uuid):
        """The instance's one Neutron port, as neutron-server reports it."""
        st, body = self.neutron_api("GET", "/ports?device_id=" + instance_uuid)
        assert st == 200 and len(body["ports"]) == 1, (st, body)
        return body["ports"][0]

    def port_bindings(self, port_id):
        """{host: status} of every binding of the port (ACTIVE / INACTIVE)."""
        st, body = self.neutron_api("GET", "/ports/%s/bindings" % port_id)
        assert st == 200, (st, body)
        return {b["host"]: b["status"] for b in body["bindings"]}

    def wait_port(self, instance_uuid, host, status="ACTIVE", timeout=60):
        """The instance's port bound to host with this status (the agent reports a device up within seconds)."""
        deadline = time.time() + timeout
        while True:
            p = self.port_of(instance_uuid)
            if p["binding:host_id"] == host and p["status"] == status:
                return p
            if time.time() > deadline:
                raise AssertionError("port of %s: bound to %s, %s after %d s (wanted %s on %s)" % (
                    instance_uuid, p["binding:host_id"], p["status"], timeout, status, host))
            time.sleep(1)

    def bridge_members(self, host, bridge):
        """Interfaces in a Linux bridge of a lab host (its network namespace's sysfs); None if no such bridge."""
        r = subprocess.run(["ip", "netns", "exec", self.nodes[host]["netns"], "ls", "/sys/class/net/%s/brif" % bridge],
                           capture_output=True, text=True)
        return set(r.stdout.split()) if r.returncode == 0 else None

    def lab_sh(self, *args, timeout=1200):
        return subprocess.run(["bash", str(LAB_SH)] + list(args), capture_output=True, text=True, timeout=timeout,
                              env=dict(os.environ, LAB_DIR=self.data["lab_dir"]))


def rollout_args(backup_dir, health_timeout_s=30, host_nova=None, **kw):
    """deploy_patched_nova's arguments as the rollout tests pass them: backup_dir (a path), a health timeout,
    a host-installed Nova's path, python and services (host_nova: lab.json's "host_nova"), then the test's own
    (containers=, patch_dir=, state=, ...). Paths become strings; a None value is left out (the module's default)."""
    a = {"backup_dir": str(backup_dir), "health_timeout_s": health_timeout_s}
    if host_nova is not None:
        a.update(path=host_nova["path"], python=host_nova["python"], services=host_nova["services"])
    a.update((k, str(v) if isinstance(v, os.PathLike) else v) for k, v in kw.items() if v is not None)
    return a


def backup_files(backup_dir):
    """Every file deploy_patched_nova wrote under its backup_dir but its lock."""
    return [p for p in Path(backup_dir).rglob("*") if p.is_file() and p.name != ".rollout.lock"]


def module_result(r):
    """(rc, result dict) of a finished module process; one that printed no JSON object gives
    {"failed": True, "msg": ..., "stdout": ..., "stderr": ...}."""
    try:
        res = json.loads(r.stdout)
        if not isinstance(res, dict):
            raise ValueError("not an object")
    except ValueError:
        res = {"failed": True, "msg": "module printed no JSON object", "stdout": r.stdout, "stderr": r.stderr}
    res.setdefault("_stderr", r.stderr)
    return r.returncode, res


@dataclass
class Guest:
    name: str
    uuid: str
    host: str
    uri: str
    vcpus: int
    pins: list
    memory_mib: int
    disk_path: str = None
    xml: str = field(default="", repr=False)
