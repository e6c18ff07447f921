/* test_noise.c: noise model parsing of core/noise.c (DESIGN.md section 3 table): each kind's
 * required parameters and defaults, refusals naming the JSON path (unknown keys, wrong types,
 * out-of-range values, the prune mask-xor-rule, duplicate names), and parse(to_json(x)) == x. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <jansson.h>

#include "core/noise.h"

#define DIGEST "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

static json_t *load(const char *text)
{
    json_error_t jerr;
    json_t *j = json_loads(text, 0, &jerr);
    if (!j)
        fail_msg("bad test JSON %s: %s", text, jerr.text);
    return j;
}

/* Parses one model given as JSON text, asserting success. */
static struct tpv_noise parse_ok(const char *text)
{
    struct tpv_noise nm;
    struct tpv_err err;
    tpv_err_clear(&err);
    json_t *j = load(text);
    int rc = tpv_noise_parse(&nm, j, "noise_models[0]", &err);
    if (rc != TPV_OK)
        fail_msg("%s: unexpected error %d: %s", text, rc, err.message);
    json_decref(j);
    return nm;
}

/* Parses one model, asserting TPV_EINVAL with err.field == field and substr in the message. */
static void parse_fail(const char *text, const char *field, const char *substr)
{
    struct tpv_noise nm;
    struct tpv_err err;
    tpv_err_clear(&err);
    json_t *j = load(text);
    int rc = tpv_noise_parse(&nm, j, "noise_models[0]", &err);
    json_decref(j);
    if (rc != TPV_EINVAL || strcmp(err.field, field) != 0 || !strstr(err.message, substr))
        fail_msg("%s: expected field \"%s\" and \"%s\", got %d field \"%s\": \"%s\"", text, field,
                 substr, rc, err.field, err.message);
}

static void assert_common_defaults(const struct tpv_noise *nm)
{
    assert_int_equal(nm->estimator, TPV_EST_AUTO);
    assert_true(nm->target_rel_error == 0.01);
    assert_int_equal(nm->max_samples, 1000);
    assert_int_equal(nm->seed, 0);
}

/* ---------------------------------------------------------------------------------------------
 * Each kind: required parameters and defaults */

static void test_isotropic(void **state)
{
    (void)state;
    struct tpv_noise nm = parse_ok("{\"name\":\"iso\",\"kind\":\"isotropic\",\"sigma\":0.01}");
    assert_string_equal(nm.name, "iso");
    assert_int_equal(nm.kind, TPV_NOISE_ISOTROPIC);
    assert_true(nm.sigma == 0.01);
    assert_common_defaults(&nm);
    assert_false(tpv_noise_needs_weights(&nm));
    assert_false(tpv_noise_needs_names(&nm));
    nm = parse_ok("{\"name\":\"iso\",\"kind\":\"isotropic\",\"sigma\":2}"); /* integer JSON */
    assert_true(nm.sigma == 2.0);

    parse_fail("{\"name\":\"iso\",\"kind\":\"isotropic\"}", "noise_models[0].sigma", "required");
    parse_fail("{\"name\":\"iso\",\"kind\":\"isotropic\",\"sigma\":0}", "noise_models[0].sigma",
               "outside (0, 1e+06]");
    parse_fail("{\"name\":\"iso\",\"kind\":\"isotropic\",\"sigma\":-1}", "noise_models[0].sigma",
               "outside");
    parse_fail("{\"name\":\"iso\",\"kind\":\"isotropic\",\"sigma\":1e7}", "noise_models[0].sigma",
               "outside");
    parse_fail("{\"name\":\"iso\",\"kind\":\"isotropic\",\"sigma\":\"1\"}", "noise_models[0].sigma",
               "must be a number");
    parse_fail("{\"name\":\"iso\",\"kind\":\"isotropic\",\"sigma\":null}", "noise_models[0].sigma",
               "must be a number");
}

