/* blobs.h: the content-addressed blob store (DESIGN.md sections 2, 5, 6; storage/DESIGN-phase2.md
 * section 6): files under one folder (--blob-dir), no SQL and no struct store, so that SQLite and
 * PostgreSQL nodes share it and an S3 store could be a second implementation of this header.
 *
 * Uploads stream into a temporary file under <dir>/tmp while hashed with SHA-256, then fsync,
 * rename into <dir>/sha256/ab/<hex> and fsync of the folders, so a blob either exists whole or not
 * at all, even across kill -9.  Thread-safe: the handle is read-only after open. */
#ifndef TPV_BLOBS_H
#define TPV_BLOBS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/tpv_error.h"

#define BLOB_DIGEST_MAX 72 /* "sha256:" + 64 hex + NUL (= STORE_DIGEST_MAX) */

struct blob_store;
struct blob_writer;

/* True for "sha256:" followed by 64 lowercase hex digits. */
bool blob_digest_valid(const char *digest);

/* Opens the store at `dir`.  With `owner`, creates the folders and removes upload temporaries
 * last modified more than `stale_s` seconds ago (0: all of them, for a store no other process
 * writes); without, only names the folder (a process beside the daemon).  *out owns the handle.
 * TPV_EIO, TPV_ENOMEM, TPV_EINVAL (path too long). */
int blob_store_open(struct blob_store **out, const char *dir, bool owner, double stale_s,
                    struct tpv_err *err);
void blob_store_close(struct blob_store *bs); /* NULL is a no-op */

/* Starts an upload.  `expect` is the digest the body must hash to, or NULL; `max_size` bounds the
 * body.  On success *out owns the temporary file (blob_writer_free removes it unless
 * committed). */
int blob_writer_open(struct blob_store *bs, const char *expect, uint64_t max_size,
                     struct blob_writer **out, struct tpv_err *err);

/* Appends bytes.  TPV_ETOOLARGE past max_size, TPV_EIO/TPV_ENOSPACE when the disk refuses. */
int blob_writer_write(struct blob_writer *w, const void *data, size_t len, struct tpv_err *err);

/* Finishes: fsync, verify against `expect` (TPV_EINVAL, field "digest", when it differs), rename
 * into place and fsync the folders.  *existed tells whether the blob was already there.  Only
 * the file: the caller records the blob's row (store_ops blob_record).  Must still be freed. */
int blob_writer_commit(struct blob_writer *w, char digest[BLOB_DIGEST_MAX], uint64_t *size,
                       bool *existed, struct tpv_err *err);

uint64_t blob_writer_size(const struct blob_writer *w); /* bytes received so far */

/* Removes the temporary file unless committed, frees; NULL is a no-op. */
void blob_writer_free(struct blob_writer *w);

/* Whether a blob is present (TPV_OK with *size, size may be NULL) or not (TPV_ENOTFOUND);
 * TPV_EINVAL for a malformed digest. */
int blob_stat(struct blob_store *bs, const char *digest, uint64_t *size, struct tpv_err *err);

/* The local path of a blob (whether or not it exists).  TPV_EINVAL for a malformed digest. */
int blob_path(struct blob_store *bs, const char *digest, char *buf, size_t cap,
              struct tpv_err *err);

/* Removes a blob's file (absent is fine).  TPV_EIO.  `ctx` is the struct blob_store: the shape
 * of store_blob_remove_fn, for the backends' delete and GC transactions. */
int blob_unlink(void *ctx, const char *digest, struct tpv_err *err);

/* Number of temporaries in <dir>/tmp, -1 when unreadable (tests: aborted uploads leave none). */
int blob_temp_count(struct blob_store *bs);

#endif
