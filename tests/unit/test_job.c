/* test_job.c: the job module (core/job.h) and the two depths of an open (core/score.h):
 * the stored source parsed once (absent members never null, earlier "probe": null read as absent,
 * duplicate keys refused), JBR parameters under one rule, submission checks that read headers only
 * while the worker's full open refuses bad values naming the tensor and the index, the memory plan
 * counting the copy of a misaligned tensor at both depths, and the worker's encoding of scores
 * failing instead of dropping details. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "core/job.h"
#include "server/worker.h"
#include "storage/store.h"
#include "tests/support/npy.h"

#define D64 "sha256:1111111111111111111111111111111111111111111111111111111111111111"
#define E64 "sha256:2222222222222222222222222222222222222222222222222222222222222222"

static const char *models_text = "[{\"name\":\"iso\",\"kind\":\"isotropic\",\"sigma\":0.1}]";

static void test_source_roundtrip(void **state)
{
    (void)state;
    struct tpv_job job;
    struct tpv_err err;
    /* Earlier versions stored "probe": null: it is absent, not a probe dump. */
    const char *old = "{\"kind\":\"jacobian\",\"fit\":\"" D64 "\",\"probe\":null,\"weights\":null}";
    assert_int_equal(tpv_job_parse(&job, old, models_text, "score", NULL, &err), TPV_OK);
    assert_int_equal(job.src.kind, TPV_SOURCE_JACOBIAN);
    assert_string_equal(job.src.fit, D64);
    assert_string_equal(job.src.probe, "");
    assert_false(tpv_job_source_has_probe_dump(&job.src));
    assert_int_equal(job.nmodels, 1);
    json_t *canon = tpv_job_source_json(&job.src);
    assert_non_null(canon);
    assert_null(json_object_get(canon, "probe"));
    assert_null(json_object_get(canon, "weights"));
    json_decref(canon);
    tpv_job_free(&job);

    const char *with_probe = "{\"kind\":\"jacobian\",\"fit\":\"" D64 "\",\"probe\":\"" E64 "\","
                             "\"layout\":[\"a\",\"b\"]}";
    assert_int_equal(tpv_job_parse(&job, with_probe, models_text, "score", NULL, &err), TPV_OK);
    assert_true(tpv_job_source_has_probe_dump(&job.src));
    assert_int_equal(job.src.nlayout, 2);
    assert_string_equal(job.src.layout[1], "b");
    tpv_job_free(&job);

    const char *model = "{\"kind\":\"model\",\"spec\":{\"format\":\"x\"},\"weights\":\"" D64 "\","
                        "\"inputs\":{\"fit\":\"" E64 "\",\"probe\":null}}";
    assert_int_equal(tpv_job_parse(&job, model, models_text, "score", NULL, &err), TPV_OK);
    assert_int_equal(job.src.kind, TPV_SOURCE_MODEL);
    assert_non_null(job.src.spec);
    assert_string_equal(job.src.fit, E64);
    assert_string_equal(job.src.probe, "");
    canon = tpv_job_source_json(&job.src);
    assert_null(json_object_get(json_object_get(canon, "inputs"), "probe"));
    assert_non_null(json_object_get(json_object_get(canon, "inputs"), "fit"));
    json_decref(canon);
    tpv_job_free(&job);

    /* Duplicate keys are refused in stored texts as in request bodies. */
    const char *dup = "{\"kind\":\"jacobian\",\"fit\":\"" D64 "\",\"fit\":\"" E64 "\"}";
    assert_int_equal(tpv_job_parse(&job, dup, models_text, "score", NULL, &err), TPV_EINVAL);
    tpv_job_free(&job);
    assert_int_equal(tpv_job_parse(&job, "{\"kind\":\"jacobian\"}", models_text, "score", NULL,
                                   &err), TPV_EINVAL);
    assert_string_equal(err.field, "jacobian.fit");
    tpv_job_free(&job);
    assert_int_equal(tpv_job_parse(&job, old, models_text, "bogus", NULL, &err), TPV_EINVAL);
    tpv_job_free(&job);
}

/* An ONNX source: its digest, its parameter names and the study's input sets survive the stored
 * form; malformed members are refused naming model.onnx / model.parameters. */