static void test_quantization(void **state)
{
    (void)state;
    struct tpv_noise nm = parse_ok("{\"name\":\"q8\",\"kind\":\"quantization\",\"bits\":8}");
    assert_int_equal(nm.kind, TPV_NOISE_QUANTIZATION);
    assert_int_equal(nm.bits, 8);
    assert_int_equal(nm.scope, TPV_SCOPE_GLOBAL);
    assert_true(tpv_noise_needs_weights(&nm));
    assert_false(tpv_noise_needs_names(&nm));
    nm = parse_ok("{\"name\":\"q\",\"kind\":\"quantization\",\"bits\":1,\"scope\":\"per_channel\"}");
    assert_int_equal(nm.bits, 1);
    assert_int_equal(nm.scope, TPV_SCOPE_PER_CHANNEL);
    assert_true(tpv_noise_needs_names(&nm));
    nm = parse_ok("{\"name\":\"q\",\"kind\":\"quantization\",\"bits\":32,\"scope\":\"per_tensor\"}");
    assert_int_equal(nm.scope, TPV_SCOPE_PER_TENSOR);

    parse_fail("{\"name\":\"q\",\"kind\":\"quantization\"}", "noise_models[0].bits", "required");
    parse_fail("{\"name\":\"q\",\"kind\":\"quantization\",\"bits\":0}", "noise_models[0].bits",
               "outside [1, 32]");
    parse_fail("{\"name\":\"q\",\"kind\":\"quantization\",\"bits\":33}", "noise_models[0].bits",
               "outside");
    parse_fail("{\"name\":\"q\",\"kind\":\"quantization\",\"bits\":4.5}", "noise_models[0].bits",
               "must be an integer");
    parse_fail("{\"name\":\"q\",\"kind\":\"quantization\",\"bits\":8,\"scope\":\"layer\"}",
               "noise_models[0].scope", "one of: global, per_tensor, per_channel");
    parse_fail("{\"name\":\"q\",\"kind\":\"quantization\",\"bits\":8,\"scope\":1}",
               "noise_models[0].scope", "one of");
}

static void test_sgd(void **state)
{
    (void)state;
    struct tpv_noise nm =
        parse_ok("{\"name\":\"s\",\"kind\":\"sgd\",\"lr\":0.1,\"batch_size\":32}");
    assert_int_equal(nm.kind, TPV_NOISE_SGD);
    assert_true(nm.lr == 0.1);
    assert_true(nm.batch_size == 32);
    assert_true(nm.residual_variance == 1.0);
    nm = parse_ok("{\"name\":\"s\",\"kind\":\"sgd\",\"lr\":0.1,\"batch_size\":1,"
                  "\"residual_variance\":0.25}");
    assert_true(nm.residual_variance == 0.25);

    parse_fail("{\"name\":\"s\",\"kind\":\"sgd\",\"batch_size\":32}", "noise_models[0].lr",
               "required");
    parse_fail("{\"name\":\"s\",\"kind\":\"sgd\",\"lr\":0.1}", "noise_models[0].batch_size",
               "required");
    parse_fail("{\"name\":\"s\",\"kind\":\"sgd\",\"lr\":0,\"batch_size\":32}", "noise_models[0].lr",
               "outside");
    parse_fail("{\"name\":\"s\",\"kind\":\"sgd\",\"lr\":0.1,\"batch_size\":0.5}",
               "noise_models[0].batch_size", "outside [1, 1e+09]");
    parse_fail("{\"name\":\"s\",\"kind\":\"sgd\",\"lr\":0.1,\"batch_size\":2,"
               "\"residual_variance\":0}", "noise_models[0].residual_variance", "outside");

    nm = parse_ok("{\"name\":\"c\",\"kind\":\"sgd_curvature\",\"lr\":0.5,\"batch_size\":8}");
    assert_int_equal(nm.kind, TPV_NOISE_SGD_CURVATURE);
    assert_true(nm.lr == 0.5);
    assert_true(nm.batch_size == 8);
    parse_fail("{\"name\":\"c\",\"kind\":\"sgd_curvature\",\"lr\":0.5}",
               "noise_models[0].batch_size", "required");
    /* residual_variance belongs to sgd only */
    parse_fail("{\"name\":\"c\",\"kind\":\"sgd_curvature\",\"lr\":0.5,\"batch_size\":8,"
               "\"residual_variance\":1}", "noise_models[0].residual_variance",
               "unknown parameter for kind sgd_curvature");
}

