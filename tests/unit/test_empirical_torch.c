/* test_empirical_torch.c: the nonlinear check (core/empirical.h) against PyTorch Monte-Carlo
 * perturbations of the same weights (tests/torch/empirical_mc.py): a tpv.sequential/v1 MLP with
 * tanh and ReLU and a small ONNX CNN (Conv, ReLU, Tanh, Gemm), scored through
 * tpv_candidate_score as a job scores them.
 *
 *  - estimator empirical, isotropic / sgd / per-channel 4-bit quantization: within 4 combined
 *    standard errors of torch's mean over its own 2000 draws (our 600 draws, fixed seed);
 *  - the round-to-nearest grid (details.round_to_nearest) and the magnitude-pruned network:
 *    deterministic, equal to torch's to 1e-10 relative;
 *  - "check": "empirical" with a small sigma: details.ratio.value within [0.9, 1.1] and no
 *    nonlinear flag; with a large sigma (tanh saturates, ReLU layers multiply perturbations):
 *    flagged nonlinear, its interval outside [0.8, 1.25];
 *  - same seed, same numbers; another seed, other draws. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/empirical.h"
#include "core/score.h"
#include "tests/unit/torch_fixture.h"

#define DRAWS 600

static char tmpdir[256];
static json_t *refs;

static const char *path_in(const char *name)
{
    static char buf[4][512];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", tmpdir, name);
    return buf[k];
}

static int setup(void **state)
{
    (void)state;
    if (torch_fixture_make(tmpdir, sizeof tmpdir, "empirical", "empirical_mc.py") != 0)
        return -1;
    json_error_t jerr;
    refs = json_load_file(path_in("refs.json"), 0, &jerr);
    return refs ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    json_decref(refs);
    return torch_fixture_remove(tmpdir);
}

static double ref_num(const char *net, const char *c, const char *key)
{
    json_t *v = json_object_get(json_object_get(json_object_get(refs, net), c), key);
    if (!json_is_number(v))
        fail_msg("refs.json: %s.%s.%s missing", net, c, key);
    return json_number_value(v);
}

static double param(const char *net, const char *key)
{
    return ref_num(net, "params", key);
}

/* The study's noise models for one network, with the parameters torch used. */
static struct tpv_noise *models_for(const char *net, unsigned long long seed, size_t *n)
{
    char text[2048];
    snprintf(text, sizeof text,
             "[{\"name\":\"iso\",\"kind\":\"isotropic\",\"sigma\":%.17g,\"estimator\":\"empirical\","
             "\"max_samples\":%d,\"target_rel_error\":1e-9,\"seed\":%llu},"
             "{\"name\":\"sgd\",\"kind\":\"sgd\",\"lr\":%.17g,\"batch_size\":%.17g,"
             "\"residual_variance\":%.17g,\"estimator\":\"empirical\",\"max_samples\":%d,"
             "\"target_rel_error\":1e-9,\"seed\":%llu},"
             "{\"name\":\"quant\",\"kind\":\"quantization\",\"bits\":%.17g,"
             "\"scope\":\"per_channel\",\"estimator\":\"empirical\",\"max_samples\":%d,"
             "\"target_rel_error\":1e-9,\"seed\":%llu},"
             "{\"name\":\"prune\",\"kind\":\"prune\",\"rule\":\"magnitude\",\"fraction\":%.17g,"
             "\"estimator\":\"empirical\"},"
             "{\"name\":\"small\",\"kind\":\"isotropic\",\"sigma\":%.17g,\"check\":\"empirical\","
             "\"max_samples\":200,\"seed\":%llu},"
             "{\"name\":\"large\",\"kind\":\"isotropic\",\"sigma\":%.17g,\"check\":\"empirical\","
             "\"max_samples\":200,\"seed\":%llu}]",
             param(net, "sigma"), DRAWS, seed, param(net, "lr"), param(net, "batch_size"),
             param(net, "residual_variance"), DRAWS, seed, param(net, "bits"), DRAWS, seed,
             param(net, "fraction"), param(net, "sigma"), seed, param(net, "sigma_large"), seed);
    struct tpv_noise *models;
    struct tpv_err err;
    if (tpv_noise_list_load(text, &models, n, &err) != TPV_OK)
        fail_msg("noise models: %s", err.message);
    return models;
}

