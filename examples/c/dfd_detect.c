/* dfd_detect - a small deepfake-detection service on the dfd runtime's C ABI.
 *
 * Reads one image path per line on standard input and writes one JSON object per line on
 * standard output. A line may give the face box the caller already has after a tab,
 * "PATH<TAB>x1 y1 x2 y2" in pixels of the image; without one the runtime locates the face.
 *   {"image": "a.jpg", "status": "ok", "score": 0.6,
 *    "streams": {"global": 0.88, "face": 0.55, "fusion": 0.30},
 *    "face_found": true, "face_box": [173.3, 48.1, 291.6, 201.9], "notes": [], "error": null}
 * "notes" says how the runtime treated the image where the reference has no rule (a small image
 * upscaled, no face found, ...), as `dfd-export detect` does. A path that cannot be read or decoded
 * gives "status": "io"/"image" and its "error"; the service goes on with the next line.
 *
 * Build (DIR is where `dfd-export capi --out DIR` wrote the header and library; the rpath must be
 * absolute, or relative to the program through $ORIGIN, or it only works from one folder):
 *   cc -O2 -o dfd_detect dfd_detect.c -I DIR -L DIR -ldfd_runtime -Wl,-rpath,/absolute/DIR
 * Run:
 *   find photos -name "*.jpg" | ./dfd_detect engines/fp32 [backend]
 * Exit status: 0 when every image was scored, 2 when some were not, 1 when the engine set
 * cannot be opened or the results cannot be written (a full disk); a reader that closes the pipe
 * ends it by SIGPIPE (status 141), as it ends any Unix filter.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dfd_runtime.h"

static const char *status_name(dfd_status status)
{
    switch (status) {
    case DFD_OK: return "ok";
    case DFD_E_INVALID_ARGUMENT: return "invalid_argument";
    case DFD_E_IO: return "io";
    case DFD_E_ENGINE: return "engine";
    case DFD_E_IMAGE: return "image";
    case DFD_E_INTERNAL: return "internal";
    }
    return "unknown";
}

/* The length (2-4) of the well-formed UTF-8 sequence at c, or 0 when c starts none. */
static int utf8_sequence(const unsigned char *c)
{
    int length, i;
    if (c[0] >= 0xC2 && c[0] <= 0xDF)
        length = 2;
    else if (c[0] >= 0xE0 && c[0] <= 0xEF)
        length = 3;
    else if (c[0] >= 0xF0 && c[0] <= 0xF4)
        length = 4;
    else
        return 0;
    for (i = 1; i < length; i++)  /* the terminating NUL fails this too */
        if ((c[i] & 0xC0) != 0x80)
            return 0;
    /* overlong forms, UTF-16 surrogates, code points above U+10FFFF */
    if ((c[0] == 0xE0 && c[1] < 0xA0) || (c[0] == 0xED && c[1] >= 0xA0) || (c[0] == 0xF0 && c[1] < 0x90)
        || (c[0] == 0xF4 && c[1] >= 0x90))
        return 0;
    return length;
}

/* text as a JSON string literal: quotes, backslashes and control characters escaped, UTF-8
   passed through. A byte that is not part of well-formed UTF-8 (a file name in another
   encoding) is written as Python's json writes a name read with surrogate escapes, "\udcXX", so
   the line stays valid JSON and `dfd-export detect --format jsonl` names the same file alike. */
static void print_json_string(const char *text)
{
    const unsigned char *c;
    int length;
    putchar('"');
    for (c = (const unsigned char *)text; *c; c++) {
        if (*c == '"' || *c == '\\')
            printf("\\%c", *c);
        else if (*c == '\n')
            fputs("\\n", stdout);
        else if (*c == '\t')
            fputs("\\t", stdout);
        else if (*c < 0x20)
            printf("\\u%04x", *c);
        else if (*c < 0x80)
            putchar(*c);
        else if ((length = utf8_sequence(c)) == 0)
            printf("\\udc%02x", *c);
        else {
            fwrite(c, 1, (size_t)length, stdout);
            c += length - 1;
        }
    }
    putchar('"');
}

/* The result's notes ('\n'-separated in its message) as a JSON array of strings. */
static void print_json_lines(const char *text)
{
    char line[DFD_RESULT_MESSAGE_SIZE];
    const char *start = text, *end;
    putchar('[');
    while (*start) {
        size_t length;
        end = strchr(start, '\n');
        length = end ? (size_t)(end - start) : strlen(start);
        memcpy(line, start, length);
        line[length] = '\0';
        if (start != text)
            fputs(", ", stdout);
        print_json_string(line);
        start += length + (end != NULL);
    }
    putchar(']');
}

