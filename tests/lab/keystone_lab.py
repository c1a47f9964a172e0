#!/usr/bin/env python3
"""The lab's Keystone objects beyond `keystone-manage bootstrap` (admin, RegionOne, identity endpoints), made
through Keystone's v3 API as kolla-ansible's service-ks-register does (stdlib only):

    keystone_lab.py --auth-url http://10.77.0.10:5000/v3 --admin-password P --neutron-password N \
        --neutron-url http://10.77.0.10:9696

- project `service`; user `neutron` (password N) with the admin role on it: neutron-server's keystone_authtoken;
- service `neutron` of type `network` with internal, public and admin endpoints in RegionOne (the catalog the
  modules read). Idempotent: what exists is kept (the neutron user's password is set again).
"""
import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from labspec import REGION  # noqa: E402


def admin_token(auth_url, password, username="admin", project="admin"):
    """A project-scoped token (Keystone v3 password auth, domain Default): the one login of the lab's tools
    (neutron_lab.py, tests/integration/lablib.py). Raises OSError while Keystone does not answer."""
    body = {"auth": {"identity": {"methods": ["password"], "password": {"user": {
        "name": username, "domain": {"name": "Default"}, "password": password}}},
        "scope": {"project": {"name": project, "domain": {"name": "Default"}}}}}
    req = urllib.request.Request(auth_url.rstrip("/") + "/auth/tokens", data=json.dumps(body).encode(),
                                 method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.headers["X-Subject-Token"]


class Keystone:
    def __init__(self, url):
        self.url = url.rstrip("/")
        self.token = None

    def call(self, method, path, body=None, ok=(200, 201, 204)):
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["X-Auth-Token"] = self.token
        req = urllib.request.Request(self.url + path, method=method, headers=headers,
                                     data=json.dumps(body).encode() if body is not None else None)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                raw = r.read()
                return r, (json.loads(raw) if raw else None)
        except urllib.error.HTTPError as e:
            if e.code in ok:
                return e, None
            sys.exit("keystone_lab: %s %s: HTTP %s %s" % (method, path, e.code, e.read()[:300]))

    def login(self, password):
        self.token = admin_token(self.url, password)

    def one(self, collection, query, create):
        """The object of `collection` matching `query`, made with `create` (its body) if there is none."""
        _, body = self.call("GET", "/%s?%s" % (collection, query))
        if body[collection]:
            return body[collection][0]
        key = collection[:-1]
        _, body = self.call("POST", "/" + collection, {key: create})
        return body[key]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--auth-url", required=True)
    ap.add_argument("--admin-password", required=True)
    ap.add_argument("--neutron-password", required=True)
    ap.add_argument("--neutron-url", required=True)
    a = ap.parse_args()
    ks = Keystone(a.auth_url)
    deadline = time.time() + 60
    while True:
        try:
            ks.login(a.admin_password)
            break
        except (OSError, KeyError):
            if time.time() > deadline:
                sys.exit("keystone_lab: Keystone at %s does not answer" % a.auth_url)
            time.sleep(1)
    project = ks.one("projects", "name=service&domain_id=default",
                     {"name": "service", "domain_id": "default", "description": "the services' project"})
    user = ks.one("users", "name=neutron&domain_id=default",
                  {"name": "neutron", "domain_id": "default", "password": a.neutron_password})
    ks.call("PATCH", "/users/" + user["id"], {"user": {"password": a.neutron_password}})
    role = ks.one("roles", "name=admin", {"name": "admin"})
    ks.call("PUT", "/projects/%s/users/%s/roles/%s" % (project["id"], user["id"], role["id"]))
    service = ks.one("services", "type=network", {"type": "network", "name": "neutron"})
    _, body = ks.call("GET", "/endpoints?service_id=" + service["id"])
    have = {e["interface"]: e for e in body["endpoints"]}
    for interface in ("internal", "public", "admin"):
        e = have.get(interface)
        if e and e["url"] == a.neutron_url:
            continue
        if e:
            ks.call("DELETE", "/endpoints/" + e["id"])
        ks.call("POST", "/endpoints", {"endpoint": {"service_id": service["id"], "interface": interface,
                                                    "url": a.neutron_url, "region_id": REGION}})
    print("keystone_lab: project service, user neutron, network endpoints %s" % a.neutron_url)


if __name__ == "__main__":
    main()