static void test_label(void **state)
{
    (void)state;
    struct tpv_noise nm = parse_ok("{\"name\":\"l\",\"kind\":\"label\",\"sigma\":0.1}");
    assert_int_equal(nm.kind, TPV_NOISE_LABEL);
    assert_true(nm.sigma == 0.1);
    assert_true(nm.rcond == 1e-10);
    assert_true(nm.ridge == 0);
    assert_true(nm.ridge_rel == 0);
    nm = parse_ok("{\"name\":\"l\",\"kind\":\"label\",\"sigma\":0.1,\"ridge_rel\":0.05,"
                  "\"rcond\":0}");
    assert_true(nm.ridge_rel == 0.05);
    assert_true(nm.rcond == 0);
    nm = parse_ok("{\"name\":\"l\",\"kind\":\"label\",\"sigma\":0.1,\"ridge\":3,\"ridge_rel\":0}");
    assert_true(nm.ridge == 3);

    parse_fail("{\"name\":\"l\",\"kind\":\"label\"}", "noise_models[0].sigma", "required");
    nm = parse_ok("{\"name\":\"l\",\"kind\":\"label\",\"sigma_rel\":0.1,\"ridge_rel\":0.05}");
    assert_true(nm.sigma_rel == 0.1 && nm.sigma == 0);
    parse_fail("{\"name\":\"l\",\"kind\":\"label\",\"sigma\":0.1,\"sigma_rel\":0.1}",
               "noise_models[0].sigma_rel", "not both");
    parse_fail("{\"name\":\"l\",\"kind\":\"label\",\"sigma_rel\":0}",
               "noise_models[0].sigma_rel", "outside");
    parse_fail("{\"name\":\"l\",\"kind\":\"label\",\"sigma\":0.1,\"ridge\":1,\"ridge_rel\":0.1}",
               "noise_models[0].ridge_rel", "not both");
    parse_fail("{\"name\":\"l\",\"kind\":\"label\",\"sigma\":0.1,\"rcond\":2}",
               "noise_models[0].rcond", "outside [0, 1]");
    parse_fail("{\"name\":\"l\",\"kind\":\"label\",\"sigma\":0.1,\"ridge\":-1}",
               "noise_models[0].ridge", "outside");
    parse_fail("{\"name\":\"l\",\"kind\":\"label\",\"sigma\":0.1,\"bits\":3}",
               "noise_models[0].bits", "unknown parameter for kind label");
}

static void test_diagonal(void **state)
{
    (void)state;
    struct tpv_noise nm =
        parse_ok("{\"name\":\"d\",\"kind\":\"diagonal\",\"variances\":\"" DIGEST "\"}");
    assert_int_equal(nm.kind, TPV_NOISE_DIAGONAL);
    assert_string_equal(nm.variances, DIGEST);
    assert_true(tpv_noise_needs_names(&nm));
    assert_false(tpv_noise_needs_weights(&nm));

    parse_fail("{\"name\":\"d\",\"kind\":\"diagonal\"}", "noise_models[0].variances", "required");
    parse_fail("{\"name\":\"d\",\"kind\":\"diagonal\",\"variances\":\"sha256:abc\"}",
               "noise_models[0].variances", "blob digest");
    parse_fail("{\"name\":\"d\",\"kind\":\"diagonal\",\"variances\":"
               "\"sha256:0123456789ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef\"}",
               "noise_models[0].variances", "lowercase");
    parse_fail("{\"name\":\"d\",\"kind\":\"diagonal\",\"variances\":"
               "\"md5:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\"}",
               "noise_models[0].variances", "blob digest");
    parse_fail("{\"name\":\"d\",\"kind\":\"diagonal\",\"variances\":"
               "\"sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdeg\"}",
               "noise_models[0].variances", "blob digest");
    parse_fail("{\"name\":\"d\",\"kind\":\"diagonal\",\"variances\":7}",
               "noise_models[0].variances", "blob digest");
}

