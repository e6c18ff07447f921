/* blobs.c: the content-addressed blob store (DESIGN.md sections 2, 5, 6): uploads stream into a
 * temporary file under <data>/blobs/tmp while hashed with SHA-256, then fsync, rename into
 * <data>/blobs/sha256/ab/<hex> and fsync of the folder, so a blob either exists whole or not at all,
 * even across kill -9.  Temporaries of aborted uploads are removed when the request ends, and any
 * left by a crash when the store opens. */
#include "storage/store_int.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

struct store_blob_writer {
    struct store *st;
    int fd;
    char tmp_path[PATH_MAX];
    EVP_MD_CTX *md;
    uint64_t size, max_size;
    char expect[STORE_DIGEST_MAX];
    bool committed;
    bool failed; /* a write failed: the file and the hash disagree, nothing may be committed */
};

bool store_digest_valid(const char *d)
{
    if (!d || strncmp(d, "sha256:", 7) != 0 || strlen(d) != 7 + 64)
        return false;
    return strspn(d + 7, "0123456789abcdef") == 64;
}

static int mkdir_p1(const char *path, struct tpv_err *err)
{
    if (mkdir(path, 0750) == 0 || errno == EEXIST)
        return TPV_OK;
    return tpv_err_set(err, TPV_EIO, "data_dir", "cannot create %s: %s", path, strerror(errno));
}

static int fsync_dir(const char *path)
{
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

/* A failed OpenSSL call leaves its error on the calling thread's queue, where the next OpenSSL
 * user of that thread (TLS in libcurl, SSL_get_error) would read it as its own: take it off. */
static int sha_fail(const char *what, struct tpv_err *err)
{
    ERR_clear_error();
    return tpv_err_set(err, TPV_EINTERNAL, NULL, "%s", what);
}

int blobs_init(struct store *st, struct tpv_err *err)
{
    char path[PATH_MAX];
    if (asprintf(&st->blob_dir, "%s/blobs", st->data_dir) < 0) {
        st->blob_dir = NULL;
        return tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
    }
    int rc = mkdir_p1(st->blob_dir, err);
    snprintf(path, sizeof path, "%s/sha256", st->blob_dir);
    if (rc == TPV_OK)
        rc = mkdir_p1(path, err);
    snprintf(path, sizeof path, "%s/tmp", st->blob_dir);
    if (rc == TPV_OK)
        rc = mkdir_p1(path, err);
    if (rc != TPV_OK)
        return rc;
    /* Stale temporaries: uploads cut off by a crash.  We hold the data-dir lock, so none is
     * being written. */
    DIR *dir = opendir(path);
    if (!dir)
        return tpv_err_set(err, TPV_EIO, "data_dir", "cannot read %s: %s", path, strerror(errno));
    struct dirent *de;
    while ((de = readdir(dir))) {
        if (de->d_name[0] == '.')
            continue;
        unlinkat(dirfd(dir), de->d_name, 0);
    }
    closedir(dir);
    return TPV_OK;
}

int store_blob_temp_count(struct store *st)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/tmp", st->blob_dir);
    DIR *dir = opendir(path);
    if (!dir)
        return -1;
    int n = 0;
    struct dirent *de;
    while ((de = readdir(dir)))
        if (de->d_name[0] != '.')
            n++;
    closedir(dir);
    return n;
}

int store_blob_path(struct store *st, const char *digest, char *buf, size_t cap,
                    struct tpv_err *err)
{
    if (!store_digest_valid(digest))
        return tpv_err_set(err, TPV_EINVAL, "digest",
                           "'%.80s' is not a digest of the form sha256:<64 lowercase hex>",
                           digest ? digest : "");
    const char *hex = digest + 7;
    if ((size_t)snprintf(buf, cap, "%s/sha256/%.2s/%s", st->blob_dir, hex, hex) >= cap)
        return tpv_err_set(err, TPV_EINVAL, "data_dir", "blob path too long");
    return TPV_OK;
}

