/* test_score_model.c: a checkpoint candidate scored through score.h (spec + weights + input sets,
 * structured MLP products) equals the same model scored as Jacobian dumps built by torch autograd,
 * for every noise model on both splits; JBR runs on the checkpoint; bad checkpoints name the field.
 * Files come from tests/torch/model_vs_dump.py (Debian's /usr/bin/python3 with python3-torch,
 * installed by the test command; without it this test fails). */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "core/score.h"

static char dir[] = "/tmp/tpv-score-model-XXXXXX";
static char paths[16][512];
static int npaths;

/* A path inside the temporary folder; a ring of 16 buffers, enough for one candidate's files. */
static const char *path_in(const char *name)
{
    char *p = paths[npaths++ % 16];
    snprintf(p, sizeof paths[0], "%s/%s", dir, name);
    return p;
}

#define DIGEST_VARIANCES "sha256:1111111111111111111111111111111111111111111111111111111111111111"
#define DIGEST_MASK      "sha256:2222222222222222222222222222222222222222222222222222222222222222"

static const char *blob_path(void *ctx, const char *digest)
{
    (void)ctx;
    static char buf[2][512];
    if (strcmp(digest, DIGEST_VARIANCES) == 0) {
        snprintf(buf[0], sizeof buf[0], "%s/variances.safetensors", dir);
        return buf[0];
    }
    if (strcmp(digest, DIGEST_MASK) == 0) {
        snprintf(buf[1], sizeof buf[1], "%s/mask.safetensors", dir);
        return buf[1];
    }
    return NULL;
}

static int setup(void **state)
{
    (void)state;
    if (!mkdtemp(dir))
        return -1;
    const char *root = getenv("TPV_SOURCE_ROOT") ? getenv("TPV_SOURCE_ROOT") : "..";
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 %s/tests/torch/model_vs_dump.py %s", root, dir);
    if (system(cmd) != 0) {
        fprintf(stderr, "model_vs_dump.py failed: is python3-torch installed (./scripts/tpv test "
                        "installs it)?\n");
        return -1;
    }
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : -1;
}

static const char *const all_models =
    "[{\"name\":\"iso\",\"kind\":\"isotropic\",\"sigma\":0.1},"
    " {\"name\":\"q_glob\",\"kind\":\"quantization\",\"bits\":4},"
    " {\"name\":\"q_tensor\",\"kind\":\"quantization\",\"bits\":6,\"scope\":\"per_tensor\"},"
    " {\"name\":\"q_chan\",\"kind\":\"quantization\",\"bits\":8,\"scope\":\"per_channel\"},"
    " {\"name\":\"sgd\",\"kind\":\"sgd\",\"lr\":0.1,\"batch_size\":4,\"residual_variance\":0.5},"
    " {\"name\":\"curv\",\"kind\":\"sgd_curvature\",\"lr\":0.05,\"batch_size\":8},"
    " {\"name\":\"label\",\"kind\":\"label\",\"sigma\":0.2},"
    " {\"name\":\"label_r\",\"kind\":\"label\",\"sigma\":0.2,\"ridge_rel\":0.05},"
    " {\"name\":\"diag\",\"kind\":\"diagonal\",\"variances\":\"" DIGEST_VARIANCES "\"},"
    " {\"name\":\"mask\",\"kind\":\"prune\",\"mask\":\"" DIGEST_MASK "\"},"
    " {\"name\":\"mag_g\",\"kind\":\"prune\",\"rule\":\"magnitude\",\"fraction\":0.25},"
    " {\"name\":\"mag_t\",\"kind\":\"prune\",\"rule\":\"magnitude\",\"fraction\":0.4,"
    "  \"scope\":\"per_tensor\"}]";

static struct tpv_noise *parse_models(size_t *n)
{
    json_t *arr = json_loads(all_models, 0, NULL);
    struct tpv_noise *models;
    struct tpv_err err;
    assert_non_null(arr);
    if (tpv_noise_list_parse(arr, &models, n, &err) != TPV_OK)
        fail_msg("noise models: %s", err.message);
    json_decref(arr);
    return models;
}

static json_t *load_spec(void)
{
    json_error_t jerr;
    json_t *spec = json_load_file(path_in("model/spec.json"), 0, &jerr);
    if (!spec)
        fail_msg("spec.json: %s", jerr.text);
    return spec;
}

