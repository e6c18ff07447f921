/* metrics.h: candidate metrics and the agreement report's read (storage/store_sqlite_metrics.c; DESIGN.md
 * section 5, PUT .../metrics and GET .../agreement).  A candidate's metrics are the labelled
 * numbers its user has (val_loss, test_acc, ...), kept as a JSON object text of finite numbers.
 *
 * Its own header beside store.h, plain C (no jansson: JSON goes in and out as text); the
 * functions dispatch to the ops metrics_merge, metric_names and agree_rows (store.c). */
#ifndef TPV_STORE_METRICS_H
#define TPV_STORE_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "core/tpv_error.h"
#include "storage/store.h"

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

/* struct store_agree_rows and its parts are in store_types.h (the ops table returns them). */

/* Fills *out (zeroed first) for `metric` of the study.  TPV_ENOTFOUND (field "study_id"),
 * TPV_ENOMEM, storage errors; on error *out holds nothing to free. */
int store_agree_rows(struct store *st, const char *study_id, const char *metric,
                     struct store_agree_rows *out, struct tpv_err *err);

#endif
