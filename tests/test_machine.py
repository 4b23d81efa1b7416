import pytest

from issp.machine import available_cpus, machine_description, quota_cpus


@pytest.mark.parametrize(
    ("cpu_max", "cores"),
    [("max 100000\n", None), ("200000 100000\n", 2), ("150000 100000\n", 1), ("50000 100000", 1)],
)
def test_cgroup_quota_is_read_as_whole_cores(tmp_path, cpu_max, cores):
    path = tmp_path / "cpu.max"
    path.write_text(cpu_max)
    assert quota_cpus(path) == cores


def test_no_cgroup_file_means_no_quota(tmp_path):
    assert quota_cpus(tmp_path / "missing") is None


def test_threads_never_exceed_the_quota(monkeypatch, tmp_path):
    path = tmp_path / "cpu.max"
    path.write_text("100000 100000\n")
    monkeypatch.setattr("issp.machine.CGROUP_CPU_MAX", path)
    assert available_cpus() == 1
    assert ", 1 cores, torch " in machine_description()