static void test_onnx_source(void **state)
{
    (void)state;
    struct tpv_job job;
    struct tpv_err err;
    const char *text = "{\"kind\":\"onnx\",\"onnx\":\"" D64 "\",\"parameters\":[\"a.w\",\"b\"],"
                       "\"inputs\":{\"fit\":\"" E64 "\"}}";
    assert_int_equal(tpv_job_parse(&job, text, models_text, "score", NULL, &err), TPV_OK);
    assert_int_equal(job.src.kind, TPV_SOURCE_ONNX);
    assert_string_equal(job.src.onnx, D64);
    assert_string_equal(job.src.fit, E64);
    assert_string_equal(job.src.probe, "");
    assert_int_equal(job.src.nparams, 2);
    assert_string_equal(job.src.params[1], "b");
    json_t *back = tpv_job_source_json(&job.src);
    char *again = json_dumps(back, JSON_COMPACT);
    assert_string_equal(again, text);
    assert_string_equal(tpv_source_kind_name(job.src.kind), "onnx");
    free(again);
    json_decref(back);
    tpv_job_free(&job);
    static const char *const bad[][2] = {
        { "{\"kind\":\"onnx\"}", "model.onnx" },
        { "{\"kind\":\"onnx\",\"onnx\":\"sha256:zz\"}", "model.onnx" },
        { "{\"kind\":\"onnx\",\"onnx\":\"" D64 "\",\"parameters\":[]}", "model.parameters" },
        { "{\"kind\":\"onnx\",\"onnx\":\"" D64 "\",\"parameters\":[\"\"]}", "model.parameters" },
        { "{\"kind\":\"onnx\",\"onnx\":\"" D64 "\",\"parameters\":\"a\"}", "model.parameters" },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(tpv_job_parse(&job, bad[i][0], models_text, "score", NULL, &err),
                         TPV_EINVAL);
        assert_string_equal(err.field, bad[i][1]);
        tpv_job_free(&job);
    }
}

