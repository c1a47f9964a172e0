# -*- coding: utf-8 -*-
"""Live migration of CPU-pinned guests through Nova's own services.

Runs inside Nova's functional-test harness (API, conductor, scheduler with
the NUMATopologyFilter, compute managers with the libvirt driver over
fakelibvirt, resource trackers, the placement fixture), with the Nova tree on
sys.path being either pristine or the one `deploy_patched_nova path:`
produced.  tests/nova_harness/run.sh runs it; run it by hand with
    PYTHONPATH=<patched tree>:tests/nova_harness <venv>/bin/python \
        -m testtools.run numa_live_migration

The field case: hosts of 4 pCPUs, each with a pinned guest on pCPUs 0,1; one
guest live-migrates to another host.

Stein's fakelibvirt cannot live-migrate; the classes below extend it here:
- Domain.XMLDesc returns the XML the domain was defined with or migrated
  with (Stein's is canned and drops <cputune> and <numatune>), the running
  definition apart from the persistent one;
- Connection.defineXML of a defined domain updates its persistent definition
  and keeps it running (as libvirt does; Stein's replaces it with a new
  shut-off domain);
- Domain.migrateToURI3 moves the domain to the destination host's connection
  with the destination_xml / persistent_xml it is given, undefines the
  source, and can be made to fail (the guest then stays on the source);
- Domain.jobStats reports the finished job (Stein's returns {});
- Domain.migrateToURI2 (Queens without migration parameters) does the same.
Each host gets its own connection (its own hostname, so node names differ),
and a destination's vcpu_pin_set can differ from the source's.
"""
from __future__ import absolute_import, print_function

# First, before anything imports oslo.db: the functional package monkey-patches
# eventlet (Queens, Rocky: eventlet.monkey_patch(os=False); Stein:
# nova.monkey_patch), as it is when Nova's test runner imports a functional
# test module.  Imported later (after `from nova import context`, which loads
# oslo_db.sqlalchemy.enginefacade), oslo.db's _TransactionContextTLocal
# subclasses the unpatched thread-local, so every greenthread shares one
# transaction slot per context; Rocky's compute runs the live migration in a
# concurrent.futures.ThreadPoolExecutor whose green thread starts at once and
# shares the RPC handler's context: NoEngineContextEstablished, and queries
# sent to the API database ("no such table: instance_actions").
import nova.tests.functional  # noqa: F401

import itertools
import json
import os
import time

import fixtures
import mock
from oslo_config import cfg
from oslo_log import log as logging
from six.moves.urllib import parse as urlparse

from nova import context as nova_context
from nova import objects
from nova.objects import fields as obj_fields
from nova.tests import fixtures as nova_fixtures
from nova.tests.functional.api import client
from nova.tests.functional import test_servers
from nova.tests.unit.virt.libvirt import fake_imagebackend
from nova.tests.unit.virt.libvirt import fake_libvirt_utils
from nova.tests.unit.virt.libvirt import fakelibvirt
try:  # Stein moved Nova's placement fixture next to the functional tests
    from nova.tests.functional.fixtures import PlacementFixture
except ImportError:  # Queens, Rocky
    PlacementFixture = nova_fixtures.PlacementFixture

CONF = cfg.CONF
LOG = logging.getLogger(__name__)

HOSTS = {}  # hostname -> MigratingConnection



def _kill_with_own_context(original):
    # Teardown only: Service.kill deletes the service row with the context
    # the service started with, which its greenthreads (the servicegroup
    # report, a live migration's) share; oslo.db then at times refuses that
    # write ("Can't upgrade a READER transaction to a WRITER").  The row goes
    # with the test's database anyway; a context of its own avoids the race.
    def kill(service):
        ref = getattr(service, "service_ref", None)
        if ref is not None:
            ref._context = nova_context.get_admin_context()
        original(service)
    return kill
# Stein's conductor, pristine: every NUMA live migration is refused.
REFUSAL = "Instance has an associated NUMA topology"


