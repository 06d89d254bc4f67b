"""The C ABI end to end: build libdfd_runtime.so, compile C programs with the system compiler,
run them with an EMPTY environment, and compare with ``dfd-export detect --format jsonl``.

The C side is a harness (below, compiled per session) plus the shipped example service
``examples/c/dfd_detect.c``. The embedded interpreter starts once per C process (about a
second: numpy, OpenCV, onnxruntime), so each scenario is one process.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import write_rebuilt_manifest
from click.testing import CliRunner

from dfd.export.capi_build import build_capi
from dfd.export.cli import main as cli_main
from host_gpu import required_compiler


@pytest.fixture(autouse=True, scope="module")
def system_c_compiler() -> str:
    """cc builds the library and the C programs; without it every test here fails, none skips."""
    return required_compiler("cc")


REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "c" / "dfd_detect.c"
STATUS = {"ok": 0, "invalid_argument": 1, "io": 2, "engine": 3, "image": 4, "internal": 5}
STREAMS = ("global", "face", "fusion")
RSS_LIMIT_KB = 50 * 1024

HARNESS = r"""
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "dfd_runtime.h"

typedef struct { unsigned char *rgb; int w, h; } raw_image;

static raw_image load_raw(const char *spec)   /* "path:W:H", tightly packed RGB bytes */
{
    raw_image im; char path[4096]; FILE *f; size_t n;
    if (sscanf(spec, "%4095[^:]:%d:%d", path, &im.w, &im.h) != 3) { fprintf(stderr, "bad spec %s\n", spec); exit(9); }
    n = (size_t)im.w * im.h * 3;
    im.rgb = malloc(n);
    f = fopen(path, "rb");
    if (!f || fread(im.rgb, 1, n, f) != n) { fprintf(stderr, "cannot read %s\n", path); exit(9); }
    fclose(f);
    return im;
}

/* A copy of im in format fmt with rows padded to stride (padding filled with junk). */
static dfd_image make_image(raw_image im, dfd_pixel_format fmt, int padding)
{
    dfd_image out; int y, x, stride = im.w * 3 + padding;
    unsigned char *buf = malloc((size_t)stride * im.h);
    memset(buf, 0xA5, (size_t)stride * im.h);
    for (y = 0; y < im.h; y++)
        for (x = 0; x < im.w; x++) {
            const unsigned char *s = im.rgb + ((size_t)y * im.w + x) * 3;
            unsigned char *d = buf + (size_t)y * stride + x * 3;
            d[0] = fmt == DFD_PIXEL_BGR8 ? s[2] : s[0]; d[1] = s[1]; d[2] = fmt == DFD_PIXEL_BGR8 ? s[0] : s[2];
        }
    out.data = buf; out.width = im.w; out.height = im.h; out.stride_bytes = stride; out.format = fmt;
    return out;
}

static void print_result(const char *tag, int i, dfd_status call, const dfd_result *r)
{
    printf("%s %d %d %d %.9g %.9g %.9g %.9g %d %.9g %.9g %.9g %.9g\n", tag, i, call, r->status, r->score,
           r->stream_prob[0], r->stream_prob[1], r->stream_prob[2], r->face_found,
           r->face_box[0], r->face_box[1], r->face_box[2], r->face_box[3]);
}

static int same(const dfd_result *a, const dfd_result *b)
{
    return memcmp(a, b, sizeof *a) == 0;
}

static long rss_kb(void)
{
    char line[256]; long kb = -1; FILE *f = fopen("/proc/self/status", "r");
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "VmRSS: %ld kB", &kb) == 1) break;
    if (f) fclose(f);
    return kb;
}

static dfd_detector *open_or_die(const char *dir)
{
    dfd_detector *d = NULL;
    if (dfd_open(dir, NULL, &d) != DFD_OK) { fprintf(stderr, "open: %s\n", dfd_last_error()); exit(8); }
    return d;
}

/* ---- pixels: every image through dfd_detect as RGB and as BGR, padded strides, one batch each */
static int run_pixels(int argc, char **argv)
{
    int n = argc - 3, i, f;
    dfd_detector *d = open_or_die(argv[2]);
    dfd_image *images = calloc(n, sizeof *images);
    dfd_result *results = calloc(n, sizeof *results);
    for (f = 0; f < 2; f++) {
        dfd_status call;
        for (i = 0; i < n; i++)
            images[i] = make_image(load_raw(argv[3 + i]), f ? DFD_PIXEL_BGR8 : DFD_PIXEL_RGB8, 5 + 8 * i);
        call = dfd_detect(d, images, n, results);
        for (i = 0; i < n; i++)
            print_result(f ? "bgr" : "rgb", i, call, &results[i]);
    }
    dfd_close(d);
    return 0;
}

/* ---- threads: THREADS x CALLS at once on one detector, each result compared with a serial one */
typedef struct { dfd_detector *d; dfd_image *images; dfd_result *expected; int calls, mismatches, failures; } job;

static void *worker(void *arg)
{
    job *j = arg; int c;
    for (c = 0; c < j->calls; c++) {
        dfd_result r; int k = c % 2;
        if (dfd_detect(j->d, &j->images[k], 1, &r) != DFD_OK) j->failures++;
        else if (!same(&r, &j->expected[k])) j->mismatches++;
    }
    return NULL;
}

static void run_jobs(dfd_detector *d, dfd_image *images, dfd_result *expected, int threads, int calls,
                     int *mismatches, int *failures)
{
    pthread_t tid[16]; job jobs[16]; int t;
    for (t = 0; t < threads; t++) {
        jobs[t].d = d; jobs[t].images = images; jobs[t].expected = expected;
        jobs[t].calls = calls; jobs[t].mismatches = jobs[t].failures = 0;
        pthread_create(&tid[t], NULL, worker, &jobs[t]);
    }
    for (t = 0; t < threads; t++) {
        pthread_join(tid[t], NULL);
        *mismatches += jobs[t].mismatches; *failures += jobs[t].failures;
    }
}

/* argv: threads|rss ENGINE SPEC_A SPEC_B THREADS CALLS_PER_THREAD WARMUP_PER_THREAD */
static int run_concurrent(int argc, char **argv)
{
    dfd_detector *d = open_or_die(argv[2]);
    dfd_image images[2]; dfd_result expected[2];
    int threads = atoi(argv[5]), calls = atoi(argv[6]), warmup = atoi(argv[7]), k;
    int mismatches = 0, failures = 0, warm_mismatches = 0, warm_failures = 0;
    long before, after;
    (void)argc;
    for (k = 0; k < 2; k++) {
        images[k] = make_image(load_raw(argv[3 + k]), k ? DFD_PIXEL_BGR8 : DFD_PIXEL_RGB8, 3);
        if (dfd_detect(d, &images[k], 1, &expected[k]) != DFD_OK) { fprintf(stderr, "%s\n", dfd_last_error()); return 7; }
    }
    run_jobs(d, images, expected, threads, warmup, &warm_mismatches, &warm_failures);
    before = rss_kb();
    run_jobs(d, images, expected, threads, calls, &mismatches, &failures);
    after = rss_kb();
    printf("calls %d mismatches %d failures %d rss_before_kb %ld rss_after_kb %ld\n", threads * calls,
           mismatches + warm_mismatches, failures + warm_failures, before, after);
    print_result("expected", 0, DFD_OK, &expected[0]);
    print_result("expected", 1, DFD_OK, &expected[1]);
    dfd_close(d);
    return 0;
}

/* ---- errors: NULL and nonsense everywhere; one line per case: name, status, message */
static void print_lines(const char *text)
{
    const char *c;
    for (c = text; *c; c++)               /* one line per case: newlines as " | " */
        fputs(*c == '\n' ? " | " : (char[2]){*c, 0}, stdout);
    putchar('\n');
}

static void report(const char *name, int status)
{
    printf("%s\t%d\t", name, status);
    print_lines(dfd_last_error());
}

/* dfd_detect on a good image and a broken one: the call's line, then "<name>_results" with both
   statuses and the good image's score, then "<name>_message" with the broken one's message. */
static void report_pair(const char *name, dfd_detector *d, const dfd_image *pair, dfd_result *rs)
{
    dfd_status status = dfd_detect(d, pair, 2, rs);
    report(name, status);
    printf("%s_results\t%d\t%d %d %.9g\n", name, status, rs[0].status, rs[1].status, rs[0].score);
    printf("%s_message\t%d\t", name, rs[1].status);
    print_lines(rs[1].message);
}