static void test_prune(void **state)
{
    (void)state;
    struct tpv_noise nm =
        parse_ok("{\"name\":\"p\",\"kind\":\"prune\",\"mask\":\"" DIGEST "\"}");
    assert_int_equal(nm.kind, TPV_NOISE_PRUNE);
    assert_string_equal(nm.mask, DIGEST);
    assert_false(nm.prune_rule_magnitude);
    assert_true(tpv_noise_needs_weights(&nm));
    assert_true(tpv_noise_needs_names(&nm));
    nm = parse_ok("{\"name\":\"p\",\"kind\":\"prune\",\"rule\":\"magnitude\",\"fraction\":0.2}");
    assert_true(nm.prune_rule_magnitude);
    assert_true(nm.fraction == 0.2);
    assert_int_equal(nm.scope, TPV_SCOPE_GLOBAL);
    assert_string_equal(nm.mask, "");
    nm = parse_ok("{\"name\":\"p\",\"kind\":\"prune\",\"rule\":\"magnitude\",\"fraction\":0,"
                  "\"scope\":\"per_tensor\"}");
    assert_int_equal(nm.scope, TPV_SCOPE_PER_TENSOR);
    nm = parse_ok("{\"name\":\"p\",\"kind\":\"prune\",\"rule\":\"magnitude\",\"fraction\":1}");
    assert_true(nm.fraction == 1);

    /* exactly one of mask and rule */
    parse_fail("{\"name\":\"p\",\"kind\":\"prune\"}", "noise_models[0].mask", "exactly one");
    parse_fail("{\"name\":\"p\",\"kind\":\"prune\",\"mask\":\"" DIGEST "\",\"rule\":\"magnitude\","
               "\"fraction\":0.1}", "noise_models[0].mask", "exactly one");
    parse_fail("{\"name\":\"p\",\"kind\":\"prune\",\"mask\":\"" DIGEST "\",\"fraction\":0.1}",
               "noise_models[0].fraction", "go with rule");
    parse_fail("{\"name\":\"p\",\"kind\":\"prune\",\"mask\":\"" DIGEST "\",\"scope\":\"global\"}",
               "noise_models[0].fraction", "go with rule");
    parse_fail("{\"name\":\"p\",\"kind\":\"prune\",\"mask\":\"nope\"}", "noise_models[0].mask",
               "blob digest");
    parse_fail("{\"name\":\"p\",\"kind\":\"prune\",\"rule\":\"random\",\"fraction\":0.1}",
               "noise_models[0].rule", "must be \"magnitude\"");
    parse_fail("{\"name\":\"p\",\"kind\":\"prune\",\"rule\":1,\"fraction\":0.1}",
               "noise_models[0].rule", "must be \"magnitude\"");
    parse_fail("{\"name\":\"p\",\"kind\":\"prune\",\"rule\":\"magnitude\"}",
               "noise_models[0].fraction", "required");
    parse_fail("{\"name\":\"p\",\"kind\":\"prune\",\"rule\":\"magnitude\",\"fraction\":1.5}",
               "noise_models[0].fraction", "outside [0, 1]");
    parse_fail("{\"name\":\"p\",\"kind\":\"prune\",\"rule\":\"magnitude\",\"fraction\":-0.1}",
               "noise_models[0].fraction", "outside");
    /* per_channel is a quantization scope only */
    parse_fail("{\"name\":\"p\",\"kind\":\"prune\",\"rule\":\"magnitude\",\"fraction\":0.1,"
               "\"scope\":\"per_channel\"}", "noise_models[0].scope",
               "one of: global, per_tensor");
}

/* ---------------------------------------------------------------------------------------------
 * Common keys */

