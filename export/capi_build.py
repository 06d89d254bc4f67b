"""``dfd-export capi``: build ``dfd_runtime.h`` + ``libdfd_runtime.so``, the C ABI of the runtime.

The library embeds CPython with cffi's embedding mode, so C callers run the very same
``dfd.runtime`` code as Python and the CLI (the implementation is ``dfd.runtime.capi``). The
exported ``dfd_*`` functions are C shims written here; they

* start the interpreter themselves, once, from a ``PyConfig`` whose ``executable`` is the
  building virtualenv's ``python``: CPython's path calculation then finds that venv's
  ``pyvenv.cfg`` and gives the embedded interpreter exactly the ``sys.prefix``/``sys.path``
  the venv's own ``python`` has (the editable ``dfd`` install included). The config is
  isolated (no ``PYTHON*`` variables, no automatic user site, no signal handlers), so the
  caller's environment cannot redirect or break it and Ctrl-C stays the C program's; the init
  code adds the site-packages the building Python reads (``embedded_site_dirs``: the venv's, and
  the user's ``pip install --user`` folder where that Python reads it);
* keep the last-error text in a C thread-local buffer, which the Python side fills: a buffer
  owned by C stays valid until the thread's next call, whatever the interpreter does with its
  thread states between calls;
* answer ``dfd_version``, ``dfd_last_error`` and ``dfd_close(NULL)`` without starting Python.

The library links ``libpython3.X.so`` with an rpath to its directory, and those site-packages
are added even when the library is loaded into an already running interpreter, so a C program
needs no environment variable. The price of embedding:
the library is bound to the interpreter and virtualenv it was built from; rebuild it after
moving either.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import re
import shutil
import site
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import click

from dfd.runtime.errors import DfdError

from .cli_errors import handles_errors
from .cli_types import OutputFolder, Verb

HEADER_NAME = "dfd_runtime.h"
LIBRARY_NAME = "libdfd_runtime.so"
MODULE_NAME = "_dfd_runtime_capi"
ERROR_CAPACITY = 4096

# The types, shared verbatim by the header and cffi's cdef (cffi ignores the comments).
API_TYPES = """\
/* An opened engine set. Opaque; one may be used from several threads at once. */
typedef struct dfd_detector dfd_detector;

typedef enum {
    DFD_OK = 0,
    DFD_E_INVALID_ARGUMENT = 1, /* NULL or nonsense argument: a bug in the caller            */
    DFD_E_IO = 2,               /* a named file cannot be read (missing, directory, access)  */
    DFD_E_ENGINE = 3,           /* engine set missing, tampered, or not runnable here        */
    DFD_E_IMAGE = 4,            /* an image cannot be decoded or used (per result)           */
    DFD_E_INTERNAL = 5          /* a bug in the runtime, or its embedded Python cannot start */
} dfd_status;

typedef enum {
    DFD_PIXEL_RGB8 = 0,         /* 3 bytes per pixel: R, G, B */
    DFD_PIXEL_BGR8 = 1          /* 3 bytes per pixel: B, G, R (OpenCV's order) */
} dfd_pixel_format;

/* Decoded pixels, 8 bits per channel. Row y starts at data + y * stride_bytes;
   stride_bytes >= width * 3 (rows may be padded). Read only during the call. */
typedef struct {
    const uint8_t *data;
    int32_t width, height, stride_bytes;
    dfd_pixel_format format;
} dfd_image;

/* A face box the caller already has (its own face detector or tracker), for dfd_detect_faces
   and dfd_detect_file_face. The runtime applies the reference's rule to it: a box covering
   under 1/9 of the image means the face stream sees the original image, else the square crop
   with the 1.3 margin. */
typedef struct {
    int32_t given;          /* 1: box holds this image's face; 0: no box for this image (the set's
                               face localiser, or with face_detection = 0 the original image) */
    float box[4];           /* x1, y1, x2, y2 in pixels of the image; finite, x1 <= x2, y1 <= y2 */
} dfd_face;

#define DFD_RESULT_MESSAGE_SIZE 2048

