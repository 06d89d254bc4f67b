"""What bench records and warns about the machine it measures on (:mod:`dfd.export.bench.environment`)."""

from __future__ import annotations

from dfd.export.bench.environment import busy_machine_warning, jetson_clocks_locked


def test_jetson_clock_state_is_read_from_jetson_clocks_show():
    locked = ("SOC family:tegra234  Machine:Jetson AGX Orin\n"
              "cpu0: Online=1 Governor=schedutil MinFreq=2201600 MaxFreq=2201600 CurrentFreq=2201600\n"
              "GPU MinFreq=1300500000 MaxFreq=1300500000 CurrentFreq=1300500000\n")
    assert jetson_clocks_locked(locked) is True
    assert jetson_clocks_locked(locked.replace("MinFreq=2201600", "MinFreq=115200")) is False
    assert jetson_clocks_locked("no clocks here") is None


def test_a_machine_busy_before_measuring_is_warned_about():
    assert busy_machine_warning((0.9, 2.0, 2.0), 2) is None
    assert busy_machine_warning(None, 2) is None
    assert busy_machine_warning((5.4, 4.0, 3.0), 2) == (
        "the machine was busy before measuring (1-minute load average 5.4 on 2 usable core(s)): timings and "
        "speed-ups swing with that load; rerun on an idle machine")