static void *fail_in_thread(void *arg)
{
    dfd_result r;
    report("thread_own_error", dfd_detect_file(NULL, "x.png", &r));
    (void)arg;
    return NULL;
}

/* argv: errors ENGINE TAMPERED UNDECODABLE GOOD_SPEC GOOD_FILE */
static int run_errors(int argc, char **argv)
{
    dfd_detector *d = (dfd_detector *)0x5a5a, *bad = (dfd_detector *)0x1234;
    dfd_image img, broken[2]; dfd_result r, rs[2]; pthread_t tid;
    (void)argc;
    printf("version\t0\t%s\n", dfd_version());
    report("initial", 0);
    dfd_close(NULL); report("close_null_before_start", 0);
    report("open_null_out", dfd_open(argv[2], NULL, NULL));
    report("open_null_dir", dfd_open(NULL, NULL, &d)); printf("open_null_dir_out\t%d\t\n", d == NULL);
    report("open_bad_backend", dfd_open(argv[2], "warp-drive", &d));
    report("open_missing", dfd_open("/nonexistent/engine-set", NULL, &d));
    report("open_tampered", dfd_open(argv[3], NULL, &d)); printf("open_tampered_out\t%d\t\n", d == NULL);
    report("open_ok", dfd_open(argv[2], "onnxruntime", &d));

    img = make_image(load_raw(argv[5]), DFD_PIXEL_RGB8, 0);
    report("detect_null_detector", dfd_detect(NULL, &img, 1, &r));
    report("detect_garbage_detector", dfd_detect(bad, &img, 1, &r));
    r.status = DFD_OK; report("detect_null_images", dfd_detect(d, NULL, 1, &r));
    printf("detect_null_images_result\t%d\t\n", r.status);
    report("detect_null_results", dfd_detect(d, &img, 1, NULL));
    report("detect_negative_count", dfd_detect(d, &img, -1, &r));
    report("detect_zero_count", dfd_detect(d, NULL, 0, NULL));
    broken[0] = img; broken[1] = img; broken[1].width = 0; report_pair("detect_width_zero", d, broken, rs);
    broken[1] = img; broken[1].height = -3; report_pair("detect_negative_height", d, broken, rs);
    broken[1] = img; broken[1].stride_bytes = img.width * 3 - 1; report_pair("detect_small_stride", d, broken, rs);
    broken[1] = img; broken[1].format = (dfd_pixel_format)7; report_pair("detect_bad_format", d, broken, rs);
    broken[1] = img; broken[1].data = NULL; report_pair("detect_null_data", d, broken, rs);
    report("detect_ok", dfd_detect(d, &img, 1, &r)); printf("detect_ok_score\t%d\t%.9g\n", r.status, r.score);

    report("file_null_detector", dfd_detect_file(NULL, argv[6], &r));
    report("file_null_path", dfd_detect_file(d, NULL, &r));
    report("file_null_result", dfd_detect_file(d, argv[6], NULL));
    report("file_missing", dfd_detect_file(d, "/nonexistent/photo.png", &r));
    report("file_directory", dfd_detect_file(d, "/", &r));
    report("file_undecodable", dfd_detect_file(d, argv[4], &r));
    printf("file_undecodable_result\t%d\t%s\n", r.status, r.message);
    report("file_ok_after_failure", dfd_detect_file(d, argv[6], &r));

    dfd_detect_file(d, "/nonexistent/photo.png", &r);
    pthread_create(&tid, NULL, fail_in_thread, NULL); pthread_join(tid, NULL);
    report("main_error_kept", 2);   /* still the main thread's own error, not the thread's */

    dfd_close(NULL); report("close_null", 0);
    dfd_close(d); report("close_ok", 0);
    report("use_after_close", dfd_detect_file(d, argv[6], &r));
    dfd_close(d); report("close_twice", 0);
    dfd_close(bad); report("close_garbage", 0);
    return 0;
}

/* ---- options: dfd_options_init / dfd_open_with / dfd_describe; lines as in errors, results as
   "status score global face fusion face_found x1 y1 x2 y2" in the message field, and the
   result's own message on a NAME_message line */
static void report_result(const char *name, dfd_status status, const dfd_result *r)
{
    printf("%s\t%d\t%d %.9g %.9g %.9g %.9g %d %.9g %.9g %.9g %.9g\n", name, status, r->status, r->score, r->stream_prob[0],
           r->stream_prob[1], r->stream_prob[2], r->face_found, r->face_box[0], r->face_box[1], r->face_box[2],
           r->face_box[3]);
    printf("%s_message\t%d\t", name, r->status);
    print_lines(r->message);
}

static void open_and_detect(const char *name, const char *dir, const dfd_options *o, const dfd_image *img)
{
    dfd_detector *d = NULL; dfd_result r; char line[2048], name_describe[64];
    dfd_status status = dfd_open_with(dir, o, &d);
    if (status != DFD_OK) { report(name, status); return; }
    report_result(name, dfd_detect(d, img, 1, &r), &r);
    snprintf(name_describe, sizeof name_describe, "%s_describe", name);
    status = dfd_describe(d, line, sizeof line);
    printf("%s\t%d\t%s\n", name_describe, status, line);
    dfd_close(d);
}

/* argv: options ENGINE SPEC */
static int run_options(int argc, char **argv)
{
    dfd_options o; dfd_detector *d = (dfd_detector *)0x5a5a; dfd_image img; char tiny[8]; dfd_status status;
    (void)argc;
    img = make_image(load_raw(argv[3]), DFD_PIXEL_RGB8, 0);
    dfd_options_init(NULL);
    memset(&o, 0x5a, sizeof o);
    dfd_options_init(&o);
    printf("defaults\t0\t%d %d %d %d %.9g %d %d %d %lld\n", o.struct_size == sizeof o, o.backend == NULL,
           o.batch_size, o.face_detection, o.face_min_px, o.gpu_preprocessing, o.cuda_graph_batch, o.face_cascade,
           (long long)o.max_pixels);

    open_and_detect("null_options", argv[2], NULL, &img);
    open_and_detect("initialised", argv[2], &o, &img);
    dfd_options_init(&o); o.backend = "onnxruntime"; o.face_detection = 0; open_and_detect("no_face_detect", argv[2], &o, &img);
    dfd_options_init(&o); o.face_min_px = 0; o.batch_size = 1; open_and_detect("one_pass", argv[2], &o, &img);
    dfd_options_init(&o); o.face_cascade = 0; open_and_detect("no_cascade", argv[2], &o, &img);
    dfd_options_init(&o); o.max_pixels = 1000; open_and_detect("max_pixels_small", argv[2], &o, &img);

    memset(&o, 0, sizeof o); report("uninitialised", dfd_open_with(argv[2], &o, &d));
    printf("uninitialised_out\t%d\t\n", d == NULL);
    dfd_options_init(&o); o.struct_size += 8; report("newer_struct", dfd_open_with(argv[2], &o, &d));
    dfd_options_init(&o); o.batch_size = 0; report("batch_zero", dfd_open_with(argv[2], &o, &d));
    dfd_options_init(&o); o.face_detection = 2; report("face_detection_two", dfd_open_with(argv[2], &o, &d));
    dfd_options_init(&o); o.gpu_preprocessing = -1; report("gpu_preprocessing_negative", dfd_open_with(argv[2], &o, &d));
    dfd_options_init(&o); o.face_cascade = 7; report("face_cascade_seven", dfd_open_with(argv[2], &o, &d));
    dfd_options_init(&o); o.max_pixels = 0; report("max_pixels_zero", dfd_open_with(argv[2], &o, &d));
    dfd_options_init(&o); o.face_min_px = NAN; report("face_min_px_nan", dfd_open_with(argv[2], &o, &d));
    dfd_options_init(&o); o.face_min_px = -1; report("face_min_px_negative", dfd_open_with(argv[2], &o, &d));
    dfd_options_init(&o); report("options_init_clears", DFD_OK);  /* after the failure above */
    o.face_min_px = 0.5f; report("face_min_px_small", dfd_open_with(argv[2], &o, &d));
    dfd_options_init(&o); o.cuda_graph_batch = -1; report("graph_negative", dfd_open_with(argv[2], &o, &d));
    dfd_options_init(&o); o.cuda_graph_batch = o.batch_size + 1; report("graph_over_batch", dfd_open_with(argv[2], &o, &d));
    dfd_options_init(&o); o.backend = "onnxruntime"; o.cuda_graph_batch = 4;
    report("graph_on_onnxruntime", dfd_open_with(argv[2], &o, &d));
    dfd_options_init(&o); o.backend = "warp-drive"; report("bad_backend", dfd_open_with(argv[2], &o, &d));
    dfd_options_init(&o); report("null_out", dfd_open_with(argv[2], &o, NULL));
    report("null_dir", dfd_open_with(NULL, &o, &d));
    printf("failed_out\t%d\t\n", d == NULL);

    report("describe_null_detector", dfd_describe(NULL, tiny, sizeof tiny));
    if (dfd_open_with(argv[2], NULL, &d) != DFD_OK) { fprintf(stderr, "%s\n", dfd_last_error()); return 7; }
    report("describe_null_buffer", dfd_describe(d, NULL, 16));
    memset(tiny, 'x', sizeof tiny);
    status = dfd_describe(d, tiny, sizeof tiny);
    printf("describe_cut\t%d\t%d %s\n", status, (int)strlen(tiny), tiny);
    dfd_close(d);
    report("describe_after_close", dfd_describe(d, tiny, sizeof tiny));
    return 0;
}

