/* tpv_log.c: stderr logger behind the log_* macros (see tpv_log.h). */
#include "core/tpv_log.h"
#include "core/tpv_error.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static _Atomic int log_level = TPV_LOG_INFO;

void tpv_log_set_level(enum tpv_log_level level)
{
    atomic_store(&log_level, (int)level);
}

enum tpv_log_level tpv_log_get_level(void)
{
    return (enum tpv_log_level)atomic_load(&log_level);
}

int tpv_log_parse_level(const char *name, enum tpv_log_level *out)
{
    static const char *const names[] = { "debug", "info", "warn", "error" };
    for (int i = 0; i < 4; i++) {
        if (strcmp(name, names[i]) == 0) {
            *out = (enum tpv_log_level)i;
            return TPV_OK;
        }
    }
    return TPV_EINVAL;
}

/* The escape of byte c in `mode` into esc (at most 4 bytes + NUL); returns its length. */
static size_t escape_byte(unsigned char c, enum tpv_log_esc mode, char esc[5])
{
    static const char hex[] = "0123456789abcdef";
    if (c == '\\' || c == '"') {
        esc[0] = '\\';
        esc[1] = (char)c;
        esc[2] = '\0';
        return 2;
    }
    if (c > 0x20 && c < 0x7f) {
        esc[0] = (char)c;
        esc[1] = '\0';
        return 1;
    }
    if (c == ' ' && mode == TPV_LOG_TEXT) {
        esc[0] = ' ';
        esc[1] = '\0';
        return 1;
    }
    esc[0] = '\\';
    esc[1] = 'x';
    esc[2] = hex[c >> 4];
    esc[3] = hex[c & 15];
    esc[4] = '\0';
    return 4;
}

const char *tpv_log_escape(char *out, size_t cap, const char *s, enum tpv_log_esc mode)
{
    static const char cut[] = "\\...";
    if (cap == 0)
        return out;
    if (!s)
        s = "-";
    char esc[5];
    size_t whole = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p && whole < cap; p++)
        whole += escape_byte(*p, mode, esc);
    /* When the whole copy does not fit, stop where the cut marker still does. */
    size_t room = whole < cap ? cap - 1 : (cap > sizeof cut ? cap - sizeof cut : 0);
    size_t len = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        size_t n = escape_byte(*p, mode, esc);
        if (len + n > room)
            break;
        memcpy(out + len, esc, n);
        len += n;
    }
    if (whole >= cap && len + sizeof cut <= cap) {
        memcpy(out + len, cut, sizeof cut - 1);
        len += sizeof cut - 1;
    }
    out[len] = '\0';
    return out;
}

/* Copies the formatted message into dst with control bytes as \xNN (the writer's last resort:
 * callers escape client strings themselves); returns the bytes written, at most cap. */
static size_t copy_one_line(char *dst, size_t cap, const char *msg)
{
    size_t len = 0;
    for (const unsigned char *p = (const unsigned char *)msg; *p; p++) {
        char esc[5];
        size_t n = 1;
        if (*p < 0x20 || *p == 0x7f)
            n = escape_byte(*p, TPV_LOG_TEXT, esc);
        else
            esc[0] = (char)*p;
        if (len + n > cap)
            break;
        memcpy(dst + len, esc, n);
        len += n;
    }
    return len;
}

void tpv_log_write(enum tpv_log_level level, const char *fmt, ...)
{
    static const char *const tags[] = { "DEBUG", "INFO", "WARN", "ERROR" };
    char line[4096], msg[4096];
    struct timespec ts;
    struct tm tm;
    size_t len;
    va_list ap;

    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    len = strftime(line, sizeof line, "%Y-%m-%dT%H:%M:%S", &tm);
    len += (size_t)snprintf(line + len, sizeof line - len, ".%03ldZ %-5s ",
                            ts.tv_nsec / 1000000L, tags[level & 3]);
    va_start(ap, fmt);
    int n = vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    /* A message cut to fit keeps its newline. */
    len += copy_one_line(line + len, sizeof line - len - 1, msg);
    line[len++] = '\n';
    /* One write so concurrent lines stay whole; a failed log write has nowhere to be reported. */
    ssize_t w = write(STDERR_FILENO, line, len);
    (void)w;
}
