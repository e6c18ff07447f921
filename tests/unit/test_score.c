/* test_score.c: the scoring entry points over real files: an interop test against numpy
 * (tests/tools/ref_dump.py writes float64 .npy and float32 safetensors dumps and float64
 * reference TPVs for every noise model and both splits), servability errors that name the noise
 * model, the memory limit, cancellation, and refusals of incomplete model candidates. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "core/score.h"
#include "num_helpers.h"

static char dir[256];
static json_t *ref;

static const char *path_in(const char *name)
{
    static char buf[8][512];
    static int k;
    k = (k + 1) % 8;
    snprintf(buf[k], sizeof buf[k], "%s/%s", dir, name);
    return buf[k];
}

static const char *blob_path(void *ctx, const char *digest)
{
    (void)ctx;
    if (strncmp(digest, "sha256:1111", 11) == 0)
        return path_in("variances.safetensors");
    if (strncmp(digest, "sha256:2222", 11) == 0)
        return path_in("mask.safetensors");
    return NULL;
}

static int setup(void **state)
{
    (void)state;
    const char *py = getenv("TPV_PYTHON") ? getenv("TPV_PYTHON") : "/usr/bin/python3";
    const char *root = getenv("TPV_SOURCE_ROOT") ? getenv("TPV_SOURCE_ROOT") : "..";
    snprintf(dir, sizeof dir, "/tmp/tpv-test-score-XXXXXX");
    if (!mkdtemp(dir))
        return -1;
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "%s %s/tests/tools/ref_dump.py %s 7", py, root, dir);
    if (system(cmd) != 0) {
        ref = NULL; /* no numpy reference: the tests below fail (the test command installs it) */
        return 0;
    }
    ref = json_load_file(path_in("ref.json"), 0, NULL);
    return ref ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    json_decref(ref);
    const char *files[] = { "weights.safetensors", "variances.safetensors", "mask.safetensors",
                            "f64_fit.npy", "f64_probe.npy", "f32_fit.safetensors",
                            "f32_probe.safetensors", "ref.json" };
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++)
        unlink(path_in(files[i]));
    rmdir(dir);
    return 0;
}

static const char *layout[4];

static struct tpv_candidate_files files_for(bool f64)
{
    struct tpv_candidate_files c;
    memset(&c, 0, sizeof c);
    c.source = TPV_SOURCE_JACOBIAN;
    if (f64) {
        c.jac_fit = path_in("f64_fit.npy");
        c.jac_probe = path_in("f64_probe.npy");
        for (size_t i = 0; i < 4; i++)
            layout[i] = json_string_value(json_array_get(json_object_get(ref, "layout"), i));
        c.layout = layout;
        c.nlayout = 4;
    } else {
        c.jac_fit = path_in("f32_fit.safetensors");
        c.jac_probe = path_in("f32_probe.safetensors");
    }
    c.weights = path_in("weights.safetensors");
    c.blob_path = blob_path;
    return c;
}

static struct tpv_noise *ref_models(size_t *n)
{
    json_t *arr = json_array();
    const char *key;
    json_t *v;
    json_object_foreach(json_object_get(ref, "models"), key, v) {
        json_t *o = json_deep_copy(v);
        json_object_set_new(o, "name", json_string(key));
        json_array_append_new(arr, o);
    }
    struct tpv_noise *models;
    struct tpv_err err;
    if (tpv_noise_list_parse(arr, &models, n, &err) != 0)
        fail_msg("parse: %s", err.message);
    json_decref(arr);
    return models;
}

