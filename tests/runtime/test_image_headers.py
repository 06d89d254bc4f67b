"""File headers read before decoding (:mod:`dfd.runtime.image_headers`). Most of what they say
is checked through ``decode_image`` in test_images.py; here what no decode shows directly."""

from __future__ import annotations

from dfd.runtime.image_headers import read_header


def test_a_baseline_jpeg_whose_first_scan_lacks_a_component_counts_as_buffered():
    """libjpeg buffers the whole image too where the first scan does not interleave every
    component (a multi-scan baseline JPEG): the header says so from the scan header."""
    frame = b"\xff\xc0\x00\x11\x08" + (3000).to_bytes(2, "big") + (2000).to_bytes(2, "big") + b"\x03" + \
        b"\x01\x22\x00\x02\x11\x01\x03\x11\x01"  # 4:2:0
    one_component_scan = b"\xff\xda\x00\x08\x01\x01\x00\x00\x3f\x00"
    every_component_scan = b"\xff\xda\x00\x0c\x03\x01\x00\x02\x11\x03\x11\x00\x3f\x00"
    multi_scan = read_header(b"\xff\xd8" + frame + one_component_scan + b"\x00" * 8 + b"\xff\xd9")
    interleaved = read_header(b"\xff\xd8" + frame + every_component_scan + b"\x00" * 8 + b"\xff\xd9")
    # luma 250x375 blocks, each chroma 125x188 (rounded up), 128 bytes a block
    assert multi_scan.coefficient_bytes == (250 * 375 + 2 * 125 * 188) * 128
    assert interleaved.coefficient_bytes == 0
    # the first scan decides: a later scan that interleaves every component does not undo it
    later_interleaved = read_header(b"\xff\xd8" + frame + one_component_scan + b"\x00" * 8 + every_component_scan
                                    + b"\x00" * 8 + b"\xff\xd9")
    assert later_interleaved.coefficient_bytes == multi_scan.coefficient_bytes and later_interleaved.scans == 2
