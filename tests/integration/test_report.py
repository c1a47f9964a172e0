"""The fleet report: numa_audit.yml on the lab renders an HTML page and a PNG with headless
Chromium; the rendered page names every compute host and draws every pCPU."""
import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_audit_report_renders_every_host(lab, ansible_playbook, tmp_path):
    os.environ["NUMA_REPIN_REPORT_DIR"] = str(tmp_path)
    try:
        p = ansible_playbook(REPO / "playbooks/numa_audit.yml", extra_vars={"numa_audit_report_name": "t", "numa_repin_allow_leftovers": True})
    finally:
        del os.environ["NUMA_REPIN_REPORT_DIR"]
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]
    assert "changed=0" in p.stdout and "failed=0" in p.stdout
    png = tmp_path / "t.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    # What Chromium rendered (the DOM after layout), not just the template's text.
    dom = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                          "--disable-background-networking", "--disable-component-update", "--disable-sync",
                          f"--user-data-dir={tmp_path}/.chromium-dom", "--dump-dom", f"file://{tmp_path}/t.html"],
                         capture_output=True, text=True, timeout=120).stdout
    hosts = lab.data["cloud_computes"]  # the inventory's compute group
    for h in hosts:
        assert f'data-host="{h}"' in dom, h
    assert dom.count('class="cpu') >= 4  # two pCPUs per lab host
