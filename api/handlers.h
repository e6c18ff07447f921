/* handlers.h: request handlers, internal to api/.  Each one fills *resp, success or error. */
#ifndef TPV_API_HANDLERS_H
#define TPV_API_HANDLERS_H

#include "api/api.h"

typedef void (*api_handler_fn)(const struct api_env *env, struct api_request *req,
                               struct api_response *resp);

void api_handle_healthz(const struct api_env *env, struct api_request *req, struct api_response *resp);
void api_handle_readyz(const struct api_env *env, struct api_request *req, struct api_response *resp);

#endif
