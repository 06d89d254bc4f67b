"""The ONNX Runtime backend: sessions configured so that the set's sessions do not fight for cores."""

from __future__ import annotations

import numpy as np

from dfd.runtime.backends import OnnxRuntimeBackend, onnxruntime_session_options
from dfd.runtime.manifest import load_manifest

SPINNING = "session.intra_op.allow_spinning"


def test_session_options_turn_thread_spinning_off():
    options = onnxruntime_session_options(intra_op_threads=3)
    assert options.get_session_config_entry(SPINNING) == "0"
    assert options.intra_op_num_threads == 3


def test_every_stream_session_runs_without_spinning_and_returns_logits(tiny_engine_set):
    backend = OnnxRuntimeBackend(load_manifest(tiny_engine_set))
    for name, session in backend.sessions.items():
        assert session.get_session_options().get_session_config_entry(SPINNING) == "0", name
        size = session.get_inputs()[0].shape[-1]
        logits = backend.run(name, np.zeros((2, 3, size, size), np.float32))
        assert logits.shape == (2, 2) and logits.dtype == np.float32 and np.isfinite(logits).all()