static struct tpv_candidate_files model_files(const json_t *spec)
{
    struct tpv_candidate_files c = { .source = TPV_SOURCE_MODEL, .spec = spec,
                                     .weights = path_in("model/weights.safetensors"),
                                     .fit_inputs = path_in("x_fit.npy"),
                                     .probe_inputs = path_in("x_probe.npy"),
                                     .blob_path = blob_path };
    return c;
}

/* Label noise given by sigma_rel on a checkpoint equals label noise with sigma = sigma_rel x the
 * mean |f(x)| over the fit set that torch computed, on the Jacobian dumps; a dump alone has no
 * outputs, so sigma_rel is refused for it at the check, naming the noise model. */
static void test_label_sigma_rel(void **state)
{
    (void)state;
    FILE *fp = fopen(path_in("mean_abs_fit.txt"), "r");
    double scale = 0;
    assert_non_null(fp);
    assert_int_equal(fscanf(fp, "%lf", &scale), 1);
    fclose(fp);
    assert_true(scale > 0);
    char rel_text[256], abs_text[256];
    snprintf(rel_text, sizeof rel_text,
             "[{\"name\":\"l\",\"kind\":\"label\",\"sigma_rel\":0.5,\"ridge_rel\":0.05}]");
    snprintf(abs_text, sizeof abs_text,
             "[{\"name\":\"l\",\"kind\":\"label\",\"sigma\":%.17g,\"ridge_rel\":0.05}]",
             0.5 * scale);
    struct tpv_noise *rel, *abs_;
    size_t nrel = 0, nabs = 0;
    struct tpv_err err;
    json_t *a1 = json_loads(rel_text, 0, NULL), *a2 = json_loads(abs_text, 0, NULL);
    if (tpv_noise_list_parse(a1, &rel, &nrel, &err) != TPV_OK ||
        tpv_noise_list_parse(a2, &abs_, &nabs, &err) != TPV_OK)
        fail_msg("noise models: %s [%s]", err.message, err.field);
    json_t *spec = load_spec();
    struct tpv_candidate_files model = model_files(spec);
    struct tpv_candidate_files dump = { .source = TPV_SOURCE_JACOBIAN,
                                        .jac_fit = path_in("jac_fit.safetensors"),
                                        .jac_probe = path_in("jac_probe.safetensors"),
                                        .blob_path = blob_path };
    struct tpv_run_options opts = { 0 };
    struct tpv_score *a, *b;
    size_t na, nb;
    json_t *sta, *stb;
    uint64_t need;
    if (tpv_candidate_score(&model, rel, nrel, &opts, &a, &na, &sta, NULL, &err) != TPV_OK)
        fail_msg("score(model, sigma_rel): %s", err.message);
    if (tpv_candidate_score(&dump, abs_, nabs, &opts, &b, &nb, &stb, NULL, &err) != TPV_OK)
        fail_msg("score(dump, sigma): %s", err.message);
    assert_int_equal(na, 2);
    assert_int_equal(nb, 2);
    for (size_t i = 0; i < 2; i++) {
        double rel_err = fabs(a[i].value - b[i].value) / fabs(b[i].value);
        if (!(rel_err < 1e-10))
            fail_msg("split %zu: sigma_rel %.17g vs sigma %.17g", i, a[i].value, b[i].value);
        double got = json_real_value(json_object_get(a[i].details, "mean_abs_output"));
        assert_true(fabs(got - scale) <= 1e-12 * scale);
        double sigma = json_real_value(json_object_get(a[i].details, "sigma"));
        assert_true(fabs(sigma - 0.5 * scale) <= 1e-12 * scale);
    }
    tpv_scores_free(a, na);
    tpv_scores_free(b, nb);
    json_decref(sta);
    json_decref(stb);

    tpv_err_clear(&err);
    assert_int_equal(tpv_candidate_check(&dump, rel, nrel, &opts, &need, &err), TPV_EINVAL);
    assert_string_equal(err.field, "noise_models[0]");
    assert_non_null(strstr(err.message, "sigma_rel"));
    free(rel);
    free(abs_);
    json_decref(a1);
    json_decref(a2);
    json_decref(spec);
}