static void score_net(const char *net, unsigned long long seed, struct tpv_score **sc, size_t *ns)
{
    json_error_t jerr;
    json_t *spec = NULL;
    struct tpv_candidate_files c = { 0 };
    char name[64];
    if (strcmp(net, "mlp") == 0) {
        spec = json_load_file(path_in("mlp.spec.json"), 0, &jerr);
        assert_non_null(spec);
        c.source = TPV_SOURCE_MODEL;
        c.spec = spec;
        c.weights = path_in("mlp.weights.safetensors");
    } else {
        c.source = TPV_SOURCE_ONNX;
        c.onnx = path_in("cnn.onnx");
    }
    snprintf(name, sizeof name, "%s.input.npy", net);
    c.fit_inputs = path_in(name);
    size_t nm;
    struct tpv_noise *models = models_for(net, seed, &nm);
    struct tpv_run_options opts = { 0 };
    json_t *stab = NULL;
    struct tpv_err err;
    if (tpv_candidate_score(&c, models, nm, &opts, sc, ns, &stab, NULL, &err) != TPV_OK)
        fail_msg("%s: %s", net, err.message);
    assert_int_equal(*ns, nm); /* fit split only */
    json_decref(stab);
    json_decref(spec);
    free(models);
}

static const struct tpv_score *find(const struct tpv_score *sc, size_t n, const char *noise)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(sc[i].noise, noise) == 0)
            return &sc[i];
    fail_msg("no score %s", noise);
    return NULL;
}

static double detail(const struct tpv_score *s, const char *obj, const char *key)
{
    json_t *o = obj ? json_object_get(s->details, obj) : s->details;
    json_t *v = json_object_get(o, key);
    if (!json_is_number(v))
        fail_msg("%s: details %s.%s missing", s->noise, obj ? obj : "", key);
    return json_number_value(v);
}

static void check_mc(const char *net, const struct tpv_score *s, const char *c)
{
    double mean = ref_num(net, c, "mean"), se = ref_num(net, c, "stderr");
    double z = fabs(s->value - mean) / sqrt(se * se + s->stderr_value * s->stderr_value);
    print_message("%s %s: %.10g +- %.3g (torch %.10g +- %.3g), %.2f stderr\n", net, c, s->value,
                  s->stderr_value, mean, se, z);
    assert_string_equal(s->estimator, "empirical");
    assert_int_equal(s->samples, DRAWS);
    assert_true(s->stderr_value > 0 && s->stderr_value < 0.05 * s->value);
    assert_true(z < 4.0);
    assert_int_equal(s->n_inputs, strcmp(net, "mlp") == 0 ? 48 : 24);
}

static void check_exact(const char *what, double got, double want)
{
    print_message("%s: %.17g (torch %.17g)\n", what, got, want);
    assert_true(fabs(got - want) <= 1e-10 * fabs(want));
}

static void check_ratio(const struct tpv_score *s, bool large)
{
    double r = detail(s, "ratio", "value");
    json_t *ci = json_object_get(json_object_get(s->details, "ratio"), "ci");
    json_t *nl = json_object_get(s->details, "nonlinear");
    print_message("%s: first order %.6g, empirical %.6g +- %.3g, ratio %.4g [%.4g, %.4g]\n",
                  s->noise, s->value, detail(s, "empirical", "value"),
                  detail(s, "empirical", "stderr"), r, json_number_value(json_array_get(ci, 0)),
                  json_number_value(json_array_get(ci, 1)));
    assert_true(json_is_boolean(nl));
    assert_string_equal(s->estimator, "exact"); /* the first-order score is still the score */
    assert_true(fabs(r * detail(s, "empirical", "value") - s->value) <= 1e-12 * s->value);
    assert_true(json_number_value(json_array_get(ci, 0)) <= r);
    if (!large) {
        assert_true(r >= 0.9 && r <= 1.1);
        assert_false(json_is_true(nl));
        assert_true(json_number_value(json_array_get(ci, 1)) >= r);
    } else {
        assert_true(json_is_true(nl));
        assert_true(r < TPV_NONLINEAR_LO || r > TPV_NONLINEAR_HI);
    }
}

