/* test_log.c: tpv_log_escape (every client-controlled string in a log line goes through it) and
 * the writer's guarantee that one call writes one line. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "core/tpv_log.h"

static const char *esc(const char *s, enum tpv_log_esc mode)
{
    static char out[256];
    return tpv_log_escape(out, sizeof out, s, mode);
}

static void test_controls_and_quotes(void **state)
{
    (void)state;
    assert_string_equal(esc("/v1/studies/st_1", TPV_LOG_TOKEN), "/v1/studies/st_1");
    assert_string_equal(esc("/a\nINFO forged", TPV_LOG_TOKEN), "/a\\x0aINFO\\x20forged");
    assert_string_equal(esc("\r\x1b[31m\x7f\t", TPV_LOG_TOKEN), "\\x0d\\x1b[31m\\x7f\\x09");
    /* A backslash and a quote are escaped too, so a logged "\x0a" is not a newline. */
    assert_string_equal(esc("a\\x0a\"b", TPV_LOG_TOKEN), "a\\\\x0a\\\"b");
    assert_string_equal(esc("caf\xc3\xa9", TPV_LOG_TOKEN), "caf\\xc3\\xa9");
    /* A space keeps a key=value field whole, or stays in free text. */
    assert_string_equal(esc("x status=200", TPV_LOG_TOKEN), "x\\x20status=200");
    assert_string_equal(esc("no such study", TPV_LOG_TEXT), "no such study");
    assert_string_equal(esc("line\nbreak", TPV_LOG_TEXT), "line\\x0abreak");
    assert_string_equal(esc(NULL, TPV_LOG_TOKEN), "-");
    assert_string_equal(esc("", TPV_LOG_TOKEN), "");
}

static void test_cut_is_marked(void **state)
{
    (void)state;
    char out[12];
    /* Fits exactly: no marker. */
    assert_string_equal(tpv_log_escape(out, sizeof out, "abcdefghijk", TPV_LOG_TOKEN), "abcdefghijk");
    /* One byte more: cut, marked with \... (never produced by escaping). */
    assert_string_equal(tpv_log_escape(out, sizeof out, "abcdefghijkl", TPV_LOG_TOKEN), "abcdefg\\...");
    /* Never half an escape. */
    assert_string_equal(tpv_log_escape(out, sizeof out, "abcdef\n\n\n", TPV_LOG_TOKEN), "abcdef\\...");
    char tiny[1];
    assert_string_equal(tpv_log_escape(tiny, sizeof tiny, "abc", TPV_LOG_TOKEN), "");
    /* The wrappers size their buffer from the value's cap. */
    assert_string_equal(tpv_log_token("a b", 3), "a\\x20b");
    assert_string_equal(tpv_log_text("a\nb", 3), "a\\x0ab");
}

/* Runs fn with stderr redirected to a temporary file; returns what it wrote (malloc'd). */
static char *capture_stderr(void (*fn)(void))
{
    char path[] = "/tmp/test_log_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    unlink(path);
    int saved = dup(STDERR_FILENO);
    assert_true(saved >= 0);
    assert_true(dup2(fd, STDERR_FILENO) >= 0);
    fn();
    assert_true(dup2(saved, STDERR_FILENO) >= 0);
    close(saved);
    off_t n = lseek(fd, 0, SEEK_END);
    char *text = calloc(1, (size_t)n + 1);
    assert_non_null(text);
    assert_int_equal(pread(fd, text, (size_t)n, 0), n);
    close(fd);
    return text;
}

static void log_unescaped(void)
{
    log_info("request path=%s status=%d", "/x\n2026-01-01T00:00:00.000Z INFO  forged\r", 404);
}

/* A call site that forgot to escape still writes one line: the writer escapes control bytes. */
static void test_one_call_one_line(void **state)
{
    (void)state;
    char *text = capture_stderr(log_unescaped);
    size_t lines = 0;
    for (const char *p = text; *p; p++)
        lines += *p == '\n';
    assert_int_equal(lines, 1);
    assert_non_null(strstr(text, "path=/x\\x0a2026-01-01T00:00:00.000Z INFO  forged\\x0d status=404\n"));
    free(text);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_controls_and_quotes),
        cmocka_unit_test(test_cut_is_marked),
        cmocka_unit_test(test_one_call_one_line),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