static void test_jbr_params(void **state)
{
    (void)state;
    struct tpv_jbr_params p;
    struct tpv_err err;
    assert_int_equal(tpv_jbr_params_parse(NULL, &p, &err), TPV_OK);
    assert_true(p.confidence == TPV_JBR_DEFAULT_CONFIDENCE);
    assert_int_equal(p.batch_size, TPV_JBR_DEFAULT_BATCH);
    struct {
        const char *json;
        int rc;
        const char *field;
    } cases[] = {
        { "{\"confidence\":0}", TPV_OK, NULL },     /* keeps every sample */
        { "{\"confidence\":0.99}", TPV_OK, NULL },
        { "{\"confidence\":1}", TPV_EINVAL, "confidence" }, /* would keep none */
        { "{\"confidence\":-0.1}", TPV_EINVAL, "confidence" },
        { "{\"confidence\":\"0.5\"}", TPV_EINVAL, "confidence" },
        { "{\"batch_size\":64}", TPV_OK, NULL },
        { "{\"batch_size\":64.0}", TPV_OK, NULL },
        { "{\"batch_size\":1.5}", TPV_EINVAL, "batch_size" },
        { "{\"batch_size\":0}", TPV_EINVAL, "batch_size" },
        { "{\"batch_size\":1000001}", TPV_EINVAL, "batch_size" },
        { "{\"colour\":1}", TPV_EINVAL, "colour" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        json_t *j = json_loads(cases[i].json, 0, NULL);
        tpv_err_clear(&err);
        int rc = tpv_jbr_params_parse(j, &p, &err);
        if (rc != cases[i].rc)
            fail_msg("%s: rc %d, want %d (%s)", cases[i].json, rc, cases[i].rc, err.message);
        if (cases[i].field)
            assert_string_equal(err.field, cases[i].field);
        json_decref(j);
    }
    /* The stored params of a JBR job go through the same rule. */
    struct tpv_job job;
    const char *src = "{\"kind\":\"model\",\"spec\":\"" D64 "\",\"weights\":\"" D64 "\"}";
    assert_int_equal(tpv_job_parse(&job, src, models_text, "jbr",
                                   "{\"confidence\":0.5,\"batch_size\":7}", &err), TPV_OK);
    assert_int_equal(job.kind, TPV_JOB_JBR);
    assert_true(job.jbr.confidence == 0.5);
    assert_int_equal(job.jbr.batch_size, 7);
    tpv_job_free(&job);
}

/* ---- files: a named dump (safetensors) and its blobs --------------------------------------- */

static char dir[256];

static const char *path_in(const char *name)
{
    static char buf[8][512];
    static int k;
    k = (k + 1) % 8;
    snprintf(buf[k], sizeof buf[k], "%s/%s", dir, name);
    return buf[k];
}

struct st_tensor {
    const char *name;
    int rank;
    uint64_t shape[4];
    const double *v;
};

/* A float64 safetensors file whose data starts `skew` bytes past an 8-byte boundary of the file
 * (the header is padded with spaces to get there), so that skew 4 misaligns every tensor. */
static void write_safetensors(const char *path, const struct st_tensor *t, int n, int skew)
{
    char hdr[4096];
    size_t h = 0, off = 0;
    h += (size_t)snprintf(hdr + h, sizeof hdr - h, "{");
    for (int i = 0; i < n; i++) {
        uint64_t numel = 1;
        h += (size_t)snprintf(hdr + h, sizeof hdr - h, "%s\"%s\":{\"dtype\":\"F64\",\"shape\":[",
                              i ? "," : "", t[i].name);
        for (int r = 0; r < t[i].rank; r++) {
            numel *= t[i].shape[r];
            h += (size_t)snprintf(hdr + h, sizeof hdr - h, "%s%llu", r ? "," : "",
                                  (unsigned long long)t[i].shape[r]);
        }
        h += (size_t)snprintf(hdr + h, sizeof hdr - h, "],\"data_offsets\":[%zu,%zu]}", off,
                              off + numel * 8);
        off += numel * 8;
    }
    h += (size_t)snprintf(hdr + h, sizeof hdr - h, "}");
    while ((8 + h) % 8 != (size_t)skew)
        hdr[h++] = ' ';
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    uint64_t hl = h;
    unsigned char le[8];
    for (int i = 0; i < 8; i++)
        le[i] = (unsigned char)(hl >> (8 * i));
    assert_int_equal(fwrite(le, 1, 8, f), 8);
    assert_int_equal(fwrite(hdr, 1, h, f), h);
    for (int i = 0; i < n; i++) {
        uint64_t numel = 1;
        for (int r = 0; r < t[i].rank; r++)
            numel *= t[i].shape[r];
        assert_int_equal(fwrite(t[i].v, 8, numel, f), numel);
    }
    fclose(f);
}

/* Parameters: a.weight (2 x 3) and b.bias (2): p = 8; dumps over n = 4 samples, K = 1. */
static double W[6] = { 0.5, -0.25, 1.0, 0.75, -1.5, 0.125 }, B[2] = { 0.1, -0.2 };
static double JA[4 * 6], JB[4 * 2];

static void write_dump(const char *name, int skew, double poison)
{
    for (int i = 0; i < 24; i++)
        JA[i] = 0.1 * (i % 5) - 0.2;
    for (int i = 0; i < 8; i++)
        JB[i] = 0.3 * (i % 3);
    JA[13] = poison;
    struct st_tensor t[2] = { { "a.weight", 4, { 4, 1, 2, 3 }, JA },
                              { "b.bias", 3, { 4, 1, 2 }, JB } };
    write_safetensors(path_in(name), t, 2, skew);
}

static void write_named(const char *name, const double *a, const double *b)
{
    struct st_tensor t[2] = { { "a.weight", 2, { 2, 3 }, a }, { "b.bias", 1, { 2 }, b } };
    write_safetensors(path_in(name), t, 2, 0);
}

static const char *blob_path(void *ctx, const char *digest)
{
    (void)ctx;
    return strcmp(digest, D64) == 0 ? path_in("blob.safetensors") : NULL;
}

/* Paths kept in their own buffers (path_in's rotate). */
static struct tpv_candidate_files dump_files(const char *fit)
{
    static char fits[4][512], weights[512];
    static int k;
    struct tpv_candidate_files c;
    memset(&c, 0, sizeof c);
    c.source = TPV_SOURCE_JACOBIAN;
    k = (k + 1) % 4;
    snprintf(fits[k], sizeof fits[k], "%s", path_in(fit));
    snprintf(weights, sizeof weights, "%s", path_in("weights.safetensors"));
    c.jac_fit = fits[k];
    c.weights = weights;
    c.blob_path = blob_path;
    return c;
}

static int setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof dir, "/tmp/tpv-test-job-XXXXXX");
    if (!mkdtemp(dir))
        return -1;
    write_named("weights.safetensors", W, B);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    const char *files[] = { "weights.safetensors", "nan.safetensors", "aligned.safetensors",
                            "skewed.safetensors", "blob.safetensors", "x.npy", "xnan.npy",
                            "wnan.safetensors" };
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++)
        unlink(path_in(files[i]));
    rmdir(dir);
    return 0;
}

