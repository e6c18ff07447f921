/* noise.c: parsing and JSON of noise models (see noise.h).  Every parameter is checked here so
 * that a study with a bad model is refused at creation with the field named. */
#include "core/noise.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const kind_names[] = {
    [TPV_NOISE_ISOTROPIC] = "isotropic", [TPV_NOISE_QUANTIZATION] = "quantization",
    [TPV_NOISE_SGD] = "sgd",             [TPV_NOISE_SGD_CURVATURE] = "sgd_curvature",
    [TPV_NOISE_LABEL] = "label",         [TPV_NOISE_DIAGONAL] = "diagonal",
    [TPV_NOISE_PRUNE] = "prune",
};
static const char *const scope_names[] = {
    [TPV_SCOPE_GLOBAL] = "global", [TPV_SCOPE_PER_TENSOR] = "per_tensor",
    [TPV_SCOPE_PER_CHANNEL] = "per_channel",
};
static const char *const estimator_names[] = {
    [TPV_EST_AUTO] = "auto", [TPV_EST_EXACT] = "exact", [TPV_EST_HUTCHINSON] = "hutchinson",
    [TPV_EST_HUTCHPP] = "hutchpp", [TPV_EST_EMPIRICAL] = "empirical",
};
#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

const char *tpv_noise_kind_name(enum tpv_noise_kind kind)
{
    return (size_t)kind < COUNT(kind_names) ? kind_names[kind] : "unknown";
}

const char *tpv_estimator_name(enum tpv_estimator est)
{
    return (size_t)est < COUNT(estimator_names) ? estimator_names[est] : "unknown";
}

/* Keys each kind accepts besides the common ones; NULL-separated lists. */
static const char *const common_keys[] = { "name", "kind", "estimator", "target_rel_error",
                                           "max_samples", "seed", "check", NULL };
static const char *const kind_keys[][6] = {
    [TPV_NOISE_ISOTROPIC] = { "sigma", NULL },
    [TPV_NOISE_QUANTIZATION] = { "bits", "scope", NULL },
    [TPV_NOISE_SGD] = { "lr", "batch_size", "residual_variance", NULL },
    [TPV_NOISE_SGD_CURVATURE] = { "lr", "batch_size", NULL },
    [TPV_NOISE_LABEL] = { "sigma", "sigma_rel", "rcond", "ridge", "ridge_rel", NULL },
    [TPV_NOISE_DIAGONAL] = { "variances", NULL },
    [TPV_NOISE_PRUNE] = { "mask", "rule", "fraction", "scope", NULL },
};

static bool key_in(const char *key, const char *const *list)
{
    for (; *list; list++)
        if (strcmp(key, *list) == 0)
            return true;
    return false;
}

struct parse_ctx {
    const json_t *obj;
    const char *field;
    struct tpv_err *err;
    char path[TPV_ERR_FIELD_MAX];
};

static const char *path_of(struct parse_ctx *pc, const char *key)
{
    snprintf(pc->path, sizeof pc->path, "%s.%s", pc->field, key);
    return pc->path;
}

/* Reads number `key` into *out; `required` or keeps the default.  Range: lo < v (or lo <= v when
 * lo_inclusive), v <= hi. */
static int get_number(struct parse_ctx *pc, const char *key, bool required, double lo,
                      bool lo_inclusive, double hi, double *out)
{
    const json_t *v = json_object_get(pc->obj, key);
    if (!v) {
        if (required)
            return tpv_err_set(pc->err, TPV_EINVAL, path_of(pc, key), "%s is required",
                               path_of(pc, key));
        return TPV_OK;
    }
    if (!json_is_number(v))
        return tpv_err_set(pc->err, TPV_EINVAL, path_of(pc, key), "%s must be a number",
                           path_of(pc, key));
    double d = json_number_value(v);
    if (!isfinite(d) || d > hi || (lo_inclusive ? d < lo : d <= lo))
        return tpv_err_set(pc->err, TPV_EINVAL, path_of(pc, key), "%s = %g is outside %c%g, %g]",
                           path_of(pc, key), d, lo_inclusive ? '[' : '(', lo, hi);
    *out = d;
    return TPV_OK;
}

/* An integer parameter: a JSON number without a fractional part (3 or 3.0; 1.5 is refused), in
 * [lo, hi].  One rule for every integer of a noise model. */