/* The result for one image. When status != DFD_OK the floats are NaN and face_found is 0. */
typedef struct {
    float score;            /* discretised vote, 0.0 .. 1.0 (one decimal, as the reference) */
    float stream_prob[3];   /* raw P(fake): global, face, fusion (NaN if the set lacks one) */
    int32_t face_found;     /* 1 when the image has a face box (located, or given), else 0; always 0 for an
                               engine set without the face stream, which locates no face and ignores given ones */
    float face_box[4];      /* x1, y1, x2, y2 in pixels of the image when face_found, else 0 */
    dfd_status status;      /* this image's status */
    char message[DFD_RESULT_MESSAGE_SIZE];
                            /* NUL-terminated UTF-8, zero-filled, cut on a character. Failed: why this
                               image failed. Scored: the notes `dfd-export detect` prints, one per line
                               ('\\n' between them, "" when none): how a rule the reference lacks was
                               applied (an image under 252 px upscaled, a 224-high image resized), which
                               face input the face stream took (no face found, a face under 1/9 of the
                               image), conversions of the decoded pixels (grayscale, alpha, 16-bit) */
} dfd_result;

/* How dfd_open_with opens a set. Fill it with dfd_options_init, then change what you need:
   struct_size tells the library that the struct was filled (and by which header's layout). */
typedef struct {
    uint32_t struct_size;       /* sizeof(dfd_options); set by dfd_options_init              */
    const char *backend;        /* "auto" (NULL), "onnxruntime" or "tensorrt"                */
    int32_t batch_size;         /* images per engine call; default 8                         */
    int32_t face_detection;     /* 1 (default): locate faces with the set's detector when an
                                   image has no face box; 0: the reference's no-face rule    */
    float face_min_px;          /* smallest face looked for, in image pixels; default 40, at
                                   least 12 (MTCNN's smallest window); 0: BlazeFace's
                                   192-pixel pass only (faster, misses small faces)          */
    int32_t gpu_preprocessing;  /* tensorrt: 1 (default) fused CUDA preprocessing and vote;
                                   0: NumPy/OpenCV on the host                               */
    int32_t cuda_graph_batch;   /* tensorrt fused path: replay one CUDA graph for calls of
                                   exactly this many images (<= batch_size); 0 (default): none */
    int32_t face_cascade;       /* 1 (default): when no face is found, retry on the reference's
                                   enhanced copies of the image; 0: skip them (faster on photos
                                   without a face, may miss a badly degraded face)            */
    int64_t max_pixels;         /* the largest image decoded at full size, in pixels; default
                                   64000000. A larger JPEG is decoded reduced, any other image
                                   fails on its own (DFD_E_IMAGE): faces and resizing hold a
                                   few copies of it in memory                                 */
} dfd_options;
"""

API_FUNCTIONS = """\
/* Indices into dfd_result.stream_prob. */
enum { DFD_STREAM_GLOBAL = 0, DFD_STREAM_FACE = 1, DFD_STREAM_FUSION = 2 };

/* The runtime's version, e.g. "0.1.0". Static storage; never NULL; starts nothing. */
const char *dfd_version(void);

/* Open the engine set in folder engine_dir (its manifest.json and the sha256 of every file
   are verified). backend: "auto", "onnxruntime" or "tensorrt"; NULL means "auto".
   On success *out is the detector; otherwise *out is NULL and the status says why
   (DFD_E_ENGINE: missing/tampered/unusable set; DFD_E_INVALID_ARGUMENT: NULL or unknown
   backend, or a program compiled against the header of another build: the macro passes
   DFD_ABI_VERSION, so structs of another layout are never read or written). The first call
   starts the embedded Python runtime (about a second). */
dfd_status dfd_open_abi(const char *engine_dir, const char *backend, dfd_detector **out, uint32_t abi);
#define dfd_open(engine_dir, backend, out) dfd_open_abi((engine_dir), (backend), (out), DFD_ABI_VERSION)

/* The defaults of every option (as `dfd-export detect` without flags); NULL is a no-op. The
   macro passes the caller's sizeof(dfd_options): a struct of another layout is left untouched
   (and dfd_last_error says why). */
void dfd_options_init_sized(dfd_options *options, size_t struct_size);
#define dfd_options_init(options) dfd_options_init_sized((options), sizeof(dfd_options))

