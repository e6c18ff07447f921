/* service_steps.h: the steps integration tests take against a running tpvd over HTTP (upload a
 * blob, create a study, submit a candidate, wait for its job, check an error's shape), each
 * asserting with cmocka that the daemon answered as DESIGN.md section 5 says, so that a test
 * reads as its scenario and every test checks the same things the same way. */
#ifndef TPV_TEST_SERVICE_STEPS_H
#define TPV_TEST_SERVICE_STEPS_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "tests/support/daemon_proc.h"
#include "tests/support/http_client.h"

/* Monotonic seconds, for the tests' deadlines and timings. */
double test_now_s(void);

/* PUT /v1/blobs: 201 (new) or 200 (present); the digest "sha256:<hex>" into digest. */
void test_put_blob(const struct test_daemon *d, const void *buf, size_t len, char digest[80]);

/* POST /v1/studies with a JSON body: 201; the study id into sid. */
void test_create_study(const struct test_daemon *d, const char *body, char sid[64]);

/* A study named `name` with one noise model, isotropic with sigma 0.1 (test_create_study). */
void test_create_iso_study(const struct test_daemon *d, const char *name, char sid[64]);

/* A small (4, 3) float64 Jacobian dump, entries scale * (0.1 i + 0.05) (a larger scale, a larger
 * TPV), put as a blob; `nan` puts a NaN at flat index 7 (the worker then fails the job). */
void test_put_small_dump(const struct test_daemon *d, double scale, bool nan, char digest[80]);

/* POST /v1/studies/{sid}/candidates with a JSON body: 202; the job id into jid and, when cid is
 * not NULL, the candidate id into cid. */
void test_submit(const struct test_daemon *d, const char *sid, const char *body, char cid[64],
                 char jid[64]);

/* GET /v1/jobs/{jid} until its state is terminal (succeeded, failed, canceled), at most
 * timeout_s seconds (then the daemon's log and a failure); *r holds the last answer. */
void test_wait_job(const struct test_daemon *d, const char *jid, double timeout_s,
                   struct http_result *r);

/* test_wait_job, then a failure naming the job unless it succeeded. */
void test_wait_succeeded(const struct test_daemon *d, const char *jid, double timeout_s);

/* An error answer: this status, error.code and, when field is not NULL, error.details.field. */
void test_expect_error(const struct http_result *r, long status, const char *code,
                       const char *field);

/* The study's version (GET /v1/studies/{sid}). */
json_int_t test_study_version(const struct test_daemon *d, const char *sid);

#endif
