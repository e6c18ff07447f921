/* test_error.c: the error catalogue maps codes to the wire names and statuses of DESIGN.md 5. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "core/tpv_error.h"

static void test_wire_names_and_statuses(void **state)
{
    (void)state;
    static const struct { int code; const char *name; int http; } expect[] = {
        { TPV_EINVAL, "invalid_argument", 400 },   { TPV_EUNAUTHENTICATED, "unauthenticated", 401 },
        { TPV_EPERM, "permission_denied", 403 },   { TPV_ENOTFOUND, "not_found", 404 },
        { TPV_EEXIST, "already_exists", 409 },     { TPV_EPRECONDITION, "failed_precondition", 409 },
        { TPV_EPRECONDITION_IF, "failed_precondition", 412 },
        { TPV_ETOOLARGE, "payload_too_large", 413 },
        { TPV_EMEDIATYPE, "unsupported_media_type", 415 },
        { TPV_EBUSY, "resource_exhausted", 429 },  { TPV_ENOSPACE, "resource_exhausted", 507 },
        { TPV_EINTERNAL, "internal", 500 },        { TPV_EUNAVAILABLE, "unavailable", 503 },
    };
    for (size_t i = 0; i < sizeof expect / sizeof expect[0]; i++) {
        assert_string_equal(tpv_error_name(expect[i].code), expect[i].name);
        assert_int_equal(tpv_error_http_status(expect[i].code), expect[i].http);
    }
    assert_string_equal(tpv_error_name(12345), "internal");
    assert_int_equal(tpv_error_http_status(12345), 500);
}

static void test_context_set_and_prefix(void **state)
{
    struct tpv_err err;
    (void)state;
    tpv_err_clear(&err);
    assert_string_equal(tpv_err_message(&err), "success");
    assert_int_equal(tpv_err_set(&err, TPV_EFORMAT, "header", "bad magic %d", 7), TPV_EFORMAT);
    assert_string_equal(err.field, "header");
    tpv_err_prefix(&err, "file %s", "a.npy");
    assert_string_equal(tpv_err_message(&err), "file a.npy: bad magic 7");
    assert_int_equal(tpv_err_set(NULL, TPV_EIO, NULL, "ignored"), TPV_EIO);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_wire_names_and_statuses),
        cmocka_unit_test(test_context_set_and_prefix),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