/* dfd_open with options (NULL: the defaults). DFD_E_INVALID_ARGUMENT for options that were not
   filled by dfd_options_init or hold a value out of range, and as dfd_open for another build's
   header; DFD_E_ENGINE also when an option cannot be honoured here (a CUDA graph without the
   tensorrt backend's fused path). */
dfd_status dfd_open_with_abi(const char *engine_dir, const dfd_options *options, dfd_detector **out, uint32_t abi);
#define dfd_open_with(engine_dir, options, out) \
    dfd_open_with_abi((engine_dir), (options), (out), DFD_ABI_VERSION)

/* One line saying what d runs on: the backend and why it was chosen, where preprocessing and
   the vote run (e.g. whether the fused CUDA path is in use, or why not), and how faces are
   found (which passes, whether the enhancement cascade runs). Copied into
   buffer, NUL-terminated and cut to size bytes. Thread-safe. */
dfd_status dfd_describe(dfd_detector *d, char *buffer, size_t size);

/* Score count decoded images as one batch; results[i] is written for images[i].
   Returns DFD_OK when every image was scored; DFD_E_IMAGE when some could not be (their
   results[i].status says so, the others are scored): DFD_E_IMAGE for pixels that cannot be
   used, DFD_E_INVALID_ARGUMENT for an images[i] that cannot be read (data NULL, width or
   height not positive, stride_bytes < width * 3, an unknown format). Any other status when
   the call itself was wrong (d, images or results NULL, count < 0) and nothing was scored
   (then every results[i].status carries it, if results is not NULL).
   count == 0 on an open detector is a no-op. Thread-safe. */
dfd_status dfd_detect(dfd_detector *d, const dfd_image *images, int32_t count, dfd_result *results);

/* dfd_detect with the caller's face boxes: faces[i] is for images[i] (faces NULL: dfd_detect).
   An unusable box (not finite, x2 < x1, too small to crop) fails only its own image, with
   DFD_E_IMAGE in its result; so does a given other than 0 or 1, with DFD_E_INVALID_ARGUMENT. */
dfd_status dfd_detect_faces(dfd_detector *d, const dfd_image *images, const dfd_face *faces, int32_t count,
                            dfd_result *results);

/* Decode the image file at path (as OpenCV's imread, EXIF orientation applied) and score it,
   exactly as `dfd-export detect` does. DFD_E_IO: the file cannot be read; DFD_E_IMAGE: it is
   not a usable image. result->status equals the returned status. Thread-safe. */
dfd_status dfd_detect_file(dfd_detector *d, const char *path, dfd_result *result);

/* dfd_detect_file with the caller's face box for that image (face NULL: dfd_detect_file). */
dfd_status dfd_detect_file_face(dfd_detector *d, const char *path, const dfd_face *face, dfd_result *result);

/* Score an image file held in memory (the bytes of a JPEG, PNG, WebP, ... file, e.g. an upload)
   exactly as dfd_detect_file scores that file named with its format's usual suffix: decoded as
   OpenCV's imread, and a JPEG (recognised from the bytes) gets the reference's face re-encode
   as a .jpg path does (a path decides by its suffix: a JPEG named .jfif or .png does not).
   face: the caller's box for it, or NULL. DFD_E_IMAGE: not a usable image (size 0 included);
   DFD_E_INVALID_ARGUMENT: data NULL with size > 0, or result NULL. The bytes are read only
   during the call. result->status equals the returned status. Thread-safe. */
dfd_status dfd_detect_encoded(dfd_detector *d, const void *data, size_t size, const dfd_face *face,
                              dfd_result *result);

/* Release a detector; NULL is a no-op. Calls already running on it finish first, and its
   threads and GPU buffers are freed when the last of them returns. Using d afterwards gives
   DFD_E_INVALID_ARGUMENT. */
void dfd_close(dfd_detector *d);

/* The message of the last failed dfd_* call on this thread; "" after a call that succeeded.
   dfd_version and dfd_last_error itself leave it as it is. Thread-local; valid until the next
   other dfd_* call on this thread, or until the thread ends. Never NULL. */
