/* score.c: PLACEHOLDER until the core-dumps issue lands: every entry point answers
 * TPV_EUNIMPLEMENTED so that the service fails such jobs with a clear error instead of a value. */
#include "core/score.h"

#include <stdlib.h>

const char *tpv_split_name(enum tpv_split split)
{
    return split == TPV_SPLIT_PROBE ? "probe" : "fit";
}

int tpv_candidate_check(const struct tpv_candidate_files *c, const struct tpv_noise *models,
                        size_t nmodels, const struct tpv_run_options *opts,
                        uint64_t *memory_needed, struct tpv_err *err)
{
    (void)c, (void)models, (void)nmodels, (void)opts;
    *memory_needed = 0;
    return tpv_err_set(err, TPV_EUNIMPLEMENTED, NULL, "candidate validation is not implemented yet");
}

int tpv_candidate_score(const struct tpv_candidate_files *c, const struct tpv_noise *models,
                        size_t nmodels, const struct tpv_run_options *opts,
                        struct tpv_score **scores, size_t *nscores, json_t **stability,
                        const struct tpv_progress *pg, struct tpv_err *err)
{
    (void)c, (void)models, (void)nmodels, (void)opts, (void)pg;
    *scores = NULL;
    *nscores = 0;
    *stability = NULL;
    return tpv_err_set(err, TPV_EUNIMPLEMENTED, NULL, "scoring is not implemented yet");
}

void tpv_scores_free(struct tpv_score *scores, size_t n)
{
    for (size_t i = 0; scores && i < n; i++)
        json_decref(scores[i].details);
    free(scores);
}

int tpv_jbr_run(const struct tpv_candidate_files *c, double confidence, uint64_t batch_size,
                json_t **result, const struct tpv_progress *pg, struct tpv_err *err)
{
    (void)c, (void)confidence, (void)batch_size, (void)pg;
    *result = NULL;
    return tpv_err_set(err, TPV_EUNIMPLEMENTED, NULL, "JBR is not implemented yet");
}