static void test_common_keys(void **state)
{
    (void)state;
    struct tpv_noise nm = parse_ok("{\"name\":\"A-b_c.9\",\"kind\":\"isotropic\",\"sigma\":1,"
                                   "\"estimator\":\"hutchpp\",\"target_rel_error\":0.05,"
                                   "\"max_samples\":10000000,\"seed\":9007199254740991}");
    assert_string_equal(nm.name, "A-b_c.9");
    assert_int_equal(nm.estimator, TPV_EST_HUTCHPP);
    assert_true(nm.target_rel_error == 0.05);
    assert_int_equal(nm.max_samples, 10000000);
    assert_true(nm.seed == 9007199254740991ull);
    static const char *const ests[] = { "auto", "exact", "hutchinson", "hutchpp" };
    for (int i = 0; i < 4; i++) {
        char text[128];
        snprintf(text, sizeof text,
                 "{\"name\":\"e\",\"kind\":\"isotropic\",\"sigma\":1,\"estimator\":\"%s\"}",
                 ests[i]);
        nm = parse_ok(text);
        assert_int_equal(nm.estimator, i);
        assert_string_equal(tpv_estimator_name(nm.estimator), ests[i]);
    }

    char longname[80];
    memset(longname, 'a', 64);
    longname[64] = '\0';
    char text[200];
    snprintf(text, sizeof text, "{\"name\":\"%s\",\"kind\":\"isotropic\",\"sigma\":1}", longname);
    parse_fail(text, "noise_models[0].name", "1-63 characters");
    longname[63] = '\0';
    snprintf(text, sizeof text, "{\"name\":\"%s\",\"kind\":\"isotropic\",\"sigma\":1}", longname);
    nm = parse_ok(text);
    assert_string_equal(nm.name, longname);
    parse_fail("{\"name\":\"\",\"kind\":\"isotropic\",\"sigma\":1}", "noise_models[0].name",
               "1-63 characters");
    parse_fail("{\"name\":\"a b\",\"kind\":\"isotropic\",\"sigma\":1}", "noise_models[0].name",
               "1-63");
    parse_fail("{\"name\":\"a/b\",\"kind\":\"isotropic\",\"sigma\":1}", "noise_models[0].name",
               "1-63");
    parse_fail("{\"name\":3,\"kind\":\"isotropic\",\"sigma\":1}", "noise_models[0].name", "1-63");
    parse_fail("{\"kind\":\"isotropic\",\"sigma\":1}", "noise_models[0].name", "1-63");
    parse_fail("{\"name\":\"a\",\"sigma\":1}", "noise_models[0].kind", "must be one of: isotropic");
    parse_fail("{\"name\":\"a\",\"kind\":\"gaussian\",\"sigma\":1}", "noise_models[0].kind",
               "sgd_curvature");
    parse_fail("{\"name\":\"a\",\"kind\":\"isotropic\",\"sigma\":1,\"sigmaa\":1}",
               "noise_models[0].sigmaa", "noise_models[0].sigmaa: unknown parameter");
    parse_fail("{\"name\":\"a\",\"kind\":\"isotropic\",\"sigma\":1,\"estimator\":\"mc\"}",
               "noise_models[0].estimator", "one of: auto, exact, hutchinson, hutchpp");
    parse_fail("{\"name\":\"a\",\"kind\":\"isotropic\",\"sigma\":1,\"target_rel_error\":0}",
               "noise_models[0].target_rel_error", "outside (0, 1]");
    parse_fail("{\"name\":\"a\",\"kind\":\"isotropic\",\"sigma\":1,\"max_samples\":0}",
               "noise_models[0].max_samples", "outside [1, 1e+07]");
    parse_fail("{\"name\":\"a\",\"kind\":\"isotropic\",\"sigma\":1,\"max_samples\":1.5}",
               "noise_models[0].max_samples", "must be an integer");
    parse_fail("{\"name\":\"a\",\"kind\":\"isotropic\",\"sigma\":1,\"seed\":-1}",
               "noise_models[0].seed", "outside");
    parse_fail("{\"name\":\"a\",\"kind\":\"isotropic\",\"sigma\":1,\"seed\":0.5}",
               "noise_models[0].seed", "must be an integer");
    parse_fail("{\"name\":\"a\",\"kind\":\"isotropic\",\"sigma\":1,\"seed\":9007199254740993}",
               "noise_models[0].seed", "outside");

    /* Not an object */
    struct tpv_err err;
    json_t *j = load("[1]");
    assert_int_equal(tpv_noise_parse(&nm, j, "noise_models[3]", &err), TPV_EINVAL);
    assert_string_equal(err.field, "noise_models[3]");
    assert_non_null(strstr(err.message, "must be an object"));
    json_decref(j);
}

/* ---------------------------------------------------------------------------------------------
 * Lists */

static int list_parse(const char *text, struct tpv_noise **out, size_t *count, struct tpv_err *err)
{
    json_t *j = load(text);
    tpv_err_clear(err);
    int rc = tpv_noise_list_parse(j, out, count, err);
    json_decref(j);
    return rc;
}

