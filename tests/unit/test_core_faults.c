/* test_core_faults.c: allocation fault injection in the core, as SQLite's test suite does it: for
 * each job the service runs (a checkpoint candidate checked and scored under every noise model on
 * fit and probe, the same candidate as Jacobian dumps, JBR on the checkpoint), the Nth allocation
 * fails (then, in a second pass, every allocation from the Nth on), for every N up to the number of
 * allocations of one clean run.  Each run must return TPV_ENOMEM and leave no output behind, or
 * succeed with exactly the clean run's outputs (a fallback, not a detail silently dropped), and
 * leak neither a block nor a file descriptor.  The hook is tests/support/fault_alloc.h; the files
 * come from tests/torch/model_vs_dump.py, like test_score_model.c. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "core/score.h"
#include "tests/support/fault_alloc.h"

static char dir[] = "/tmp/tpv-core-faults-XXXXXX";

#define DIGEST_VARIANCES "sha256:1111111111111111111111111111111111111111111111111111111111111111"
#define DIGEST_MASK      "sha256:2222222222222222222222222222222222222222222222222222222222222222"

/* Every noise model kind and option the scoring paths branch on. */
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
    "  \"scope\":\"per_tensor\"},"
    " {\"name\":\"iso_h\",\"kind\":\"isotropic\",\"sigma\":0.1,\"estimator\":\"hutchinson\","
    "  \"max_samples\":8},"
    " {\"name\":\"diag_pp\",\"kind\":\"diagonal\",\"variances\":\"" DIGEST_VARIANCES "\","
    "  \"estimator\":\"hutchpp\",\"max_samples\":9}]";

/* The nonlinear check (core/empirical.c) on the checkpoint: every kind it serves, as a check and
 * as the estimator (a dump cannot serve them, so they are a job of their own). */
static const char *const empirical_models =
    "[{\"name\":\"iso_c\",\"kind\":\"isotropic\",\"sigma\":0.1,\"check\":\"empirical\","
    "  \"max_samples\":3},"
    " {\"name\":\"q_e\",\"kind\":\"quantization\",\"bits\":4,\"scope\":\"per_channel\","
    "  \"estimator\":\"empirical\",\"max_samples\":2},"
    " {\"name\":\"sgd_e\",\"kind\":\"sgd\",\"lr\":0.1,\"batch_size\":4,"
    "  \"estimator\":\"empirical\",\"max_samples\":2},"
    " {\"name\":\"mask_c\",\"kind\":\"prune\",\"mask\":\"" DIGEST_MASK "\",\"check\":\"empirical\"},"
    " {\"name\":\"mag_e\",\"kind\":\"prune\",\"rule\":\"magnitude\",\"fraction\":0.25,"
    "  \"estimator\":\"empirical\"}]";

/* Inputs of the jobs, built once before any fault is armed. */
static json_t *models_json, *empirical_json;
static json_t *spec;
static char path_buf[8][512];

static const char *path_in(int slot, const char *name)
{
    snprintf(path_buf[slot], sizeof path_buf[slot], "%s/%s", dir, name);
    return path_buf[slot];
}

static const char *blob_path(void *ctx, const char *digest)
{
    (void)ctx;
    if (strcmp(digest, DIGEST_VARIANCES) == 0)
        return path_buf[6];
    if (strcmp(digest, DIGEST_MASK) == 0)
        return path_buf[7];
    return NULL;
}

static int setup(void **state)
{
    (void)state;
    fault_alloc_install(); /* before the first jansson allocation */
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
    path_in(0, "model/weights.safetensors");
    path_in(1, "x_fit.npy");
    path_in(2, "x_probe.npy");
    path_in(3, "jac_fit.safetensors");
    path_in(4, "jac_probe.safetensors");
    path_in(6, "variances.safetensors");
    path_in(7, "mask.safetensors");
    json_error_t jerr;
    models_json = json_loads(all_models, 0, &jerr);
    empirical_json = models_json ? json_loads(empirical_models, 0, &jerr) : NULL;
    spec = json_load_file(path_in(5, "model/spec.json"), 0, &jerr);
    if (!models_json || !empirical_json || !spec) {
        fprintf(stderr, "test inputs: %s\n", jerr.text);
        return -1;
    }
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    json_decref(models_json);
    json_decref(empirical_json);
    json_decref(spec);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : -1;
}

