/* test_config.c: option parsing: defaults, precedence (flag > env > file > default), bounds,
 * sizes, listen addresses, --help/--version, and errors that name the option. */
#include <sched.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "server/config.h"

static int load(struct srv_config *cfg, char *const argv[], char *const envp[], struct tpv_err *err)
{
    int argc = 0;
    while (argv[argc])
        argc++;
    FILE *sink = fopen("/dev/null", "w");
    int rc = srv_config_load(cfg, argc, argv, envp, sink, err);
    fclose(sink);
    return rc;
}

static void test_defaults(void **state)
{
    (void)state;
    struct srv_config cfg;
    struct tpv_err err;
    char *argv[] = { "tpvd", NULL };
    assert_int_equal(load(&cfg, argv, NULL, &err), SRV_CONFIG_RUN);
    assert_string_equal(cfg.listen_host, "127.0.0.1");
    assert_int_equal(cfg.listen_port, 8080);
    assert_string_equal(cfg.data_dir, "./var");
    assert_int_equal(cfg.max_body_bytes, 1024 * 1024);
    assert_int_equal(cfg.max_attempts, 3);
    assert_false(cfg.insecure_no_auth);
    assert_null(cfg.tls_cert);
    srv_config_free(&cfg);
}

static void test_flags_both_spellings(void **state)
{
    (void)state;
    struct srv_config cfg;
    struct tpv_err err;
    char *argv[] = { "tpvd", "--listen", "[::1]:9000", "--data-dir=/srv/tpv", "--workers", "3",
                     "--max-blob", "2G", "--insecure-no-auth", NULL };
    assert_int_equal(load(&cfg, argv, NULL, &err), SRV_CONFIG_RUN);
    assert_string_equal(cfg.listen_host, "::1");
    assert_int_equal(cfg.listen_port, 9000);
    assert_string_equal(cfg.data_dir, "/srv/tpv");
    assert_int_equal(cfg.workers, 3);
    assert_true(cfg.max_blob_bytes == 2ULL << 30);
    assert_true(cfg.insecure_no_auth);
    srv_config_free(&cfg);
}

static void test_precedence_flag_env_file(void **state)
{
    (void)state;
    char path[] = "/tmp/tpvd-config-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    FILE *fp = fdopen(fd, "w");
    fprintf(fp, "# comment\n  workers = 5\nmax-body = 64K\nlog-level=debug\n\n");
    fclose(fp);

    struct srv_config cfg;
    struct tpv_err err;
    char cfgarg[64];
    snprintf(cfgarg, sizeof cfgarg, "--config=%s", path);
    char *envp[] = { "TPVD_WORKERS=6", "TPVD_DATA_DIR=/from/env", "OTHER=1", NULL };
    char *argv[] = { "tpvd", cfgarg, "--data-dir", "/from/flag", NULL };
    assert_int_equal(load(&cfg, argv, envp, &err), SRV_CONFIG_RUN);
    assert_int_equal(cfg.workers, 6);                  /* env beats file */
    assert_string_equal(cfg.data_dir, "/from/flag");   /* flag beats env */
    assert_int_equal(cfg.max_body_bytes, 64 * 1024);   /* file beats default */
    assert_string_equal(cfg.log_level, "debug");
    srv_config_free(&cfg);

    /* TPVD_CONFIG names the file too. */
    char envcfg[64];
    snprintf(envcfg, sizeof envcfg, "TPVD_CONFIG=%s", path);
    char *envp2[] = { envcfg, NULL };
    char *argv2[] = { "tpvd", NULL };
    assert_int_equal(load(&cfg, argv2, envp2, &err), SRV_CONFIG_RUN);
    assert_int_equal(cfg.workers, 5);
    srv_config_free(&cfg);
    unlink(path);
}

static void expect_error(char *const argv[], char *const envp[], const char *field, const char *needle)
{
    struct srv_config cfg;
    struct tpv_err err;
    tpv_err_clear(&err);
    assert_int_equal(load(&cfg, argv, envp, &err), TPV_EINVAL);
    assert_string_equal(err.field, field);
    if (!strstr(err.message, needle))
        fail_msg("message '%s' lacks '%s'", err.message, needle);
    srv_config_free(&cfg);
}

