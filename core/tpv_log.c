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

void tpv_log_write(enum tpv_log_level level, const char *fmt, ...)
{
    static const char *const tags[] = { "DEBUG", "INFO", "WARN", "ERROR" };
    char line[4096];
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
    int n = vsnprintf(line + len, sizeof line - len - 1, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    len += (size_t)n;
    if (len > sizeof line - 2)
        len = sizeof line - 2; /* truncated: keep the newline */
    line[len++] = '\n';
    /* One write so concurrent lines stay whole; a failed log write has nowhere to be reported. */
    ssize_t w = write(STDERR_FILENO, line, len);
    (void)w;
}