static void test_model_equals_dump_for_every_noise_model(void **state)
{
    (void)state;
    size_t nm;
    struct tpv_noise *models = parse_models(&nm);
    json_t *spec = load_spec();
    struct tpv_candidate_files model = model_files(spec);
    struct tpv_candidate_files dump = { .source = TPV_SOURCE_JACOBIAN,
                                        .jac_fit = path_in("jac_fit.safetensors"),
                                        .jac_probe = path_in("jac_probe.safetensors"),
                                        .weights = path_in("model/weights.safetensors"),
                                        .blob_path = blob_path };
    struct tpv_run_options opts = { 0 };
    struct tpv_err err;
    uint64_t need;
    struct tpv_score *a, *b;
    size_t na, nb;
    json_t *sta, *stb;

    if (tpv_candidate_check(&model, models, nm, &opts, &need, &err) != TPV_OK)
        fail_msg("check(model): %s [%s]", err.message, err.field);
    assert_true(need > 0);
    if (tpv_candidate_score(&model, models, nm, &opts, &a, &na, &sta, NULL, &err) != TPV_OK)
        fail_msg("score(model): %s", err.message);
    if (tpv_candidate_score(&dump, models, nm, &opts, &b, &nb, &stb, NULL, &err) != TPV_OK)
        fail_msg("score(dump): %s", err.message);
    assert_int_equal(na, 2 * nm); /* every model on fit and probe */
    assert_int_equal(na, nb);
    for (size_t i = 0; i < na; i++) {
        assert_string_equal(a[i].noise, b[i].noise);
        assert_int_equal(a[i].split, b[i].split);
        assert_string_equal(a[i].estimator, "exact");
        assert_true(a[i].value > 0 && isfinite(a[i].value));
        double rel = fabs(a[i].value - b[i].value) / fabs(b[i].value);
        if (rel > 1e-9)
            fail_msg("%s/%s: model %.17g vs dump %.17g (rel %.3g)", a[i].noise,
                     tpv_split_name(a[i].split), a[i].value, b[i].value, rel);
    }
    double ra = json_number_value(json_object_get(sta, "isotropic_ratio"));
    double rb = json_number_value(json_object_get(stb, "isotropic_ratio"));
    assert_true(ra > 0 && fabs(ra - rb) <= 1e-9 * rb);
    tpv_scores_free(a, na);
    tpv_scores_free(b, nb);
    json_decref(sta);
    json_decref(stb);
    json_decref(spec);
    free(models);
}

/* With a flop budget below the exact diagonals' cost, auto switches the diagonal-family models
 * (and the stability traces) to Hutchinson over output projections: values within a few standard
 * errors of the exact ones, the reason and the numbers in details. */