const char *dfd_last_error(void);
"""


def _abi_version(declarations: str) -> int:
    """A digest of the header's declarations, comments and spacing aside: it changes with any
    layout or signature, and not with a reworded comment (which needs no rebuild of callers)."""
    code = re.sub(r"/\*.*?\*/", " ", declarations, flags=re.DOTALL)
    return int(hashlib.sha256(" ".join(code.split()).encode()).hexdigest()[:8], 16) & 0x7FFFFFFF


ABI_VERSION = _abi_version(API_TYPES + API_FUNCTIONS)

HEADER = f"""\
/* dfd_runtime.h - C ABI of the dfd-export lean runtime (three-stream deepfake detector).

   Link with -ldfd_runtime. The library embeds the Python runtime it was built from
   (`dfd-export capi --out DIR`); it finds that environment by itself.

   Typical use:
       dfd_detector *d = NULL;
       if (dfd_open("engines/fp32", NULL, &d) != DFD_OK) fprintf(stderr, "%s\\n", dfd_last_error());
       dfd_result r;
       if (dfd_detect_file(d, "photo.jpg", &r) == DFD_OK) printf("%.1f\\n", r.score);
       dfd_close(d);

   Paths and messages are UTF-8. After fork(), a child of a process that opened a detector can
   make no dfd_* call (each is refused: the runtime's threads stay in the parent) and must end
   with _exit() or exec(), since exit() would wait on those threads; fork workers before the
   first dfd_open. Let every call return (and close detectors) before exit(); calling threads
   need 128 KiB of stack.
*/
#ifndef DFD_RUNTIME_H
#define DFD_RUNTIME_H

#include <stddef.h>
#include <stdint.h>

/* Identifies this header's layouts and signatures (a digest of its declarations): a library
   refuses a program compiled against another build's header (see dfd_open). */
#define DFD_ABI_VERSION {ABI_VERSION}u

#ifdef __cplusplus
extern "C" {{
#endif

{API_TYPES}
{API_FUNCTIONS}
#ifdef __cplusplus
}}
#endif

#endif /* DFD_RUNTIME_H */
"""

# What the C shims call; implemented in dfd.runtime.capi (bind). Error text goes into the
# caller's thread-local buffer.
PYTHON_FUNCTIONS = """\
extern "Python" dfd_status dfd_py_open(const char *, const char *, dfd_detector **, char *, size_t);
extern "Python" dfd_status dfd_py_detect(dfd_detector *, const dfd_image *, const dfd_face *, int32_t, dfd_result *, char *, size_t);
extern "Python" dfd_status dfd_py_detect_file(dfd_detector *, const char *, const dfd_face *, dfd_result *, char *, size_t);
extern "Python" dfd_status dfd_py_detect_encoded(dfd_detector *, const void *, size_t, const dfd_face *, dfd_result *, char *, size_t);
extern "Python" dfd_status dfd_py_close(dfd_detector *, char *, size_t);
extern "Python" dfd_status dfd_py_open_with(const char *, const dfd_options *, dfd_detector **, char *, size_t);
extern "Python" dfd_status dfd_py_describe(dfd_detector *, char *, size_t, char *, size_t);
void dfd_startup_succeeded(void);
void dfd_startup_failed(const char *message);
"""
PYTHON_FUNCTION_NAMES = tuple(re.findall(r'extern "Python" \w+ (\w+)\(', PYTHON_FUNCTIONS))

C_SHIMS_FILE = Path(__file__).with_name("capi_shims.c")
"""The C functions of the ABI, in a C file of their own (package data) so they read, diff and lint
as C; ``build_capi`` hands its text to cffi."""

INIT_CODE = """\
import site
import sys

for directory in {site_dirs!r}:
    if directory not in sys.path:
        site.addsitedir(directory)

from {module} import ffi, lib

try:
    from dfd.runtime import capi
    capi.bind(ffi)
except Exception as exc:
    lib.dfd_startup_failed(
        f"the embedded Python runtime cannot load dfd.runtime ({{type(exc).__name__}}: {{exc}}); "
        f"interpreter {{sys.executable}}, sys.path {{sys.path}}".encode("utf-8", "replace"))
    # The C shims answer every call with that message. Without an implementation attached, cffi
    # would also write a line of its own to the service's stderr on every call.
    for name in {python_functions!r}:
        ffi.def_extern(name=name)(lambda *args: lib.DFD_E_INTERNAL)
