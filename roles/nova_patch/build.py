#!/usr/bin/env python3
"""Build the in-band Nova patch for each supported release.

From pristine Nova (`pip download --no-deps nova==<release>`), apply the
short hooks below (anchored edits: an anchor that is missing or not unique
stops the build), add the core module src/numa_repin_patch.py, and write
under files/<release>/:
  nova/<path>     the patched files (only those that change)
  nova.diff       the unified diff against pristine
  manifest.json   per file: path (relative to the nova package), the
                  containers that get it, pristine_sha256 (null = new file),
                  patched_sha256
Usage: build.py [--check] [--cache DIR]   (--check: rebuild in memory and
compare with the committed files; exit 1 on any difference)."""
import argparse
import difflib
import hashlib
import json
import os
import subprocess
import sys
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
RELEASES = ["17.0.13", "18.3.0", "19.3.2"]
CORE = "numa_repin_patch.py"
# The default container mapping of deploy_patched_nova (path prefixes).
CONTAINERS = {
    "nova_conductor": ["conductor/", "db/", CORE],
    "nova_compute": ["compute/", "virt/", CORE],
}

IMPORT = ("from nova import objects\n",
          "from nova import objects\nfrom nova import numa_repin_patch\n")


def rt(release):
    # The compute manager's resource tracker: an attribute from Stein.
    return "self.rt" if release.startswith("19.") else "self._get_resource_tracker()"


def edits(release):
    """path -> list of (anchor, replacement); each anchor must occur once."""
    if release.startswith("17."):
        xml_anchor = "                    guest, migrate_data, self._get_volume_config)\n"
    else:
        xml_anchor = ("                    guest, migrate_data, self._get_volume_config,\n"
                      "                    get_vif_config=get_vif_config)\n")
    in_progress = ("        migrations = objects.MigrationList.get_in_progress_by_host_and_node(\n"
                   "                context, self.host, nodename)\n")
    dest_check_end = ("        finally:\n"
                      "            self.driver.cleanup_live_migration_destination_check(ctxt,\n"
                      "                    dest_check_data)\n")
    post_at_dest = ("            self.compute_rpcapi.post_live_migration_at_destination(ctxt,\n"
                    "                    instance, block_migration, dest)\n")
    rollback_dest = ("        network_info = self.network_api.get_instance_nw_info(context, instance)\n"
                     "        self._notify_about_instance_usage(\n"
                     "                      context, instance, \"live_migration.rollback.dest.start\",\n")
    return {
        "conductor/tasks/live_migrate.py": [
            IMPORT,
            ("        if not self.instance.numa_topology:\n            return\n",
             "        if not self.instance.numa_topology:\n            return\n"
             "        # numa-repin: a pinned instance is fitted per destination\n"
             "        # and claimed there, then migrated with the claimed pins.\n"
             "        if numa_repin_patch.handles(self.instance):\n"
             "            return\n"),
            ("            raise exception.DestinationHypervisorTooOld()\n"
             "        return source_info, destination_info\n",
             "            raise exception.DestinationHypervisorTooOld()\n"
             "        # numa-repin: refuse a destination where Nova's own NUMA fit\n"
             "        # finds no cells for the pinned instance.\n"
             "        numa_repin_patch.check_destination(\n"
             "            self.instance, destination_info, exception.MigrationPreCheckError)\n"
             "        return source_info, destination_info\n"),
        ],
        "virt/libvirt/driver.py": [
            IMPORT,
            (xml_anchor,
             xml_anchor +
             "                # numa-repin: the pins the destination claimed\n"
             "                new_xml_str = numa_repin_patch.rewrite_migration_xml(\n"
             "                    context, instance, migrate_data, new_xml_str)\n"),
            ("        # made it as expected.\n        self._host.get_guest(instance)\n",
             "        # made it as expected.\n        self._host.get_guest(instance)\n"
             "        # numa-repin: the persistent definition keeps the new pins.\n"
             "        numa_repin_patch.persist_live_pins(self._host, instance)\n"),
        ],
        "compute/manager.py": [
            IMPORT,
            (dest_check_end + "        return migrate_data\n",
             dest_check_end +
             "        # numa-repin: hold the pCPUs Nova's fit chooses here.\n"
             "        numa_repin_patch.claim_on_destination(\n"
             "            %s, ctxt, instance, dst_compute_info,\n"
             "            exception.MigrationPreCheckError)\n"
             "        return migrate_data\n" % rt(release)),
            (post_at_dest,
             post_at_dest +
             "            # numa-repin: no later save may write the source pins back.\n"
             "            numa_repin_patch.forget_source_topology(ctxt, instance)\n"),
            ("                instance.progress = 0\n"
             "                instance.save(expected_task_state=task_states.MIGRATING)\n",
             "                instance.progress = 0\n"
             "                # numa-repin: the claimed pins, checked against the guest.\n"
             "                numa_repin_patch.apply_claim(context, self.driver, instance)\n"
             "                instance.save(expected_task_state=task_states.MIGRATING)\n"),
            (rollback_dest,
             "        # numa-repin: give the claimed pCPUs back.\n"
             "        numa_repin_patch.drop_claim(%s, context, instance)\n" % rt(release) +
             rollback_dest),
        ],
        "compute/resource_tracker.py": [
            IMPORT,
            (in_progress,
             in_progress +
             "        # numa-repin: claims taken while the migration is 'accepted'\n"
             "        migrations = numa_repin_patch.with_claimed_live_migrations(\n"
             "            context, migrations, self.host, nodename)\n"),
            ("        if not _is_trackable_migration(migration):\n            return\n",
             "        if not (_is_trackable_migration(migration) or\n"
             "                numa_repin_patch.is_claimed_live_migration(\n"
             "                    instance, migration)):\n"
             "            return\n"),
            ("            if not _instance_in_resize_state(instances[uuid]):\n",
             "            if not (_instance_in_resize_state(instances[uuid]) or\n"
             "                    numa_repin_patch.is_claimed_live_migration(\n"
             "                        instances[uuid], migration)):\n"),
        ],
    }