int store_blob_stat(struct store *st, const char *digest, uint64_t *size, struct tpv_err *err)
{
    char path[PATH_MAX];
    int rc = store_blob_path(st, digest, path, sizeof path, err);
    if (rc != TPV_OK)
        return rc;
    struct stat sb;
    if (stat(path, &sb) != 0 || !S_ISREG(sb.st_mode))
        return tpv_err_set(err, TPV_ENOTFOUND, "digest", "blob %s not found", digest);
    if (size)
        *size = (uint64_t)sb.st_size;
    return TPV_OK;
}

int store_blob_writer_open(struct store *st, const char *expect, uint64_t max_size,
                           struct store_blob_writer **out, struct tpv_err *err)
{
    *out = NULL;
    if (expect && !store_digest_valid(expect))
        return tpv_err_set(err, TPV_EINVAL, "digest",
                           "'%.80s' is not a digest of the form sha256:<64 lowercase hex>", expect);
    struct store_blob_writer *w = calloc(1, sizeof *w);
    if (!w)
        return tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
    w->st = st;
    w->fd = -1;
    w->max_size = max_size;
    if (expect)
        snprintf(w->expect, sizeof w->expect, "%s", expect);
    snprintf(w->tmp_path, sizeof w->tmp_path, "%s/tmp/upload-XXXXXX", st->blob_dir);
    w->fd = mkostemp(w->tmp_path, O_CLOEXEC);
    if (w->fd < 0) {
        int rc = tpv_err_set(err, TPV_EIO, NULL, "cannot create an upload file: %s",
                             strerror(errno));
        w->tmp_path[0] = '\0';
        store_blob_writer_free(w);
        return rc;
    }
    w->md = EVP_MD_CTX_new();
    if (!w->md || EVP_DigestInit_ex(w->md, EVP_sha256(), NULL) != 1) {
        store_blob_writer_free(w);
        return sha_fail("cannot start SHA-256", err);
    }
    *out = w;
    return TPV_OK;
}

int store_blob_writer_write(struct store_blob_writer *w, const void *data, size_t len,
                            struct tpv_err *err)
{
    uint64_t total;
    if (__builtin_add_overflow(w->size, (uint64_t)len, &total) || total > w->max_size)
        return tpv_err_set(err, TPV_ETOOLARGE, "body", "blob exceeds the limit of %llu bytes",
                           (unsigned long long)w->max_size);
    if (w->failed)
        return tpv_err_set(err, TPV_EINTERNAL, NULL, "the upload already failed");
    if (EVP_DigestUpdate(w->md, data, len) != 1) {
        w->failed = true;
        return sha_fail("SHA-256 update failed", err);
    }
    const char *p = data;
    size_t left = len;
    while (left > 0) {
        ssize_t n = write(w->fd, p, left);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            /* The hash already covers bytes the file does not hold. */
            w->failed = true;
            int e = n < 0 ? errno : EIO; /* errno is stale after a write of 0 bytes */
            return tpv_err_set(err, e == ENOSPC || e == EDQUOT ? TPV_ENOSPACE : TPV_EIO, NULL,
                               "cannot store the upload: %s",
                               n < 0 ? strerror(e) : "the disk took no bytes");
        }
        p += n;
        left -= (size_t)n;
    }
    w->size = total;
    return TPV_OK;
}

uint64_t store_blob_writer_size(const struct store_blob_writer *w)
{
    return w->size;
}

static void record_blob(struct store *st, const char *digest, uint64_t size)
{
    char now[STORE_TIME_MAX];
    struct tpv_err ignored;
    store_now_rfc3339(now);
    struct store_conn *c = conn_get(st);
    sqlite3_stmt *s = conn_stmt(c, STMT_BLOB_PUT, &ignored);
    if (s) {
        bind_text(s, 1, digest);
        sqlite3_bind_int64(s, 2, (sqlite3_int64)size);
        bind_text(s, 3, now);
        stmt_exec(c, s, &ignored); /* the file is the truth; the row is an index for metrics */
    }
    conn_put(st, c);
}