static void test_list(void **state)
{
    (void)state;
    struct tpv_noise *models = NULL;
    size_t n = 99;
    struct tpv_err err;
    assert_int_equal(list_parse("[{\"name\":\"a\",\"kind\":\"isotropic\",\"sigma\":1},"
                                "{\"name\":\"b\",\"kind\":\"label\",\"sigma\":1}]",
                                &models, &n, &err), TPV_OK);
    assert_int_equal(n, 2);
    assert_string_equal(models[0].name, "a");
    assert_int_equal(models[1].kind, TPV_NOISE_LABEL);
    free(models);

    /* The failing entry's index and key are named. */
    assert_int_equal(list_parse("[{\"name\":\"a\",\"kind\":\"isotropic\",\"sigma\":1},"
                                "{\"name\":\"b\",\"kind\":\"isotropic\",\"sigma\":1,\"x\":2}]",
                                &models, &n, &err), TPV_EINVAL);
    assert_null(models);
    assert_int_equal(n, 0);
    assert_string_equal(err.field, "noise_models[1].x");
    assert_non_null(strstr(err.message, "noise_models[1].x"));

    assert_int_equal(list_parse("[{\"name\":\"a\",\"kind\":\"isotropic\",\"sigma\":1},"
                                "{\"name\":\"b\",\"kind\":\"isotropic\",\"sigma\":1},"
                                "{\"name\":\"a\",\"kind\":\"label\",\"sigma\":1}]",
                                &models, &n, &err), TPV_EINVAL);
    assert_null(models);
    assert_string_equal(err.field, "noise_models[2]");
    assert_non_null(strstr(err.message, "name 'a' is used twice"));

    assert_int_equal(list_parse("[]", &models, &n, &err), TPV_EINVAL);
    assert_string_equal(err.field, "noise_models");
    assert_non_null(strstr(err.message, "1 to 32"));
    assert_int_equal(list_parse("{}", &models, &n, &err), TPV_EINVAL);
    assert_int_equal(list_parse("[1]", &models, &n, &err), TPV_EINVAL);
    assert_string_equal(err.field, "noise_models[0]");

    /* 32 is the limit */
    json_t *arr = json_array();
    for (int i = 0; i < TPV_NOISE_MODELS_MAX + 1; i++) {
        char name[16];
        snprintf(name, sizeof name, "m%d", i);
        json_array_append_new(arr, json_pack("{s:s,s:s,s:f}", "name", name, "kind", "isotropic",
                                             "sigma", 1.0));
    }
    assert_int_equal(tpv_noise_list_parse(arr, &models, &n, &err), TPV_EINVAL);
    json_array_remove(arr, 0);
    assert_int_equal(tpv_noise_list_parse(arr, &models, &n, &err), TPV_OK);
    assert_int_equal(n, TPV_NOISE_MODELS_MAX);
    assert_string_equal(models[TPV_NOISE_MODELS_MAX - 1].name, "m32");
    free(models);
    json_decref(arr);
}

/* ---------------------------------------------------------------------------------------------
 * Round trip */

static void assert_noise_equal(const struct tpv_noise *a, const struct tpv_noise *b)
{
    assert_string_equal(a->name, b->name);
    assert_int_equal(a->kind, b->kind);
    assert_true(a->sigma == b->sigma);
    assert_int_equal(a->bits, b->bits);
    assert_int_equal(a->scope, b->scope);
    assert_true(a->lr == b->lr);
    assert_true(a->batch_size == b->batch_size);
    assert_true(a->residual_variance == b->residual_variance);
    assert_true(a->rcond == b->rcond);
    assert_true(a->ridge == b->ridge);
    assert_true(a->ridge_rel == b->ridge_rel);
    assert_string_equal(a->variances, b->variances);
    assert_string_equal(a->mask, b->mask);
    assert_int_equal(a->prune_rule_magnitude, b->prune_rule_magnitude);
    assert_true(a->fraction == b->fraction);
    assert_int_equal(a->estimator, b->estimator);
    assert_true(a->target_rel_error == b->target_rel_error);
    assert_int_equal(a->max_samples, b->max_samples);
    assert_true(a->seed == b->seed);
    assert_int_equal(a->check_empirical, b->check_empirical);
}

/* The nonlinear check: "check": "empirical" and the estimator empirical for isotropic,
 * quantization, prune and sgd; the other kinds have no empirical value and are refused naming
 * the field (a study with them is a 400 at creation). */
