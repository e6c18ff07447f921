/* fuzz_request_json.c: any JSON body on the write routes (study, inputs, candidate, JBR) gets a
 * JSON reply with a sane status and never crashes, leaks or corrupts the store.  The first byte
 * picks the route; the rest is the body.  One store in a temporary folder serves every input. */
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "api/api.h"
#include "storage/store.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct store *st;
static struct api_env env;
static char study_path[4][160];
static char dir[] = "/tmp/tpvd-fuzz-XXXXXX";

static void cleanup(void)
{
    char cmd[64];
    store_close(st);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    struct tpv_err err;
    if (!mkdtemp(dir) || store_open(&st, dir, &err) != TPV_OK)
        abort();
    atexit(cleanup);
    env = (struct api_env){ .store = st, .version = "fuzz",
                            .limits = { .max_body = 1 << 16, .max_blob = 1 << 16,
                                        .max_job_memory = 1 << 30, .max_queued_jobs = 1000,
                                        .max_wait_s = 1, .max_page_size = 100 } };
    const char *study = "{\"name\":\"f\",\"noise_models\":[{\"name\":\"iso\",\"kind\":"
                        "\"isotropic\",\"sigma\":0.1}]}";
    struct api_request req = { .method = "POST", .path = "/v1/studies", .request_id = "fuzz",
                               .body = study, .body_len = strlen(study), .route = -1 };
    struct api_response resp = { 0 };
    api_dispatch(&env, &req, &resp);
    json_t *j = json_loadb(resp.body, resp.body_len, 0, NULL);
    const char *sid = json_string_value(json_object_get(j, "id"));
    if (!sid)
        abort();
    snprintf(study_path[0], sizeof study_path[0], "/v1/studies");
    snprintf(study_path[1], sizeof study_path[1], "/v1/studies/%s/inputs/fit", sid);
    snprintf(study_path[2], sizeof study_path[2], "/v1/studies/%s/candidates", sid);
    snprintf(study_path[3], sizeof study_path[3], "/v1/studies/%s/candidates/cd_x/jbr", sid);
    json_decref(j);
    api_response_free(&resp);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    static const char *const methods[4] = { "POST", "PUT", "POST", "POST" };
    int route = data[0] & 3;
    char *body = malloc(size);
    if (!body)
        return 0;
    memcpy(body, data + 1, size - 1);
    body[size - 1] = '\0';
    struct api_request req = { .method = methods[route], .path = study_path[route],
                               .request_id = "fuzz", .body = body, .body_len = size - 1,
                               .route = -1 };
    struct api_response resp = { 0 };
    api_dispatch(&env, &req, &resp);
    json_t *j = json_loadb(resp.body, resp.body_len, 0, NULL);
    if (!j || resp.status < 200 || resp.status > 599 || resp.status == 500)
        abort();
    json_decref(j);
    api_response_free(&resp);
    free(body);
    return 0;
}