int store_blob_writer_commit(struct store_blob_writer *w, char digest[STORE_DIGEST_MAX],
                             uint64_t *size, bool *existed, struct tpv_err *err)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    *existed = false;
    if (w->committed)
        return tpv_err_set(err, TPV_EINTERNAL, NULL, "upload already committed");
    if (w->failed)
        return tpv_err_set(err, TPV_EINTERNAL, NULL, "the upload failed: nothing to commit");
    if (EVP_DigestFinal_ex(w->md, md, &mdlen) != 1 || mdlen != 32)
        return sha_fail("SHA-256 failed", err);
    memcpy(digest, "sha256:", 7);
    for (unsigned i = 0; i < 32; i++)
        snprintf(digest + 7 + 2 * i, 3, "%02x", md[i]);
    *size = w->size;
    if (w->expect[0] && strcmp(w->expect, digest) != 0)
        return tpv_err_set(err, TPV_EINVAL, "digest",
                           "the body hashes to %s, not to %s as the URL says", digest, w->expect);

    char dir[PATH_MAX], path[PATH_MAX];
    int rc = store_blob_path(w->st, digest, path, sizeof path, err);
    if (rc != TPV_OK)
        return rc;
    snprintf(dir, sizeof dir, "%s/sha256/%.2s", w->st->blob_dir, digest + 7);
    struct stat sb;
    if (stat(path, &sb) == 0 && S_ISREG(sb.st_mode) && (uint64_t)sb.st_size == w->size) {
        *existed = true; /* same content already stored: the temp file goes in free() */
        record_blob(w->st, digest, w->size);
        return TPV_OK;
    }
    if (fsync(w->fd) != 0)
        return tpv_err_set(err, TPV_EIO, NULL, "cannot sync the upload: %s", strerror(errno));
    if (mkdir(dir, 0750) != 0 && errno != EEXIST)
        return tpv_err_set(err, TPV_EIO, NULL, "cannot create %s: %s", dir, strerror(errno));
    if (rename(w->tmp_path, path) != 0)
        return tpv_err_set(err, TPV_EIO, NULL, "cannot move the upload into place: %s",
                           strerror(errno));
    w->committed = true;
    /* The rename is durable once both folders are synced (the new name and the removed one). */
    char tmpdir[PATH_MAX], shadir[PATH_MAX];
    snprintf(tmpdir, sizeof tmpdir, "%s/tmp", w->st->blob_dir);
    snprintf(shadir, sizeof shadir, "%s/sha256", w->st->blob_dir);
    if (fsync_dir(dir) != 0 || fsync_dir(shadir) != 0 || fsync_dir(tmpdir) != 0)
        return tpv_err_set(err, TPV_EIO, NULL, "cannot sync the blob folder: %s",
                           strerror(errno));
    record_blob(w->st, digest, w->size);
    return TPV_OK;
}

void store_blob_writer_free(struct store_blob_writer *w)
{
    if (!w)
        return;
    if (w->fd >= 0)
        close(w->fd);
    if (!w->committed && w->tmp_path[0])
        unlink(w->tmp_path);
    EVP_MD_CTX_free(w->md);
    free(w);
}

/* What references `digest`, if anything: "study st_..." / "candidate cd_..." / "job jb_..." into
 * what (cap bytes), "" when nothing does.  Inside the caller's transaction. */
static int blob_referrer(struct store_conn *c, const char *digest, char *what, size_t cap,
                         struct tpv_err *err)
{
    what[0] = '\0';
    sqlite3_stmt *s = conn_stmt(c, STMT_BLOB_REFS, err);
    if (!s)
        return err->code;
    bind_text(s, 1, digest);
    int step = sqlite3_step(s), rc = TPV_OK;
    if (step == SQLITE_ROW)
        snprintf(what, cap, "%s %s", col_text(s, 0), col_text(s, 1));
    else if (step != SQLITE_DONE)
        rc = db_fail(c, step, "read blob references", err);
    stmt_done(s);
    return rc;
}