/* error: why the image failed (the result's own message, or the service's for a bad line) */
static void print_result(const char *path, const dfd_result *result, const char *error)
{
    static const char *streams[3] = {"global", "face", "fusion"};
    int i;
    fputs("{\"image\": ", stdout);
    print_json_string(path);
    printf(", \"status\": \"%s\"", status_name(result->status));
    if (result->status == DFD_OK) {
        /* the score is a multiple of 0.1: %.7g prints it as such; %.9g round-trips a float */
        printf(", \"score\": %.7g, \"streams\": {", result->score);
        for (i = 0; i < 3; i++) {
            if (i > 0)
                fputs(", ", stdout);
            if (result->stream_prob[i] != result->stream_prob[i]) /* NaN: stream not in the set */
                printf("\"%s\": null", streams[i]);
            else
                printf("\"%s\": %.9g", streams[i], result->stream_prob[i]);
        }
        printf("}, \"face_found\": %s", result->face_found ? "true" : "false");
        if (result->face_found)
            printf(", \"face_box\": [%.9g, %.9g, %.9g, %.9g]", result->face_box[0],
                   result->face_box[1], result->face_box[2], result->face_box[3]);
        else
            fputs(", \"face_box\": null", stdout);
        fputs(", \"notes\": ", stdout);
        print_json_lines(result->message);
        fputs(", \"error\": null}\n", stdout);
    } else {
        fputs(", \"score\": null, \"streams\": null, \"face_found\": false, \"face_box\": null, \"notes\": [], "
              "\"error\": ", stdout);
        print_json_string(error);
        fputs("}\n", stdout);
    }
    fflush(stdout);
}

static int is_blank(char c)
{
    return c == ' ' || c == '\t';
}

/* Split "PATH<TAB>x1 y1 x2 y2" at the tab; 0 when the text after it is not four finite decimal
   numbers separated by spaces or tabs (strtof alone would also take "0x10", "inf" or "1e40"). */
static int parse_face(char *line, dfd_face *face)
{
    char *tab = strchr(line, '\t'), *end;
    int i;
    face->given = 0;
    if (tab == NULL)
        return 1;
    *tab = '\0';
    end = tab + 1;
    for (i = 0; i < 4; i++) {
        char *start = end;
        size_t length;
        while (is_blank(*start))
            start++;
        length = strspn(start, "0123456789+-.eE");
        if (length == 0 || (start[length] != '\0' && !is_blank(start[length])))
            return 0;
        errno = 0;
        face->box[i] = strtof(start, &end);
        if (end != start + length || errno == ERANGE || !isfinite(face->box[i]))
            return 0;
    }
    while (is_blank(*end))
        end++;
    face->given = 1;
    return *end == '\0';
}

/* Read one line of standard input into line (size bytes, without its '\n'); its length, or -1 at
   the end of input. A longer line is read to its end (so it stays one line, not two paths) and
   flagged in *too_long. The length counts a NUL byte inside the line, which fgets could not:
   its line was taken for a long one, and the next path was skipped with it. */
static long read_line(char *line, size_t size, int *too_long)
{
    size_t length = 0;
    int c;
    *too_long = 0;
    while ((c = getchar()) != EOF && c != '\n') {
        if (length + 1 < size)
            line[length++] = (char)c;
        else
            *too_long = 1;
    }
    line[length] = '\0';
    return c == EOF && length == 0 && !*too_long ? -1 : (long)length;
}

static void refuse_line(const char *line, const char *why)
{
    dfd_result result;
    memset(&result, 0, sizeof result);
    result.status = DFD_E_INVALID_ARGUMENT;
    print_result(line, &result, why);
}

int main(int argc, char **argv)
{
    char line[8191], description[1024];
    dfd_options options;
    dfd_detector *detector = NULL;
    dfd_status status;
    int failed = 0, write_error, too_long;
    long length;

    if (argc < 2 || argc > 3) {
        fprintf(stderr, "usage: %s ENGINE_DIR [auto|onnxruntime|tensorrt] < image-paths\n", argv[0]);
        return 1;
    }
    dfd_options_init(&options);          /* the defaults of `dfd-export detect`; change fields here */
    options.backend = argc == 3 ? argv[2] : NULL;
    status = dfd_open_with(argv[1], &options, &detector);
    if (status != DFD_OK) {
        fprintf(stderr, "error: %s\n", dfd_last_error());
        return 1;
    }
    if (dfd_describe(detector, description, sizeof description) != DFD_OK)
        snprintf(description, sizeof description, "(%s)", dfd_last_error());
    fprintf(stderr, "dfd runtime %s: engine set %s open; %s\n", dfd_version(), argv[1], description);
    while (!ferror(stdout) && (length = read_line(line, sizeof line, &too_long)) >= 0) {
        dfd_result result;
        dfd_face face;
        if (too_long) {
            failed++;
            refuse_line(line, "line longer than 8190 bytes: not read as a path");
            continue;
        }
        if (memchr(line, '\0', (size_t)length) != NULL) {
            failed++;
            refuse_line(line, "the line holds a NUL byte, which no path can: not read as a path");
            continue;
        }
        if (length > 0 && line[length - 1] == '\r')  /* a CRLF line end */
            line[--length] = '\0';
        if (line[0] == '\0')
            continue;
        if (!parse_face(line, &face)) {
            failed++;
            refuse_line(line, "after the tab give the face box as four numbers: x1 y1 x2 y2");
            continue;
        }
        status = dfd_detect_file_face(detector, line, &face, &result);
        failed += status != DFD_OK;
        print_result(line, &result, result.message);
    }
    write_error = ferror(stdout) ? errno : 0;  /* the loop stops at the write that failed */
    dfd_close(detector);
    if (!write_error && fflush(stdout) != 0)
        write_error = errno;
    if (write_error || ferror(stdout)) {  /* a full disk or a closed pipe: the results are lost */
        fprintf(stderr, "error: cannot write the results to standard output: %s\n",
                write_error ? strerror(write_error) : "write error");
        return 1;
    }
    return failed ? 2 : 0;
}