else:
    lib.dfd_startup_succeeded()
"""


class CapiBuildError(DfdError):
    """The C library cannot be built here; the message says what is missing."""


def _python_library_dir() -> Path:
    """The folder of libpython3.X.so, which the library links and finds through its rpath."""
    if not sysconfig.get_config_var("Py_ENABLE_SHARED"):
        raise CapiBuildError(
            f"this Python ({sys.base_prefix}) was built without a shared libpython, which an "
            f"embedding library must link; rebuild it with --enable-shared (pyenv: "
            f"PYTHON_CONFIGURE_OPTS=--enable-shared pyenv install {sysconfig.get_python_version()}) "
            f"and recreate the virtualenv")
    library_dir = Path(sysconfig.get_config_var("LIBDIR"))
    library = library_dir / sysconfig.get_config_var("LDLIBRARY")
    if not library.exists():
        raise CapiBuildError(f"shared libpython not found at {library}")
    return library_dir


def _c_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


# What marks a file as one this verb wrote, so a rebuild replaces it and nothing else.
_OURS = {HEADER_NAME: b"/* dfd_runtime.h - C ABI of the dfd-export lean runtime", LIBRARY_NAME: b"dfd_last_error"}


def _replace_problem(path: Path) -> str | None:
    """Why ``path`` must not be replaced, or None: it is missing, or a file an earlier build wrote.

    A file of the same name that this verb did not write (the user's own header, another
    library) is refused rather than lost."""
    if not path.exists() and not path.is_symlink():
        return None
    if path.is_symlink() or not path.is_file():
        return f"{path} exists and is not a regular file; remove it or choose another --out"
    if not _file_contains(path, _OURS[path.name]):
        return f"{path} exists and was not written by dfd-export capi; remove it or choose another --out"
    return None


def _file_contains(path: Path, marker: bytes, chunk_size: int = 1 << 20) -> bool:
    """Whether ``marker`` occurs in the file, read a chunk at a time: the file in the way may be
    anything of that name, a multi-gigabyte library included."""
    tail = b""
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            window = tail + chunk
            if marker in window:
                return True
            tail = window[max(0, len(window) - len(marker) + 1):]
    return False


_IMPORT_PROBE = """\
import json, site, sys
for directory in json.loads(sys.argv[1]):
    site.addsitedir(directory)