static void test_errors_name_the_option(void **state)
{
    (void)state;
    char *a1[] = { "tpvd", "--workers", "many", NULL };
    expect_error(a1, NULL, "workers", "not an integer");
    char *a2[] = { "tpvd", "--workers", "1000", NULL };
    expect_error(a2, NULL, "workers", "outside [0, 256]");
    char *a3[] = { "tpvd", "--bogus", NULL };
    expect_error(a3, NULL, "--bogus", "unknown option '--bogus'");
    char *a4[] = { "tpvd", "--listen", "localhost", NULL };
    expect_error(a4, NULL, "listen", "HOST:PORT");
    char *a5[] = { "tpvd", "--listen", "127.0.0.1:70000", NULL };
    expect_error(a5, NULL, "listen", "port 0-65535");
    char *a6[] = { "tpvd", "--data-dir", NULL };
    expect_error(a6, NULL, "data-dir", "needs a value");
    char *a7[] = { "tpvd", NULL };
    char *e7[] = { "TPVD_MAX_BODY=12Q", NULL };
    expect_error(a7, e7, "max-body", "TPVD_MAX_BODY");
    char *a8[] = { "tpvd", "--tls-cert", "/x.pem", NULL };
    expect_error(a8, NULL, "tls-key", "go together");
    char *a9[] = { "tpvd", "stray", NULL };
    expect_error(a9, NULL, "stray", "unexpected argument");
}

static void test_sizes(void **state)
{
    (void)state;
    uint64_t v;
    assert_int_equal(srv_config_parse_size("0", &v), TPV_OK);
    assert_true(v == 0);
    assert_int_equal(srv_config_parse_size("512k", &v), TPV_OK);
    assert_true(v == 512 * 1024);
    assert_int_equal(srv_config_parse_size("3MiB", &v), TPV_OK);
    assert_true(v == 3ULL << 20);
    assert_int_equal(srv_config_parse_size("16G", &v), TPV_OK);
    assert_true(v == 16ULL << 30);
    assert_int_equal(srv_config_parse_size("-1", &v), TPV_EINVAL);
    assert_int_equal(srv_config_parse_size("", &v), TPV_EINVAL);
    assert_int_equal(srv_config_parse_size("1X", &v), TPV_EINVAL);
    assert_int_equal(srv_config_parse_size("99999999999999999999", &v), TPV_EINVAL);
    assert_int_equal(srv_config_parse_size("17179869184T", &v), TPV_EINVAL); /* 2^34 TiB overflows */
}

static void test_help_and_version(void **state)
{
    (void)state;
    struct srv_config cfg;
    struct tpv_err err;
    char buf[16384] = "";
    FILE *out = fmemopen(buf, sizeof buf - 1, "w");
    char *argv[] = { "tpvd", "--workers", "bad", "--help", NULL };
    assert_int_equal(srv_config_load(&cfg, 4, argv, NULL, out, &err), SRV_CONFIG_EXIT);
    fclose(out);
    for (const char *opt = "--listen\0--data-dir\0--workers\0--max-job-memory\0TPVD_LISTEN\0";
         *opt; opt += strlen(opt) + 1)
        if (!strstr(buf, opt))
            fail_msg("--help does not mention %s", opt);
    srv_config_free(&cfg);

    memset(buf, 0, sizeof buf);
    out = fmemopen(buf, sizeof buf - 1, "w");
    char *argv2[] = { "tpvd", "--version", NULL };
    assert_int_equal(srv_config_load(&cfg, 2, argv2, NULL, out, &err), SRV_CONFIG_EXIT);
    fclose(out);
    assert_true(strncmp(buf, "tpvd ", 5) == 0);
    srv_config_free(&cfg);
}

static void test_effective_threads_never_oversubscribe(void **state)
{
    (void)state;
    struct srv_config cfg = { 0 };
    long w, b, cores = srv_config_cores();
    srv_config_effective_threads(&cfg, &w, &b);
    assert_true(w >= 1 && b >= 1 && w * b <= (cores > 1 ? cores : 1));
    cfg.workers = 1;
    srv_config_effective_threads(&cfg, &w, &b);
    assert_int_equal(w, 1);
    assert_int_equal(b, cores);
}

/* The usable CPUs follow the affinity mask (pinning to one CPU gives 1, where the online core
 * count of the machine does not change) and the cgroup v2 cpu.max quota. */
