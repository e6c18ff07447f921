/* fuzz_router.c: any method and path reach api_dispatch, over a real (empty) database, without a
 * crash and get a JSON reply with a sane status. */
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api.h"
#include "storage/store.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct api_env env;
static char data_dir[] = "/tmp/tpv-fuzz-router-XXXXXX";

static void remove_data_dir(void)
{
    char cmd[128];
    store_close(env.store);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", data_dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", data_dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    struct tpv_err err;
    (void)argc, (void)argv;
    if (!mkdtemp(data_dir) || store_open(&env.store, data_dir, &err) != TPV_OK) {
        fprintf(stderr, "fuzz_router: cannot open a store in %s\n", data_dir);
        abort();
    }
    env.version = "fuzz";
    atexit(remove_data_dir);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* Input: METHOD '\n' PATH, both NUL-free. */
    char *text = malloc(size + 1);
    if (!text)
        return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    if (strlen(text) != size) {
        free(text);
        return 0;
    }
    char *nl = strchr(text, '\n');
    const char *method = "GET", *path = text;
    if (nl) {
        *nl = '\0';
        method = text;
        path = nl + 1;
    }
    struct api_request req = { .method = method, .path = path, .request_id = "fuzz", .body = "" };
    struct api_response resp = { 0 };
    api_dispatch(&env, &req, &resp);
    if (resp.status < 200 || resp.status > 599)
        abort();
    /* JSON replies must parse; /metrics answers Prometheus text. */
    if (resp.content_type && strcmp(resp.content_type, "application/json") == 0) {
        json_t *j = json_loadb(resp.body, resp.body_len, 0, NULL);
        if (!j)
            abort();
        json_decref(j);
    }
    api_response_free(&resp);
    free(text);
    return 0;
}