/* ---- faces: dfd_detect_faces / dfd_detect_file_face with the caller's boxes; lines as in options.
   argv: faces ENGINE SPEC FILE X1 Y1 X2 Y2 (SPEC's pixels are FILE's) */
static int run_faces(int argc, char **argv)
{
    dfd_detector *d = open_or_die(argv[2]);
    dfd_image img = make_image(load_raw(argv[3]), DFD_PIXEL_BGR8, 7), imgs[4];
    dfd_face faces[4], none, bad; dfd_result rs[4], r; dfd_status status; int i;
    (void)argc;
    memset(faces, 0, sizeof faces);
    faces[0].given = 1;
    for (i = 0; i < 4; i++) faces[0].box[i] = (float)atof(argv[5 + i]);
    faces[1].given = 0;                                   /* no box: the face localiser */
    faces[2].given = 1; faces[2].box[0] = NAN;            /* fails its own image only */
    faces[3] = faces[0]; faces[3].box[0] = faces[3].box[2] = 1e6f;  /* so does this: 2 failures */
    imgs[0] = imgs[1] = imgs[2] = imgs[3] = img;
    status = dfd_detect_faces(d, imgs, faces, 4, rs);
    report("batch_error", status);
    report_result("given", status, &rs[0]); report_result("not_given", status, &rs[1]);
    report_result("nan_box", status, &rs[2]); report_result("outside_box", status, &rs[3]);
    report_result("null_faces", dfd_detect_faces(d, &img, NULL, 1, &r), &r);
    report_result("plain_detect", dfd_detect(d, &img, 1, &r), &r);
    faces[1].given = 2;
    status = dfd_detect_faces(d, imgs, faces, 2, rs);
    report("given_two", status); printf("given_two_results\t%d\t%d %d\n", status, rs[0].status, rs[1].status);
    printf("given_two_error\t%d\t", rs[1].status); print_lines(rs[1].message);
    printf("given_two_score\t%d\t%.9g\n", rs[0].status, rs[0].score);
    report_result("file_given", dfd_detect_file_face(d, argv[4], &faces[0], &r), &r);
    memset(&none, 0, sizeof none);
    report_result("file_not_given", dfd_detect_file_face(d, argv[4], &none, &r), &r);
    report_result("file_null_face", dfd_detect_file_face(d, argv[4], NULL, &r), &r);
    bad = faces[0]; bad.box[0] = bad.box[2] = 1e6f;
    status = dfd_detect_file_face(d, argv[4], &bad, &r); report("file_outside", status);
    printf("file_outside_result\t%d\t%d\n", status, r.status);
    bad.given = -1; report("file_given_negative", dfd_detect_file_face(d, argv[4], &bad, &r));
    report("file_missing_with_face", dfd_detect_file_face(d, "/nonexistent/photo.png", &faces[0], &r));
    dfd_close(d);
    report("faces_after_close", dfd_detect_faces(d, &img, faces, 1, &r));
    return 0;
}

/* ---- encoded: each FILE's bytes through dfd_detect_encoded, printed as in pixels ("encoded"), then
   as in errors for NULL and nonsense. argv: encoded ENGINE FILE... */
static unsigned char *read_all(const char *path, size_t *size)
{
    unsigned char *data; long n; FILE *f = fopen(path, "rb");
    if (!f || fseek(f, 0, SEEK_END) || (n = ftell(f)) < 0 || fseek(f, 0, SEEK_SET)) { fprintf(stderr, "cannot read %s\n", path); exit(9); }
    data = malloc((size_t)n + 1);
    if (fread(data, 1, (size_t)n, f) != (size_t)n) { fprintf(stderr, "cannot read %s\n", path); exit(9); }
    fclose(f);
    *size = (size_t)n;
    return data;
}

static int run_encoded(int argc, char **argv)
{
    dfd_detector *d = open_or_die(argv[2]); dfd_result r; dfd_face face; size_t size = 0; int i;
    unsigned char *data = NULL;
    for (i = 3; i < argc; i++) {
        data = read_all(argv[i], &size);
        print_result("encoded", i - 3, dfd_detect_encoded(d, data, size, NULL, &r), &r);
    }
    memset(&face, 0, sizeof face); face.given = 1; face.box[2] = face.box[3] = 1e9f;
    report_result("far_box", dfd_detect_encoded(d, data, size, &face, &r), &r);
    report("null_data", dfd_detect_encoded(d, NULL, 5, NULL, &r));
    report_result("empty", dfd_detect_encoded(d, data, 0, NULL, &r), &r);
    report_result("garbage", dfd_detect_encoded(d, "not an image", 12, NULL, &r), &r);
    report("null_result", dfd_detect_encoded(d, data, size, NULL, NULL));
    report("null_detector", dfd_detect_encoded(NULL, data, size, NULL, &r));
    face.given = 3; report("given_three", dfd_detect_encoded(d, data, size, &face, &r));
    dfd_close(d);
    report("after_close", dfd_detect_encoded(d, data, size, NULL, &r));
    return 0;
}

int main(int argc, char **argv)
{
    if (argc >= 4 && !strcmp(argv[1], "encoded")) return run_encoded(argc, argv);
    if (argc == 4 && !strcmp(argv[1], "options")) return run_options(argc, argv);
    if (argc == 9 && !strcmp(argv[1], "faces")) return run_faces(argc, argv);
    if (argc >= 3 && !strcmp(argv[1], "pixels")) return run_pixels(argc, argv);
    if (argc == 8 && (!strcmp(argv[1], "threads") || !strcmp(argv[1], "rss"))) return run_concurrent(argc, argv);
    if (argc == 7 && !strcmp(argv[1], "errors")) return run_errors(argc, argv);
    fprintf(stderr, "usage: harness pixels|threads|rss|errors|options|faces|encoded ...\n");
    return 2;
}
"""


def _compile(source: Path, exe: Path, lib_dir: Path) -> Path:
    built = subprocess.run(["cc", "-O1", "-Wall", "-Wextra", "-Werror", "-pthread", str(source), "-I", str(lib_dir),
                            "-L", str(lib_dir), "-ldfd_runtime", f"-Wl,-rpath,{lib_dir}", "-o", str(exe)],
                           capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    return exe


def _run(args: list, stdin: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run a C program with an EMPTY environment: the library must find Python by itself."""
    return subprocess.run([str(a) for a in args], input=stdin, capture_output=True, text=True, env={},
                          timeout=timeout)


@pytest.fixture(scope="session")
def capi_lib(tmp_path_factory) -> Path:
    header, library = build_capi(tmp_path_factory.mktemp("capi"))
    assert header.parent == library.parent
    return library.parent


@pytest.fixture(scope="session")
def harness(capi_lib, tmp_path_factory) -> Path:
    source = tmp_path_factory.mktemp("harness") / "harness.c"
    source.write_text(HARNESS)
    return _compile(source, source.with_suffix(""), capi_lib)


