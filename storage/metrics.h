/* metrics.h: candidate metrics and the agreement report's read (storage/metrics.c; DESIGN.md
 * section 5, PUT .../metrics and GET .../agreement).  A candidate's metrics are the labelled
 * numbers its user has (val_loss, test_acc, ...), kept as a JSON object text of finite numbers.
 *
 * Its own header beside store.h so that these functions stay plain C (no jansson: JSON goes in
 * and out as text) and move as they are behind the store ops table of storage/DESIGN-phase2.md. */
#ifndef TPV_STORE_METRICS_H
#define TPV_STORE_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "core/noise.h"
#include "core/tpv_error.h"
#include "storage/store.h"

#define STORE_METRICS_MAX 64     /* keys a candidate may hold, after a merge */
#define STORE_METRIC_NAME_MAX 64 /* bytes of a key */

/* Merges `patch` (JSON object text; the caller checked that its values are finite numbers or
 * null and its keys 1..STORE_METRIC_NAME_MAX printable bytes) into the candidate's metrics, as
 * RFC 7396 does: keys given replace, a null removes the key, others stay.  In one transaction,
 * which bumps the study version when the metrics changed (*version gets the study's version
 * afterwards either way).  Errors: TPV_ENOTFOUND (field "candidate_id": no such candidate in the
 * study, deleted ones included), TPV_EINVAL (field "metrics") when the result would hold more
 * than STORE_METRICS_MAX keys (nothing is written), storage errors. */
int store_metrics_merge(struct store *st, const char *study_id, const char *candidate_id,
                        const char *patch, int64_t *version, struct tpv_err *err);

/* Up to `cap` - 1 bytes of the metric names some candidate of the study has, in byte order,
 * separated by ", " (at most 16 names, then "..." when there are more; "" when none), for the
 * answer to a metric nobody has. */
int store_metric_names(struct store *st, const char *study_id, char *names, size_t cap,
                       struct tpv_err *err);

/* One score of a candidate (value NaN when it is null). */
struct store_agree_score {
    char noise[TPV_NOISE_NAME_MAX];
    char split[8]; /* "fit" | "probe" */
    double value;
};

/* A candidate: its asked metric (has_metric false when it lacks it) and its scores
 * scores[first .. first + nscores). */
struct store_agree_cand {
    char id[STORE_ID_MAX];
    bool has_metric;
    double metric;
    size_t first, nscores;
};

/* Everything the agreement of one metric needs, from one query: the study's noise models (JSON
 * text, the order items follow) and version, every candidate in creation order with its scores.
 * Owns its arrays; free with store_agree_rows_free (NULL-safe, and safe on a zeroed struct). */
struct store_agree_rows {
    char *noise_models;
    int64_t version;
    struct store_agree_cand *cands;
    size_t ncands;
    struct store_agree_score *scores;
    size_t nscores;
};

/* Fills *out (zeroed first) for `metric` of the study.  TPV_ENOTFOUND (field "study_id"),
 * TPV_ENOMEM, storage errors; on error *out holds nothing to free. */
int store_agree_rows(struct store *st, const char *study_id, const char *metric,
                     struct store_agree_rows *out, struct tpv_err *err);
void store_agree_rows_free(struct store_agree_rows *rows);

#endif