static int get_integer(struct parse_ctx *pc, const char *key, bool required, double lo, double hi,
                       double *out)
{
    double v = *out;
    int rc = get_number(pc, key, required, lo, true, hi, &v);
    if (rc != TPV_OK)
        return rc;
    if (v != floor(v))
        return tpv_err_set(pc->err, TPV_EINVAL, path_of(pc, key), "%s must be an integer, got %g",
                           path_of(pc, key), v);
    *out = v;
    return TPV_OK;
}

static int get_choice(struct parse_ctx *pc, const char *key, const char *const *names, size_t n,
                      size_t allowed, int *out)
{
    const json_t *v = json_object_get(pc->obj, key);
    if (!v)
        return TPV_OK;
    const char *s = json_string_value(v);
    for (size_t i = 0; s && i < n && i < allowed; i++) {
        if (names[i] && strcmp(s, names[i]) == 0) {
            *out = (int)i;
            return TPV_OK;
        }
    }
    char choices[128] = "";
    for (size_t i = 0; i < n && i < allowed; i++) {
        size_t used = strlen(choices);
        snprintf(choices + used, sizeof choices - used, "%s%s", i ? ", " : "", names[i]);
    }
    return tpv_err_set(pc->err, TPV_EINVAL, path_of(pc, key), "%s must be one of: %s",
                       path_of(pc, key), choices);
}

bool tpv_digest_valid(const char *s)
{
    if (!s || strncmp(s, "sha256:", 7) != 0 || strlen(s) != 7 + 64)
        return false;
    for (const char *h = s + 7; *h; h++)
        if (!isxdigit((unsigned char)*h) || isupper((unsigned char)*h))
            return false;
    return true;
}

static int get_digest(struct parse_ctx *pc, const char *key, bool required, char *out)
{
    const json_t *v = json_object_get(pc->obj, key);
    if (!v) {
        if (required)
            return tpv_err_set(pc->err, TPV_EINVAL, path_of(pc, key), "%s is required",
                               path_of(pc, key));
        return TPV_OK;
    }
    if (!tpv_digest_valid(json_string_value(v)))
        return tpv_err_set(pc->err, TPV_EINVAL, path_of(pc, key),
                           "%s must be a blob digest \"sha256:<64 lowercase hex>\"",
                           path_of(pc, key));
    snprintf(out, TPV_DIGEST_MAX, "%s", json_string_value(v));
    return TPV_OK;
}

static bool name_valid(const char *s)
{
    size_t len = s ? strlen(s) : 0;
    if (len == 0 || len >= TPV_NOISE_NAME_MAX)
        return false;
    for (size_t i = 0; i < len; i++)
        if (!isalnum((unsigned char)s[i]) && !strchr("_-.", s[i]))
            return false;
    return true;
}

/* "check": "empirical" and the estimator empirical exist for the kinds whose perturbation can
 * be applied to the weights (isotropic, quantization, prune, sgd); the others are refused here,
 * at study creation, naming the field. */
static int parse_empirical(struct parse_ctx *pc, struct tpv_noise *nm)
{
    const json_t *check = json_object_get(pc->obj, "check");
    if (check) {
        if (!json_is_string(check) || strcmp(json_string_value(check), "empirical") != 0)
            return tpv_err_set(pc->err, TPV_EINVAL, path_of(pc, "check"),
                               "%s must be \"empirical\"", path_of(pc, "check"));
        if (nm->estimator == TPV_EST_EMPIRICAL)
            return tpv_err_set(pc->err, TPV_EINVAL, path_of(pc, "check"),
                               "%s: the estimator is already empirical; the check compares a "
                               "first-order estimator with it", path_of(pc, "check"));
        nm->check_empirical = true;
    }
    const char *key = check ? "check" : "estimator";
    if ((check || nm->estimator == TPV_EST_EMPIRICAL) && !tpv_noise_kind_has_empirical(nm->kind))
        return tpv_err_set(pc->err, TPV_EINVAL, path_of(pc, key),
                           "%s: kind %s has no empirical value (it exists for isotropic, "
                           "quantization, prune and sgd)", path_of(pc, key),
                           tpv_noise_kind_name(nm->kind));
    return TPV_OK;
}

