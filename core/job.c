/* job.c: a stored job parsed once into plain structs (see job.h). */
#include "core/job.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A digest member of obj: *out gets it ("" when absent or null, which earlier versions stored for
 * an absent probe).  `field` names it in errors. */
static int get_digest(const json_t *obj, const char *key, const char *field, bool required,
                      char out[TPV_DIGEST_MAX], struct tpv_err *err)
{
    const json_t *v = json_object_get(obj, key);
    out[0] = '\0';
    if (!v || json_is_null(v)) {
        if (required)
            return tpv_err_set(err, TPV_EINVAL, field, "%s is required", field);
        return TPV_OK;
    }
    if (!tpv_digest_valid(json_string_value(v)))
        return tpv_err_set(err, TPV_EINVAL, field,
                           "%s must be a blob digest \"sha256:<64 lowercase hex>\"", field);
    memcpy(out, json_string_value(v), strlen(json_string_value(v)) + 1);
    return TPV_OK;
}

/* The study's input sets, which model and ONNX candidates are scored on. */
static int parse_inputs(struct tpv_job_source *out, const json_t *src, struct tpv_err *err)
{
    const json_t *inputs = json_object_get(src, "inputs");
    if (inputs && !json_is_object(inputs))
        return tpv_err_set(err, TPV_EINVAL, "inputs", "inputs must be an object");
    int rc = get_digest(inputs, "fit", "inputs.fit", false, out->fit, err);
    return rc == TPV_OK ? get_digest(inputs, "probe", "inputs.probe", false, out->probe, err) : rc;
}

static int parse_model(struct tpv_job_source *out, const json_t *src, struct tpv_err *err)
{
    out->kind = TPV_SOURCE_MODEL;
    const json_t *spec = json_object_get(src, "spec");
    int rc;
    if (json_is_object(spec))
        out->spec = json_incref((json_t *)spec);
    else if ((rc = get_digest(src, "spec", "model.spec", true, out->spec_blob, err)) != TPV_OK)
        return tpv_err_set(err, TPV_EINVAL, "model.spec",
                           "model.spec must be an object or a blob digest");
    if ((rc = get_digest(src, "weights", "model.weights", true, out->weights, err)) != TPV_OK)
        return rc;
    return parse_inputs(out, src, err);
}

/* A list of 1..TPV_JOB_LAYOUT_MAX tensor names (a flat dump's layout, an ONNX candidate's
 * parameters) into *names (owned by the source); `field` names it in errors. */
static int parse_names(char ***names, size_t *count, const json_t *list, const char *field,
                       struct tpv_err *err)
{
    size_t n = json_array_size(list);
    if (!json_is_array(list) || n == 0 || n > TPV_JOB_LAYOUT_MAX)
        return tpv_err_set(err, TPV_EINVAL, field,
                           "%s must be an array of 1 to %d tensor names", field,
                           TPV_JOB_LAYOUT_MAX);
    *names = calloc(n, sizeof **names);
    if (!*names)
        return tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
    for (size_t i = 0; i < n; i++) {
        const json_t *v = json_array_get(list, i);
        size_t len = json_string_length(v);
        if (!json_is_string(v) || len == 0 || len > TPV_JOB_LAYOUT_NAME_MAX) {
            return tpv_err_set(err, TPV_EINVAL, field,
                               "%s[%zu] must be a tensor name (1 to %d bytes)", field, i,
                               TPV_JOB_LAYOUT_NAME_MAX);
        }
        if (!((*names)[i] = strdup(json_string_value(v))))
            return tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
        *count = i + 1;
    }
    return TPV_OK;
}

static int parse_layout(struct tpv_job_source *out, const json_t *layout, struct tpv_err *err)
{
    return parse_names(&out->layout, &out->nlayout, layout, "jacobian.layout", err);
}

static int parse_onnx(struct tpv_job_source *out, const json_t *src, struct tpv_err *err)
{
    out->kind = TPV_SOURCE_ONNX;
    int rc = get_digest(src, "onnx", "model.onnx", true, out->onnx, err);
    const json_t *params = json_object_get(src, "parameters");
    if (rc == TPV_OK && params && !json_is_null(params))
        rc = parse_names(&out->params, &out->nparams, params, "model.parameters", err);
    return rc == TPV_OK ? parse_inputs(out, src, err) : rc;
}

static int parse_jacobian(struct tpv_job_source *out, const json_t *src, struct tpv_err *err)
{
    out->kind = TPV_SOURCE_JACOBIAN;
    int rc = get_digest(src, "fit", "jacobian.fit", true, out->fit, err);
    if (rc == TPV_OK)
        rc = get_digest(src, "probe", "jacobian.probe", false, out->probe, err);
    if (rc == TPV_OK)
        rc = get_digest(src, "weights", "weights", false, out->weights, err);
    const json_t *layout = json_object_get(src, "layout");
    if (rc == TPV_OK && layout && !json_is_null(layout))
        rc = parse_layout(out, layout, err);
    return rc;
}

