/* fuzz_router.c: any method and path reach api_dispatch without a crash and get a JSON reply. */
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "api/api.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

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
    struct api_env env = { 0 };
    struct api_request req = { .method = method, .path = path, .request_id = "fuzz", .body = "" };
    struct api_response resp = { 0 };
    api_dispatch(&env, &req, &resp);
    json_t *j = json_loadb(resp.body, resp.body_len, 0, NULL);
    if (!j || resp.status < 200 || resp.status > 599)
        abort();
    json_decref(j);
    api_response_free(&resp);
    free(text);
    return 0;
}