/* What one run of a job produced: the core's code, and its outputs, kept for the harness to
 * compare (after the fault is disarmed) and free.  `contract` is set when a failed call left an
 * output behind. */
struct job_result {
    int rc;
    bool contract;
    struct tpv_err err;
    struct tpv_score *scores;
    size_t nscores;
    json_t *json; /* stability of a score job, the result of JBR */
};

static struct tpv_candidate_files model_files(void)
{
    struct tpv_candidate_files c = { .source = TPV_SOURCE_MODEL, .spec = spec,
                                     .weights = path_buf[0], .fit_inputs = path_buf[1],
                                     .probe_inputs = path_buf[2], .blob_path = blob_path };
    return c;
}

static struct tpv_candidate_files dump_files(void)
{
    struct tpv_candidate_files c = { .source = TPV_SOURCE_JACOBIAN, .jac_fit = path_buf[3],
                                     .jac_probe = path_buf[4], .weights = path_buf[0],
                                     .blob_path = blob_path };
    return c;
}

/* What the worker does for a score job: parse the study's noise models, check, score. */
static void score_job_with(const struct tpv_candidate_files *c, const json_t *list,
                           struct job_result *out)
{
    struct tpv_noise *models = NULL;
    size_t nm = 0;
    out->rc = tpv_noise_list_parse(list, &models, &nm, &out->err);
    if (out->rc != TPV_OK) {
        out->contract = models != NULL;
        return;
    }
    struct tpv_run_options opts = { 0 };
    uint64_t need = 0;
    out->rc = tpv_candidate_check(c, models, nm, &opts, &need, &out->err);
    if (out->rc == TPV_OK) {
        out->rc = tpv_candidate_score(c, models, nm, &opts, &out->scores, &out->nscores,
                                      &out->json, NULL, &out->err);
        if (out->rc != TPV_OK)
            out->contract = out->scores != NULL || out->nscores != 0 || out->json != NULL;
    }
    free(models);
}

static void score_job(const struct tpv_candidate_files *c, struct job_result *out)
{
    score_job_with(c, models_json, out);
}

static void job_model(struct job_result *out)
{
    struct tpv_candidate_files c = model_files();
    score_job(&c, out);
}

static void job_empirical(struct job_result *out)
{
    struct tpv_candidate_files c = model_files();
    score_job_with(&c, empirical_json, out);
}

static void job_dump(struct job_result *out)
{
    struct tpv_candidate_files c = dump_files();
    score_job(&c, out);
}

static void job_jbr(struct job_result *out)
{
    struct tpv_candidate_files c = model_files();
    out->rc = tpv_jbr_run(&c, 0.0, 5, &out->json, NULL, &out->err);
    if (out->rc != TPV_OK)
        out->contract = out->json != NULL;
}

/* The outputs of a run as canonical JSON text (wall-clock times left out), then freed: a run whose
 * failed allocation had a fallback must produce exactly what the clean run did, not lose a detail
 * silently.  malloc'd (free()). */
static char *result_text(struct job_result *r)
{
    json_t *all = json_array();
    for (size_t i = 0; i < r->nscores; i++) {
        const struct tpv_score *sc = &r->scores[i];
        json_t *details = json_deep_copy(sc->details), *v;
        const char *key;
        void *tmp;
        json_object_foreach_safe(details, tmp, key, v) {
            if (strstr(key, "seconds")) /* timings differ between runs */
                json_object_del(details, key);
        }
        json_array_append_new(all, json_pack("{s:s, s:i, s:f, s:f, s:s, s:I, s:o*}", "noise",
                                             sc->noise, "split", (int)sc->split, "value",
                                             sc->value, "stderr", sc->stderr_value, "estimator",
                                             sc->estimator, "samples", (json_int_t)sc->samples,
                                             "details", details));
    }
    if (r->json)
        json_array_append(all, r->json);
    char *text = json_dumps(all, JSON_SORT_KEYS | JSON_COMPACT);
    json_decref(all);
    tpv_scores_free(r->scores, r->nscores);
    json_decref(r->json);
    r->scores = NULL;
    r->nscores = 0;
    r->json = NULL;
    assert_non_null(text);
    return text;
}

