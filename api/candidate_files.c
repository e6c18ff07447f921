/* candidate_files.c: a parsed candidate source (core/job.h) resolved to local blob paths for the
 * core's tpv_candidate_check / tpv_candidate_score / tpv_jbr_run (see api.h).  Submission and the
 * worker both use it, so what was validated is what runs. */
#include "api/api.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/job.h"
#include "storage/store.h"

static const char *keep_path(struct api_cand_files *cf, const char *digest, const char *field,
                             struct tpv_err *err)
{
    char path[4096];
    if (!digest || store_blob_path(cf->store, digest, path, sizeof path, err) != TPV_OK) {
        tpv_err_set(err, TPV_EINVAL, field, "%s: '%.80s' is not a blob digest", field, digest);
        return NULL;
    }
    if (cf->npaths >= API_CAND_MAX_PATHS) {
        tpv_err_set(err, TPV_EINVAL, field, "too many blobs in one candidate");
        return NULL;
    }
    char *copy = strdup(path);
    if (!copy) {
        tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
        return NULL;
    }
    cf->fields[cf->npaths] = field;
    cf->paths[cf->npaths++] = copy;
    return copy;
}

/* The core's callback for noise-model blobs (variances, masks). */
static const char *blob_path_cb(void *ctx, const char *digest)
{
    struct tpv_err ignored;
    struct api_cand_files *cf = ctx;
    for (int i = 0; i < cf->npaths; i++) {
        char probe[4096];
        if (store_blob_path(cf->store, digest, probe, sizeof probe, &ignored) == TPV_OK &&
            strcmp(probe, cf->paths[i]) == 0)
            return cf->paths[i];
    }
    if (store_blob_stat(cf->store, digest, NULL, &ignored) != TPV_OK)
        return NULL;
    return keep_path(cf, digest, "digest", &ignored);
}

/* The spec of a model source: inline, or read from its blob (one JSON rule for both: duplicate
 * keys refused, as in request bodies). */
static int load_spec(struct api_cand_files *cf, const struct tpv_job_source *src,
                     uint64_t max_spec, struct tpv_err *err)
{
    if (src->spec) {
        cf->spec = json_incref(src->spec);
        return TPV_OK;
    }
    const char *digest = src->spec_blob;
    const char *path = keep_path(cf, digest, "model.spec", err);
    if (!path)
        return err->code;
    uint64_t size = 0;
    if (store_blob_stat(cf->store, digest, &size, err) != TPV_OK)
        return tpv_err_set(err, TPV_EINVAL, "model.spec", "model.spec: blob %s not found", digest);
    if (size > max_spec)
        return tpv_err_set(err, TPV_ETOOLARGE, "model.spec",
                           "model.spec: blob of %llu bytes exceeds the %llu-byte limit for specs",
                           (unsigned long long)size, (unsigned long long)max_spec);
    json_error_t jerr;
    cf->spec = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
    if (!json_is_object(cf->spec))
        return tpv_err_set(err, TPV_EINVAL, "model.spec",
                           "model.spec: blob %s is not a JSON object (%s, line %d)", digest,
                           jerr.text, jerr.line);
    return TPV_OK;
}

int api_cand_files_load(struct api_cand_files *cf, struct store *st,
                        const struct tpv_job_source *src, uint64_t max_spec, struct tpv_err *err)
{
    memset(cf, 0, sizeof *cf);
    cf->store = st;
    cf->files.blob_path = blob_path_cb;
    cf->files.blob_ctx = cf;
    cf->files.source = src->kind;
    if (src->weights[0] && !(cf->files.weights = keep_path(cf, src->weights,
                                                           src->kind == TPV_SOURCE_MODEL
                                                               ? "model.weights" : "weights",
                                                           err)))
        return err->code;
    if (src->kind == TPV_SOURCE_MODEL || src->kind == TPV_SOURCE_ONNX) {
        int rc = TPV_OK;
        if (src->kind == TPV_SOURCE_MODEL)
            rc = load_spec(cf, src, max_spec, err);
        else if (!(cf->files.onnx = keep_path(cf, src->onnx, "model.onnx", err)))
            return err->code;
        if (rc != TPV_OK)
            return rc;
        cf->files.spec = cf->spec;
        /* The parameter names stay owned by src, which outlives cf. */
        cf->files.params = (const char *const *)src->params;
        cf->files.nparams = src->nparams;
        if (src->fit[0] && !(cf->files.fit_inputs = keep_path(cf, src->fit, "inputs.fit", err)))
            return err->code;
        if (src->probe[0] &&
            !(cf->files.probe_inputs = keep_path(cf, src->probe, "inputs.probe", err)))
            return err->code;
        return TPV_OK;
    }
    if (src->fit[0] && !(cf->files.jac_fit = keep_path(cf, src->fit, "jacobian.fit", err)))
        return err->code;
    if (src->probe[0] && !(cf->files.jac_probe = keep_path(cf, src->probe, "jacobian.probe", err)))
        return err->code;
    /* The layout strings stay owned by src, which outlives cf. */
    cf->files.layout = (const char *const *)src->layout;
    cf->files.nlayout = src->nlayout;
    return TPV_OK;
}

void api_cand_files_free(struct api_cand_files *cf)
{
    if (!cf)
        return;
    for (int i = 0; i < cf->npaths; i++)
        free(cf->paths[i]);
    json_decref(cf->spec);
    memset(cf, 0, sizeof *cf);
}

void api_cand_files_explain(const struct api_cand_files *cf, struct tpv_err *err)
{
    for (int i = 0; i < cf->npaths; i++) {
        char *at = strstr(err->message, cf->paths[i]);
        if (!at)
            continue;
        char rest[TPV_ERR_MSG_MAX];
        snprintf(rest, sizeof rest, "%s", at + strlen(cf->paths[i]));
        size_t head = (size_t)(at - err->message);
        snprintf(at, sizeof err->message - head, "%s%s", cf->fields[i], rest);
        if (strncmp(err->field, "noise_models", 12) != 0)
            snprintf(err->field, sizeof err->field, "%s", cf->fields[i]);
        return;
    }
}
