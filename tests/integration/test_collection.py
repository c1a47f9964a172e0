"""The modules also install as an Ansible collection, and run from it."""
import json
import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_collection_builds_installs_and_runs(tmp_path):
    subprocess.run(["bash", str(REPO / "scripts/build-collection.sh")], check=True, capture_output=True, timeout=900)
    tarball = sorted((REPO / "dist").glob("numa_repin-numa_repin-*.tar.gz"))[-1]
    subprocess.run(["ansible-galaxy", "collection", "install", "--force", "-p", str(tmp_path), str(tarball)], check=True, capture_output=True)
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(tmp_path), ANSIBLE_NOCOLOR="1")
    doc = subprocess.run(["ansible-doc", "numa_repin.numa_repin.pin_fit_check"], capture_output=True, text=True, env=env)
    assert doc.returncode == 0 and "drain" in doc.stdout, doc.stderr
    pb = tmp_path / "pb.yml"
    pb.write_text(f"""
- hosts: localhost
  gather_facts: false
  tasks:
    - numa_repin.numa_repin.numa_facts:
        capabilities_file: {REPO}/tests/fixtures/saved/caps-2s12c2t.xml
      register: f
    - ansible.builtin.assert:
        that: f.ansible_facts.numa.cells | length == 2
""")
    p = subprocess.run(["ansible-playbook", "-i", "localhost,", "-c", "local", str(pb)], capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stdout[-2000:]
