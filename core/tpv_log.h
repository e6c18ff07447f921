/* tpv_log.h: one level-gated logging macro for the whole service.
 *
 * Lines go to stderr as `<RFC3339 UTC time> <level> <message>`, written with one write(2) so that
 * lines from several threads never interleave.  Key=value fields in the message (rid=..., job=...)
 * keep lines greppable.  Client-facing messages are separate: never log secrets or tokens.
 *
 * Every string a client controls (path, method, header values, names from request bodies, error
 * texts that quote them) goes through tpv_log_escape() before it is logged, so that a value can
 * neither start a line of its own nor pass for another key=value field.  As a last resort the
 * writer itself turns any control byte left in a message into \xNN: one call, one line. */
#ifndef TPV_LOG_H
#define TPV_LOG_H

#include <stddef.h>

enum tpv_log_level { TPV_LOG_DEBUG = 0, TPV_LOG_INFO = 1, TPV_LOG_WARN = 2, TPV_LOG_ERROR = 3 };

/* Sets the lowest level that is written (default TPV_LOG_INFO).  Thread-safe. */
void tpv_log_set_level(enum tpv_log_level level);
enum tpv_log_level tpv_log_get_level(void);

/* Parses "debug|info|warn|error"; returns 0 or TPV_EINVAL. */
int tpv_log_parse_level(const char *name, enum tpv_log_level *out);

/* How tpv_log_escape treats spaces: TPV_LOG_TOKEN for key=value fields (a space becomes \x20,
 * so the value stays one field), TPV_LOG_TEXT for free text (spaces kept) placed last on a line or
 * between double quotes. */
enum tpv_log_esc { TPV_LOG_TOKEN = 0, TPV_LOG_TEXT = 1 };

/* Room for an escaped copy of a value of n bytes, cut marker included. */
#define TPV_LOG_ESC_CAP(n) (4 * (n) + 8)

/* Writes an escaped copy of `s` into out (cap > 0 bytes, always NUL-terminated) and returns out.
 * Bytes outside printable ASCII (controls, DEL, every byte >= 0x80) become \xNN, a backslash
 * \\ and a double quote \", a space \x20 in TPV_LOG_TOKEN mode.  The mapping is one-to-one, so
 * a logged value reads back exactly.  A copy that does not fit is cut at a whole escape and ends
 * with the marker \... (which escaping never produces).  s NULL is written as "-". */
const char *tpv_log_escape(char *out, size_t cap, const char *s, enum tpv_log_esc mode);

/* `%s` arguments for one log call: an escaped copy of s (TPV_LOG_TOKEN / TPV_LOG_TEXT), cut to
 * what max bytes of it need, in a buffer that lives to the end of the enclosing statement (a
 * compound literal; max must be a constant).  log_info("name=%s", tpv_log_token(name, 64)). */
#define tpv_log_token(s, max) \
    tpv_log_escape((char[TPV_LOG_ESC_CAP(max)]){ 0 }, TPV_LOG_ESC_CAP(max), (s), TPV_LOG_TOKEN)
#define tpv_log_text(s, max) \
    tpv_log_escape((char[TPV_LOG_ESC_CAP(max)]){ 0 }, TPV_LOG_ESC_CAP(max), (s), TPV_LOG_TEXT)

/* Formats and writes one line (see the file comment); use the log_* macros. */
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