static void check_against_numpy(bool f64)
{
    if (!ref)
        fail_msg("no numpy reference: /usr/bin/python3 with python3-numpy is required");
    struct tpv_candidate_files c = files_for(f64);
    size_t nm;
    struct tpv_noise *models = ref_models(&nm);
    struct tpv_run_options opts = { 0, 0 };
    struct tpv_score *sc;
    size_t ns;
    json_t *st;
    struct tpv_err err;
    uint64_t need;
    int rc = tpv_candidate_check(&c, models, nm, &opts, &need, &err);
    if (rc)
        fail_msg("check: %s (%s)", err.message, err.field);
    assert_true(need > 0);
    rc = tpv_candidate_score(&c, models, nm, &opts, &sc, &ns, &st, NULL, &err);
    if (rc)
        fail_msg("score: %s (%s)", err.message, err.field);
    assert_int_equal(ns, 2 * nm);
    double tol = f64 ? 1e-6 : 1e-4;
    json_t *vals = json_object_get(ref, f64 ? "f64" : "f32");
    double worst = 0;
    for (size_t i = 0; i < ns; i++) {
        json_t *r = json_object_get(json_object_get(vals, sc[i].noise),
                                    tpv_split_name(sc[i].split));
        assert_non_null(r);
        double want = json_real_value(r), got = sc[i].value;
        worst = relerr(got, want) > worst ? relerr(got, want) : worst;
        if (!(relerr(got, want) <= tol))
            fail_msg("%s %s/%s: %.12g vs numpy %.12g (rel %.3g)", f64 ? "f64" : "f32",
                     sc[i].noise, tpv_split_name(sc[i].split), got, want, relerr(got, want));
    }
    print_message("%s: %zu scores, worst relative error vs numpy %.3g\n", f64 ? "f64" : "f32",
                  ns, worst);
    double ratio = json_real_value(json_object_get(json_object_get(ref, "stability"),
                                                   f64 ? "f64" : "f32"));
    assert_rel(json_real_value(json_object_get(st, "isotropic_ratio")), ratio, tol);
    assert_int_equal(json_integer_value(json_object_get(st, "n_fit")), 30);
    assert_int_equal(json_integer_value(json_object_get(st, "n_probe")), 20);
    assert_true(json_is_true(json_object_get(st, "small_n_warning")));
    tpv_scores_free(sc, ns);
    json_decref(st);
    free(models);
}

static void test_numpy_f64(void **state)
{
    (void)state;
    check_against_numpy(true);
}

static void test_numpy_f32(void **state)
{
    (void)state;
    check_against_numpy(false);
}

static struct tpv_noise one_model(const char *js)
{
    struct tpv_noise nm;
    struct tpv_err err;
    json_t *o = json_loads(js, 0, NULL);
    assert_non_null(o);
    if (tpv_noise_parse(&nm, o, "noise_models[0]", &err) != 0)
        fail_msg("%s", err.message);
    json_decref(o);
    return nm;
}

static int cancel_at;
static int cancel_cb(void *ctx, double f)
{
    (void)ctx, (void)f;
    return cancel_at-- <= 0;
}