@pytest.fixture(scope="session")
def example_service(capi_lib, tmp_path_factory) -> Path:
    return _compile(EXAMPLE, tmp_path_factory.mktemp("example") / "dfd_detect", capi_lib)


@pytest.fixture(scope="module")
def pictures(photographs, tmp_path_factory) -> dict[str, tuple[Path, str]]:
    """name -> (image file, raw-pixels spec "path:W:H"). Lossless PNGs, so decoded pixels and
    files must score identically; a JPEG for the file path only (its face stream re-encodes)."""
    root = tmp_path_factory.mktemp("capi-images")
    arrays = {"astronaut": photographs["astronaut"], "chelsea": photographs["chelsea"],
              # odd width: rows of 3*351 bytes, padded strides are not a multiple of 4
              "astronaut_crop": np.ascontiguousarray(photographs["astronaut"][20:320, 100:451])}
    out = {}
    for name, rgb in arrays.items():
        png = root / f"{name}.png"
        cv2.imwrite(str(png), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        decoded = cv2.cvtColor(cv2.imread(str(png)), cv2.COLOR_BGR2RGB)
        raw = root / f"{name}.rgb"
        raw.write_bytes(decoded.tobytes())
        out[name] = (png, f"{raw}:{decoded.shape[1]}:{decoded.shape[0]}")
    jpeg = root / "astronaut.jpg"
    cv2.imwrite(str(jpeg), cv2.cvtColor(photographs["astronaut"], cv2.COLOR_RGB2BGR))
    out["astronaut_jpeg"] = (jpeg, "")
    undecodable = root / "broken.png"
    undecodable.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    out["broken"] = (undecodable, "")
    return out


def _cli_jsonl(engine_dir: Path, files: list[Path], *flags: str) -> list[dict]:
    result = CliRunner().invoke(cli_main, ["detect", str(engine_dir), *map(str, files), "--format", "jsonl", *flags])
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def _parse_result(fields: list[str]) -> dict:
    values = [float(v) for v in fields]
    return {"call": int(values[0]), "status": int(values[1]), "score": values[2], "streams": values[3:6],
            "face_found": int(values[6]), "face_box": values[7:11]}


def _harness_cases(run: subprocess.CompletedProcess) -> dict[str, tuple[int, str]]:
    """The harness's "name<TAB>status<TAB>message" lines, by name."""
    assert run.returncode == 0, run.stderr
    cases = {}
    for line in run.stdout.splitlines():
        name, status, message = line.split("\t")
        cases[name] = (int(status), message)
    return cases


def _expect(cases: dict[str, tuple[int, str]], name: str, status: str, *words: str) -> None:
    got_status, message = cases[name]
    assert got_status == STATUS[status], (name, cases[name])
    for word in words:
        assert word in message, (name, message)


def _assert_matches_cli(got: dict, expected: dict, where: str) -> None:
    assert got["score"] == pytest.approx(expected["score"], abs=1e-6), where
    for slot, stream in enumerate(STREAMS):
        assert got["streams"][slot] == pytest.approx(expected["streams"][stream], abs=1e-6), (where, stream)
    box = (expected["face"] or {}).get("box")
    assert got["face_found"] == (box is not None), where
    if box is not None:
        assert got["face_box"] == pytest.approx(box, abs=1e-3), where


def test_decoded_pixels_and_files_score_as_the_cli(tiny_engine_set, pictures, harness, example_service):
    names = ["astronaut", "chelsea", "astronaut_crop"]
    expected = _cli_jsonl(tiny_engine_set, [pictures[n][0] for n in names] + [pictures["astronaut_jpeg"][0]])
    assert [e["face"] is not None for e in expected] == [True, False, True, True]  # both face paths covered

    run = _run([harness, "pixels", tiny_engine_set, *(pictures[n][1] for n in names)])
    assert run.returncode == 0, run.stderr
    rows = [line.split() for line in run.stdout.splitlines()]
    assert [(r[0], int(r[1])) for r in rows] == [(f, i) for f in ("rgb", "bgr") for i in range(3)]
    for row in rows:
        got = _parse_result(row[2:])
        assert (got["call"], got["status"]) == (0, 0), row
        _assert_matches_cli(got, expected[int(row[1])], f"{row[0]} {names[int(row[1])]}")

    files = [pictures[n][0] for n in names] + [pictures["astronaut_jpeg"][0]]
    served = _run([example_service, tiny_engine_set], stdin="".join(f"{p}\n" for p in files))
    assert served.returncode == 0, served.stderr
    lines = [json.loads(line) for line in served.stdout.splitlines()]
    assert [line["image"] for line in lines] == [str(p) for p in files]
    for line, reference in zip(lines, expected):
        assert line["status"] == "ok" and line["error"] is None
        got = {"score": line["score"], "streams": [line["streams"][s] for s in STREAMS],
               "face_found": line["face_found"], "face_box": line["face_box"]}
        _assert_matches_cli(got, reference, line["image"])


def test_encoded_bytes_score_as_the_cli_scores_the_files(tiny_engine_set, pictures, harness):
    """A JPEG's bytes too: the face stream's reference re-encode follows the bytes' format."""
    files = [pictures[name][0] for name in ("astronaut", "astronaut_jpeg", "chelsea")]
    expected = _cli_jsonl(tiny_engine_set, files)
    run = _run([harness, "encoded", tiny_engine_set, *files])
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    encoded = [line.split() for line in lines if line.startswith("encoded ")]
    assert len(encoded) == len(files)
    for fields, want in zip(encoded, expected):
        got = _parse_result(fields[2:])
        assert got["call"] == got["status"] == STATUS["ok"], fields
        _assert_matches_cli(got, want, want["image"])
    cases = _harness_cases(subprocess.CompletedProcess(run.args, 0, "\n".join(lines[len(files):]), ""))
    _expect(cases, "far_box", "image")
    _expect(cases, "far_box_message", "image", "crop window, mostly black padding")
    _expect(cases, "null_data", "invalid_argument", "data is NULL for 5 bytes")
    _expect(cases, "empty_message", "image", "image bytes are empty")
    _expect(cases, "garbage_message", "image", "not an image OpenCV can decode")
    _expect(cases, "null_result", "invalid_argument", "result is NULL")
    _expect(cases, "null_detector", "invalid_argument")
    _expect(cases, "given_three", "invalid_argument", "face.given is 3")
    _expect(cases, "after_close", "invalid_argument")


def test_example_service_reports_a_bad_file_and_goes_on(tiny_engine_set, pictures, example_service, tmp_path):
    small_gray = tmp_path / "small_gray.png"  # several notes: grayscale, padded crop, upscaled resize
    corner = cv2.imread(str(pictures["chelsea"][0]))[:90, :120]
    cv2.imwrite(str(small_gray), cv2.cvtColor(corner, cv2.COLOR_BGR2GRAY))
    paths = [pictures["astronaut"][0], pictures["broken"][0], "/nonexistent/photo.jpg", pictures["astronaut_crop"][0],
             f"{pictures['astronaut'][0]}\t120 30 320.5 260", f"{pictures['astronaut'][0]}\t120 30 x", small_gray]
    served = _run([example_service, tiny_engine_set], stdin="".join(f"{p}\n" for p in paths) + "\n")
    assert served.returncode == 2, served.stderr  # some failed
    lines = [json.loads(line) for line in served.stdout.splitlines()]
    assert [line["status"] for line in lines] == ["ok", "image", "io", "ok", "ok", "invalid_argument", "ok"]
    cli = _cli_jsonl(tiny_engine_set, [pictures["astronaut"][0], small_gray])
    assert lines[0]["notes"] == cli[0]["notes"] and lines[6]["notes"] == cli[1]["notes"]
    assert len(cli[1]["notes"]) >= 3 and "grayscale expanded to RGB" in cli[1]["notes"]
    assert any("; " in note for note in cli[1]["notes"])  # notes are split on newlines, not "; "
    assert "broken.png" in lines[1]["error"] and "does not exist" in lines[2]["error"]
    assert lines[1]["score"] is None and 0.0 <= lines[3]["score"] <= 1.0
    assert lines[4]["image"] == str(pictures["astronaut"][0]) and lines[4]["face_box"] == [120, 30, 320.5, 260]
    assert lines[4]["streams"]["face"] != lines[0]["streams"]["face"]  # the given box, not the located one
    assert "four numbers" in lines[5]["error"]
    assert "backend: " in served.stderr and "preprocessing and vote: host (NumPy/OpenCV)" in served.stderr
    assert "IHDR" not in served.stderr  # OpenCV's own log line for broken.png, which the result names

    refused = _run([example_service, "/nonexistent/engine-set"], stdin="")
    assert refused.returncode == 1 and "engine set folder not found" in refused.stderr


def test_files_that_cannot_be_read_are_io_errors_that_say_what_detect_says(tiny_engine_set, pictures,
                                                                            example_service, tmp_path):
    """A broken link, a link loop, a FIFO and a device are input/output errors with the reason
    the CLI gives (they were all "does not exist" or "not a readable file"), and the service goes on."""
    (tmp_path / "broken.jpg").symlink_to("/nonexistent/target.jpg")
    (tmp_path / "loop.jpg").symlink_to(tmp_path / "loop.jpg")
    os.mkfifo(tmp_path / "pipe.jpg")
    paths = [tmp_path / "broken.jpg", tmp_path / "loop.jpg", tmp_path / "pipe.jpg", Path("/dev/zero"),
             pictures["astronaut"][0]]
    # a regular, readable file whose read fails (EIO: offset 0 of a process's memory is unmapped),
    # which the stat before the read cannot foresee: it was DFD_E_IMAGE
    paths.insert(4, Path("/proc/self/mem"))
    served = _run([example_service, tiny_engine_set], stdin="".join(f"{p}\n" for p in paths))
    assert served.returncode == 2, served.stderr
    lines = [json.loads(line) for line in served.stdout.splitlines()]
    assert [line["status"] for line in lines] == ["io"] * 5 + ["ok"]
    assert lines[4]["error"] == "cannot read image file '/proc/self/mem': Input/output error"
    cli = CliRunner().invoke(cli_main, ["detect", str(tiny_engine_set), *map(str, paths[:4]), "--format", "jsonl"])
    assert cli.exit_code == 2 and "4 of 4 input(s) failed" in cli.stderr
    rows = [json.loads(line) for line in cli.stdout.splitlines()]
    assert [line["error"] for line in lines[:4]] == [row["error"] for row in rows]
    for line, words in zip(lines, ("broken symbolic link (to /nonexistent/target.jpg)", "symbolic links",
                                   "named pipe (FIFO)", "character device")):
        assert words in line["error"], line


def test_example_service_reads_each_line_strictly_and_reports_lost_output(tiny_engine_set, pictures, example_service):
    """A line over the buffer was read as two paths (two output lines); a line holding a NUL byte
    was taken for a long one and the next path skipped with it; "0x10" and "1e40" were taken as
    box coordinates; a trailing tab refused a good box; and with standard output on a full disk
    the service exited 0, every result lost."""
    photo = pictures["astronaut"][0]
    lines = [f"{photo}\t120 30 320.5 260\t", f"{photo}\t120\t30\t320.5\t260", f"{photo}\t0x10 30 320 260",
             f"{photo}\t1e40 30 320 260", f"{photo}\tinf 30 320 260", "x" * 9000, str(photo), "ab\0cd",
             f"{photo}\r"]
    served = _run([example_service, tiny_engine_set], stdin="".join(f"{line}\n" for line in lines))
    assert served.returncode == 2, served.stderr
    results = [json.loads(line) for line in served.stdout.splitlines()]
    assert [r["status"] for r in results] == ["ok", "ok", "invalid_argument", "invalid_argument", "invalid_argument",
                                              "invalid_argument", "ok", "invalid_argument", "ok"]
    assert results[0]["face_box"] == results[1]["face_box"] == [120, 30, 320.5, 260]
    assert "line longer than 8190 bytes" in results[5]["error"]
    assert results[7]["image"] == "ab" and "holds a NUL byte" in results[7]["error"]
    assert results[8]["image"] == str(photo)  # a CRLF line end is not part of the path

    with open("/dev/full", "wb") as full:
        lost = subprocess.run([str(example_service), str(tiny_engine_set)], input=f"{photo}\n".encode(),
                              stdout=full, stderr=subprocess.PIPE, env={}, timeout=120)
    assert lost.returncode == 1
    assert "cannot write the results to standard output: No space left on device" in lost.stderr.decode()


def test_example_service_writes_json_for_any_file_name(tiny_engine_set, pictures, example_service, tmp_path):
    """A name that is not UTF-8 comes out as valid JSON, naming the file as detect's jsonl does
    ("\\udce9", Python's surrogate escape); a UTF-8 name passes through unchanged."""
    folder = os.fsencode(tmp_path)
    names = [b"caf\xe9.png", "na\u00efve \u5199\u771f.png".encode(), b"truncated\xe5\x86.png"]
    paths = [os.path.join(folder, name) for name in names]
    for path in paths:
        shutil.copyfile(pictures["astronaut"][0], path)
    served = subprocess.run([str(example_service), str(tiny_engine_set)], input=b"".join(p + b"\n" for p in paths),
                            capture_output=True, env={}, timeout=120)
    assert served.returncode == 0, served.stderr
    lines = [json.loads(line) for line in served.stdout.decode("utf-8").splitlines()]  # strict: valid UTF-8
    cli = _cli_jsonl(tiny_engine_set, [os.fsdecode(path) for path in paths])
    assert [line["image"] for line in lines] == [line["image"] for line in cli] == [os.fsdecode(p) for p in paths]
    assert [line["score"] for line in lines] == [line["score"] for line in cli]


def test_one_detector_from_four_threads_gives_identical_results(tiny_engine_set, pictures, harness):
    """4 threads x 50 calls at once (RGB and BGR images alternating), each result byte-equal to
    the serial one computed first."""
    run = _run([harness, "threads", tiny_engine_set, pictures["astronaut"][1], pictures["astronaut_crop"][1],
                4, 50, 0])
    assert run.returncode == 0, run.stderr
    summary = run.stdout.split()
    assert summary[:6] == ["calls", "200", "mismatches", "0", "failures", "0"], run.stdout
    scores = [float(line.split()[4]) for line in run.stdout.splitlines()[1:]]
    assert all(0.0 <= s <= 1.0 for s in scores)


@pytest.fixture(scope="module")
def global_only_set(tiny_engine_set, tmp_path_factory) -> Path:
    """The tiny set reduced to its global stream and no face detector (same verified files,
    manifest trimmed): the cheapest engine set that still runs every ABI and runtime step per
    call, so 1,000 calls fit in the test budget on a 2-core machine."""
    root = tmp_path_factory.mktemp("global-only") / "set"
    manifest = json.loads((tiny_engine_set / "manifest.json").read_text())
    manifest["streams"] = {"global": manifest["streams"]["global"]}
    manifest.pop("face_detector", None)
    root.mkdir()
    for entry in manifest["streams"]["global"]["files"]:
        shutil.copyfile(tiny_engine_set / entry["path"], root / entry["path"])
    write_rebuilt_manifest(root, manifest)
    return root


def test_rss_stays_flat_over_a_thousand_calls(global_only_set, pictures, harness, record_property):
    """After a warm-up of 4 x 10 calls, 4 threads x 250 calls grow the resident set by < 50 MB
    (read from /proc/self/status inside the C program); results stay identical throughout."""
    run = _run([harness, "rss", global_only_set, pictures["astronaut"][1], pictures["astronaut_crop"][1],
                4, 250, 10], timeout=300)
    assert run.returncode == 0, run.stderr
    fields = run.stdout.split()
    values = dict(zip(fields[0:10:2], map(int, fields[1:10:2])))
    assert values["calls"] == 1000 and values["mismatches"] == 0 and values["failures"] == 0, run.stdout
    growth = values["rss_after_kb"] - values["rss_before_kb"]
    record_property("rss_growth_kb_over_1000_calls", growth)
    assert growth < RSS_LIMIT_KB, (f"RSS over 1000 calls: {values['rss_before_kb']} kB -> "
                                   f"{values['rss_after_kb']} kB ({growth:+d} kB)")
    expected = [_parse_result(line.split()[2:]) for line in run.stdout.splitlines()[1:]]
    assert all(math.isnan(e["streams"][1]) and math.isnan(e["streams"][2]) for e in expected)  # global only


@pytest.fixture(scope="module")
def tampered_set(tiny_engine_set, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tampered") / "set"
    shutil.copytree(tiny_engine_set, root)
    graph = root / "fusion.fp32.onnx"
    data = bytearray(graph.read_bytes())
    data[-1] ^= 0xFF
    graph.write_bytes(bytes(data))
    return root


def test_null_and_nonsense_arguments_give_statuses_and_messages(tiny_engine_set, tampered_set, pictures, harness):
    run = _run([harness, "errors", tiny_engine_set, tampered_set, pictures["broken"][0],
                pictures["astronaut_crop"][1], pictures["astronaut_crop"][0]])
    cases = _harness_cases(run)

    def check(name: str, status: str, *words: str) -> None:
        _expect(cases, name, status, *words)
        if status == "ok":  # a call that succeeded leaves no error behind
            assert cases[name][1] == "", (name, cases[name])

    assert cases["version"][1] != ""
    check("initial", "ok")
    check("close_null_before_start", "ok")
    check("open_null_out", "invalid_argument", "out is NULL")
    check("open_null_dir", "invalid_argument", "engine_dir is NULL")
    assert cases["open_null_dir_out"][0] == 1
    check("open_bad_backend", "invalid_argument", "warp-drive", "onnxruntime")
    check("open_missing", "engine", "/nonexistent/engine-set")
    check("open_tampered", "engine", "fusion.fp32.onnx", "sha256")
    assert cases["open_tampered_out"][0] == 1
    check("open_ok", "ok")
    check("detect_null_detector", "invalid_argument", "detector is NULL")
    check("detect_garbage_detector", "invalid_argument", "0x1234", "not open")
    check("detect_null_images", "invalid_argument", "images is NULL")
    assert cases["detect_null_images_result"][0] == STATUS["invalid_argument"]
    check("detect_null_results", "invalid_argument", "results is NULL")
    check("detect_negative_count", "invalid_argument", "count is -1")
    check("detect_zero_count", "ok")
    check("detect_ok", "ok")
    # a dfd_image with nonsense in it fails only its own image: the other is scored as alone
    for name, words in (("detect_width_zero", ("images[1]", "0x300")), ("detect_negative_height", ("images[1]", "351x-3")),
                        ("detect_small_stride", ("images[1].stride_bytes is 1052", "1053")),
                        ("detect_bad_format", ("images[1].format is 7", "DFD_PIXEL_BGR8")),
                        ("detect_null_data", ("images[1].data is NULL",))):
        check(name, "image", *words)  # the call: some image was not scored; its error is that image's
        assert cases[f"{name}_message"] == (STATUS["invalid_argument"], cases[name][1]), name
        call, statuses = cases[f"{name}_results"][0], cases[f"{name}_results"][1].split()
        assert call == STATUS["image"] and statuses[:2] == ["0", str(STATUS["invalid_argument"])], name
        assert statuses[2] == cases["detect_ok_score"][1], name
    check("file_null_detector", "invalid_argument", "detector is NULL")
    check("file_null_path", "invalid_argument", "path is NULL")
    check("file_null_result", "invalid_argument", "result is NULL")
    check("file_missing", "io", "/nonexistent/photo.png", "does not exist")
    check("file_directory", "io", "is a directory")
    check("file_undecodable", "image", "broken.png")
    assert cases["file_undecodable_result"] == (STATUS["image"], cases["file_undecodable"][1])
    check("file_ok_after_failure", "ok")
    check("thread_own_error", "invalid_argument", "detector is NULL")
    check("main_error_kept", "io", "does not exist")
    check("close_null", "ok")
    check("close_ok", "ok")
    check("use_after_close", "invalid_argument", "not open")
    assert "not open" in cases["close_twice"][1] and "not open" in cases["close_garbage"][1]
    assert "Traceback" not in run.stderr


def test_open_with_options_and_describe(tiny_engine_set, pictures, harness):
    """dfd_options reach the Detector (checked against the CLI's flags), every field is checked,
    and dfd_describe says what the detector runs on."""
    png, spec = pictures["astronaut"]
    run = _run([harness, "options", tiny_engine_set, spec])
    cases = _harness_cases(run)
    check = functools.partial(_expect, cases)
    assert cases["defaults"][1] == "1 1 8 1 40 1 0 1 64000000"
    expected = {"default": _cli_jsonl(tiny_engine_set, [png])[0],
                "no_face_detect": _cli_jsonl(tiny_engine_set, [png], "--no-face-detect")[0],
                "one_pass": _cli_jsonl(tiny_engine_set, [png], "--face-min-px", "0", "--batch-size", "1")[0],
                "no_cascade": _cli_jsonl(tiny_engine_set, [png], "--no-face-cascade")[0]}
    assert expected["default"]["face"] is not None and expected["no_face_detect"]["face"] is None
    for name, cli in (("null_options", "default"), ("initialised", "default"), ("no_face_detect", "no_face_detect"),
                      ("one_pass", "one_pass"), ("no_cascade", "no_cascade")):
        assert cases[name][0] == STATUS["ok"], (name, cases[name])
        got = _parse_result([str(cases[name][0]), *cases[name][1].split()])
        assert got["status"] == STATUS["ok"], (name, got)
        _assert_matches_cli(got, expected[cli], name)
        assert cases[f"{name}_message"][1] == " | ".join(expected[cli]["notes"]), name
        check(f"{name}_describe", "ok", "backend: ", "preprocessing and vote: host (NumPy/OpenCV)")
    assert "no face" in cases["no_face_detect_message"][1]  # the notes say which face input was used
    # the limit applies to each image, not to opening
    assert cases["max_pixels_small"][0] == cases["max_pixels_small_message"][0] == STATUS["image"]
    assert cases["max_pixels_small_message"][1].endswith("is above the limit of 1000 pixels; raise the limit (--max-pixels of "
                                                         "the dfd-export command, max_pixels of Detector.open or "
                                                         "dfd_options) if this machine can afford it")
    assert "onnxruntime" in cases["no_face_detect_describe"][1]
    describe = {name: cases[f"{name}_describe"][1] for name in ("initialised", "no_face_detect", "one_pass", "no_cascade")}
    assert describe["initialised"].endswith("face localisation: BlazeFace on a 192-pixel letterbox, MTCNN for faces "
                                            "from 40 px on larger images; the reference's 9-step enhancement "
                                            "cascade at up to 1024 px when that finds none")
    assert describe["no_face_detect"].endswith("face localisation: off: images without a face crop or box use "
                                               "the original image")
    assert describe["one_pass"].endswith("face localisation: BlazeFace on a 192-pixel letterbox; the reference's "
                                         "9-step enhancement cascade at up to 1024 px when that finds none")
    assert describe["no_cascade"].endswith("MTCNN for faces from 40 px on larger images; no enhancement cascade")

    check("uninitialised", "invalid_argument", "struct_size is 0", "dfd_options_init")
    assert cases["uninitialised_out"][0] == 1
    check("newer_struct", "invalid_argument", "struct_size", "dfd_runtime.h")
    check("batch_zero", "invalid_argument", "batch_size is 0")
    check("face_detection_two", "invalid_argument", "face_detection is 2", "0 or 1")
    check("gpu_preprocessing_negative", "invalid_argument", "gpu_preprocessing is -1")
    check("face_cascade_seven", "invalid_argument", "face_cascade is 7", "0 or 1")
    check("max_pixels_zero", "invalid_argument", "max_pixels is 0", "at least 1")
    check("face_min_px_nan", "invalid_argument", "face_min_px is nan")
    check("face_min_px_negative", "invalid_argument", "face_min_px is -1")
    check("options_init_clears", "ok")
    # a 0.5-px face would need the image upscaled 24 times per side (a 512x600 photo: 165 GiB)
    check("face_min_px_small", "invalid_argument", "face_min_px is 0.5", "at least 12 pixels")
    check("graph_negative", "invalid_argument", "cuda_graph_batch is -1")
    check("graph_over_batch", "invalid_argument", "batches of 9", "never replay")
    check("graph_on_onnxruntime", "engine", "needs the tensorrt backend")
    check("bad_backend", "invalid_argument", "warp-drive")
    check("null_out", "invalid_argument", "out is NULL")
    check("null_dir", "invalid_argument", "engine_dir is NULL")
    assert cases["failed_out"][0] == 1
    check("describe_null_detector", "invalid_argument", "detector is NULL")
    check("describe_null_buffer", "invalid_argument", "buffer is NULL")
    assert cases["describe_cut"] == (STATUS["ok"], "7 backend")
    check("describe_after_close", "invalid_argument", "not open")
    assert "Traceback" not in run.stderr


def test_caller_face_boxes_score_as_the_cli_with_face_boxes(tiny_engine_set, pictures, harness, tmp_path):
    """dfd_detect_faces / dfd_detect_file_face against `detect --face-boxes` (itself checked against
    the reference's crop in test_detector), and the per-image vs per-call failures."""
    path, spec = pictures["astronaut"]
    box = (120.0, 30.0, 320.0, 260.0)
    boxes = tmp_path / "boxes.csv"
    boxes.write_text("image,x1,y1,x2,y2\n" + f"{path.name}," + ",".join(map(str, box)) + "\n")
    with_box = _cli_jsonl(tiny_engine_set, [path], "--face-boxes", str(boxes))[0]
    located = _cli_jsonl(tiny_engine_set, [path])[0]
    assert with_box["face"]["source"] == "box" and located["face"]["source"] == "detector"
    assert abs(with_box["streams"]["face"] - located["streams"]["face"]) > 1e-3  # the box matters

    cases = _harness_cases(_run([harness, "faces", tiny_engine_set, spec, path, *box]))
    results = {name: _parse_result([str(status)] + message.split()) for name, (status, message) in cases.items()
               if f"{name}_message" in cases}
    for name, expected in (("given", with_box), ("file_given", with_box), ("not_given", located),
                           ("null_faces", located), ("plain_detect", located), ("file_not_given", located),
                           ("file_null_face", located)):
        assert results[name]["status"] == STATUS["ok"], name
        _assert_matches_cli(results[name], expected, name)
        assert cases[f"{name}_message"][1] == " | ".join(expected["notes"]), name
    assert "under 1/9" in cases["not_given_message"][1]  # the located face is too small to crop
    assert results["given"]["face_box"] == list(box)
    assert results["given"]["call"] == STATUS["image"]  # the batch had one bad box
    assert results["nan_box"]["status"] == STATUS["image"] and math.isnan(results["nan_box"]["score"])
    _expect(cases, "nan_box_message", "image", "non-finite")
    _expect(cases, "outside_box_message", "image", "lies outside the 512x512 image")
    # the call's error names the first failure; each result has its own
    _expect(cases, "batch_error", "image", "image 2: ", "non-finite", "(and 1 more failed image(s))")
    # a given that is neither 0 nor 1 fails only its own image; the other keeps its box
    _expect(cases, "given_two", "image", "faces[1].given is 2", "must be 1")
    assert cases["given_two_results"][1] == f"0 {STATUS['invalid_argument']}"
    assert cases["given_two_error"] == (STATUS["invalid_argument"], cases["given_two"][1])
    assert float(cases["given_two_score"][1]) == pytest.approx(with_box["score"], abs=1e-6)
    _expect(cases, "file_outside", "image", "lies outside the 512x512 image")
    assert cases["file_outside_result"][1] == "4"
    _expect(cases, "file_given_negative", "invalid_argument", "face.given is -1")
    _expect(cases, "file_missing_with_face", "io", "does not exist")
    _expect(cases, "faces_after_close", "invalid_argument", "not open")


STARTUP_PROBE = r"""
#include <stdio.h>
#include "dfd_runtime.h"

/* Every entry point that reaches the embedded runtime, with its status and the thread's error. */
int main(int argc, char **argv)
{
    dfd_detector *d = NULL;
    dfd_options options;
    dfd_result r;
    char text[256];
    dfd_status st;
    (void)argc;
    st = dfd_open(argv[1], NULL, &d);
    printf("open %d|%s\n", st, dfd_last_error());
    dfd_options_init(&options);
    st = dfd_open_with(argv[1], &options, &d);
    printf("open_with %d|%s\n", st, dfd_last_error());
    d = (dfd_detector *)&options;         /* never opened: the runtime must not get as far as using it */
    st = dfd_detect_file(d, argv[1], &r);
    printf("file %d|%s\n", st, r.message);
    st = dfd_describe(d, text, sizeof text);
    printf("describe %d|%s\n", st, dfd_last_error());
    return 0;
}
"""


def test_a_runtime_that_cannot_start_answers_every_call_and_writes_nothing_to_stderr(tmp_path, monkeypatch):
    """When the embedded interpreter cannot import dfd.runtime (here: the environment changed
    after the build), every call fails with the reason; cffi also wrote a line of its own to the
    service's stderr on every call, because no implementation was attached to its entry points."""
    from dfd.export import capi_build

    later = tmp_path / "site"                        # a site folder the library reads, empty when built
    later.mkdir()
    installed = capi_build.embedded_site_dirs()
    monkeypatch.setattr(capi_build, "embedded_site_dirs", lambda: [*installed, str(later)])
    header, library = capi_build.build_capi(tmp_path / "lib")
    (later / "broken.pth").write_text("import sys; sys.modules['dfd.runtime.capi'] = None\n")
    (tmp_path / "probe.c").write_text(STARTUP_PROBE)
    probe = _compile(tmp_path / "probe.c", tmp_path / "probe", library.parent)
    run = _run([probe, tmp_path])
    assert run.returncode == 0 and run.stderr == ""
    lines = _probe_lines(run)
    assert sorted(lines) == ["describe", "file", "open", "open_with"]
    for name, line in lines.items():
        assert line.startswith(f"{STATUS['internal']}|the embedded Python runtime cannot load dfd.runtime "
                               "(ModuleNotFoundError: import of dfd.runtime.capi halted"), (name, line)


BOUNDARY_PROBE = r"""
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include "dfd_runtime.h"

/* What the library does with a program's struct, an open, a file name, an encoded size and a
   pixel format; one line per case: name status|message. */
int main(int argc, char **argv)
{
    struct { dfd_options options; uint64_t next; } frame;
    dfd_detector *d = NULL;
    dfd_result r;
    dfd_image image;
    static const uint8_t pixel[3] = {1, 2, 3};
    dfd_status st;
    (void)argc;
    memset(&frame, 0x5A, sizeof frame);
    dfd_options_init(&frame.options);
    printf("init %d|%s|%llx\n", frame.options.struct_size == sizeof frame.options,
           dfd_last_error(), (unsigned long long)frame.next);
    st = dfd_open(argv[1], NULL, &d);
    printf("open %d|%s\n", st, dfd_last_error());
    if (st != DFD_OK)
        return 0;
    st = dfd_detect_file(d, argv[2], &r);
    printf("file %d|%s\n", st, r.message);
    st = dfd_detect_encoded(d, pixel, SIZE_MAX, NULL, &r);
    printf("encoded %d|%s\n", st, dfd_last_error());
    image.data = pixel; image.width = 1; image.height = 1; image.stride_bytes = 3;
    image.format = (dfd_pixel_format)-1;
    st = dfd_detect(d, &image, 1, &r);
    printf("format %d %d|%s\n", st, (int)r.status, dfd_last_error());
    dfd_close(d);
    return 0;
}
"""

UNVERSIONED_PROBE = r"""
#include <stdint.h>
#include <stdio.h>
#include <string.h>
/* a program from before DFD_ABI_VERSION: its own declarations, its own (older) options struct */
typedef struct dfd_detector dfd_detector;
typedef struct { uint32_t struct_size; const char *backend; int32_t batch_size; } old_options;
int dfd_open(const char *engine_dir, const char *backend, dfd_detector **out);
void dfd_options_init(old_options *options);
const char *dfd_last_error(void);

int main(int argc, char **argv)
{
    struct { old_options options; uint64_t next; } frame;
    dfd_detector *d = (dfd_detector *)&frame;
    int st;
    (void)argc;
    memset(&frame, 0x5A, sizeof frame);
    dfd_options_init(&frame.options);
    printf("init %llx %llx|%s\n", (unsigned long long)frame.options.struct_size, (unsigned long long)frame.next,
           dfd_last_error());
    st = dfd_open(argv[1], NULL, &d);
    printf("open %d %d|%s\n", st, d == NULL, dfd_last_error());
    return 0;
}
"""


def _probe_lines(run: subprocess.CompletedProcess) -> dict[str, str]:
    assert run.returncode == 0, run.stderr
    return dict(line.split(" ", 1) for line in run.stdout.splitlines())


def _documented_command(readme: Path, start: str) -> str:
    """The shell command of ``readme`` that begins with ``start``, its continuation lines joined."""
    lines = readme.read_text().splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith(start))
    command = [lines[first]]
    while command[-1].rstrip().endswith("\\"):
        command.append(lines[first + len(command)])
    return "\n".join(command)


def test_the_documented_build_commands_give_programs_that_start_from_any_folder(capi_lib, tmp_path):
    """The READMEs linked with -Wl,-rpath,build/capi, which the loader reads from the folder a
    program is started in: the example service failed to start (exit 127) anywhere but the
    repository root. Each documented command is run as written, the program started elsewhere."""
    root = tmp_path / "checkout"
    shutil.copytree(capi_lib, root / "build" / "capi")
    (root / "examples" / "c").mkdir(parents=True)
    shutil.copy(EXAMPLE, root / "examples" / "c")
    shutil.copy(EXAMPLE, root / "app.c")  # the README's "your program"
    documented = {root / "build" / "dfd_detect": _documented_command(REPO / "examples" / "c" / "README.md", "cc "),
                  root / "a.out": _documented_command(REPO / "README.md", "cc app.c")}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for program, command in documented.items():
        built = subprocess.run(["bash", "-c", command], cwd=root, capture_output=True, text=True)
        assert built.returncode == 0, (command, built.stderr)
        started = subprocess.run([str(program)], cwd=elsewhere, capture_output=True, text=True, env={}, timeout=60)
        assert started.returncode == 1 and "usage" in started.stderr.lower(), (command, started.stderr)


def test_a_program_compiled_against_another_header_is_refused_untouched(tiny_engine_set, capi_lib, tmp_path):
    """dfd_options_init wrote the library's sizeof into the caller's struct, overrunning an older
    header's smaller one; now the caller's size travels with the call, and opening checks the
    header's ABI version, so another build's layouts are never read or written."""
    header = (capi_lib / "dfd_runtime.h").read_text()
    older = tmp_path / "older"
    older.mkdir()
    changed = re.sub(r"#define DFD_ABI_VERSION \d+u", "#define DFD_ABI_VERSION 12345u", header)
    for field in ("int32_t cuda_graph_batch", "int32_t face_cascade", "int64_t max_pixels"):
        changed = changed.replace(f"    {field};", "")  # the struct as a header without these fields had it
    assert changed.count("12345u") == 1 and "int32_t face_cascade;" not in changed
    (older / "dfd_runtime.h").write_text(changed)
    (tmp_path / "probe.c").write_text(BOUNDARY_PROBE)
    built = subprocess.run(["cc", "-Wall", "-Werror", str(tmp_path / "probe.c"), "-I", str(older), "-L", str(capi_lib),
                            "-ldfd_runtime", f"-Wl,-rpath,{capi_lib}", "-o", str(tmp_path / "probe")],
                           capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    lines = _probe_lines(_run([tmp_path / "probe", tiny_engine_set, "unused"]))
    # struct_size is not the header's sizeof: the struct (0x5A bytes) and what follows it are untouched
    assert lines["init"].startswith("0|dfd_options_init: the program's dfd_options has 32 bytes, this library's 48")
    assert lines["init"].endswith("|5a5a5a5a5a5a5a5a")
    assert lines["open"].startswith("1|this program was compiled against the dfd_runtime.h of another build (ABI 12345;")
    (tmp_path / "old.c").write_text(UNVERSIONED_PROBE)
    built = subprocess.run(["cc", str(tmp_path / "old.c"), "-L", str(capi_lib), "-ldfd_runtime",
                            f"-Wl,-rpath,{capi_lib}", "-o", str(tmp_path / "old")], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    lines = _probe_lines(_run([tmp_path / "old", tiny_engine_set]))
    assert lines["init"].startswith("5a5a5a5a 5a5a5a5a5a5a5a5a|this program was compiled against a dfd_runtime.h "
                                    "without DFD_ABI_VERSION")
    assert lines["open"].startswith("1 1|this program was compiled against a dfd_runtime.h without DFD_ABI_VERSION")


def test_utf8_paths_sizes_and_formats_at_the_boundary(tiny_engine_set, capi_lib, pictures, tmp_path):
    """A program that never calls setlocale (the C locale) opens a set and reads a file with
    non-ASCII UTF-8 names, and its messages carry them intact; an encoded size no buffer can have
    and a negative pixel format are the caller's mistakes, named as such."""
    (tmp_path / "probe.c").write_text(BOUNDARY_PROBE)
    exe = _compile(tmp_path / "probe.c", tmp_path / "probe", capi_lib)
    engines = tmp_path / "modèles-検出"
    engines.symlink_to(tiny_engine_set, target_is_directory=True)
    missing = tmp_path / "naïve-写真.png"
    lines = _probe_lines(_run([exe, engines, missing]))
    assert lines["init"] == "1||5a5a5a5a5a5a5a5a" and lines["open"] == "0|"
    assert lines["file"] == f"{STATUS['io']}|image file {str(missing)!r} does not exist"
    assert lines["encoded"].startswith(f"{STATUS['invalid_argument']}|dfd_detect_encoded: size is 18446744073709551615 "
                                       f"bytes, more than a process can address")
    # a bad descriptor fails its own image (DFD_E_INVALID_ARGUMENT in its result); the call says one failed
    assert lines["format"] == (f"{STATUS['image']} {STATUS['invalid_argument']}|images[0].format is -1, not a "
                               f"dfd_pixel_format (DFD_PIXEL_RGB8 = 0, DFD_PIXEL_BGR8 = 1)")


FORK_PROBE = r"""
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>
#include "dfd_runtime.h"

int main(int argc, char **argv)
{
    dfd_detector *d = NULL, *mine = NULL;
    dfd_result r;
    dfd_status s;
    pid_t child;
    int wstatus;
    if (argc != 3 || dfd_open(argv[1], NULL, &d) != DFD_OK)
        return 1;
    printf("parent %d\n", dfd_detect_file(d, argv[2], &r));
    fflush(stdout);
    child = fork();
    if (child == 0) {
        alarm(60);  /* a hang ends the child, which the parent reports */
        s = dfd_detect_file(d, argv[2], &r);
        printf("child-detect %d %d|%s\n", s, r.status, dfd_last_error());
        s = dfd_open(argv[1], NULL, &mine);
        printf("child-open %d %d\n", s, mine == NULL);
        dfd_close(d);
        printf("child-close %d\n", dfd_last_error()[0] != 0);
        fflush(stdout);
        _exit(0);
    }
    waitpid(child, &wstatus, 0);
    printf("child-exit %d\n", WIFEXITED(wstatus) ? WEXITSTATUS(wstatus) : -WTERMSIG(wstatus));
    printf("parent-again %d\n", dfd_detect_file(d, argv[2], &r));
    dfd_close(d);
    return 0;
}
"""


def test_a_fork_child_is_refused_every_call_instead_of_hanging(tiny_engine_set, capi_lib, pictures, tmp_path):
    """A fork() child detected with the parent's detector as if all was well, then hung in
    dfd_close (ONNX Runtime's thread pools are the parent's; their condition variables wait for
    threads the child does not have), and one that opened its own crashed at exit. Every call in
    the child is now refused with the reason; the parent goes on."""
    (tmp_path / "fork.c").write_text(FORK_PROBE)
    exe = _compile(tmp_path / "fork.c", tmp_path / "fork", capi_lib)
    lines = _probe_lines(_run([exe, tiny_engine_set, pictures["astronaut"][0]]))
    assert lines["parent"] == "0" and lines["parent-again"] == "0" and lines["child-exit"] == "0"
    invalid = STATUS["invalid_argument"]
    assert lines["child-detect"].startswith(f"{invalid} {invalid}|this process is a fork() of the one that started "
                                            f"the runtime")
    assert lines["child-open"] == f"{invalid} 1" and lines["child-close"] == "1"