import dfd.runtime.capi
import onnxruntime  # the default backend, imported when a set is opened
"""


def embedded_site_dirs() -> list[str]:
    """Where the library's embedded interpreter finds dfd and its dependencies: this Python's
    site-packages, and the user's (``pip install --user``) when this Python reads it. The
    embedded interpreter is isolated, so PYTHONPATH and the current folder do not count."""
    directories = list(site.getsitepackages())
    if site.ENABLE_USER_SITE:
        directories.append(site.getusersitepackages())
    return directories


def _require_runtime_importable(site_dirs: list[str]) -> None:
    """Refuse to build a library that could never open a detector: import ``dfd.runtime.capi``
    in an interpreter started as the embedded one is (isolated, no automatic site-packages, only
    ``site_dirs``). Without this the build succeeded and every ``dfd_open`` failed."""
    probe = subprocess.run([sys.executable, "-I", "-S", "-c", _IMPORT_PROBE, json.dumps(site_dirs)],
                           capture_output=True, text=True, timeout=300)
    if probe.returncode != 0:
        reason = (probe.stderr.strip().splitlines() or ["no message"])[-1]
        raise CapiBuildError(
            f"the library's embedded Python ({sys.executable}, isolated: no PYTHONPATH, no current folder) "
            f"would not load dfd.runtime from {site_dirs}: {reason}. Install dfd-export and its dependencies "
            f"into this Python's environment (a virtualenv is simplest) and build again")


def _place(built: Path, target: Path) -> None:
    """Move ``built`` to ``target`` by a rename in ``target``'s folder: a running program that has
    the old library mapped keeps its file (writing over it in place would crash that program),
    and an interrupted build never leaves a half-written file."""
    staged = target.with_name(f".{target.name}.partial")
    shutil.copyfile(built, staged)
    staged.replace(target)


def build_capi(out_dir: Path) -> tuple[Path, Path]:
    """Write ``out_dir/dfd_runtime.h`` and ``out_dir/libdfd_runtime.so``; returns both paths.

    Both are compiled in a temporary folder first and put in place only when the library built,
    so a failed build leaves an earlier header and library as they were, matching each other."""
    try:
        import cffi
    except ImportError:
        raise CapiBuildError("building the C library needs cffi: pip install cffi") from None
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        raise CapiBuildError("building the C library needs a C compiler (cc/gcc) on PATH")
    from dfd.runtime.detector import DEFAULT_BATCH_SIZE  # the C defaults are the Python ones
    from dfd.runtime.face_detection import DEFAULT_MIN_FACE_PX
    from dfd.runtime.images import DEFAULT_MAX_PIXELS

    python_lib_dir = _python_library_dir()
    site_dirs = embedded_site_dirs()
    _require_runtime_importable(site_dirs)
    out_dir = Path(out_dir).resolve()
    header, library = out_dir / HEADER_NAME, out_dir / LIBRARY_NAME
    for target in (header, library):
        problem = _replace_problem(target)
        if problem:
            raise CapiBuildError(problem)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="dfd-capi-") as work:
        staged_header = Path(work) / HEADER_NAME
        staged_header.write_text(HEADER)
        ffibuilder = cffi.FFI()
        ffibuilder.cdef(API_TYPES + PYTHON_FUNCTIONS)
        ffibuilder.embedding_api("")  # the exported functions are the C shims, not cdef'd ones
        ffibuilder.set_source(
            MODULE_NAME,
            C_SHIMS_FILE.read_text(encoding="utf-8"),
            include_dirs=[work],
            define_macros=[
                ("DFD_PYTHON_EXECUTABLE", _c_string(sys.executable)),
                ("DFD_VERSION", _c_string(importlib.metadata.version("dfd-export"))),
                ("DFD_ERROR_CAPACITY", str(ERROR_CAPACITY)),
                ("DFD_DEFAULT_BATCH_SIZE", str(DEFAULT_BATCH_SIZE)),
                ("DFD_DEFAULT_FACE_MIN_PX", f"{DEFAULT_MIN_FACE_PX or 0.0!r}f"),
                ("DFD_DEFAULT_MAX_PIXELS", f"{DEFAULT_MAX_PIXELS}LL"),
            ],
            library_dirs=[str(python_lib_dir)],
            extra_link_args=[f"-Wl,-rpath,{python_lib_dir}", f"-Wl,-soname,{LIBRARY_NAME}"],
        )
        ffibuilder.embedding_init_code(INIT_CODE.format(site_dirs=site_dirs, module=MODULE_NAME,
                                                     python_functions=PYTHON_FUNCTION_NAMES))
        try:
            built = ffibuilder.compile(tmpdir=work, target=LIBRARY_NAME, verbose=False)
        except Exception as exc:  # distutils/setuptools raise their own compile/link errors
            raise CapiBuildError(f"compiling {LIBRARY_NAME} failed: {exc}") from exc
        _place(Path(built), library)
        _place(staged_header, header)
    return header, library


@click.command("capi", cls=Verb)
@click.option("--out", "out_dir", type=OutputFolder(outside_engine_sets=True), required=True,
              help="Folder to write dfd_runtime.h and libdfd_runtime.so into (created if missing). An earlier "
                   "build's two files there are replaced; other files of those names are refused.")
@handles_errors
def capi(out_dir: Path) -> None:
    """Build the C ABI: dfd_runtime.h + libdfd_runtime.so, embedding this environment's runtime.

    \b
    Then, from C:
      cc app.c -I DIR -L DIR -ldfd_runtime -Wl,-rpath,/absolute/DIR
    (the rpath absolute, or '$ORIGIN/...' relative to the program). The program needs no
    environment variable; the library is tied to this virtualenv (rebuild after moving it).
    Needs cffi and a C compiler. Example: examples/c/dfd_detect.c in the source repository.
    """
    header, library = build_capi(out_dir)
    click.echo(f"header:  {header}")
    click.echo(f"library: {library}")
