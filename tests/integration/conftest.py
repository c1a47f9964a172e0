"""Fixtures for the integration tests on the real lab (tests/lab/lab.sh up; see tests/lab/README.md).
Every test that uses `lab` (directly or through the fixtures below) is marked `lab`; `-m "not lab"` selects the
tests that need no lab (tests/run.sh --quick).

    lab                                   Lab (lablib.py): lab.json + helpers; FAILS (never skips) if the lab is not up
    fresh_guest(host, pins, vcpus=None, memory_mib=64, disk_mib=0, name=None, start=True) -> lablib.Guest
                                          a uniquely named pinned TCG guest, removed (wherever it went) at teardown
    db                                    a PyMySQL connection as the nova user (autocommit, no default database)
    fresh_instance_rows(host, pins, uuid=None, name=None, vcpus=None, memory_mb=64, fmt="stein",
                        allocations=True, port=True) -> uuid
                                          Nova instance rows (+ placement allocations, neutron port), deleted at teardown
    run_module(name, args, check_mode=False, diff=False) -> (rc, result dict)    <repo>/library/<name> <args.json>
    ansible_playbook(playbook, extra_vars=None, check=False, diff=False, limit=None) -> CompletedProcess
    fresh_container(name=None, image=None, volumes=(), flags=(), command=..., prefix=...) -> container name,
                                          removed at teardown; custom_container(flags, ...) the same, flags first
"""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lablib  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "lab: needs the lab (uses the lab fixture, directly or through another "
                                       "fixture); marked at collection. tests/run.sh --quick runs the others: -m 'not lab'")


def pytest_collection_modifyitems(config, items):
    """A test needs the lab exactly when it uses the `lab` fixture (which fails when the lab is not up)."""
    for item in items:
        if "lab" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.lab)


@pytest.fixture(scope="session")
def lab():
    try:
        return lablib.Lab.load()
    except lablib.LabNotUp as e:
        pytest.fail(str(e), pytrace=False)


@pytest.fixture
def fresh_guest(lab):
    made = []

    def make(host, pins, vcpus=None, memory_mib=64, disk_mib=0, name=None, start=True, uuid=None, nodeset="0"):
        name = name or "t-%s" % os.urandom(4).hex()
        made.append(name)
        return lab.define_guest(host, name, pins, vcpus=vcpus, memory_mib=memory_mib, disk_mib=disk_mib,
                                uuid=uuid, start=start, nodeset=nodeset)

    yield make
    for name in made:
        lab.remove_guest(name)


@pytest.fixture
def db(lab):
    conn = lab.connect_db()
    yield conn
    conn.close()


@pytest.fixture
def fresh_instance_rows(lab):
    conn = lab.connect_db(autocommit=False)
    made = []

    def make(host, pins, uuid=None, name=None, vcpus=None, memory_mb=64, fmt="stein", allocations=True, port=True):
        u = lab.insert_instance_rows(conn, host, pins, uuid=uuid, name=name, vcpus=vcpus, memory_mb=memory_mb,
                                     fmt=fmt, allocations=allocations, port=port)
        made.append(u)
        return u

    yield make
    for u in made:
        lab.delete_instance_rows(conn, u)
    conn.close()


@pytest.fixture
def run_module(lab):
    return lab.run_module


@pytest.fixture
def ansible_playbook(lab):
    return lab.ansible_playbook


@pytest.fixture
def fresh_container(lab):
    """make(name=None, image=None, volumes=(), flags=(), command=("sleep", "infinity"), prefix="nrl-test"): a
    container of the lab's Nova image (or `image`), lab.start_container; removed after the test."""
    made = []

    def make(**kw):
        made.append(lab.start_container(**kw))
        return made[-1]

    yield make
    for n in made:
        lab.remove_container(n)


@pytest.fixture
def custom_container(fresh_container):
    """fresh_container with extra `docker run` flags first: custom_container(["--health-cmd", ...], command=...)."""
    return lambda flags=(), **kw: fresh_container(flags=flags, **kw)


@pytest.fixture
def seeded(lab):
    """The lab's standard guests and rows, reseeded before and after the test (it moves or changes them)."""
    assert lab.lab_sh("seed").returncode == 0
    yield
    assert lab.lab_sh("seed").returncode == 0
