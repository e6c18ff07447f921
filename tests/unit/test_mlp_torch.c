/* test_mlp_torch.c: interop with PyTorch.  Runs tests/torch/export_and_check.py (Debian's
 * /usr/bin/python3 with torch) into a temporary directory, then loads every case the way the
 * service will (spec JSON, safetensors weights, .npy inputs through tensor.h), computes the MLP
 * source products and JBR scores, and compares them with torch's autograd references: relative
 * error <= 1e-6 for float64 models, 1e-4 for float32 ones.  Skipped when torch is unavailable. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/jbr.h"
#include "core/mlp_source.h"
#include "tests/unit/mlp_testnet.h"

#define PYTHON "/usr/bin/python3"

static char tmpdir[256];

static const struct tpv_tensor *st_find(void *ctx, const char *name)
{
    return tpv_tensor_file_find(ctx, name);
}

static struct tpv_tensor_file *open_file(const char *name)
{
    char path[512];
    struct tpv_tensor_file *f = NULL;
    struct tpv_err err;
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    if (tpv_tensor_file_open(&f, path, &err) != TPV_OK)
        fail_msg("%s: %s", path, err.message);
    return f;
}

/* A reference tensor as float64, checking its element count. */
static double *ref_get(struct tpv_tensor_file *ref, const char *name, uint64_t numel)
{
    const struct tpv_tensor *t = tpv_tensor_file_find(ref, name);
    if (!t)
        fail_msg("reference %s missing", name);
    if (t->numel != numel)
        fail_msg("reference %s has %llu elements, expected %llu", name,
                 (unsigned long long)t->numel, (unsigned long long)numel);
    double *v = malloc(numel * sizeof *v);
    tpv_tensor_read_f64(t, 0, numel, v);
    return v;
}

static void compare(const char *cs, const char *what, const double *got, const double *want,
                    size_t count, double tol)
{
    double e = tnet_relerr(got, want, count);
    if (getenv("TPV_TEST_VERBOSE"))
        fprintf(stderr, "%-16s %-15s relerr %.3g\n", cs, what, e);
    if (!(e <= tol))
        fail_msg("%s %s: relative error %g > %g", cs, what, e, tol);
}