static void test_empirical(void **state)
{
    (void)state;
    static const char *const ok[] = {
        "{\"name\":\"a\",\"kind\":\"isotropic\",\"sigma\":1,\"check\":\"empirical\"}",
        "{\"name\":\"a\",\"kind\":\"quantization\",\"bits\":8,\"check\":\"empirical\"}",
        ("{\"name\":\"a\",\"kind\":\"prune\",\"rule\":\"magnitude\",\"fraction\":0.5,"
         "\"check\":\"empirical\"}"),
        "{\"name\":\"a\",\"kind\":\"sgd\",\"lr\":1,\"batch_size\":2,\"check\":\"empirical\"}",
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        struct tpv_noise nm = parse_ok(ok[i]);
        assert_true(nm.check_empirical);
        assert_int_equal(nm.estimator, TPV_EST_AUTO);
        assert_true(tpv_noise_needs_model(&nm));
    }
    struct tpv_noise nm = parse_ok("{\"name\":\"a\",\"kind\":\"isotropic\",\"sigma\":1,"
                                   "\"estimator\":\"empirical\"}");
    assert_int_equal(nm.estimator, TPV_EST_EMPIRICAL);
    assert_string_equal(tpv_estimator_name(nm.estimator), "empirical");
    assert_false(nm.check_empirical);
    assert_true(tpv_noise_needs_model(&nm));
    nm = parse_ok("{\"name\":\"a\",\"kind\":\"isotropic\",\"sigma\":1}");
    assert_false(tpv_noise_needs_model(&nm));

    parse_fail("{\"name\":\"a\",\"kind\":\"label\",\"sigma\":1,\"check\":\"empirical\"}",
               "noise_models[0].check", "kind label has no empirical value");
    parse_fail("{\"name\":\"a\",\"kind\":\"sgd_curvature\",\"lr\":1,\"batch_size\":2,"
               "\"check\":\"empirical\"}", "noise_models[0].check", "sgd_curvature");
    parse_fail("{\"name\":\"a\",\"kind\":\"diagonal\",\"variances\":\"" DIGEST "\","
               "\"estimator\":\"empirical\"}", "noise_models[0].estimator",
               "kind diagonal has no empirical value");
    parse_fail("{\"name\":\"a\",\"kind\":\"label\",\"sigma\":1,\"estimator\":\"empirical\"}",
               "noise_models[0].estimator", "no empirical value");
    parse_fail("{\"name\":\"a\",\"kind\":\"isotropic\",\"sigma\":1,\"check\":\"exact\"}",
               "noise_models[0].check", "must be \"empirical\"");
    parse_fail("{\"name\":\"a\",\"kind\":\"isotropic\",\"sigma\":1,\"check\":true}",
               "noise_models[0].check", "must be \"empirical\"");
    parse_fail("{\"name\":\"a\",\"kind\":\"isotropic\",\"sigma\":1,\"check\":\"empirical\","
               "\"estimator\":\"empirical\"}", "noise_models[0].check", "already empirical");
}

