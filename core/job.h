/* job.h: one job as plain structs: a candidate's stored source, the study's noise models and the
 * job's parameters, parsed once by tpv_job_parse from the texts the service stores (DESIGN.md
 * section 2, data flow).  The submission path, the worker and the ranking read them through
 * this module only, so what was checked at submission is what runs.  No storage, no files: the
 * service resolves the digests to files (api/candidate_files.c) and hands them to core/score.h.
 *
 * Stored source JSON (written by tpv_job_source_json, never with null members):
 *   {"kind":"model","spec":{...}|"sha256:...","weights":"sha256:...",
 *    "inputs":{"fit":"sha256:...","probe"?:"sha256:..."}}
 *   {"kind":"onnx","onnx":"sha256:...","parameters"?:["name",...],
 *    "inputs":{"fit":"sha256:...","probe"?:"sha256:..."}}
 *   {"kind":"jacobian","fit":"sha256:...","probe"?:"sha256:...","weights"?:"sha256:...",
 *    "layout"?:["name",...]}
 * Sources stored by earlier versions may hold "probe": null (and "inputs.probe": null): read as
 * absent. */
#ifndef TPV_JOB_H
#define TPV_JOB_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "core/jbr.h"
#include "core/noise.h"
#include "core/score.h"
#include "core/tpv_error.h"

#define TPV_JOB_LAYOUT_MAX 100000   /* names in a flat dump's layout */
#define TPV_JOB_LAYOUT_NAME_MAX 256 /* bytes of one of them */
#define TPV_JOB_PARAMS_MAX 100000   /* names in an ONNX candidate's "parameters" */

enum tpv_job_kind { TPV_JOB_SCORE = 0, TPV_JOB_JBR = 1 };

/* A candidate's source.  Digests are "sha256:<64 hex>", "" when absent. */
struct tpv_job_source {
    enum tpv_source_kind kind;
    json_t *spec;                   /* model: the inline spec object (owned), else NULL */
    char spec_blob[TPV_DIGEST_MAX]; /* model: the spec's blob when not inline */
    char weights[TPV_DIGEST_MAX];   /* required for a model, optional for a dump */
    char fit[TPV_DIGEST_MAX];       /* model: the study's fit input set; jacobian: the fit dump */
    char probe[TPV_DIGEST_MAX];     /* model: the probe input set; jacobian: the probe dump */
    char **layout;                  /* jacobian: column names of a flat dump (owned) */
    size_t nlayout;
    char onnx[TPV_DIGEST_MAX];      /* onnx: the ModelProto's blob */
    char **params;                  /* onnx: the request's parameter names (owned), or NULL */
    size_t nparams;
};

struct tpv_job {
    enum tpv_job_kind kind;
    struct tpv_job_source src;
    struct tpv_noise *models; /* the study's noise models (owned), nmodels >= 1 */
    size_t nmodels;
    struct tpv_jbr_params jbr; /* kind jbr (defaults otherwise) */
};

/* Parses a source object as stored (above) into *out.  Errors name the member ("jacobian.fit",
 * "model.spec", "jacobian.layout", "model.onnx", "model.parameters"): TPV_EINVAL for a missing or
 * malformed member, TPV_ENOMEM.
 * On any return release with tpv_job_source_free. */
int tpv_job_source_parse(struct tpv_job_source *out, const json_t *source, struct tpv_err *err);

/* The stored JSON of a source (new reference; NULL on allocation failure).  Absent members are
 * left out, never null. */
json_t *tpv_job_source_json(const struct tpv_job_source *src);

/* A Jacobian candidate that brought its own probe dump (the study then has a probe split). */
bool tpv_job_source_has_probe_dump(const struct tpv_job_source *src);

void tpv_job_source_free(struct tpv_job_source *src); /* NULL is a no-op */

/* Parses the texts the service stores for one job: the candidate's source, the study's noise
 * models (tpv_noise_list_load), the job kind ("score" or "jbr") and its parameters (NULL or the
 * JSON of tpv_jbr_params_json; defaults when NULL).  Errors as the parsers named, with
 * err->field naming the member.  On any return release with tpv_job_free. */
int tpv_job_parse(struct tpv_job *out, const char *source, const char *noise_models,
                  const char *kind, const char *params, struct tpv_err *err);

void tpv_job_free(struct tpv_job *job); /* NULL is a no-op */

#endif