class MigratingDomain(fakelibvirt.Domain):
    def __init__(self, connection, xml, running=False, transient=False):
        super(MigratingDomain, self).__init__(connection, xml, running=running,
                                              transient=transient)
        self._xml = xml
        self._live_xml = None
        self._job = {}

    def XMLDesc(self, flags):
        if (not flags & fakelibvirt.VIR_DOMAIN_XML_INACTIVE and
                self._live_xml and self.isActive()):
            return self._live_xml
        return self._xml

    def createWithFlags(self, flags):
        self._live_xml = None
        super(MigratingDomain, self).createWithFlags(flags)

    def migrateToURI3(self, dconnuri, params, flags):
        dest = HOSTS[urlparse.urlparse(dconnuri).hostname]
        if dest.before_incoming is not None:
            dest.before_incoming(self)
        if dest.fail_incoming:
            raise fakelibvirt.make_libvirtError(
                fakelibvirt.libvirtError, "injected migration failure",
                error_code=fakelibvirt.VIR_ERR_INTERNAL_ERROR,
                error_domain=fakelibvirt.VIR_FROM_QEMU)
        live = params.get("destination_xml") or self.XMLDesc(0)
        persist = flags & fakelibvirt.VIR_MIGRATE_PERSIST_DEST
        persistent = params.get("persistent_xml") or live
        dom = MigratingDomain(dest, persistent if persist else live,
                              transient=not persist)
        dest._vms[dom.name()] = dom
        dom.createWithFlags(0)
        dom._live_xml = live
        self._job = {"type": fakelibvirt.VIR_DOMAIN_JOB_COMPLETED}
        self.destroy()
        if flags & fakelibvirt.VIR_MIGRATE_UNDEFINE_SOURCE:
            self._connection._undefine(self)

    def migrateToURI2(self, dconnuri, miguri=None, dxml=None, flags=0,
                      dname=None, bandwidth=0):
        # Queens calls this one when it has no migration parameters.
        self.migrateToURI3(dconnuri, {"destination_xml": dxml}, flags)

    def jobStats(self, flags=0):
        return dict(self._job)


class MigratingConnection(fakelibvirt.Connection):
    def __init__(self, hostname, **kw):
        super(MigratingConnection, self).__init__("qemu:///system", **kw)
        self.hostname = hostname
        self.fail_incoming = False
        self.before_incoming = None

    def getHostname(self):
        return self.hostname

    def defineXML(self, xml):
        dom = MigratingDomain(self, xml)
        old = self._vms.get(dom.name())
        if old is not None:
            old._xml = xml
            return old
        self._vms[dom.name()] = dom
        self._emit_lifecycle(dom, fakelibvirt.VIR_DOMAIN_EVENT_DEFINED, 0)
        return dom

    def createXML(self, xml, flags):
        dom = MigratingDomain(self, xml, running=True, transient=True)
        self._vms[dom.name()] = dom
        return dom


def _pins_of(xml):
    """(vcpupin {vcpu: pcpu set}, emulatorpin set) of a domain XML."""
    from lxml import etree
    root = etree.fromstring(xml.encode("utf-8"))

    def spec(s):
        out = set()
        for part in s.split(","):
            if "-" in part:
                lo, hi = part.split("-")
                out.update(range(int(lo), int(hi) + 1))
            elif part:
                out.add(int(part))
        return out
    vcpus = dict((int(v.get("vcpu")), spec(v.get("cpuset")))
                 for v in root.findall("cputune/vcpupin"))
    ep = root.find("cputune/emulatorpin")
    return vcpus, spec(ep.get("cpuset")) if ep is not None else set()