static int parse_common(struct parse_ctx *pc, struct tpv_noise *nm)
{
    const char *name = json_string_value(json_object_get(pc->obj, "name"));
    if (!name_valid(name))
        return tpv_err_set(pc->err, TPV_EINVAL, path_of(pc, "name"),
                           "%s must be 1-63 characters of letters, digits, '_', '-', '.'",
                           path_of(pc, "name"));
    snprintf(nm->name, sizeof nm->name, "%s", name);
    const char *kind = json_string_value(json_object_get(pc->obj, "kind"));
    int k = -1;
    for (size_t i = 0; kind && i < COUNT(kind_names); i++)
        if (strcmp(kind, kind_names[i]) == 0)
            k = (int)i;
    if (k < 0)
        return tpv_err_set(pc->err, TPV_EINVAL, path_of(pc, "kind"),
                           "%s must be one of: isotropic, quantization, sgd, sgd_curvature, "
                           "label, diagonal, prune", path_of(pc, "kind"));
    nm->kind = (enum tpv_noise_kind)k;

    const char *key;
    const json_t *value;
    json_object_foreach((json_t *)pc->obj, key, value) {
        if (!key_in(key, common_keys) && !key_in(key, kind_keys[nm->kind]))
            return tpv_err_set(pc->err, TPV_EINVAL, path_of(pc, key),
                               "%s: unknown parameter for kind %s", path_of(pc, key), kind);
    }
    int est = TPV_EST_AUTO;
    double max_samples = 1000, seed = 0;
    int rc = get_choice(pc, "estimator", estimator_names, COUNT(estimator_names),
                        COUNT(estimator_names), &est);
    if (rc == TPV_OK)
        rc = get_number(pc, "target_rel_error", false, 0, false, 1, &nm->target_rel_error);
    if (rc == TPV_OK)
        rc = get_integer(pc, "max_samples", false, 1, 1e7, &max_samples);
    if (rc == TPV_OK)
        rc = get_integer(pc, "seed", false, 0, 9007199254740991.0, &seed);
    nm->estimator = (enum tpv_estimator)est;
    nm->max_samples = (unsigned long)max_samples;
    nm->seed = (unsigned long long)seed;
    if (rc == TPV_OK)
        rc = parse_empirical(pc, nm);
    return rc;
}

static int parse_kind(struct parse_ctx *pc, struct tpv_noise *nm)
{
    double bits = 0;
    int scope = TPV_SCOPE_GLOBAL, rc;
    switch (nm->kind) {
    case TPV_NOISE_ISOTROPIC:
        return get_number(pc, "sigma", true, 0, false, 1e6, &nm->sigma);
    case TPV_NOISE_QUANTIZATION:
        rc = get_integer(pc, "bits", true, 1, 32, &bits);
        if (rc == TPV_OK)
            rc = get_choice(pc, "scope", scope_names, COUNT(scope_names), 3, &scope);
        nm->bits = (int)bits;
        nm->scope = (enum tpv_scope)scope;
        return rc;
    case TPV_NOISE_SGD:
        rc = get_number(pc, "residual_variance", false, 0, false, 1e12, &nm->residual_variance);
        if (rc != TPV_OK)
            return rc;
        __attribute__((fallthrough)); /* lr and batch_size as for sgd_curvature */
    case TPV_NOISE_SGD_CURVATURE:
        rc = get_number(pc, "lr", true, 0, false, 1e6, &nm->lr);
        if (rc == TPV_OK)
            rc = get_integer(pc, "batch_size", true, 1, 1e9, &nm->batch_size);
        return rc;
    case TPV_NOISE_LABEL:
        /* sigma is absolute; sigma_rel scales with the model's outputs (sigma = sigma_rel x the
         * mean |f(x)| over the fit set, the reference code's convention for logits). */
        if (json_object_get(pc->obj, "sigma") && json_object_get(pc->obj, "sigma_rel"))
            return tpv_err_set(pc->err, TPV_EINVAL, path_of(pc, "sigma_rel"),
                               "%s: give one of sigma (absolute) and sigma_rel (relative to the "
                               "mean |output| over the fit set), not both", pc->field);
        if (!json_object_get(pc->obj, "sigma") && !json_object_get(pc->obj, "sigma_rel"))
            return tpv_err_set(pc->err, TPV_EINVAL, path_of(pc, "sigma"),
                               "%s is required (or sigma_rel, relative to the mean |output| over "
                               "the fit set)", path_of(pc, "sigma"));
        rc = get_number(pc, "sigma", false, 0, false, 1e6, &nm->sigma);
        if (rc == TPV_OK)
            rc = get_number(pc, "sigma_rel", false, 0, false, 1e6, &nm->sigma_rel);
        if (rc == TPV_OK)
            rc = get_number(pc, "rcond", false, 0, true, 1, &nm->rcond);
        if (rc == TPV_OK)
            rc = get_number(pc, "ridge", false, 0, true, 1e300, &nm->ridge);
        if (rc == TPV_OK)
            rc = get_number(pc, "ridge_rel", false, 0, true, 1e300, &nm->ridge_rel);
        if (rc == TPV_OK && nm->ridge > 0 && nm->ridge_rel > 0)
            rc = tpv_err_set(pc->err, TPV_EINVAL, path_of(pc, "ridge_rel"),
                             "%s: give one of ridge and ridge_rel, not both", pc->field);
        return rc;
    case TPV_NOISE_DIAGONAL:
        return get_digest(pc, "variances", true, nm->variances);
    case TPV_NOISE_PRUNE: {
        const json_t *rule = json_object_get(pc->obj, "rule");
        bool has_mask = json_object_get(pc->obj, "mask") != NULL;
        if (has_mask == (rule != NULL))
            return tpv_err_set(pc->err, TPV_EINVAL, path_of(pc, "mask"),
                               "%s needs exactly one of mask (a blob) and rule", pc->field);
        if (has_mask) {
            if (json_object_get(pc->obj, "fraction") || json_object_get(pc->obj, "scope"))
                return tpv_err_set(pc->err, TPV_EINVAL, path_of(pc, "fraction"),
                                   "%s: fraction and scope go with rule, not mask", pc->field);
            return get_digest(pc, "mask", true, nm->mask);
        }
        if (!json_is_string(rule) || strcmp(json_string_value(rule), "magnitude") != 0)
            return tpv_err_set(pc->err, TPV_EINVAL, path_of(pc, "rule"),
                               "%s must be \"magnitude\"", path_of(pc, "rule"));
        nm->prune_rule_magnitude = true;
        rc = get_number(pc, "fraction", true, 0, true, 1, &nm->fraction);
        if (rc == TPV_OK)
            rc = get_choice(pc, "scope", scope_names, COUNT(scope_names), 2, &scope);
        nm->scope = (enum tpv_scope)scope;
        return rc;
    }
    }
    return tpv_err_set(pc->err, TPV_EINTERNAL, pc->field, "unhandled noise kind");
}

