"""Run by the Nova that serves this cloud (inside its container, or the host's Nova), with its own
config: does this release's own objects load every NUMA row of its cell database? A row written for
a newer release (InstanceNUMACell 1.5 in a Stein DB) or malformed JSON breaks the resource tracker's
periodic on that host. Reads only. Python 2.7 and 3 (Queens-Stein images run either).

argv: [nova.conf path]. stdout (last line): {"release": ..., "rows": N, "unloadable": [{table, key, host, error}]}
"""
import json
import sys

from nova import config
from nova import objects
from nova.db.sqlalchemy import api as db_api
from nova import version

objects.register_all()


def main():
    conf = sys.argv[1] if len(sys.argv) > 1 else "/etc/nova/nova.conf"
    config.parse_args([], default_config_files=[conf])
    engine = db_api.get_engine()
    bad = []
    rows = 0
    with engine.connect() as c:
        q = ("SELECT e.instance_uuid, i.host, e.numa_topology FROM instance_extra e JOIN instances i"
             " ON i.uuid = e.instance_uuid WHERE i.deleted = 0 AND e.numa_topology IS NOT NULL")
        for uuid, host, text in c.execute(q):
            rows += 1
            try:
                objects.InstanceNUMATopology.obj_from_db_obj(uuid, text)
            except Exception as e:  # Nova's own exception is the report
                bad.append({"table": "instance_extra", "key": uuid, "host": host,
                            "error": "%s: %s" % (type(e).__name__, e)})
        q = ("SELECT hypervisor_hostname, host, numa_topology FROM compute_nodes"
             " WHERE deleted = 0 AND numa_topology IS NOT NULL")
        for node, host, text in c.execute(q):
            rows += 1
            try:
                objects.NUMATopology.obj_from_db_obj(text)
            except Exception as e:
                bad.append({"table": "compute_nodes", "key": node, "host": host,
                            "error": "%s: %s" % (type(e).__name__, e)})
    print(json.dumps({"release": version.version_string(), "rows": rows, "unloadable": bad}))


if __name__ == "__main__":
    main()