/* Removes the blob's row (inside the caller's transaction) and its file. */
static int blob_remove(struct store *st, struct store_conn *c, const char *digest,
                       struct tpv_err *err)
{
    char path[PATH_MAX];
    int rc = store_blob_path(st, digest, path, sizeof path, err);
    if (rc != TPV_OK)
        return rc;
    sqlite3_stmt *s = conn_stmt(c, STMT_BLOB_DELETE, err);
    if (!s)
        return err->code;
    bind_text(s, 1, digest);
    rc = stmt_exec(c, s, err);
    if (rc == TPV_OK && unlink(path) != 0 && errno != ENOENT)
        rc = tpv_err_set(err, TPV_EIO, NULL, "cannot remove blob %s: %s", digest,
                         strerror(errno));
    return rc;
}

int store_blob_delete(struct store *st, const char *digest, struct tpv_err *err)
{
    char what[96];
    int rc = store_blob_stat(st, digest, NULL, err);
    if (rc != TPV_OK)
        return rc;
    struct store_conn *c = conn_get(st);
    rc = tx_begin(c, err); /* the write lock: no reference commits between check and unlink */
    if (rc == TPV_OK)
        rc = blob_referrer(c, digest, what, sizeof what, err);
    if (rc == TPV_OK && what[0])
        rc = tpv_err_set(err, TPV_EPRECONDITION, "digest", "blob %s is referenced by %s",
                         digest, what);
    if (rc == TPV_OK)
        rc = blob_remove(st, c, digest, err);
    if (rc == TPV_OK)
        rc = tx_commit(c, err);
    tx_rollback(c);
    conn_put(st, c);
    return rc;
}

/* RFC 3339 UTC with milliseconds of `t` seconds since the epoch, as store_now_rfc3339 writes. */
static void rfc3339_at(double t, char out[STORE_TIME_MAX])
{
    time_t sec = (time_t)t;
    struct tm tm;
    gmtime_r(&sec, &tm);
    int ms = (int)((t - (double)sec) * 1000.0);
    if (ms < 0)
        ms = 0;
    if (ms > 999)
        ms = 999;
    char buf[24];
    strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out, STORE_TIME_MAX, "%s.%03dZ", buf, ms);
}

int store_blob_gc(struct store *st, double grace_s, int limit, int *removed,
                  struct tpv_err *err)
{
    *removed = 0;
    if (limit <= 0)
        return TPV_OK;
    char cutoff[STORE_TIME_MAX];
    rfc3339_at(store_clock_now() - grace_s, cutoff);
    char (*due)[STORE_DIGEST_MAX] = calloc((size_t)limit, sizeof *due);
    if (!due)
        return tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
    int n = 0, step;
    struct store_conn *c = conn_get(st);
    int rc = tx_begin(c, err);
    sqlite3_stmt *s = NULL;
    if (rc == TPV_OK && !(s = conn_stmt(c, STMT_BLOB_GC_DUE, err)))
        rc = err->code;
    if (rc == TPV_OK) {
        bind_text(s, 1, cutoff);
        sqlite3_bind_int(s, 2, limit);
        while ((step = sqlite3_step(s)) == SQLITE_ROW && n < limit)
            snprintf(due[n++], STORE_DIGEST_MAX, "%s", col_text(s, 0));
        if (step != SQLITE_ROW && step != SQLITE_DONE)
            rc = db_fail(c, step, "find unreferenced blobs", err);
        stmt_done(s);
    }
    for (int i = 0; rc == TPV_OK && i < n; i++)
        rc = blob_remove(st, c, due[i], err);
    if (rc == TPV_OK)
        rc = tx_commit(c, err);
    tx_rollback(c);
    conn_put(st, c);
    free(due);
    if (rc == TPV_OK)
        *removed = n;
    return rc;
}
