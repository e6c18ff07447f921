/* tpv_log.h: one level-gated logging macro for the whole service.
 *
 * Lines go to stderr as `<RFC3339 UTC time> <level> <message>`, written with one write(2) so that
 * lines from several threads never interleave.  Key=value fields in the message (rid=..., job=...)
 * keep lines greppable.  Client-facing messages are separate: never log secrets or tokens. */
#ifndef TPV_LOG_H
#define TPV_LOG_H

enum tpv_log_level { TPV_LOG_DEBUG = 0, TPV_LOG_INFO = 1, TPV_LOG_WARN = 2, TPV_LOG_ERROR = 3 };

/* Sets the lowest level that is written (default TPV_LOG_INFO).  Thread-safe. */
void tpv_log_set_level(enum tpv_log_level level);
enum tpv_log_level tpv_log_get_level(void);

/* Parses "debug|info|warn|error"; returns 0 or TPV_EINVAL. */
int tpv_log_parse_level(const char *name, enum tpv_log_level *out);

void tpv_log_write(enum tpv_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define TPV_LOG(level, ...)                                   \
    do {                                                      \
        if ((level) >= tpv_log_get_level())                   \
            tpv_log_write((level), __VA_ARGS__);              \
    } while (0)

#define log_debug(...) TPV_LOG(TPV_LOG_DEBUG, __VA_ARGS__)
#define log_info(...)  TPV_LOG(TPV_LOG_INFO, __VA_ARGS__)
#define log_warn(...)  TPV_LOG(TPV_LOG_WARN, __VA_ARGS__)
#define log_error(...) TPV_LOG(TPV_LOG_ERROR, __VA_ARGS__)

#endif
