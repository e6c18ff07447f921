/* test_onnx_jbr.c: JBR on ONNX graphs (core/onnx_jbr.h) against PyTorch.  tests/torch/onnx_jbr.py
 * (Debian's /usr/bin/python3, into a temporary directory) exports a chain CNN (Conv, BatchNorm,
 * ReLU, pools, Flatten, two Linear) and a residual CNN (a stem whose channels enter the block's
 * first conv and, through the skip Add, the classifier; a depthwise conv) in float64 and computes
 * the scores by autograd, every sample kept and with a confidence that drops some, with
 * mini-batches whose last one is short, input sets longer than one pass, and a graph exported
 * with a fixed batch of 1 (run one sample at a time).  The scores must
 * match to 1e-9 relative, the units carry the weight tensors' names and channel indices, the
 * classifier is not scored, and the order is ascending. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/onnx_jbr.h"
#include "core/tensor.h"
#include "tests/unit/torch_fixture.h"

#define TOL 1e-9

static char tmpdir[256];

/* Every unit: its layer name and index as layers.txt lists them, its score as PyTorch's. */
static void check_units(const char *name, const json_t *res, const double *want, size_t H)
{
    char path[512];
    size_t len;
    snprintf(path, sizeof path, "%s/%s.layers.txt", tmpdir, name);
    char *text = torch_fixture_slurp(path, &len);
    const json_t *units = json_object_get(res, "units");
    assert_int_equal(json_array_size(units), H);
    size_t u = 0, nlayers = 0;
    char *save = NULL;
    for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        char lname[256];
        unsigned c;
        assert_int_equal(sscanf(line, "%255s %u", lname, &c), 2);
        for (unsigned j = 0; j < c; j++, u++) {
            const json_t *un = json_array_get(units, u);
            assert_string_equal(json_string_value(json_object_get(un, "layer")), lname);
            assert_int_equal(json_integer_value(json_object_get(un, "index")), j);
            double got = json_number_value(json_object_get(un, "score"));
            if (!(fabs(got - want[u]) <= TOL * fabs(want[u])))
                fail_msg("%s unit %zu (%s[%u]): %.17g vs PyTorch %.17g", name, u, lname, j, got,
                         want[u]);
        }
        nlayers++;
    }
    assert_int_equal(u, H);
    assert_int_equal(json_array_size(json_object_get(res, "layers")), nlayers);
    free(text);
    /* the order: a permutation, ascending scores */
    const json_t *order = json_object_get(res, "order");
    assert_int_equal(json_array_size(order), H);
    double prev = -1;
    for (size_t i = 0; i < H; i++) {
        size_t k = (size_t)json_integer_value(json_array_get(order, i));
        assert_true(k < H);
        double s = json_number_value(json_object_get(json_array_get(units, k), "score"));
        assert_true(s >= prev);
        prev = s;
    }
}

static void run_case(const char *name, double confidence, unsigned batch, unsigned kept)
{
    char path[512];
    size_t len;
    struct tpv_err err;
    snprintf(path, sizeof path, "%s/%s.onnx", tmpdir, name);
    void *buf = torch_fixture_slurp(path, &len);
    struct tpv_onnx_model *m = NULL;
    if (tpv_onnx_model_load(&m, buf, len, NULL, 0, &err))
        fail_msg("%s: load: %s", name, err.message);
    free(buf);
    struct tpv_tensor_file *xf = NULL, *sf = NULL;
    snprintf(path, sizeof path, "%s/%s.input.npy", tmpdir, name);
    assert_int_equal(tpv_tensor_file_open(&xf, path, &err), TPV_OK);
    snprintf(path, sizeof path, "%s/%s.scores.npy", tmpdir, name);
    assert_int_equal(tpv_tensor_file_open(&sf, path, &err), TPV_OK);
    const struct tpv_tensor *x = tpv_tensor_file_at(xf, 0), *st = tpv_tensor_file_at(sf, 0);
    double *want = malloc(st->numel * sizeof *want);
    assert_non_null(want);
    tpv_tensor_read_f64(st, 0, st->numel, want);
    json_t *res = NULL;
    if (tpv_onnx_jbr_compute(m, x, confidence, batch, &res, NULL, &err))
        fail_msg("%s: %s", name, err.message);
    assert_int_equal(json_integer_value(json_object_get(res, "kept_samples")), kept);
    assert_int_equal(json_integer_value(json_object_get(res, "batches")),
                     (kept + batch - 1) / batch);
    check_units(name, res, want, st->numel);
    json_decref(res);
    free(want);
    tpv_tensor_file_close(xf);
    tpv_tensor_file_close(sf);
    tpv_onnx_model_free(m);
}

static void test_against_pytorch(void **state)
{
    (void)state;
    char path[512];
    snprintf(path, sizeof path, "%s/manifest.txt", tmpdir);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    char name[64];
    double conf;
    unsigned batch, kept, cases = 0;
    while (fscanf(f, "%63s %lf %u %u", name, &conf, &batch, &kept) == 4) {
        run_case(name, conf, batch, kept);
        cases++;
    }
    fclose(f);
    assert_int_equal(cases, 5);
}

/* The residual CNN's stem is read where it enters the block and, through the skip, the
 * classifier: two "in" values; a threshold nobody passes is a precondition naming confidence. */
static void test_sites_and_refusals(void **state)
{
    (void)state;
    char path[512];
    size_t len;
    struct tpv_err err;
    snprintf(path, sizeof path, "%s/res_all.onnx", tmpdir);
    void *buf = torch_fixture_slurp(path, &len);
    struct tpv_onnx_model *m = NULL;
    assert_int_equal(tpv_onnx_model_load(&m, buf, len, NULL, 0, &err), TPV_OK);
    free(buf);
    struct tpv_tensor_file *xf = NULL;
    snprintf(path, sizeof path, "%s/res_all.input.npy", tmpdir);
    assert_int_equal(tpv_tensor_file_open(&xf, path, &err), TPV_OK);
    const struct tpv_tensor *x = tpv_tensor_file_at(xf, 0);
    json_t *res = NULL;
    assert_int_equal(tpv_onnx_jbr_compute(m, x, 0.0, 7, &res, NULL, &err), TPV_OK);
    const json_t *layers = json_object_get(res, "layers");
    assert_int_equal(json_array_size(layers), 3);
    const json_t *stem = json_array_get(layers, 0);
    assert_string_equal(json_string_value(json_object_get(stem, "layer")), "net.stem.weight");
    assert_string_equal(json_string_value(json_object_get(stem, "op")), "Conv");
    assert_int_equal(json_array_size(json_object_get(stem, "in")), 2);
    json_decref(res);
    assert_int_equal(tpv_onnx_jbr_compute(m, x, 0.999999, 7, &res, NULL, &err),
                     TPV_EPRECONDITION);
    assert_string_equal(err.field, "confidence");
    assert_int_equal(tpv_onnx_jbr_compute(m, x, 1.0, 7, &res, NULL, &err), TPV_EINVAL);
    assert_string_equal(err.field, "confidence");
    tpv_tensor_file_close(xf);
    tpv_onnx_model_free(m);
}

static int setup(void **state)
{
    (void)state;
    return torch_fixture_make(tmpdir, sizeof tmpdir, "onnx-jbr", "onnx_jbr.py");
}

static int teardown(void **state)
{
    (void)state;
    return torch_fixture_remove(tmpdir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_against_pytorch),
        cmocka_unit_test(test_sites_and_refusals),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
