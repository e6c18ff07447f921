/* blobs.c: the content-addressed blob store of blobs.h: uploads stream into a temporary file
 * under <dir>/tmp while hashed with SHA-256, then fsync, rename into <dir>/sha256/ab/<hex> and
 * fsync of the folder, so a blob either exists whole or not at all, even across kill -9.
 * Temporaries of aborted uploads are removed when the request ends, and any left by a crash when
 * the store opens.  No SQL here: the blob rows are the backends' (store_ops blob_*). */
#include "storage/blobs.h"

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

struct blob_store {
    char *dir;
};

struct blob_writer {
    struct blob_store *bs;
    int fd;
    char tmp_path[PATH_MAX];
    EVP_MD_CTX *md;
    uint64_t size, max_size;
    char expect[BLOB_DIGEST_MAX];
    bool committed;
    bool failed; /* a write failed: the file and the hash disagree, nothing may be committed */
};

bool blob_digest_valid(const char *d)
{
    if (!d || strncmp(d, "sha256:", 7) != 0 || strlen(d) != 7 + 64)
        return false;
    return strspn(d + 7, "0123456789abcdef") == 64;
}

static int mkdir_p1(const char *path, struct tpv_err *err)
{
    if (mkdir(path, 0750) == 0 || errno == EEXIST)
        return TPV_OK;
    return tpv_err_set(err, TPV_EIO, "blob_dir", "cannot create %s: %s", path, strerror(errno));
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

/* Creates the folders above `path` that are missing (--blob-dir may name a new tree). */
static int mkdir_parents(const char *path, struct tpv_err *err)
{
    char buf[PATH_MAX];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        int rc = mkdir_p1(buf, err);
        *p = '/';
        if (rc != TPV_OK)
            return rc;
    }
    return TPV_OK;
}

/* Removes the temporaries of <dir>/tmp last modified more than stale_s seconds ago (all with
 * 0): uploads cut off by a crash.  Other nodes sharing the folder write fresh ones. */
static int remove_stale_temps(const char *path, double stale_s, struct tpv_err *err)
{
    DIR *dir = opendir(path);
    if (!dir)
        return tpv_err_set(err, TPV_EIO, "blob_dir", "cannot read %s: %s", path, strerror(errno));
    time_t now = time(NULL);
    struct dirent *de;
    while ((de = readdir(dir))) {
        if (de->d_name[0] == '.')
            continue;
        struct stat sb;
        if (stale_s > 0 && (fstatat(dirfd(dir), de->d_name, &sb, 0) != 0 ||
                            difftime(now, sb.st_mtime) < stale_s))
            continue;
        unlinkat(dirfd(dir), de->d_name, 0);
    }
    closedir(dir);
    return TPV_OK;
}

int blob_store_open(struct blob_store **out, const char *dir, bool owner, double stale_s,
                    struct tpv_err *err)
{
    char path[PATH_MAX];
    *out = NULL;
    if (!dir || !dir[0] || strlen(dir) >= PATH_MAX - 160)
        return tpv_err_set(err, TPV_EINVAL, "blob_dir", "blob folder path empty or too long");
    struct blob_store *bs = calloc(1, sizeof *bs);
    if (!bs || !(bs->dir = strdup(dir))) {
        free(bs);
        return tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
    }
    int rc = TPV_OK;
    if (owner) {
        rc = mkdir_parents(bs->dir, err);
        if (rc == TPV_OK)
            rc = mkdir_p1(bs->dir, err);
        snprintf(path, sizeof path, "%s/sha256", bs->dir);
        if (rc == TPV_OK)
            rc = mkdir_p1(path, err);
        snprintf(path, sizeof path, "%s/tmp", bs->dir);
        if (rc == TPV_OK)
            rc = mkdir_p1(path, err);
        if (rc == TPV_OK)
            rc = remove_stale_temps(path, stale_s, err);
    }
    if (rc != TPV_OK) {
        blob_store_close(bs);
        return rc;
    }
    *out = bs;
    return TPV_OK;
}

void blob_store_close(struct blob_store *bs)
{
    if (!bs)
        return;
    free(bs->dir);
    free(bs);
}

int blob_temp_count(struct blob_store *bs)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/tmp", bs->dir);
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