static void test_round_trip(void **state)
{
    (void)state;
    static const char *const models[] = {
        "{\"name\":\"iso\",\"kind\":\"isotropic\",\"sigma\":0.1}",
        "{\"name\":\"q\",\"kind\":\"quantization\",\"bits\":4,\"scope\":\"per_channel\","
        "\"estimator\":\"hutchinson\",\"target_rel_error\":0.001,\"max_samples\":77,\"seed\":42}",
        "{\"name\":\"q2\",\"kind\":\"quantization\",\"bits\":8}",
        "{\"name\":\"s\",\"kind\":\"sgd\",\"lr\":0.01,\"batch_size\":64,"
        "\"residual_variance\":0.3}",
        "{\"name\":\"sc\",\"kind\":\"sgd_curvature\",\"lr\":1e-3,\"batch_size\":128,"
        "\"estimator\":\"exact\"}",
        "{\"name\":\"l\",\"kind\":\"label\",\"sigma\":0.5,\"rcond\":1e-8,\"ridge_rel\":0.05}",
        "{\"name\":\"l2\",\"kind\":\"label\",\"sigma\":0.5,\"ridge\":2.5}",
        "{\"name\":\"d\",\"kind\":\"diagonal\",\"variances\":\"" DIGEST "\"}",
        "{\"name\":\"pm\",\"kind\":\"prune\",\"mask\":\"" DIGEST "\",\"seed\":9007199254740991}",
        "{\"name\":\"pr\",\"kind\":\"prune\",\"rule\":\"magnitude\",\"fraction\":0.3,"
        "\"scope\":\"per_tensor\",\"estimator\":\"hutchpp\"}",
        "{\"name\":\"ce\",\"kind\":\"sgd\",\"lr\":0.01,\"batch_size\":4,\"check\":\"empirical\"}",
        "{\"name\":\"ee\",\"kind\":\"quantization\",\"bits\":4,\"estimator\":\"empirical\"}",
    };
    for (size_t i = 0; i < sizeof models / sizeof models[0]; i++) {
        struct tpv_noise a = parse_ok(models[i]), b;
        json_t *j = tpv_noise_to_json(&a);
        assert_non_null(j);
        assert_string_equal(json_string_value(json_object_get(j, "name")), a.name);
        assert_string_equal(json_string_value(json_object_get(j, "kind")),
                            tpv_noise_kind_name(a.kind));
        struct tpv_err err;
        if (tpv_noise_parse(&b, j, "noise_models[0]", &err) != TPV_OK)
            fail_msg("%s: to_json does not parse back: %s", models[i], err.message);
        assert_noise_equal(&a, &b);
        json_t *j2 = tpv_noise_to_json(&b);
        assert_true(json_equal(j, j2));
        json_decref(j);
        json_decref(j2);
    }
    assert_string_equal(tpv_noise_kind_name((enum tpv_noise_kind)99), "unknown");
    assert_string_equal(tpv_estimator_name((enum tpv_estimator)99), "unknown");
}

/* Integers are numbers without a fractional part, one rule for every integer parameter (sgd's
 * batch_size 1.5 used to be accepted); stored texts refuse duplicate keys like request bodies. */
static void test_integers_and_stored_text(void **state)
{
    (void)state;
    parse_fail("{\"name\":\"s\",\"kind\":\"sgd\",\"lr\":0.1,\"batch_size\":1.5}",
               "noise_models[0].batch_size", "must be an integer");
    parse_fail("{\"name\":\"s\",\"kind\":\"sgd_curvature\",\"lr\":0.1,\"batch_size\":32.25}",
               "noise_models[0].batch_size", "must be an integer");
    parse_fail("{\"name\":\"q\",\"kind\":\"quantization\",\"bits\":4.5}",
               "noise_models[0].bits", "must be an integer");
    parse_fail("{\"name\":\"i\",\"kind\":\"isotropic\",\"sigma\":1,\"max_samples\":10.5}",
               "noise_models[0].max_samples", "must be an integer");
    struct tpv_noise nm = parse_ok("{\"name\":\"s\",\"kind\":\"sgd\",\"lr\":0.1,"
                                   "\"batch_size\":32.0}");
    assert_true(nm.batch_size == 32);

    struct tpv_noise *models = NULL;
    size_t n = 0;
    struct tpv_err err;
    assert_int_equal(tpv_noise_list_load("[{\"name\":\"a\",\"kind\":\"isotropic\",\"sigma\":1}]",
                                         &models, &n, &err), TPV_OK);
    assert_int_equal(n, 1);
    assert_non_null(tpv_noise_find(models, n, "a"));
    assert_null(tpv_noise_find(models, n, "b"));
    free(models);
    assert_int_equal(tpv_noise_list_load("[{\"name\":\"a\",\"kind\":\"isotropic\",\"sigma\":1,"
                                         "\"sigma\":2}]", &models, &n, &err), TPV_EINVAL);
    assert_null(models);
    assert_int_equal(tpv_noise_list_load("not json", &models, &n, &err), TPV_EINVAL);
    assert_int_equal(tpv_noise_list_load(NULL, &models, &n, &err), TPV_EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_isotropic),   cmocka_unit_test(test_quantization),
        cmocka_unit_test(test_sgd),         cmocka_unit_test(test_label),
        cmocka_unit_test(test_diagonal),    cmocka_unit_test(test_prune),
        cmocka_unit_test(test_common_keys), cmocka_unit_test(test_list),
        cmocka_unit_test(test_empirical),   cmocka_unit_test(test_round_trip),  cmocka_unit_test(test_integers_and_stored_text),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
