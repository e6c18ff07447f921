/* candidate_files.c: a candidate's stored source JSON resolved to local blob paths for the core's
 * tpv_candidate_check / tpv_candidate_score (see api.h).  Submission and the worker both use it,
 * so what was validated is what runs. */
#include "api/api.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

/* Optional digest member `key` of obj; NULL when absent or null. */
static const char *opt_digest(const json_t *obj, const char *key)
{
    return json_string_value(json_object_get(obj, key));
}

static int load_spec(struct api_cand_files *cf, const json_t *spec, uint64_t max_spec,
                     struct tpv_err *err)
{
    if (json_is_object(spec)) {
        cf->spec = json_incref((json_t *)spec);
        return TPV_OK;
    }
    const char *digest = json_string_value(spec);
    const char *path = digest ? keep_path(cf, digest, "model.spec", err) : NULL;
    if (!path)
        return digest ? err->code
                      : tpv_err_set(err, TPV_EINVAL, "model.spec",
                                    "model.spec must be an object or a blob digest");
    uint64_t size = 0;
    if (store_blob_stat(cf->store, digest, &size, err) != TPV_OK)
        return tpv_err_set(err, TPV_EINVAL, "model.spec", "model.spec: blob %s not found", digest);
    if (size > max_spec)
        return tpv_err_set(err, TPV_ETOOLARGE, "model.spec",
                           "model.spec: blob of %llu bytes exceeds the %llu-byte limit for specs",
                           (unsigned long long)size, (unsigned long long)max_spec);
    json_error_t jerr;
    cf->spec = json_load_file(path, 0, &jerr);
    if (!json_is_object(cf->spec))
        return tpv_err_set(err, TPV_EINVAL, "model.spec",
                           "model.spec: blob %s is not a JSON object (%s, line %d)", digest,
                           jerr.text, jerr.line);
    return TPV_OK;
}

int api_cand_files_load(struct api_cand_files *cf, struct store *st, const json_t *source,
                        uint64_t max_spec, struct tpv_err *err)
{
    memset(cf, 0, sizeof *cf);
    cf->store = st;
    cf->files.blob_path = blob_path_cb;
    cf->files.blob_ctx = cf;
    const char *kind = json_string_value(json_object_get(source, "kind"));
    const char *d;
    if (!kind)
        return tpv_err_set(err, TPV_EINTERNAL, "source", "candidate source without a kind");
    if ((d = opt_digest(source, "weights")) && !(cf->files.weights = keep_path(cf, d, "weights", err)))
        return err->code;
    if (strcmp(kind, "model") == 0) {
        cf->files.source = TPV_SOURCE_MODEL;
        int rc = load_spec(cf, json_object_get(source, "spec"), max_spec, err);
        if (rc != TPV_OK)
            return rc;
        cf->files.spec = cf->spec;
        json_t *inputs = json_object_get(source, "inputs");
        if ((d = opt_digest(inputs, "fit")) &&
            !(cf->files.fit_inputs = keep_path(cf, d, "inputs.fit", err)))
            return err->code;
        if ((d = opt_digest(inputs, "probe")) &&
            !(cf->files.probe_inputs = keep_path(cf, d, "inputs.probe", err)))
            return err->code;
        return TPV_OK;
    }
    cf->files.source = TPV_SOURCE_JACOBIAN;
    if ((d = opt_digest(source, "fit")) && !(cf->files.jac_fit = keep_path(cf, d, "jacobian.fit", err)))
        return err->code;
    if ((d = opt_digest(source, "probe")) &&
        !(cf->files.jac_probe = keep_path(cf, d, "jacobian.probe", err)))
        return err->code;
    json_t *layout = json_object_get(source, "layout");
    size_t n = json_array_size(layout);
    if (n) {
        cf->layout = calloc(n, sizeof *cf->layout);
        if (!cf->layout)
            return tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
        for (size_t i = 0; i < n; i++) {
            const char *name = json_string_value(json_array_get(layout, i));
            if (!name || !(cf->layout[i] = strdup(name))) {
                cf->files.nlayout = i; /* what free() releases */
                return tpv_err_set(err, TPV_EINVAL, "jacobian.layout",
                                   "jacobian.layout[%zu] must be a string", i);
            }
        }
        cf->files.layout = (const char *const *)cf->layout;
        cf->files.nlayout = n;
    }
    return TPV_OK;
}

void api_cand_files_free(struct api_cand_files *cf)
{
    if (!cf)
        return;
    for (int i = 0; i < cf->npaths; i++)
        free(cf->paths[i]);
    for (size_t i = 0; cf->layout && i < cf->files.nlayout; i++)
        free(cf->layout[i]);
    free(cf->layout);
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
