#!/usr/bin/env python3
"""The lab's Neutron objects, made through neutron-server's API as an operator (and Nova) would (stdlib only).

    neutron_lab.py --url http://10.77.0.10:9696 --auth-url http://10.77.0.10:5000/v3 --admin-password P \
        --out $LAB_DIR/neutron.json [--reset] [--agents cmp1,cmp2,cmp3]

- waits for the API and, with --agents, for a live Linux bridge agent on each of those hosts;
- a flat network `lab-net` on physnet1 with a subnet (no DHCP: the guests have no OS);
- one port per standard guest (tests/lab/guests/standard.json), device_owner compute:nova, bound to the guest's
  home host; an existing port is left as it is (tests move bindings), --reset deletes and recreates them;
- with --settle, waits until those ports are ACTIVE (their guests running: lab.sh seed runs it after starting
  them);
- writes --out: {url, network_id, bridge, project_id, ports: {instance uuid: {id, mac_address, tap, host}}}, which
  render_guest.py turns into each guest's <interface> (the names Nova gives: brq<net[:11]>, tap<port[:11]>).

As the cloud's admin (a Keystone token of project admin); the network and ports belong to the guests' project. The network has no port security: Stein's Linux
bridge agent cannot remove its ARP-spoofing ebtables chains with Debian 12's nft-based ebtables (the jump rule's
listing differs; the agent then dies on CHAIN_DEL "busy"), and these guests have no IP stack to protect anyway.
"""
import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from keystone_lab import admin_token  # noqa: E402
from labspec import PHYSNET  # noqa: E402
NETWORK = "lab-net"
CIDR = "10.78.0.0/24"


class Api:
    def __init__(self, url, tok):
        self.url = url.rstrip("/") + "/v2.0"
        self.token = tok

    def call(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json", "X-Auth-Token": self.token})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                raw = r.read()
        except urllib.error.HTTPError as e:
            sys.exit("neutron_lab: %s %s: HTTP %s %s" % (method, path, e.code, e.read()[:500]))
        return json.loads(raw) if raw else None


def wait(what, fn, seconds):
    deadline = time.time() + seconds
    while True:
        try:
            if fn():
                return
        except (OSError, ValueError):
            pass
        if time.time() > deadline:
            sys.exit("neutron_lab: %s not ready after %d s" % (what, seconds))
        time.sleep(1)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--auth-url", required=True)
    ap.add_argument("--admin-password", required=True)
    ap.add_argument("--reset", action="store_true")
    ap.add_argument("--settle", action="store_true")
    ap.add_argument("--agents", default="")
    a = ap.parse_args()
    api = Api(a.url, admin_token(a.auth_url, a.admin_password))
    std = json.load(open(os.path.join(HERE, "guests", "standard.json")))
    project = std["project_id"].replace("-", "")

    def api_up():
        api.call("GET", "/networks")
        return True
    wait("neutron-server at " + a.url, api_up, 90)
    for host in filter(None, a.agents.split(",")):
        def agent_alive(host=host):
            agents = api.call("GET", "/agents?host=%s&agent_type=Linux%%20bridge%%20agent" % host)["agents"]
            return any(x["alive"] for x in agents)
        wait("the Linux bridge agent on " + host, agent_alive, 90)

    nets = api.call("GET", "/networks?name=" + NETWORK)["networks"]
    for n in [n for n in nets if n.get("provider:physical_network") != PHYSNET]:
        # An older lab's network written into the DB directly (no segment: nothing on it can bind).
        for p in api.call("GET", "/ports?network_id=" + n["id"])["ports"]:
            api.call("DELETE", "/ports/" + p["id"])
        api.call("DELETE", "/networks/" + n["id"])
        nets.remove(n)
    if nets:
        net = nets[0]
    else:
        net = api.call("POST", "/networks", {"network": {
            "name": NETWORK, "tenant_id": project, "provider:network_type": "flat",
            "provider:physical_network": PHYSNET, "port_security_enabled": False}})["network"]
    if not api.call("GET", "/subnets?network_id=" + net["id"])["subnets"]:
        api.call("POST", "/subnets", {"subnet": {
            "name": NETWORK + "-subnet", "network_id": net["id"], "tenant_id": project, "cidr": CIDR,
            "ip_version": 4, "enable_dhcp": False}})

    ports = {}
    for g in std["guests"]:
        found = api.call("GET", "/ports?device_id=" + g["uuid"])["ports"]
        if a.reset:
            for p in found:
                api.call("DELETE", "/ports/" + p["id"])
            found = []
        if found:
            p = found[0]
        else:
            p = api.call("POST", "/ports", {"port": {
                "name": g["name"] + "-port0", "network_id": net["id"], "tenant_id": project,
                "device_id": g["uuid"], "device_owner": "compute:nova", "binding:host_id": g["host"]}})["port"]
        ports[g["uuid"]] = {"id": p["id"], "mac_address": p["mac_address"], "tap": ("tap" + p["id"])[:14],
                            "host": p["binding:host_id"], "name": g["name"]}
    if a.settle:
        # Settled before anyone reads the lab: each new port ACTIVE, i.e. its agent has wired it and
        # neutron-server has written its status (tests compare Neutron's tables before and after a run).
        def all_active():
            return all(api.call("GET", "/ports/" + p["id"])["port"]["status"] == "ACTIVE" for p in ports.values())
        wait("the standard guests' ports ACTIVE", all_active, 90)
    out = {"url": a.url, "network_id": net["id"], "bridge": ("brq" + net["id"])[:14], "project_id": project,
           "ports": ports}
    tmp = a.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(out, f, indent=1)
    os.replace(tmp, a.out)
    print("neutron_lab: network %s (bridge %s), %d ports" % (net["id"], out["bridge"], len(ports)))


if __name__ == "__main__":
    main()