def wheel(release, cache):
    os.makedirs(cache, exist_ok=True)
    name = "nova-%s-py2.py3-none-any.whl" % release
    path = os.path.join(cache, name)
    if not os.path.exists(path):
        subprocess.check_call([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                               "--only-binary", ":all:", "nova==%s" % release, "-d", cache])
    return path


def sha(data):
    return hashlib.sha256(data).hexdigest()


def containers_for(path):
    return [c for c, prefixes in sorted(CONTAINERS.items())
            if any(path == p or (p.endswith("/") and path.startswith(p)) for p in prefixes)]


def build(release, cache):
    """-> {relative output path: bytes}"""
    out, files, diff = {}, [], []
    with zipfile.ZipFile(wheel(release, cache)) as z:
        for path, changes in sorted(edits(release).items()):
            pristine = z.read("nova/" + path).decode("utf-8")
            text = pristine
            for anchor, new in changes:
                n = text.count(anchor)
                if n != 1:
                    raise SystemExit("nova %s %s: anchor found %d times (want 1):\n%s"
                                     % (release, path, n, anchor))
                text = text.replace(anchor, new)
            out["nova/" + path] = text.encode("utf-8")
            files.append({"path": path, "containers": containers_for(path),
                          "pristine_sha256": sha(pristine.encode("utf-8")),
                          "patched_sha256": sha(text.encode("utf-8"))})
            diff += difflib.unified_diff(pristine.splitlines(True), text.splitlines(True),
                                         "a/nova/" + path, "b/nova/" + path)
    with open(os.path.join(HERE, "src", CORE), "rb") as f:
        core = f.read()
    out["nova/" + CORE] = core
    files.append({"path": CORE, "containers": containers_for(CORE),
                  "pristine_sha256": None, "patched_sha256": sha(core)})
    diff += difflib.unified_diff([], core.decode("utf-8").splitlines(True),
                                 "/dev/null", "b/nova/" + CORE)
    out["nova.diff"] = "".join(diff).encode("utf-8")
    manifest = {"release": release, "files": files}
    out["manifest.json"] = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode("utf-8")
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--cache", default=os.environ.get("NUMA_REPIN_WHEELS",
                                                      "/var/cache/numa-repin/nova-wheels"))
    ap.add_argument("--out", default=os.path.join(HERE, "files"))
    a = ap.parse_args()
    stale = []
    for release in RELEASES:
        for rel, data in sorted(build(release, a.cache).items()):
            dest = os.path.join(a.out, release, rel)
            if a.check:
                try:
                    with open(dest, "rb") as f:
                        same = f.read() == data
                except IOError:
                    same = False
                if not same:
                    stale.append(dest)
                continue
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            with open(dest, "wb") as f:
                f.write(data)
    if stale:
        print("stale (run roles/nova_patch/build.py): " + ", ".join(stale))
        return 1
    print("nova patch %s for %s" % ("up to date" if a.check else "built", ", ".join(RELEASES)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