static struct tpv_noise iso_model(void)
{
    struct tpv_noise m;
    memset(&m, 0, sizeof m);
    snprintf(m.name, sizeof m.name, "iso");
    m.kind = TPV_NOISE_ISOTROPIC;
    m.sigma = 0.1;
    m.target_rel_error = 0.01;
    m.max_samples = 100;
    return m;
}

/* Submission reads headers only; the job's full open refuses the NaN naming tensor and index. */
static void test_nan_dump_fails_the_job(void **state)
{
    (void)state;
    write_dump("nan.safetensors", 0, NAN);
    struct tpv_candidate_files c = dump_files("nan.safetensors");
    struct tpv_noise iso = iso_model();
    struct tpv_run_options opts = { 0 };
    struct tpv_err err;
    uint64_t need = 0;
    int rc = tpv_candidate_check(&c, &iso, 1, &opts, &need, &err);
    if (rc != TPV_OK)
        fail_msg("check: %s", err.message);
    assert_true(need > 0);
    struct tpv_score *sc = NULL;
    size_t ns = 0;
    json_t *st = NULL;
    assert_int_equal(tpv_candidate_score(&c, &iso, 1, &opts, &sc, &ns, &st, NULL, &err),
                     TPV_EFORMAT);
    assert_non_null(strstr(err.message, "'a.weight'"));
    assert_non_null(strstr(err.message, "non-finite value at index 13"));
    assert_null(sc);
    assert_null(st);
}

/* Variances and masks: the header check passes, the full open names the first bad index. */
static void test_blob_values_fail_the_job(void **state)
{
    (void)state;
    write_dump("aligned.safetensors", 0, 0.5);
    struct tpv_candidate_files c = dump_files("aligned.safetensors");
    struct tpv_noise m;
    memset(&m, 0, sizeof m);
    snprintf(m.name, sizeof m.name, "d");
    m.kind = TPV_NOISE_DIAGONAL;
    snprintf(m.variances, sizeof m.variances, "%s", D64);
    struct tpv_run_options opts = { 0 };
    struct tpv_err err;
    uint64_t need;
    struct tpv_score *sc = NULL;
    size_t ns = 0;
    json_t *st = NULL;
    struct {
        double a[6], b[2];
        const char *want;
    } cases[] = {
        { { 1, 1, 1, 1, NAN, 1 }, { 1, 1 }, "non-finite variance (nan) at index 4 of 'a.weight'" },
        { { 1, 1, 1, 1, 1, 1 }, { 1, -2 }, "negative variance (-2) at index 1 of 'b.bias'" },
    };
    for (size_t i = 0; i < 2; i++) {
        write_named("blob.safetensors", cases[i].a, cases[i].b);
        assert_int_equal(tpv_candidate_check(&c, &m, 1, &opts, &need, &err), TPV_OK);
        assert_int_equal(tpv_candidate_score(&c, &m, 1, &opts, &sc, &ns, &st, NULL, &err),
                         TPV_EINVAL);
        assert_string_equal(err.field, "noise_models[0]");
        if (!strstr(err.message, cases[i].want))
            fail_msg("got '%s', want '%s'", err.message, cases[i].want);
    }
    /* A mask holds 0 or 1. */
    m.kind = TPV_NOISE_PRUNE;
    m.variances[0] = '\0';
    snprintf(m.mask, sizeof m.mask, "%s", D64);
    double ma[6] = { 0, 1, 0, 1, 0.5, 1 }, mb[2] = { 0, 0 };
    write_named("blob.safetensors", ma, mb);
    if (tpv_candidate_check(&c, &m, 1, &opts, &need, &err) != TPV_OK)
        fail_msg("check: %s", err.message);
    assert_int_equal(tpv_candidate_score(&c, &m, 1, &opts, &sc, &ns, &st, NULL, &err),
                     TPV_EINVAL);
    assert_non_null(strstr(err.message, "mask value 0.5 at index 4 of 'a.weight'"));
    ma[4] = 1;
    write_named("blob.safetensors", ma, mb);
    assert_int_equal(tpv_candidate_score(&c, &m, 1, &opts, &sc, &ns, &st, NULL, &err), TPV_OK);
    tpv_scores_free(sc, ns);
    json_decref(st);
}