class NUMALiveMigrationBase(test_servers.ServersTestBase):
    # 2.37: networks "none"; live migration with block_migration=auto and
    # force since 2.30.
    MICROVERSION = "2.37"
    api_major_version = "v2.1"
    ADMIN_API = True
    USE_NEUTRON = True

    def setUp(self):
        from nova import service  # after the harness has set up eventlet
        self.useFixture(fixtures.MonkeyPatch(
            "nova.service.Service.kill",
            _kill_with_own_context(service.Service.kill)))
        super(NUMALiveMigrationBase, self).setUp()
        HOSTS.clear()
        # The libvirt driver over fakelibvirt, as Nova's own libvirt
        # functional tests set it up (Stein has this in a base class, Queens
        # and Rocky in each test module).
        self.useFixture(fake_imagebackend.ImageBackendFixture())
        for target in ("nova.virt.libvirt.driver.libvirt",
                       "nova.virt.libvirt.host.libvirt",
                       "nova.virt.libvirt.guest.libvirt",
                       "nova.virt.libvirt.migration.libvirt"):
            self.useFixture(fixtures.MonkeyPatch(target, fakelibvirt))
        self.useFixture(fixtures.MonkeyPatch(
            "nova.virt.libvirt.driver.libvirt_utils", fake_libvirt_utils))
        self.useFixture(fakelibvirt.FakeLibvirtFixture())
        if not hasattr(self, "placement_api"):  # Rocky's base starts it
            self.useFixture(PlacementFixture())
        # Each host gets its own connection (start_host); this answers the
        # calls made while a compute service starts.
        patcher = mock.patch("nova.virt.libvirt.host.Host.get_connection")
        self.mock_conn = patcher.start()
        self.addCleanup(patcher.stop)
        patcher = mock.patch("nova.virt.libvirt.utils.get_arch",
                             return_value=obj_fields.Architecture.X86_64)
        patcher.start()
        self.addCleanup(patcher.stop)
        self.useFixture(fixtures.MonkeyPatch(
            "nova.tests.unit.virt.libvirt.fakelibvirt.Domain", MigratingDomain))
        # Each destination gets a fresh instance directory (all hosts share
        # one filesystem here).
        counter = itertools.count()
        self.useFixture(fixtures.MonkeyPatch(
            "nova.tests.unit.virt.libvirt.fake_libvirt_utils."
            "get_instance_path_at_destination",
            lambda instance, migrate_data=None: os.path.join(
                CONF.instances_path, "dest-%d-%s" % (next(counter),
                                                     instance.uuid))))
        # No volumes here: os-brick's connector would start privsep.
        self.useFixture(fixtures.MonkeyPatch(
            "nova.virt.libvirt.driver.connector.get_connector_properties",
            lambda *a, **kw: {}))
        self.admin_api = self.api
        self.api.microversion = self.MICROVERSION

    @property
    def ctxt(self):
        # A new context per use: greenthreads (the in-flight checks run in
        # the migration's) must not share one DB transaction scope.
        return nova_context.get_admin_context()

    def _setup_scheduler_service(self):
        self.flags(driver="filter_scheduler", group="scheduler")
        self.flags(enabled_filters=CONF.filter_scheduler.enabled_filters +
                   ["NUMATopologyFilter"], group="filter_scheduler")
        return self.start_service("scheduler")

    def _setup_compute_service(self):
        self.flags(compute_driver="libvirt.LibvirtDriver")

    # ------------------------------------------------------------ hosts
    def start_host(self, hostname, cells=1, cores=4, pin_set=None,
                   kB_mem=4194304):
        info = fakelibvirt.NUMAHostInfo(cpu_nodes=cells, cpu_sockets=1,
                                        cpu_cores=cores, cpu_threads=1,
                                        kB_mem=kB_mem)
        conn = MigratingConnection(
            hostname, version=fakelibvirt.FAKE_LIBVIRT_VERSION,
            hv_version=fakelibvirt.FAKE_QEMU_VERSION, host_info=info)
        HOSTS[hostname] = conn
        self.mock_conn.return_value = conn
        compute = self.start_service("compute", host=hostname)
        compute.driver._host.get_connection = lambda: conn
        if pin_set is not None:
            drv = compute.driver
            for name in ("_get_host_numa_topology", "_get_vcpu_total"):
                setattr(drv, name, self._with_pin_set(getattr(drv, name),
                                                      pin_set))
            compute.manager.update_available_resource(self.ctxt)
        self.computes[hostname] = compute
        return compute

    @staticmethod
    def _with_pin_set(fn, pin_set):
        # vcpu_pin_set is one option for the whole test process; this host's
        # driver sees its own (no greenthread switch happens inside).
        def wrapped(*a, **kw):
            CONF.set_override("vcpu_pin_set", pin_set)
            try:
                return fn(*a, **kw)
            finally:
                CONF.clear_override("vcpu_pin_set")
        return wrapped

    def storage(self, shared_path):
        """shared_path False: instance path not shared, block storage shared
        (Ceph RBD), so the source's driver.cleanup() runs after the move, as
        on most clouds.  True: a shared instance path (NFS), no cleanup.
        (All hosts share one filesystem here, and the fake image backend
        cannot answer the block storage question.)"""
        self.useFixture(fixtures.MonkeyPatch(
            "nova.virt.libvirt.driver.LibvirtDriver."
            "_check_shared_storage_test_file", lambda *a, **kw: shared_path))
        self.useFixture(fixtures.MonkeyPatch(
            "nova.virt.libvirt.driver.LibvirtDriver._is_shared_block_storage",
            lambda *a, **kw: not shared_path))

    def local_disks(self):
        self.storage(shared_path=False)

    def field_hosts(self):
        """The field case: host1 and host2 of 4 pCPUs, a pinned 2-vCPU guest on each.
        -> (a, b, a's pins, b's pins); identical hosts and guests, so Nova gave both the same
        pCPUs and a's source pins copied verbatim would land on b's."""
        self.start_host("host1")
        self.start_host("host2")
        a = self.boot("host1")
        b = self.boot("host2")
        (host_a, pa), (host_b, pb) = self.db_pins(a), self.db_pins(b)
        self.assertEqual(("host1", "host2"), (host_a, host_b))
        self.assertEqual(pa, pb)
        return a, b, pa, pb

    # ------------------------------------------------------------ guests
    def boot(self, host, vcpus=2, memory_mb=512, extra=None):
        spec = {"hw:cpu_policy": "dedicated"}
        spec.update(extra or {})
        flavor = self._create_flavor(memory_mb=memory_mb, vcpu=vcpus, disk=1,
                                     ephemeral=0, extra_spec=spec)
        # (2.37 has no image proxy API) the fake image service's first image
        server = self._build_server(flavor, image="155d900f-4e14-4e4c-a73d-069cbf4541e6")
        server["availability_zone"] = "nova:%s" % host
        server["networks"] = "none"
        created = self.admin_api.post_server({"server": server})
        found = self._wait_for_state_change(created, "BUILD")
        self.assertEqual("ACTIVE", found["status"], found)
        self.assertEqual(host, found["OS-EXT-SRV-ATTR:host"])
        return found

    def live_migrate(self, server, host=None, force=True):
        """-> None when the API accepted the request, else its error."""
        body = {"host": host, "block_migration": "auto"}
        if host is not None:
            body["force"] = force
        try:
            self.admin_api.post_server_action(server["id"],
                                              {"os-migrateLive": body})
        except client.OpenStackApiException as e:
            return str(e)
        return None

    def wait_migration(self, server, statuses=("completed", "error", "failed")):
        # Generous: CI machines are slow and loaded; the loop ends as soon as it can.
        for _ in range(900):
            migs = [m for m in self.admin_api.api_get(
                "/os-migrations").body["migrations"]
                if m["instance_uuid"] == server["id"]]
            if migs:
                last = max(migs, key=lambda m: m["id"])
                if last["status"].lower() in statuses:
                    return last
            time.sleep(0.1)
        self.fail("migration of %s did not end" % server["id"])

    # ------------------------------------------------------------ state
    def db_pins(self, server):
        inst = objects.Instance.get_by_uuid(self.ctxt, server["id"],
                                            expected_attrs=["numa_topology"])
        return inst.host, sorted(p for c in inst.numa_topology.cells
                                 for p in c.cpu_pinning.values())

    def node_pinned(self, host):
        cn = objects.ComputeNode.get_first_node_by_host_for_old_compat(
            self.ctxt, host)
        topo = objects.NUMATopology.obj_from_db_obj(cn.numa_topology)
        return sorted(p for c in topo.cells for p in c.pinned_cpus)

    def rt_pinned(self, host):
        manager = self.computes[host].manager
        rt = getattr(manager, "rt", None) or manager._get_resource_tracker()
        cn = list(rt.compute_nodes.values())[0]
        topo = objects.NUMATopology.obj_from_db_obj(cn.numa_topology)
        return sorted(p for c in topo.cells for p in c.pinned_cpus)

    def guest_pins(self, host, server, inactive=False):
        dom = HOSTS[host].lookupByUUIDString(server["id"])
        flags = fakelibvirt.VIR_DOMAIN_XML_INACTIVE if inactive else 0
        vcpus, emu = _pins_of(dom.XMLDesc(flags))
        return sorted(p for s in vcpus.values() for p in s), sorted(emu)

    def running_on(self, server):
        return sorted(h for h, c in HOSTS.items()
                      for d in c._vms.values()
                      if d.UUIDString() == server["id"] and d.isActive())

    def log_mark(self):
        return len(self.stdlog.logger.output)

    def periodics(self, mark=None):
        """update_available_resource on every host, as the periodic task
        runs it; -> the accounting errors it logged."""
        mark = self.log_mark() if mark is None else mark
        for compute in self.computes.values():
            compute.manager.update_available_resource(self.ctxt)
        out = self.stdlog.logger.output[mark:]
        return [line for line in out.splitlines()
                if "CPUPinningInvalid" in line or
                "Error updating resources" in line or
                "CPUUnpinningInvalid" in line]

    def report(self, **kw):
        print("NUMA-REPIN-HARNESS " + json.dumps(dict(test=self.id(), **kw),
                                                 sort_keys=True))