static void test_auto_uses_hutchinson_over_the_flop_budget(void **state)
{
    (void)state;
    size_t nm;
    struct tpv_noise *models = parse_models(&nm);
    json_t *spec = load_spec();
    struct tpv_candidate_files c = model_files(spec);
    struct tpv_run_options exact_opts = { 0 }, budget_opts = { .flop_budget = 1e3 };
    struct tpv_err err;
    struct tpv_score *a, *b;
    size_t na, nb;
    json_t *sta, *stb;
    for (size_t i = 0; i < nm; i++)
        models[i].target_rel_error = 0.002; /* tight, so the comparison below has teeth */
    if (tpv_candidate_score(&c, models, nm, &exact_opts, &a, &na, &sta, NULL, &err) != TPV_OK)
        fail_msg("exact: %s", err.message);
    if (tpv_candidate_score(&c, models, nm, &budget_opts, &b, &nb, &stb, NULL, &err) != TPV_OK)
        fail_msg("budget: %s", err.message);
    assert_int_equal(na, nb);
    int stochastic = 0;
    for (size_t i = 0; i < na; i++) {
        bool diag_family = b[i].kind == TPV_NOISE_ISOTROPIC || b[i].kind == TPV_NOISE_SGD ||
                           b[i].kind == TPV_NOISE_QUANTIZATION || b[i].kind == TPV_NOISE_DIAGONAL;
        if (!diag_family) {
            assert_string_equal(b[i].estimator, "exact");
            assert_true(b[i].value == a[i].value);
            continue;
        }
        stochastic++;
        assert_string_equal(b[i].estimator, "hutchinson");
        assert_true(b[i].samples >= 8 && b[i].stderr_value > 0);
        assert_non_null(strstr(json_string_value(json_object_get(b[i].details, "estimator_reason")),
                               "flop budget"));
        assert_true(json_number_value(json_object_get(b[i].details, "exact_flops")) > 1e3);
        double z = fabs(b[i].value - a[i].value) / b[i].stderr_value;
        if (z > 5)
            fail_msg("%s/%s: hutchinson %.6g +- %.2g vs exact %.6g (%.1f stderr)", b[i].noise,
                     tpv_split_name(b[i].split), b[i].value, b[i].stderr_value, a[i].value, z);
    }
    assert_int_equal(stochastic, 2 * 6); /* iso, three quantizations, sgd, diag; both splits */
    assert_string_equal(json_string_value(json_object_get(stb, "trace_estimator")), "hutchinson");
    assert_string_equal(json_string_value(json_object_get(sta, "trace_estimator")), "exact");
    double tf = json_number_value(json_object_get(stb, "trace_fit"));
    double tf_exact = json_number_value(json_object_get(sta, "trace_fit"));
    double tf_se = json_number_value(json_object_get(stb, "trace_fit_stderr"));
    assert_true(tf_se > 0 && fabs(tf - tf_exact) <= 5 * tf_se);
    tpv_scores_free(a, na);
    tpv_scores_free(b, nb);
    json_decref(sta);
    json_decref(stb);
    json_decref(spec);
    free(models);
}

static void test_jbr_on_checkpoint(void **state)
{
    (void)state;
    json_t *spec = load_spec();
    struct tpv_candidate_files c = model_files(spec);
    struct tpv_err err;
    json_t *res = NULL;
    /* confidence 0 keeps every sample: 7 + 6 hidden units */
    if (tpv_jbr_run(&c, 0.0, 5, &res, NULL, &err) != TPV_OK)
        fail_msg("jbr: %s", err.message);
    assert_int_equal(json_array_size(json_object_get(res, "units")), 13);
    assert_int_equal(json_array_size(json_object_get(res, "order")), 13);
    json_decref(res);
    json_decref(spec);
}

static void test_bad_checkpoints_name_the_field(void **state)
{
    (void)state;
    size_t nm;
    struct tpv_noise *models = parse_models(&nm);
    struct tpv_run_options opts = { 0 };
    struct tpv_err err;
    uint64_t need;

    json_t *spec = load_spec();
    json_object_set_new(json_array_get(json_object_get(spec, "layers"), 1), "type",
                        json_string("swish"));
    struct tpv_candidate_files c = model_files(spec);
    assert_int_equal(tpv_candidate_check(&c, models, nm, &opts, &need, &err), TPV_EINVAL);
    assert_string_equal(err.field, "model.spec.layers[1].type");
    json_decref(spec);

    spec = load_spec();
    json_array_set_new(json_object_get(spec, "input_shape"), 0, json_integer(4));
    c = model_files(spec);
    assert_int_not_equal(tpv_candidate_check(&c, models, nm, &opts, &need, &err), TPV_OK);
    json_decref(spec);

    spec = load_spec();
    c = model_files(spec);
    c.fit_inputs = NULL;
    assert_int_equal(tpv_candidate_check(&c, models, nm, &opts, &need, &err), TPV_EPRECONDITION);
    assert_string_equal(err.field, "inputs.fit");
    c = model_files(spec);
    c.probe_inputs = path_in("model/weights.safetensors"); /* several tensors, none "inputs" */
    assert_int_equal(tpv_candidate_check(&c, models, nm, &opts, &need, &err), TPV_EINVAL);
    assert_string_equal(err.field, "inputs.probe");
    json_decref(spec);
    free(models);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_model_equals_dump_for_every_noise_model),
        cmocka_unit_test(test_label_sigma_rel),
        cmocka_unit_test(test_auto_uses_hutchinson_over_the_flop_budget),
        cmocka_unit_test(test_jbr_on_checkpoint),
        cmocka_unit_test(test_bad_checkpoints_name_the_field),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