int tpv_noise_parse(struct tpv_noise *out, const json_t *obj, const char *field,
                    struct tpv_err *err)
{
    struct parse_ctx pc = { .obj = obj, .field = field, .err = err };
    memset(out, 0, sizeof *out);
    out->residual_variance = 1.0;
    out->rcond = 1e-10;
    out->target_rel_error = 0.01;
    if (!json_is_object(obj))
        return tpv_err_set(err, TPV_EINVAL, field, "%s must be an object", field);
    int rc = parse_common(&pc, out);
    if (rc == TPV_OK)
        rc = parse_kind(&pc, out);
    return rc;
}

int tpv_noise_list_parse(const json_t *array, struct tpv_noise **out, size_t *count,
                         struct tpv_err *err)
{
    *out = NULL;
    *count = 0;
    if (!json_is_array(array) || json_array_size(array) == 0 ||
        json_array_size(array) > TPV_NOISE_MODELS_MAX)
        return tpv_err_set(err, TPV_EINVAL, "noise_models",
                           "noise_models must be an array of 1 to %d noise models",
                           TPV_NOISE_MODELS_MAX);
    size_t n = json_array_size(array);
    struct tpv_noise *models = calloc(n, sizeof *models);
    if (!models)
        return tpv_err_set(err, TPV_ENOMEM, NULL, "out of memory");
    for (size_t i = 0; i < n; i++) {
        char field[48]; /* "noise_models[" + any size_t + "]" */
        snprintf(field, sizeof field, "noise_models[%zu]", i);
        int rc = tpv_noise_parse(&models[i], json_array_get(array, i), field, err);
        for (size_t j = 0; rc == TPV_OK && j < i; j++)
            if (strcmp(models[j].name, models[i].name) == 0)
                rc = tpv_err_set(err, TPV_EINVAL, field, "%s: name '%s' is used twice", field,
                                 models[i].name);
        if (rc != TPV_OK) {
            free(models);
            return rc;
        }
    }
    *out = models;
    *count = n;
    return TPV_OK;
}