static void test_cores_follow_affinity_and_quota(void **state)
{
    (void)state;
    assert_int_equal(srv_config_cpu_max_limit("max 100000\n"), 0);
    assert_int_equal(srv_config_cpu_max_limit("200000 100000\n"), 2);
    assert_int_equal(srv_config_cpu_max_limit("150000 100000"), 1);
    assert_int_equal(srv_config_cpu_max_limit("50000 100000"), 1);
    assert_int_equal(srv_config_cpu_max_limit("6400000 100000"), 64);
    assert_int_equal(srv_config_cpu_max_limit("bogus"), 0);
    assert_int_equal(srv_config_cpu_max_limit(""), 0);
    cpu_set_t saved, one;
    assert_int_equal(sched_getaffinity(0, sizeof saved, &saved), 0);
    assert_true(srv_config_cores() <= CPU_COUNT(&saved));
    int first = 0;
    while (!CPU_ISSET(first, &saved))
        first++;
    CPU_ZERO(&one);
    CPU_SET(first, &one);
    assert_int_equal(sched_setaffinity(0, sizeof one, &one), 0);
    long pinned = srv_config_cores();
    struct srv_config cfg = { 0 };
    long w, b;
    srv_config_effective_threads(&cfg, &w, &b);
    assert_int_equal(sched_setaffinity(0, sizeof saved, &saved), 0);
    assert_int_equal(pinned, 1);
    assert_int_equal(w, 1); /* --workers 0 derives from the same number */
    assert_int_equal(b, 1);
}

/* --threads-per-job is the same setting as --blas-threads; the last one given wins. */
static void test_threads_per_job_option(void **state)
{
    (void)state;
    struct srv_config cfg;
    struct tpv_err err;
    char *argv[] = { "tpvd", "--threads-per-job", "3", NULL };
    assert_int_equal(load(&cfg, argv, NULL, &err), 0);
    assert_int_equal(cfg.blas_threads, 3);
    srv_config_free(&cfg);
    char *argv2[] = { "tpvd", "--blas-threads", "2", "--threads-per-job", "5", NULL };
    assert_int_equal(load(&cfg, argv2, NULL, &err), 0);
    assert_int_equal(cfg.blas_threads, 5);
    srv_config_free(&cfg);
}

/* The service options: defaults and their checks. */
static void test_service_options(void **state)
{
    (void)state;
    struct srv_config cfg;
    struct tpv_err err;
    char *argv[] = { "tpvd", NULL };
    assert_int_equal(load(&cfg, argv, NULL, &err), SRV_CONFIG_RUN);
    assert_string_equal(cfg.db_synchronous, "full");
    assert_int_equal(cfg.max_wait_s, 60);
    assert_int_equal(cfg.max_page_size, 500);
    assert_int_equal(cfg.job_lease_s, 120);
    assert_int_equal(cfg.db_connections, 0);
    srv_config_free(&cfg);
    char *normal[] = { "tpvd", "--db-synchronous", "normal", "--max-wait", "5", NULL };
    assert_int_equal(load(&cfg, normal, NULL, &err), SRV_CONFIG_RUN);
    assert_string_equal(cfg.db_synchronous, "normal");
    assert_int_equal(cfg.max_wait_s, 5);
    srv_config_free(&cfg);
    char *bad[] = { "tpvd", "--db-synchronous", "off", NULL };
    assert_int_equal(load(&cfg, bad, NULL, &err), TPV_EINVAL);
    assert_string_equal(err.field, "db-synchronous");
    srv_config_free(&cfg);
    char *wait0[] = { "tpvd", "--max-wait", "0", NULL };
    assert_int_equal(load(&cfg, wait0, NULL, &err), TPV_EINVAL);
    assert_string_equal(err.field, "max-wait");
    srv_config_free(&cfg);
    /* Response and metadata bounds (issue #10): defaults, suffixes, and a floor. */
    assert_int_equal(load(&cfg, argv, NULL, &err), SRV_CONFIG_RUN);
    assert_int_equal(cfg.max_page_bytes, 4 << 20);
    assert_int_equal(cfg.max_metadata_bytes, 64 << 10);
    srv_config_free(&cfg);
    char *bounds[] = { "tpvd", "--max-page-bytes", "1M", "--max-metadata-bytes", "8K", NULL };
    assert_int_equal(load(&cfg, bounds, NULL, &err), SRV_CONFIG_RUN);
    assert_int_equal(cfg.max_page_bytes, 1 << 20);
    assert_int_equal(cfg.max_metadata_bytes, 8 << 10);
    srv_config_free(&cfg);
    char *tiny[] = { "tpvd", "--max-page-bytes", "100", NULL };
    assert_int_equal(load(&cfg, tiny, NULL, &err), TPV_EINVAL);
    assert_string_equal(err.field, "max-page-bytes");
    srv_config_free(&cfg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_flags_both_spellings),
        cmocka_unit_test(test_precedence_flag_env_file),
        cmocka_unit_test(test_errors_name_the_option),
        cmocka_unit_test(test_sizes),
        cmocka_unit_test(test_help_and_version),
        cmocka_unit_test(test_effective_threads_never_oversubscribe),
        cmocka_unit_test(test_cores_follow_affinity_and_quota),
        cmocka_unit_test(test_threads_per_job_option),
        cmocka_unit_test(test_service_options),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
