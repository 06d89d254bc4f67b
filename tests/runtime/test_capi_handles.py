"""The C ABI's handle table (``dfd.runtime.capi._Handles``) on a real Detector: ``dfd_close``
forgets a handle at once and closes its Detector when the last call running on it returns.
The C side of the same calls is exercised end to end in test_capi.py."""

from __future__ import annotations

import pytest

from dfd.runtime.capi import CapiArgumentError, _Handles
from dfd.runtime.detector import Detector
from dfd.runtime.errors import DfdError


def test_close_waits_for_the_call_running_on_the_handle(tiny_engine_set, photographs):
    handles = _Handles()
    key = handles.add(Detector.open(tiny_engine_set, backend="onnxruntime", face_detection=False))
    with handles.using(key) as detector:
        handles.remove(key)  # dfd_close from another thread while this call runs
        assert not detector.closed
        with pytest.raises(CapiArgumentError, match="is not open"):
            with handles.using(key):
                pass
        assert detector.detect([photographs["coffee"]])[0].ok  # the running call finishes its work
    assert detector.closed  # released as that call returned
    with pytest.raises(DfdError, match="this detector is closed"):
        detector.detect([photographs["coffee"]])
    with pytest.raises(CapiArgumentError, match="closed twice"):
        handles.remove(key)


def test_close_of_an_idle_handle_closes_its_detector_at_once(tiny_engine_set):
    handles = _Handles()
    detector = Detector.open(tiny_engine_set, backend="onnxruntime", face_detection=False)
    first, second = handles.add(detector), handles.add(Detector.open(tiny_engine_set, backend="onnxruntime",
                                                                      face_detection=False))
    assert first != second
    handles.remove(first)
    assert detector.closed
    with handles.using(second) as other:  # the other handle is untouched
        assert not other.closed
    with pytest.raises(CapiArgumentError, match="NULL"):
        with handles.using(0):
            pass