static void check_net(const char *net)
{
    struct tpv_score *sc;
    size_t ns;
    score_net(net, 1, &sc, &ns);
    check_mc(net, find(sc, ns, "iso"), "iso");
    check_mc(net, find(sc, ns, "sgd"), "sgd");
    check_mc(net, find(sc, ns, "quant"), "quant");
    char what[64];
    snprintf(what, sizeof what, "%s round_to_nearest", net);
    check_exact(what, detail(find(sc, ns, "quant"), NULL, "round_to_nearest"),
                ref_num(net, "quant", "rtn"));
    const struct tpv_score *pr = find(sc, ns, "prune");
    snprintf(what, sizeof what, "%s prune", net);
    check_exact(what, pr->value, ref_num(net, "prune", "value"));
    assert_int_equal(pr->samples, 1);
    assert_true(pr->stderr_value == 0);
    check_ratio(find(sc, ns, "small"), false);
    check_ratio(find(sc, ns, "large"), true);

    /* Same seed: the same draws; another seed: others (within the errors). */
    struct tpv_score *again, *other;
    size_t na, no;
    score_net(net, 1, &again, &na);
    score_net(net, 2, &other, &no);
    assert_true(find(again, na, "iso")->value == find(sc, ns, "iso")->value);
    assert_true(find(other, no, "iso")->value != find(sc, ns, "iso")->value);
    tpv_scores_free(again, na);
    tpv_scores_free(other, no);
    tpv_scores_free(sc, ns);
}

static void test_mlp(void **state)
{
    (void)state;
    check_net("mlp");
}

static int calls, cancel_at;

static int cancel_cb(void *ctx, double fraction)
{
    (void)ctx;
    assert_true(fraction >= 0 && fraction <= 1);
    return ++calls >= cancel_at;
}

/* A cancel lands inside the draws (each forward pass reports its batches), and the job ends
 * with nothing left behind. */
static void test_cancel(void **state)
{
    (void)state;
    json_error_t jerr;
    json_t *spec = json_load_file(path_in("mlp.spec.json"), 0, &jerr);
    assert_non_null(spec);
    struct tpv_candidate_files c = { .source = TPV_SOURCE_MODEL, .spec = spec,
                                     .weights = path_in("mlp.weights.safetensors"),
                                     .fit_inputs = path_in("mlp.input.npy") };
    struct tpv_noise *models;
    size_t nm;
    struct tpv_err err;
    assert_int_equal(tpv_noise_list_load("[{\"name\":\"iso\",\"kind\":\"isotropic\","
                                         "\"sigma\":0.01,\"estimator\":\"empirical\","
                                         "\"max_samples\":100000,\"target_rel_error\":1e-12}]",
                                         &models, &nm, &err), TPV_OK);
    struct tpv_run_options opts = { 0 };
    struct tpv_progress pg = { cancel_cb, NULL };
    static const int at[] = { 1, 3, 10, 200 };
    for (size_t k = 0; k < sizeof at / sizeof at[0]; k++) {
        struct tpv_score *sc = (struct tpv_score *)&calls; /* must be reset */
        size_t ns = 7;
        json_t *stab = (json_t *)&calls;
        calls = 0;
        cancel_at = at[k];
        assert_int_equal(tpv_candidate_score(&c, models, nm, &opts, &sc, &ns, &stab, &pg, &err),
                         TPV_ECANCELED);
        assert_null(sc);
        assert_int_equal(ns, 0);
        assert_null(stab);
        assert_int_equal(calls, at[k]);
    }
    free(models);
    json_decref(spec);
}

static void test_onnx_cnn(void **state)
{
    (void)state;
    check_net("cnn");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mlp),
        cmocka_unit_test(test_cancel),
        cmocka_unit_test(test_onnx_cnn),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