int tpv_noise_list_load(const char *text, struct tpv_noise **out, size_t *count,
                        struct tpv_err *err)
{
    *out = NULL;
    *count = 0;
    json_error_t jerr;
    json_t *array = text ? json_loads(text, JSON_REJECT_DUPLICATES, &jerr) : NULL;
    if (!array)
        return tpv_err_set(err, TPV_EINVAL, "noise_models", "noise_models is not valid JSON (%s)",
                           text ? jerr.text : "missing");
    int rc = tpv_noise_list_parse(array, out, count, err);
    json_decref(array);
    return rc;
}

const struct tpv_noise *tpv_noise_find(const struct tpv_noise *models, size_t n, const char *name)
{
    for (size_t i = 0; name && i < n; i++)
        if (strcmp(models[i].name, name) == 0)
            return &models[i];
    return NULL;
}

json_t *tpv_noise_to_json(const struct tpv_noise *nm)
{
    json_t *j = json_pack("{s:s,s:s}", "name", nm->name, "kind", tpv_noise_kind_name(nm->kind));
    if (!j)
        return NULL;
    switch (nm->kind) {
    case TPV_NOISE_ISOTROPIC:
        json_object_set_new(j, "sigma", json_real(nm->sigma));
        break;
    case TPV_NOISE_QUANTIZATION:
        json_object_set_new(j, "bits", json_integer(nm->bits));
        json_object_set_new(j, "scope", json_string(scope_names[nm->scope]));
        break;
    case TPV_NOISE_SGD:
        json_object_set_new(j, "residual_variance", json_real(nm->residual_variance));
        __attribute__((fallthrough));
    case TPV_NOISE_SGD_CURVATURE:
        json_object_set_new(j, "lr", json_real(nm->lr));
        json_object_set_new(j, "batch_size", json_real(nm->batch_size));
        break;
    case TPV_NOISE_LABEL:
        if (nm->sigma_rel > 0)
            json_object_set_new(j, "sigma_rel", json_real(nm->sigma_rel));
        else
            json_object_set_new(j, "sigma", json_real(nm->sigma));
        json_object_set_new(j, "rcond", json_real(nm->rcond));
        json_object_set_new(j, "ridge", json_real(nm->ridge));
        json_object_set_new(j, "ridge_rel", json_real(nm->ridge_rel));
        break;
    case TPV_NOISE_DIAGONAL:
        json_object_set_new(j, "variances", json_string(nm->variances));
        break;
    case TPV_NOISE_PRUNE:
        if (nm->prune_rule_magnitude) {
            json_object_set_new(j, "rule", json_string("magnitude"));
            json_object_set_new(j, "fraction", json_real(nm->fraction));
            json_object_set_new(j, "scope", json_string(scope_names[nm->scope]));
        } else {
            json_object_set_new(j, "mask", json_string(nm->mask));
        }
        break;
    }
    json_object_set_new(j, "estimator", json_string(tpv_estimator_name(nm->estimator)));
    json_object_set_new(j, "target_rel_error", json_real(nm->target_rel_error));
    json_object_set_new(j, "max_samples", json_integer((json_int_t)nm->max_samples));
    json_object_set_new(j, "seed", json_integer((json_int_t)nm->seed));
    if (nm->check_empirical)
        json_object_set_new(j, "check", json_string("empirical"));
    return j;
}

bool tpv_noise_needs_outputs(const struct tpv_noise *nm)
{
    return nm->kind == TPV_NOISE_LABEL && nm->sigma_rel > 0;
}

bool tpv_noise_needs_weights(const struct tpv_noise *nm)
{
    return nm->kind == TPV_NOISE_QUANTIZATION || nm->kind == TPV_NOISE_PRUNE;
}

bool tpv_noise_needs_names(const struct tpv_noise *nm)
{
    return nm->kind == TPV_NOISE_DIAGONAL || nm->kind == TPV_NOISE_PRUNE ||
           (nm->kind == TPV_NOISE_QUANTIZATION && nm->scope != TPV_SCOPE_GLOBAL);
}

bool tpv_noise_kind_has_empirical(enum tpv_noise_kind kind)
{
    return kind == TPV_NOISE_ISOTROPIC || kind == TPV_NOISE_QUANTIZATION ||
           kind == TPV_NOISE_PRUNE || kind == TPV_NOISE_SGD;
}

bool tpv_noise_needs_model(const struct tpv_noise *nm)
{
    return nm->estimator == TPV_EST_EMPIRICAL || nm->check_empirical;
}