/* A misaligned tensor is copied whole by the full open: both depths plan that copy. */
static void test_plan_counts_misaligned_copy(void **state)
{
    (void)state;
    write_dump("aligned.safetensors", 0, 0.5);
    write_dump("skewed.safetensors", 4, 0.5);
    struct tpv_noise iso = iso_model();
    struct tpv_run_options opts = { 0 };
    struct tpv_err err;
    uint64_t need_aligned, need_skewed;
    struct tpv_candidate_files a = dump_files("aligned.safetensors");
    struct tpv_candidate_files s = dump_files("skewed.safetensors");
    assert_int_equal(tpv_candidate_check(&a, &iso, 1, &opts, &need_aligned, &err), TPV_OK);
    assert_int_equal(tpv_candidate_check(&s, &iso, 1, &opts, &need_skewed, &err), TPV_OK);
    assert_int_equal(need_skewed - need_aligned, (4 * 6 + 4 * 2) * 8); /* n K p doubles */
    struct tpv_score *sc[2];
    size_t ns[2];
    json_t *st[2];
    assert_int_equal(tpv_candidate_score(&a, &iso, 1, &opts, &sc[0], &ns[0], &st[0], NULL, &err),
                     TPV_OK);
    assert_int_equal(tpv_candidate_score(&s, &iso, 1, &opts, &sc[1], &ns[1], &st[1], NULL, &err),
                     TPV_OK);
    /* The worker's plan is the submission's, and the numbers do not depend on the alignment. */
    assert_int_equal(json_integer_value(json_object_get(st[1], "memory_bytes")), need_skewed);
    assert_int_equal(json_integer_value(json_object_get(st[0], "memory_bytes")), need_aligned);
    assert_true(sc[0][0].value == sc[1][0].value);
    for (int i = 0; i < 2; i++) {
        tpv_scores_free(sc[i], ns[i]);
        json_decref(st[i]);
    }
    /* With a limit between the two, the skewed one is refused at submission. */
    opts.max_memory = need_aligned;
    assert_int_equal(tpv_candidate_check(&s, &iso, 1, &opts, &need_skewed, &err), TPV_ENOSPACE);
}

/* A score whose details cannot be encoded fails the write instead of losing its details. */
static void test_score_rows_encoding(void **state)
{
    (void)state;
    struct tpv_score sc[2];
    memset(sc, 0, sizeof sc);
    snprintf(sc[0].noise, sizeof sc[0].noise, "iso");
    snprintf(sc[1].noise, sizeof sc[1].noise, "lab");
    sc[1].split = TPV_SPLIT_PROBE;
    sc[0].estimator = sc[1].estimator = "exact";
    sc[0].details = json_pack("{s:i}", "n", 4);
    sc[1].details = json_pack("{s:i}", "n", 4);
    json_t *stab = json_pack("{s:i}", "n_fit", 4);
    struct srv_score_rows r;
    struct tpv_err err;
    assert_int_equal(srv_score_rows_encode(&r, sc, 2, stab, &err), TPV_OK);
    assert_string_equal(r.rows[1].details, "{\"n\":4}");
    assert_string_equal(r.stability, "{\"n_fit\":4}");
    srv_score_rows_free(&r);
    /* Invalid UTF-8 (a string made without jansson's check) makes json_dumps fail. */
    json_object_set_new(sc[1].details, "note", json_string_nocheck("bad \xff"));
    assert_int_equal(srv_score_rows_encode(&r, sc, 2, stab, &err), TPV_EINTERNAL);
    assert_non_null(strstr(err.message, "'lab' (probe split)"));
    srv_score_rows_free(&r);
    json_object_set_new(stab, "note", json_string_nocheck("bad \xff"));
    json_object_del(sc[1].details, "note");
    assert_int_equal(srv_score_rows_encode(&r, sc, 2, stab, &err), TPV_EINTERNAL);
    assert_non_null(strstr(err.message, "stability"));
    srv_score_rows_free(&r);
    srv_score_rows_free(NULL);
    json_decref(sc[0].details);
    json_decref(sc[1].details);
    json_decref(stab);
}

/* A model candidate: the check binds names and shapes without reading a value; the full open
 * converts the weights and scans the inputs, naming tensor/sample and index. */