/* Runs `job` once clean, then once per allocation with that allocation failing; every run must
 * end in TPV_OK or TPV_ENOMEM as described above, with the blocks and descriptors it started with.
 * Prints every bad N (at most 20) before failing, so one run shows all the defects. */
static void run_with_faults(const char *name, void (*job)(struct job_result *), bool persistent)
{
    struct job_result r = { 0 };
    long live0 = fault_alloc_live();
    int fds0 = fault_fd_count();
    assert_true(fds0 > 0);
    fault_alloc_arm(0, false);
    job(&r);
    unsigned long total = fault_alloc_calls();
    if (r.rc != TPV_OK)
        fail_msg("%s: clean run failed: %s", name, r.err.message);
    char *clean = result_text(&r);
    assert_int_equal(fault_alloc_live(), live0 + 1); /* the text */
    live0++;
    assert_int_equal(fault_fd_count(), fds0);
    assert_true(total > 0);

    unsigned long bad = 0, enomem = 0;
    for (unsigned long n = 1; n <= total; n++) {
        memset(&r, 0, sizeof r);
        fault_alloc_arm(n, persistent);
        job(&r);
        bool fired = fault_alloc_fired();
        fault_alloc_arm(0, false);
        bool same = true;
        if (r.rc == TPV_OK) {
            char *text = result_text(&r);
            same = strcmp(text, clean) == 0;
            if (!same && bad < 20)
                fprintf(stderr, "%s: allocation %lu failed, the job succeeded with other "
                        "outputs:\n  clean: %s\n  now:   %s\n", name, n, clean, text);
            free(text);
        } else {
            free(result_text(&r)); /* frees what a contract breach left */
        }
        long leaked = fault_alloc_live() - live0;
        int fds = fault_fd_count() - fds0;
        bool ok_rc = r.rc == TPV_OK || (fired && r.rc == TPV_ENOMEM);
        enomem += r.rc == TPV_ENOMEM;
        if (ok_rc && same && !r.contract && leaked == 0 && fds == 0)
            continue;
        if (bad++ < 20)
            fprintf(stderr, "%s: allocation %lu of %lu failed%s: rc %d (%s: %s)%s%s, %ld blocks "
                    "and %d fds leaked\n", name, n, total, persistent ? " (and all after)" : "",
                    r.rc, tpv_error_name(r.rc), r.err.message,
                    r.contract ? ", output left behind" : "", same ? "" : ", other outputs",
                    leaked, fds);
        live0 = fault_alloc_live(); /* report each leak once */
        fds0 = fault_fd_count();
    }
    fprintf(stderr, "%s: %lu allocations, %lu runs ended in ENOMEM, %lu bad\n", name, total,
            enomem, bad);
    free(clean);
    assert_int_equal(bad, 0);
    assert_true(enomem > 0);
}

static void test_model_job(void **state)
{
    (void)state;
    run_with_faults("model", job_model, false);
}

static void test_dump_job(void **state)
{
    (void)state;
    run_with_faults("dump", job_dump, false);
}

static void test_empirical_job(void **state)
{
    (void)state;
    run_with_faults("empirical", job_empirical, false);
    run_with_faults("empirical, persistent", job_empirical, true);
}

static void test_jbr_job(void **state)
{
    (void)state;
    run_with_faults("jbr", job_jbr, false);
}

/* Every allocation from the Nth on fails: the error paths themselves cannot allocate. */
static void test_persistent_failures(void **state)
{
    (void)state;
    run_with_faults("model, persistent", job_model, true);
    run_with_faults("dump, persistent", job_dump, true);
    run_with_faults("jbr, persistent", job_jbr, true);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_model_job),
        cmocka_unit_test(test_dump_job),
        cmocka_unit_test(test_jbr_job),
        cmocka_unit_test(test_empirical_job),
        cmocka_unit_test(test_persistent_failures),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