class PatchedLiveMigrationTest(NUMALiveMigrationBase):
    """What the patched Nova must do (run against the tree the rollout
    produced)."""

    def field_case(self, local_disks, force=True):
        self.storage(shared_path=not local_disks)
        a, b, pa, pb = self.field_hosts()
        free = sorted(set(range(4)) - set(pb))
        during = {}

        def in_flight(dom):
            # The destination holds the claim while the guest is moving, and
            # the periodics on both hosts neither fail nor forget it.
            during["errors"] = self.periodics()
            during["dest_pinned"] = self.rt_pinned("host2")
            during["dest_pinned_db"] = self.node_pinned("host2")
            during["source_pinned"] = self.rt_pinned("host1")
        HOSTS["host2"].before_incoming = in_flight
        mark = self.log_mark()
        self.live_migrate(a, "host2" if force else None, force=force)
        mig = self.wait_migration(a)
        self.assertEqual("completed", mig["status"], mig)
        self.assertEqual([], during["errors"])
        self.assertEqual([0, 1, 2, 3], during["dest_pinned"])
        self.assertEqual([0, 1, 2, 3], during["dest_pinned_db"])
        self.assertEqual(pa, during["source_pinned"])
        self.assertEqual(["host2"], self.running_on(a))
        self.assertEqual((free, free), self.guest_pins("host2", a))
        self.assertEqual((free, free),
                         self.guest_pins("host2", a, inactive=True))
        self.assertEqual(("host2", free), self.db_pins(a))
        self.assertEqual([], self.periodics(mark))
        self.assertEqual(("host2", free), self.db_pins(a))
        self.assertEqual(("host2", pb), self.db_pins(b))
        self.assertEqual([0, 1, 2, 3], self.node_pinned("host2"))
        self.assertEqual([], self.node_pinned("host1"))
        inst = objects.Instance.get_by_uuid(self.ctxt, a["id"],
                                            expected_attrs=["migration_context"])
        self.assertIsNone(inst.migration_context)
        self.report(source_pins=pa, dest_pins=self.db_pins(a)[1],
                    host2=self.node_pinned("host2"),
                    host1=self.node_pinned("host1"), local_disks=local_disks)
        return a, b, free

    def test_taken_pcpus_forced_local_disks(self):
        self.field_case(local_disks=True)

    def test_taken_pcpus_forced_shared_path(self):
        self.field_case(local_disks=False)

    def test_taken_pcpus_scheduler_local_disks(self):
        self.field_case(local_disks=True, force=False)

    def test_hard_reboot_on_destination_keeps_new_pins(self):
        a, _, free = self.field_case(local_disks=True)
        self.api.post_server_action(a["id"], {"reboot": {"type": "HARD"}})
        self._wait_for_state_change(self.api.get_server(a["id"]), "HARD_REBOOT")
        self.assertEqual("ACTIVE", self.api.get_server(a["id"])["status"])
        self.assertEqual((free, free), self.guest_pins("host2", a))
        self.assertEqual(("host2", free), self.db_pins(a))
        self.assertEqual([], self.periodics())

    def test_pcpu_outside_destination_pin_set(self):
        self.local_disks()
        self.start_host("host1")
        self.start_host("host2", pin_set="2-3")
        a = self.boot("host1")
        self.live_migrate(a, "host2")
        self.assertEqual("completed", self.wait_migration(a)["status"])
        self.assertEqual(([2, 3], [2, 3]), self.guest_pins("host2", a))
        self.assertEqual(("host2", [2, 3]), self.db_pins(a))
        self.assertEqual([], self.periodics())
        self.assertEqual([2, 3], self.node_pinned("host2"))

    def _no_cell_fits(self, force):
        self.local_disks()
        self.start_host("host1")
        # Two cells of 2 pCPUs: 4 free pCPUs, but no cell holds 3.
        self.start_host("host2", cells=2, cores=2)
        a = self.boot("host1", vcpus=3)
        pa = self.db_pins(a)[1]
        mark = self.log_mark()
        error = self.live_migrate(a, "host2" if force else None, force=force)
        mig = self.wait_migration(a)
        self.assertEqual("error", mig["status"], mig)
        self.assertEqual("ACTIVE", self.api.get_server(a["id"])["status"])
        self.assertEqual(["host1"], self.running_on(a))
        self.assertEqual(("host1", pa), self.db_pins(a))
        self.assertEqual((pa, pa), self.guest_pins("host1", a))
        self.assertEqual([], self.node_pinned("host2"))
        self.assertEqual(pa, self.node_pinned("host1"))
        self.assertEqual([], self.periodics())
        return error, self.stdlog.logger.output[mark:]

    def test_no_single_cell_fits_forced(self):
        error, log = self._no_cell_fits(force=True)
        self.assertIn("No numa available with 3 vcpu and 512 memory", log)
        self.report(api_error=error)

    def test_no_single_cell_fits_scheduler(self):
        self._no_cell_fits(force=False)

    def test_failed_migration_rolls_back(self):
        self.local_disks()
        a, b, pa, pb = self.field_hosts()
        HOSTS["host2"].fail_incoming = True
        self.live_migrate(a, "host2")
        mig = self.wait_migration(a)
        self.assertIn(mig["status"], ("error", "failed"))
        self.assertEqual("ACTIVE", self.api.get_server(a["id"])["status"])
        self.assertEqual(["host1"], self.running_on(a))
        self.assertEqual(("host1", pa), self.db_pins(a))
        self.assertEqual((pa, pa), self.guest_pins("host1", a))
        # The claim is given back at once, in the tracker and in the DB.
        self.assertEqual(pb, self.rt_pinned("host2"))
        self.assertEqual(pb, self.node_pinned("host2"))
        self.assertEqual([], self.periodics())
        self.assertEqual(pb, self.node_pinned("host2"))
        self.assertEqual(pa, self.node_pinned("host1"))

    def test_two_concurrent_migrations_to_one_host(self):
        self.local_disks()
        self.start_host("host1")
        self.start_host("host2")
        self.start_host("host3")
        a = self.boot("host1")
        b = self.boot("host2")
        claims = {}

        def both_claimed(dom):
            # Hold each move until both claims are taken, so the two
            # migrations overlap from claim to completion.
            for _ in range(600):
                mcs = [objects.MigrationContext.get_by_instance_uuid(
                    self.ctxt, s["id"]) for s in (a, b)]
                if all(mcs):
                    break
                time.sleep(0.05)
            for s, mc in zip((a, b), mcs):
                if mc is not None:
                    claims[s["id"]] = sorted(
                        p for c in mc.new_numa_topology.cells
                        for p in c.cpu_pinning.values())
        HOSTS["host3"].before_incoming = both_claimed
        self.live_migrate(a, "host3")
        self.live_migrate(b, "host3")
        self.assertEqual("completed", self.wait_migration(a)["status"])
        self.assertEqual("completed", self.wait_migration(b)["status"])
        self.assertEqual(2, len(claims), claims)
        self.assertFalse(set(claims[a["id"]]) & set(claims[b["id"]]), claims)
        pa, pb = self.db_pins(a)[1], self.db_pins(b)[1]
        self.assertEqual(claims[a["id"]], pa)
        self.assertEqual(claims[b["id"]], pb)
        self.assertEqual([0, 1, 2, 3], sorted(pa + pb))
        self.assertEqual([], self.periodics())
        self.assertEqual([0, 1, 2, 3], self.node_pinned("host3"))
        self.report(claims=claims)


