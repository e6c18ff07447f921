/* test_spec_corpus.c: the model-spec fuzz target's checks (tests/fuzz/fuzz_spec.c, linked in) over
 * its committed corpus, so that every seed and every crash the fuzzer found stays a regression
 * test in the ordinary builds; plus the crash found by fuzzing spelled out: an unknown empty key
 * must still be named in err->field. */
#include <dirent.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "core/mlp.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void test_corpus(void **state)
{
    (void)state;
    const char *root = getenv("TPV_SOURCE_ROOT");
    assert_non_null(root);
    char dir[1024], path[1400];
    snprintf(dir, sizeof dir, "%s/tests/fuzz/corpus/spec", root);
    DIR *d = opendir(dir);
    assert_non_null(d);
    struct dirent *de;
    int n = 0;
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.')
            continue;
        snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
        FILE *fp = fopen(path, "rb");
        assert_non_null(fp);
        char buf[65536];
        size_t len = fread(buf, 1, sizeof buf, fp);
        fclose(fp);
        LLVMFuzzerTestOneInput((const uint8_t *)buf, len); /* aborts on a broken invariant */
        n++;
    }
    closedir(d);
    assert_true(n >= 10);
}

static const struct tpv_tensor *none(void *ctx, const char *name)
{
    (void)ctx;
    (void)name;
    return NULL;
}

static void test_empty_key_is_named(void **state)
{
    (void)state;
    json_t *spec = json_loads("{\"\":\"tpv.sequential/v1\",\"input_shape\":[4],\"layers\":[]}", 0,
                              NULL);
    struct tpv_mlp *m = NULL;
    struct tpv_err err;
    tpv_err_clear(&err);
    assert_int_equal(tpv_mlp_bind(&m, spec, none, NULL, &err), TPV_EINVAL);
    assert_null(m);
    assert_string_equal(err.field, "\"\"");
    json_decref(spec);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_corpus),
        cmocka_unit_test(test_empty_key_is_named),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