int tpv_job_source_parse(struct tpv_job_source *out, const json_t *source, struct tpv_err *err)
{
    memset(out, 0, sizeof *out);
    const char *kind = json_string_value(json_object_get(source, "kind"));
    if (!json_is_object(source) || !kind)
        return tpv_err_set(err, TPV_EINVAL, "source",
                           "a candidate source is an object with a kind");
    if (strcmp(kind, "model") == 0)
        return parse_model(out, source, err);
    if (strcmp(kind, "jacobian") == 0)
        return parse_jacobian(out, source, err);
    if (strcmp(kind, "onnx") == 0)
        return parse_onnx(out, source, err);
    return tpv_err_set(err, TPV_EINVAL, "source", "unknown candidate source kind '%.32s'", kind);
}

/* Sets key to a digest unless it is "" (absent members are left out, never null). */
static int set_digest(json_t *obj, const char *key, const char *digest)
{
    return digest[0] ? json_object_set_new(obj, key, json_string(digest)) : 0;
}

/* Sets key to a list of names unless there are none. */
static int set_names(json_t *obj, const char *key, char *const *names, size_t n)
{
    if (n == 0)
        return 0;
    json_t *list = json_array();
    int bad = !list;
    for (size_t i = 0; list && i < n; i++)
        bad |= json_array_append_new(list, json_string(names[i]));
    return json_object_set_new(obj, key, list) | bad;
}

static int set_inputs(json_t *obj, const struct tpv_job_source *src)
{
    json_t *inputs = json_object();
    int bad = !inputs || set_digest(inputs, "fit", src->fit) ||
              set_digest(inputs, "probe", src->probe);
    return json_object_set_new(obj, "inputs", inputs) | bad;
}

json_t *tpv_job_source_json(const struct tpv_job_source *src)
{
    json_t *j = json_pack("{s:s}", "kind", tpv_source_kind_name(src->kind));
    int bad = !j;
    if (!bad && src->kind == TPV_SOURCE_MODEL) {
        bad |= src->spec ? json_object_set(j, "spec", src->spec)
                         : set_digest(j, "spec", src->spec_blob);
        bad |= set_digest(j, "weights", src->weights);
        bad |= set_inputs(j, src);
    } else if (!bad && src->kind == TPV_SOURCE_ONNX) {
        bad |= set_digest(j, "onnx", src->onnx);
        bad |= set_names(j, "parameters", src->params, src->nparams);
        bad |= set_inputs(j, src);
    } else if (!bad) {
        bad |= set_digest(j, "fit", src->fit) || set_digest(j, "probe", src->probe) ||
               set_digest(j, "weights", src->weights);
        bad |= set_names(j, "layout", src->layout, src->nlayout);
    }
    if (bad) {
        json_decref(j);
        return NULL;
    }
    return j;
}

bool tpv_job_source_has_probe_dump(const struct tpv_job_source *src)
{
    return src->kind == TPV_SOURCE_JACOBIAN && src->probe[0];
}

void tpv_job_source_free(struct tpv_job_source *src)
{
    if (!src)
        return;
    json_decref(src->spec);
    for (size_t i = 0; src->layout && i < src->nlayout; i++)
        free(src->layout[i]);
    free(src->layout);
    for (size_t i = 0; src->params && i < src->nparams; i++)
        free(src->params[i]);
    free(src->params);
    memset(src, 0, sizeof *src);
}

/* A stored JSON text: one rule for every JSON the service reads (duplicate keys refused). */
static int load_text(const char *text, const char *field, json_t **out, struct tpv_err *err)
{
    json_error_t jerr;
    *out = text ? json_loads(text, JSON_REJECT_DUPLICATES, &jerr) : NULL;
    if (!*out)
        return tpv_err_set(err, TPV_EINVAL, field, "%s is not valid JSON (%s)", field,
                           text ? jerr.text : "missing");
    return TPV_OK;
}

int tpv_job_parse(struct tpv_job *out, const char *source, const char *noise_models,
                  const char *kind, const char *params, struct tpv_err *err)
{
    memset(out, 0, sizeof *out);
    tpv_jbr_params_parse(NULL, &out->jbr, err);
    if (!kind || (strcmp(kind, "score") != 0 && strcmp(kind, "jbr") != 0))
        return tpv_err_set(err, TPV_EINVAL, "kind", "unknown job kind '%.32s'", kind ? kind : "");
    out->kind = strcmp(kind, "jbr") == 0 ? TPV_JOB_JBR : TPV_JOB_SCORE;
    json_t *src = NULL, *par = NULL;
    int rc = load_text(source, "source", &src, err);
    if (rc == TPV_OK)
        rc = tpv_job_source_parse(&out->src, src, err);
    if (rc == TPV_OK)
        rc = tpv_noise_list_load(noise_models, &out->models, &out->nmodels, err);
    if (rc == TPV_OK && out->kind == TPV_JOB_JBR && params)
        rc = load_text(params, "params", &par, err);
    if (rc == TPV_OK && par)
        rc = tpv_jbr_params_parse(par, &out->jbr, err);
    json_decref(src);
    json_decref(par);
    return rc;
}

void tpv_job_free(struct tpv_job *job)
{
    if (!job)
        return;
    tpv_job_source_free(&job->src);
    free(job->models);
    memset(job, 0, sizeof *job);
}