static void run_case(const json_t *c)
{
    const char *name = json_string_value(json_object_get(c, "name"));
    double tol = json_number_value(json_object_get(c, "tol"));
    char path[512];
    struct tpv_err err;
    snprintf(path, sizeof path, "%s/%s", tmpdir,
             json_string_value(json_object_get(c, "spec")));
    json_t *spec = json_load_file(path, 0, NULL);
    assert_non_null(spec);
    struct tpv_tensor_file *wf = open_file(json_string_value(json_object_get(c, "weights")));
    struct tpv_tensor_file *ff = open_file(json_string_value(json_object_get(c, "fit")));
    struct tpv_tensor_file *pf = open_file(json_string_value(json_object_get(c, "probe")));
    struct tpv_tensor_file *rf = open_file(json_string_value(json_object_get(c, "ref")));
    struct tpv_mlp *m = NULL;
    if (tpv_mlp_bind(&m, spec, st_find, wf, &err) != TPV_OK)
        fail_msg("%s: bind: %s: %s", name, err.field, err.message);
    const struct tpv_tensor *xf = tpv_tensor_file_at(ff, 0), *xp = tpv_tensor_file_at(pf, 0);
    struct tpv_jsrc *sf = NULL, *sp = NULL;
    assert_int_equal(tpv_mlp_source_open(&sf, m, xf, &err), TPV_OK);
    assert_int_equal(tpv_mlp_source_open(&sp, m, xp, &err), TPV_OK);
    const uint64_t n = sf->n, mp = sp->n, K = sf->K, p = sf->p;

    double *diag = calloc(p, sizeof *diag), *rdiag = ref_get(rf, "diag", p);
    assert_int_equal(sf->ops->sqdiag(sf, diag, NULL, &err), TPV_OK);
    compare(name, "diag", diag, rdiag, p, tol);
    const struct tpv_layout *lo = tpv_mlp_layout(m);
    double *tr = calloc(lo->nblocks, sizeof *tr), *rtr = ref_get(rf, "block_trace", lo->nblocks);
    for (size_t b = 0; b < lo->nblocks; b++)
        for (uint64_t j = 0; j < lo->blocks[b].count; j++)
            tr[b] += diag[lo->blocks[b].offset + j];
    compare(name, "block_trace", tr, rtr, lo->nblocks, tol);

    double *G = malloc(n * K * n * K * sizeof *G), *rG = ref_get(rf, "gram_fit", n * K * n * K);
    assert_int_equal(sf->ops->gram(sf, sf, G, NULL, &err), TPV_OK);
    compare(name, "gram_fit", G, rG, n * K * n * K, tol);
    double *C = malloc(mp * K * n * K * sizeof *C),
           *rC = ref_get(rf, "gram_probe_fit", mp * K * n * K);
    assert_int_equal(sp->ops->gram(sp, sf, C, NULL, &err), TPV_OK);
    compare(name, "gram_probe_fit", C, rC, mp * K * n * K, tol);

    double *v = ref_get(rf, "v", p), *jv = malloc(n * K * sizeof *jv),
           *rjv = ref_get(rf, "jvp", n * K);
    assert_int_equal(sf->ops->jvp(sf, v, jv, NULL, &err), TPV_OK);
    compare(name, "jvp", jv, rjv, n * K, tol);

    const json_t *jb = json_object_get(c, "jbr");
    if (json_is_object(jb)) {
        json_t *res = NULL;
        double conf = json_number_value(json_object_get(jb, "confidence"));
        uint64_t bs = (uint64_t)json_integer_value(json_object_get(jb, "batch_size"));
        if (tpv_jbr_compute(m, xf, conf, bs, &res, NULL, &err) != TPV_OK)
            fail_msg("%s: jbr: %s", name, err.message);
        assert_int_equal(json_integer_value(json_object_get(res, "kept_samples")),
                         json_integer_value(json_object_get(jb, "kept_samples")));
        assert_int_equal(json_integer_value(json_object_get(res, "batches")),
                         json_integer_value(json_object_get(jb, "batches")));
        const json_t *units = json_object_get(res, "units");
        size_t H = json_array_size(units);
        double *sc = malloc(H * sizeof *sc), *rsc = ref_get(rf, "jbr_scores", H);
        for (size_t u = 0; u < H; u++)
            sc[u] = json_real_value(json_object_get(json_array_get(units, u), "score"));
        /* the first hidden layer's weight is the first linear layer's */
        assert_string_equal(json_string_value(json_object_get(json_array_get(units, 0), "layer")),
                            lo->blocks[0].name);
        compare(name, "jbr_scores", sc, rsc, H, tol);
        free(sc);
        free(rsc);
        json_decref(res);
    }

    free(diag), free(rdiag), free(tr), free(rtr), free(G), free(rG), free(C), free(rC);
    free(v), free(jv), free(rjv);
    tpv_jsrc_free(sf);
    tpv_jsrc_free(sp);
    tpv_mlp_free(m);
    tpv_tensor_file_close(wf);
    tpv_tensor_file_close(ff);
    tpv_tensor_file_close(pf);
    tpv_tensor_file_close(rf);
    json_decref(spec);
}

static void remove_tmpdir(void)
{
    DIR *d = opendir(tmpdir);
    struct dirent *e;
    char path[512];
    while (d && (e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        snprintf(path, sizeof path, "%s/%s", tmpdir, e->d_name);
        unlink(path);
    }
    if (d)
        closedir(d);
    rmdir(tmpdir);
}

static void test_torch_cross_check(void **state)
{
    (void)state;
    const char *root = getenv("TPV_SOURCE_ROOT");
    if (!root || access(PYTHON, X_OK) != 0 ||
        system(PYTHON " -c 'import torch, numpy' >/dev/null 2>&1") != 0) {
        /* The test command installs python3-torch: a missing reference is a failure, not a skip. */
        fail_msg("/usr/bin/python3 with torch and numpy (or TPV_SOURCE_ROOT) is not available");
    }
    snprintf(tmpdir, sizeof tmpdir, "/tmp/tpv-torch-XXXXXX");
    assert_non_null(mkdtemp(tmpdir));
    char cmd[1024];
    snprintf(cmd, sizeof cmd, PYTHON " '%s/tests/torch/export_and_check.py' '%s'", root, tmpdir);
    if (system(cmd) != 0)
        fail_msg("%s failed", cmd);
    char path[512];
    snprintf(path, sizeof path, "%s/manifest.json", tmpdir);
    json_t *man = json_load_file(path, 0, NULL);
    assert_non_null(man);
    const json_t *cases = json_object_get(man, "cases");
    assert_true(json_array_size(cases) >= 7);
    size_t i;
    const json_t *c;
    json_array_foreach(cases, i, c)
        run_case(c);
    json_decref(man);
}

static int teardown(void **state)
{
    (void)state;
    if (tmpdir[0])
        remove_tmpdir();
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_torch_cross_check, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