class PristineControlTest(NUMALiveMigrationBase):
    """What pristine Nova does with the same field case (run against the
    unpatched tree): from 17.0.11, 18.2.0 and in 19.x it refuses every pinned
    live migration, and with the workaround flag it copies the source pins
    over the other guest's and its accounting breaks; earlier releases have
    no refusal and copy the pins straight away."""

    def test_refuses_pinned_live_migration(self):
        from nova.conductor.tasks import live_migrate
        refuses = hasattr(live_migrate.LiveMigrationTask,
                          "_check_instance_has_no_numa")
        if not refuses:
            self.local_disks()
        a, b, pa, pb = self.field_hosts()
        mark = self.log_mark()
        error = self.live_migrate(a, "host2")
        if not refuses:
            # No refusal in this release: the guest lands on the pins of the
            # other guest, as with the workaround flag below.
            self.assertEqual("completed", self.wait_migration(a)["status"])
            self.assertNotIn(REFUSAL, self.stdlog.logger.output[mark:])
            pins = self.guest_pins("host2", a)
            self.assertEqual((pb, pb), pins)
            errors = self.periodics()
            invalid = [e for e in errors if "CPUPinningInvalid" in e]
            self.assertTrue(invalid, errors)
            self.report(outcome="no refusal: landed on the other guest's "
                        "pCPUs", guest_pins=pins, db=self.db_pins(a),
                        periodic_error=invalid[0][-200:])
            return
        self.assertEqual("error", self.wait_migration(a)["status"])
        self.assertEqual(["host1"], self.running_on(a))
        log = self.stdlog.logger.output[mark:]
        self.assertIn(REFUSAL, log)
        self.report(outcome="refused", host=self.db_pins(a)[0],
                    api_error=error)

    def test_workaround_copies_source_pins(self):
        # The flag came with the refusal (17.0.11, 18.2.0); earlier releases
        # copy the pins without it.
        if "enable_numa_live_migration" in CONF.workarounds:
            self.flags(enable_numa_live_migration=True, group="workarounds")
        self.local_disks()
        a, b, pa, pb = self.field_hosts()
        self.live_migrate(a, "host2")
        self.assertEqual("completed", self.wait_migration(a)["status"])
        pins = self.guest_pins("host2", a)
        self.assertEqual((pb, pb), pins)
        errors = self.periodics()
        invalid = [e for e in errors if "CPUPinningInvalid" in e]
        self.assertTrue(invalid, errors)
        self.report(outcome="landed on the other guest's pCPUs",
                    guest_pins=pins, db=self.db_pins(a),
                    periodic_error=invalid[0][-200:])
