"""The device table, one's own .toml device and `--device local`'s measurement cache."""

from __future__ import annotations

import pytest

from dlc import devices
from dlc.devices import DEVICES, Device, compute_precision, find, peak_for
from dlc.errors import DlcError


def test_h100_sxm_is_nvidias_dense_figures():
    h100 = find("H100 SXM")
    # NVIDIA's page: 3.35 TB/s, 80 GB, BF16 1,979 TFLOPS with sparsity (989.5 dense), FP8 3,958 (1,979 dense)
    assert (h100.bandwidth, h100.memory) == (3.35e12, 80e9)
    assert (h100.peak["bf16"], h100.peak["fp8"]) == (989.5e12, 1979e12)
    # the ridge point: 989.5e12 / 3.35e12 FLOP per byte
    assert h100.ridge["bf16"] == pytest.approx(295.37, abs=0.01)


def test_every_device_says_where_its_figures_came_from():
    assert len(DEVICES) >= 13
    for d in DEVICES.values():
        assert "fp32" in d.peak, d.name
        assert {"memory", "bandwidth", "peak"} <= set(d.sources), d.name
        assert all(u.startswith("https://") for u in d.sources.values()), d.name


def test_a_precision_the_part_lacks_runs_in_the_next_wider():
    assert peak_for(DEVICES["h100-sxm"], "int4") == ("int8", 1979e12)  # Hopper has no int4 tensor cores
    assert peak_for(DEVICES["m2-max"], "bf16") == ("fp16", 13.6e12)
    assert compute_precision("int4", "bf16") == "bf16"  # w4a16 multiplies in 16 bits
    assert compute_precision("fp8", "fp8") == "fp8"


def test_an_unknown_device_lists_the_names():
    with pytest.raises(DlcError, match="no such device; the table has h100-sxm, h100-pcie"):
        find("h1000")


def test_ones_own_device_from_toml(tmp_path):
    f = tmp_path / "mine.toml"
    f.write_text('name = "mine"\nmemory_gb = 16\nbandwidth_gb_s = 500\n[peak_tflops]\nfp32 = 20\nfp16 = 80\n')
    d = find(str(f))
    assert (d.name, d.memory, d.bandwidth, d.peak) == ("mine", 16e9, 500e9, {"fp32": 20e12, "fp16": 80e12})


@pytest.mark.parametrize("text, words", [
    ("memory_gb = 16\nbandwidth_gb_s = [\n", "not valid TOML"),
    ("memory_gb = 16\nbandwidth_gb_s = -1\n[peak_tflops]\nfp32 = 1\n", "bandwidth_gb_s = -1: give a number above 0"),
    ("memory_gb = 16\nbandwidth_gb_s = 1\n", "peak_tflops is missing"),
    ("memory_gb = 16\nbandwidth_gb_s = 1\n[peak_tflops]\nfp64 = 1\n", "peak_tflops must be a table with at least fp32"),
    ("memory_gb = 16\nbandwidth_gb_s = 1\n[peak_tflops]\nfp32 = 1\nfp12 = 3\n", "peak_tflops.fp12"),
    ("memory = 16\n", "unknown key 'memory'"),
])
def test_a_bad_device_file_is_named(tmp_path, text, words):
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(DlcError, match=words) as e:
        find(str(f))
    assert str(f) in str(e.value)


def test_local_is_measured_once_then_read_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    runs = []
    fake = Device("local", 8 * 2**30, 10e9, {"fp32": 50e9}, {"peak": "measured"}, "")
    monkeypatch.setattr(devices, "measure", lambda: runs.append(1) or fake)
    first, said = devices.local()
    assert "measured this machine" in said and str(tmp_path / "dlc" / "device-local.json") in said
    second, said = devices.local()
    assert "read the measurement cached" in said
    assert first == second == fake and len(runs) == 1