int blob_path(struct blob_store *bs, const char *digest, char *buf, size_t cap,
                    struct tpv_err *err)
{
    if (!blob_digest_valid(digest))
        return tpv_err_set(err, TPV_EINVAL, "digest",
                           "'%.80s' is not a digest of the form sha256:<64 lowercase hex>",
                           digest ? digest : "");
    const char *hex = digest + 7;
    if ((size_t)snprintf(buf, cap, "%s/sha256/%.2s/%s", bs->dir, hex, hex) >= cap)
        return tpv_err_set(err, TPV_EINVAL, "data_dir", "blob path too long");
    return TPV_OK;
}

int blob_stat(struct blob_store *bs, const char *digest, uint64_t *size, struct tpv_err *err)
{
    char path[PATH_MAX];
    int rc = blob_path(bs, digest, path, sizeof path, err);
    if (rc != TPV_OK)
        return rc;
    struct stat sb;
    if (stat(path, &sb) != 0 || !S_ISREG(sb.st_mode))
        return tpv_err_set(err, TPV_ENOTFOUND, "digest", "blob %s not found", digest);
    if (size)
        *size = (uint64_t)sb.st_size;
    return TPV_OK;
}

int blob_writer_open(struct blob_store *bs, const char *expect, uint64_t max_size,
                           struct blob_writer **out, struct tpv_err *err)
{
    *out = NULL;
    if (expect && !blob_digest_valid(expect))
        return tpv_err_set(err, TPV_EINVAL, "digest",
                           "'%.80s' is not a digest of the form sha256:<64 lowercase hex>", expect);
    struct blob_writer *w = calloc(1, sizeof *w);
    if (!w)
        return tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
    w->bs = bs;
    w->fd = -1;
    w->max_size = max_size;
    if (expect)
        snprintf(w->expect, sizeof w->expect, "%s", expect);
    snprintf(w->tmp_path, sizeof w->tmp_path, "%s/tmp/upload-XXXXXX", bs->dir);
    w->fd = mkostemp(w->tmp_path, O_CLOEXEC);
    if (w->fd < 0) {
        int rc = tpv_err_set(err, TPV_EIO, NULL, "cannot create an upload file: %s",
                             strerror(errno));
        w->tmp_path[0] = '\0';
        blob_writer_free(w);
        return rc;
    }
    w->md = EVP_MD_CTX_new();
    if (!w->md || EVP_DigestInit_ex(w->md, EVP_sha256(), NULL) != 1) {
        blob_writer_free(w);
        return sha_fail("cannot start SHA-256", err);
    }
    *out = w;
    return TPV_OK;
}

int blob_writer_write(struct blob_writer *w, const void *data, size_t len,
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

uint64_t blob_writer_size(const struct blob_writer *w)
{
    return w->size;
}

int blob_writer_commit(struct blob_writer *w, char digest[BLOB_DIGEST_MAX],
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
    int rc = blob_path(w->bs, digest, path, sizeof path, err);
    if (rc != TPV_OK)
        return rc;
    snprintf(dir, sizeof dir, "%s/sha256/%.2s", w->bs->dir, digest + 7);
    struct stat sb;
    if (stat(path, &sb) == 0 && S_ISREG(sb.st_mode) && (uint64_t)sb.st_size == w->size) {
        *existed = true; /* same content already stored: the temp file goes in free() */
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
    snprintf(tmpdir, sizeof tmpdir, "%s/tmp", w->bs->dir);
    snprintf(shadir, sizeof shadir, "%s/sha256", w->bs->dir);
    if (fsync_dir(dir) != 0 || fsync_dir(shadir) != 0 || fsync_dir(tmpdir) != 0)
        return tpv_err_set(err, TPV_EIO, NULL, "cannot sync the blob folder: %s",
                           strerror(errno));
    return TPV_OK;
}

void blob_writer_free(struct blob_writer *w)
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

int blob_unlink(void *ctx, const char *digest, struct tpv_err *err)
{
    char path[PATH_MAX];
    int rc = blob_path(ctx, digest, path, sizeof path, err);
    if (rc == TPV_OK && unlink(path) != 0 && errno != ENOENT)
        rc = tpv_err_set(err, TPV_EIO, NULL, "cannot remove blob %s: %s", digest,
                         strerror(errno));
    return rc;
}