static void test_refusals(void **state)
{
    (void)state;
    if (!ref)
        fail_msg("no numpy reference: /usr/bin/python3 with python3-numpy is required");
    struct tpv_err err;
    uint64_t need;
    struct tpv_run_options opts = { 0, 0 };
    struct tpv_noise q = one_model("{\"name\":\"q\",\"kind\":\"quantization\",\"bits\":8,"
                                   "\"scope\":\"per_channel\"}");
    struct tpv_noise d = one_model("{\"name\":\"d\",\"kind\":\"diagonal\",\"variances\":"
                                   "\"sha256:3333333333333333333333333333333333333333333333333333333333333333\"}");
    struct tpv_noise iso = one_model("{\"name\":\"iso\",\"kind\":\"isotropic\",\"sigma\":1}");
    struct tpv_noise lab = one_model("{\"name\":\"lab\",\"kind\":\"label\",\"sigma\":1}");
    /* quantization without weights: 400 naming the model */
    struct tpv_candidate_files c = files_for(false);
    c.weights = NULL;
    assert_int_equal(tpv_candidate_check(&c, &q, 1, &opts, &need, &err), TPV_EINVAL);
    assert_string_equal(err.field, "noise_models[0]");
    assert_non_null(strstr(err.message, "'q'"));
    assert_non_null(strstr(err.message, "weights"));
    /* a flat dump without layout cannot serve per-channel quantization */
    c = files_for(true);
    c.layout = NULL, c.nlayout = 0;
    assert_int_equal(tpv_candidate_check(&c, &q, 1, &opts, &need, &err), TPV_EINVAL);
    assert_non_null(strstr(err.message, "layout"));
    /* ... but isotropic works, probe missing gives fit-only scores */
    c.jac_probe = NULL;
    struct tpv_score *sc;
    size_t ns;
    json_t *st;
    assert_int_equal(tpv_candidate_score(&c, &iso, 1, &opts, &sc, &ns, &st, NULL, &err), 0);
    assert_int_equal(ns, 1);
    assert_int_equal(sc[0].split, TPV_SPLIT_FIT);
    assert_null(json_object_get(st, "isotropic_ratio"));
    tpv_scores_free(sc, ns);
    json_decref(st);
    /* the empirical check (estimator or check) runs the model: a dump is refused at
     * submission, and a job that got one anyway fails with the same reason */
    static const char *const emp[] = {
        "{\"name\":\"e\",\"kind\":\"isotropic\",\"sigma\":1,\"check\":\"empirical\"}",
        "{\"name\":\"e\",\"kind\":\"isotropic\",\"sigma\":1,\"estimator\":\"empirical\"}",
    };
    for (int k = 0; k < 2; k++) {
        struct tpv_noise e = one_model(emp[k]);
        c = files_for(false);
        assert_int_equal(tpv_candidate_check(&c, &e, 1, &opts, &need, &err), TPV_EINVAL);
        assert_string_equal(err.field, "noise_models[0]");
        assert_non_null(strstr(err.message, "'e'"));
        assert_non_null(strstr(err.message, "needs a model (a spec or an ONNX graph)"));
        assert_int_equal(tpv_candidate_score(&c, &e, 1, &opts, &sc, &ns, &st, NULL, &err),
                         TPV_EINVAL);
        assert_non_null(strstr(err.message, "needs a model"));
    }
    /* unknown blob */
    c = files_for(false);
    assert_int_equal(tpv_candidate_check(&c, &d, 1, &opts, &need, &err), TPV_EINVAL);
    assert_string_equal(err.field, "noise_models[0]");
    /* memory limit */
    opts.max_memory = 4096;
    assert_int_equal(tpv_candidate_check(&c, &lab, 1, &opts, &need, &err), TPV_ENOSPACE);
    assert_non_null(strstr(err.message, "limit is 4096"));
    assert_int_equal(tpv_candidate_score(&c, &lab, 1, &opts, &sc, &ns, &st, NULL, &err),
                     TPV_ENOSPACE);
    opts.max_memory = 0;
    /* cancellation */
    struct tpv_progress pg = { cancel_cb, NULL };
    for (int k = 0; k < 6; k++) {
        cancel_at = k;
        assert_int_equal(tpv_candidate_score(&c, &lab, 1, &opts, &sc, &ns, &st, &pg, &err),
                         TPV_ECANCELED);
    }
    /* probe with another p */
    c.jac_probe = path_in("f64_probe.npy");
    assert_int_equal(tpv_candidate_check(&c, &iso, 1, &opts, &need, &err), TPV_EINVAL);
    /* missing file */
    c = files_for(false);
    c.jac_fit = path_in("nope.npy");
    assert_int_not_equal(tpv_candidate_check(&c, &iso, 1, &opts, &need, &err), 0);
    /* a model candidate without its spec names the field; JBR needs a model */
    c.source = TPV_SOURCE_MODEL;
    assert_int_equal(tpv_candidate_check(&c, &iso, 1, &opts, &need, &err), TPV_EINVAL);
    assert_string_equal(err.field, "model.spec");
    c = files_for(false);
    json_t *res;
    assert_int_equal(tpv_jbr_run(&c, 0.9, 128, &res, NULL, &err), TPV_EPRECONDITION);
    assert_non_null(strstr(err.message, "JBR needs a model checkpoint"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_numpy_f64),
        cmocka_unit_test(test_numpy_f32),
        cmocka_unit_test(test_refusals),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