static void write_bytes(const char *name, const unsigned char *b, size_t len)
{
    FILE *f = fopen(path_in(name), "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(b, 1, len, f), len);
    fclose(f);
}

static void test_model_values_fail_the_job(void **state)
{
    (void)state;
    json_t *spec = json_loads("{\"format\":\"tpv.sequential/v1\",\"input_shape\":[3],\"layers\":"
                              "[{\"type\":\"linear\",\"weight\":\"a.weight\",\"bias\":\"b.bias\"},"
                              "{\"type\":\"tanh\"}]}", 0, NULL);
    assert_non_null(spec);
    double x[12];
    for (int i = 0; i < 12; i++)
        x[i] = 0.1 * i - 0.5;
    uint64_t xs[2] = { 4, 3 };
    size_t len;
    unsigned char *b = test_npy_f64(xs, 2, x, &len);
    write_bytes("x.npy", b, len);
    free(b);
    x[7] = NAN; /* sample 2, element 1 */
    b = test_npy_f64(xs, 2, x, &len);
    write_bytes("xnan.npy", b, len);
    free(b);
    static char wpath[512], xpath[512];
    snprintf(wpath, sizeof wpath, "%s", path_in("weights.safetensors"));
    snprintf(xpath, sizeof xpath, "%s", path_in("x.npy"));
    struct tpv_candidate_files c = { .source = TPV_SOURCE_MODEL, .spec = spec, .weights = wpath,
                                     .fit_inputs = xpath };
    struct tpv_noise iso = iso_model();
    struct tpv_run_options opts = { 0 };
    struct tpv_err err;
    uint64_t need = 0;
    struct tpv_score *sc = NULL;
    size_t ns = 0;
    json_t *st = NULL;
    /* Good files: the check's plan is the job's (the converted parameters counted once). */
    assert_int_equal(tpv_candidate_check(&c, &iso, 1, &opts, &need, &err), TPV_OK);
    assert_int_equal(tpv_candidate_score(&c, &iso, 1, &opts, &sc, &ns, &st, NULL, &err), TPV_OK);
    assert_int_equal(json_integer_value(json_object_get(st, "memory_bytes")), need);
    tpv_scores_free(sc, ns);
    json_decref(st);
    /* A NaN input: accepted by the check, refused by the job with sample and element. */
    snprintf(xpath, sizeof xpath, "%s", path_in("xnan.npy"));
    assert_int_equal(tpv_candidate_check(&c, &iso, 1, &opts, &need, &err), TPV_OK);
    assert_int_equal(tpv_candidate_score(&c, &iso, 1, &opts, &sc, &ns, &st, NULL, &err),
                     TPV_EFORMAT);
    assert_non_null(strstr(err.message, "sample 2 element 1 is not finite"));
    assert_string_equal(err.field, "inputs.fit.inputs");
    json_t *res = NULL;
    assert_int_equal(tpv_jbr_run(&c, 0.5, 8, &res, NULL, &err), TPV_EFORMAT);
    assert_null(res);
    /* A NaN weight: the same, naming the tensor and the index. */
    snprintf(xpath, sizeof xpath, "%s", path_in("x.npy"));
    double wn[6];
    memcpy(wn, W, sizeof wn);
    wn[4] = NAN;
    write_named("wnan.safetensors", wn, B);
    snprintf(wpath, sizeof wpath, "%s", path_in("wnan.safetensors"));
    assert_int_equal(tpv_candidate_check(&c, &iso, 1, &opts, &need, &err), TPV_OK);
    assert_int_equal(tpv_candidate_score(&c, &iso, 1, &opts, &sc, &ns, &st, NULL, &err),
                     TPV_EFORMAT);
    assert_string_equal(err.field, "model.spec.layers[0].weight");
    assert_non_null(strstr(err.message, "'a.weight' has a non-finite value (nan) at index 4"));
    json_decref(spec);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_source_roundtrip),
        cmocka_unit_test(test_onnx_source),
        cmocka_unit_test(test_jbr_params),
        cmocka_unit_test(test_nan_dump_fails_the_job),
        cmocka_unit_test(test_blob_values_fail_the_job),
        cmocka_unit_test(test_plan_counts_misaligned_copy),
        cmocka_unit_test(test_model_values_fail_the_job),
        cmocka_unit_test(test_score_rows_encoding),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
