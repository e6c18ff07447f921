/* schema_steps.c: every schema step with its SQLite and PostgreSQL text (see schema_steps.h).
 * The SQLite texts are those of storage/store.c's migrations, byte for byte. */
#include "storage/schema_steps.h"

static const struct schema_step steps[] = {
    /* 0 -> 1: bookkeeping table. */
    {
        .version = 1,
        .what = "bookkeeping table (meta)",
        .sqlite =
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) STRICT;",
        .postgres =
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);",
    },
    /* 1 -> 2: the service tables (DESIGN.md section 5).  seq columns give creation order for
     * keyset pagination: AUTOINCREMENT on SQLite and an identity column on PostgreSQL, both never
     * reused, so page tokens stay valid under deletes.  PostgreSQL types: INTEGER (64-bit in
     * SQLite) becomes BIGINT where values can pass 2^31, REAL becomes DOUBLE PRECISION; flags stay
     * INTEGER 0/1 and JSON stays TEXT (kept byte for byte, as on SQLite), times stay RFC 3339
     * TEXT, so that one statement text can serve both backends where the dialects agree. */
    {
        .version = 2,
        .what = "the service tables (DESIGN.md section 5)",
        .sqlite =
        "CREATE TABLE studies ("
        "  seq INTEGER PRIMARY KEY AUTOINCREMENT,"
        "  id TEXT NOT NULL UNIQUE,"
        "  name TEXT NOT NULL,"
        "  description TEXT NOT NULL,"
        "  noise_models TEXT NOT NULL,"
        "  rank_by TEXT NOT NULL,"
        "  webhook_url TEXT,"
        "  metadata TEXT NOT NULL,"
        "  version INTEGER NOT NULL DEFAULT 1,"
        "  has_probe_dumps INTEGER NOT NULL DEFAULT 0,"
        "  created_at TEXT NOT NULL) STRICT;"
        "CREATE TABLE input_sets ("
        "  study_id TEXT NOT NULL REFERENCES studies(id) ON DELETE CASCADE,"
        "  split TEXT NOT NULL CHECK (split IN ('fit', 'probe')),"
        "  digest TEXT NOT NULL,"
        "  n INTEGER,"
        "  updated_at TEXT NOT NULL,"
        "  PRIMARY KEY (study_id, split)) STRICT;"
        "CREATE TABLE blobs ("
        "  digest TEXT PRIMARY KEY,"
        "  size INTEGER NOT NULL,"
        "  created_at TEXT NOT NULL) STRICT;"
        "CREATE TABLE candidates ("
        "  seq INTEGER PRIMARY KEY AUTOINCREMENT,"
        "  id TEXT NOT NULL UNIQUE,"
        "  study_id TEXT NOT NULL REFERENCES studies(id) ON DELETE CASCADE,"
        "  name TEXT NOT NULL,"
        "  metadata TEXT NOT NULL,"
        "  source_kind TEXT NOT NULL CHECK (source_kind IN ('model', 'jacobian')),"
        "  source TEXT NOT NULL,"
        "  train_loss REAL,"
        "  epoch REAL,"
        "  run TEXT,"
        "  state TEXT NOT NULL,"
        "  stability TEXT,"
        "  job_id TEXT,"
        "  created_at TEXT NOT NULL,"
        "  UNIQUE (study_id, name)) STRICT;"
        "CREATE INDEX candidates_by_study ON candidates (study_id, seq);"
        "CREATE TABLE jobs ("
        "  seq INTEGER PRIMARY KEY AUTOINCREMENT,"
        "  id TEXT NOT NULL UNIQUE,"
        "  kind TEXT NOT NULL CHECK (kind IN ('score', 'jbr')),"
        "  study_id TEXT NOT NULL REFERENCES studies(id) ON DELETE CASCADE,"
        "  candidate_id TEXT NOT NULL REFERENCES candidates(id) ON DELETE CASCADE,"
        "  state TEXT NOT NULL CHECK (state IN ('queued','running','succeeded','failed','canceled')),"
        "  progress REAL NOT NULL DEFAULT 0,"
        "  attempts INTEGER NOT NULL DEFAULT 0,"
        "  params TEXT,"
        "  result TEXT,"
        "  error_code TEXT,"
        "  error_message TEXT,"
        "  cancel_requested INTEGER NOT NULL DEFAULT 0,"
        "  lease_owner TEXT,"
        "  lease_expires REAL,"
        "  created_at TEXT NOT NULL,"
        "  started_at TEXT,"
        "  finished_at TEXT) STRICT;"
        "CREATE INDEX jobs_by_state ON jobs (state, seq);"
        "CREATE TABLE scores ("
        "  candidate_id TEXT NOT NULL REFERENCES candidates(id) ON DELETE CASCADE,"
        "  noise TEXT NOT NULL,"
        "  kind TEXT NOT NULL,"
        "  split TEXT NOT NULL CHECK (split IN ('fit', 'probe')),"
        "  value REAL,"
        "  stderr REAL,"
        "  estimator TEXT,"
        "  samples INTEGER,"
        "  seed INTEGER,"
        "  wall_seconds REAL,"
        "  details TEXT,"
        "  PRIMARY KEY (candidate_id, noise, split)) STRICT;"
        "CREATE TABLE tokens ("
        "  id TEXT PRIMARY KEY,"
        "  name TEXT NOT NULL,"
        "  hash TEXT NOT NULL UNIQUE,"
        "  role TEXT NOT NULL CHECK (role IN ('read', 'write', 'admin')),"
        "  created_at TEXT NOT NULL,"
        "  revoked_at TEXT) STRICT;"
        "CREATE TABLE idempotency_keys ("
        "  scope TEXT NOT NULL,"
        "  key TEXT NOT NULL,"
        "  request_hash TEXT NOT NULL,"
        "  status INTEGER NOT NULL,"
        "  body TEXT NOT NULL,"
        "  location TEXT,"
        "  created_at TEXT NOT NULL,"
        "  PRIMARY KEY (scope, key)) STRICT;"
        "CREATE TABLE webhook_outbox ("
        "  seq INTEGER PRIMARY KEY AUTOINCREMENT,"
        "  study_id TEXT NOT NULL REFERENCES studies(id) ON DELETE CASCADE,"
        "  event TEXT NOT NULL,"
        "  payload TEXT NOT NULL,"
        "  attempts INTEGER NOT NULL DEFAULT 0,"
        "  next_attempt_at REAL NOT NULL,"
        "  delivered_at TEXT,"
        "  created_at TEXT NOT NULL) STRICT;"
        "CREATE INDEX webhook_outbox_due ON webhook_outbox (delivered_at, next_attempt_at);",
        .postgres =
        "CREATE TABLE studies ("
        "  seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
        "  id TEXT NOT NULL UNIQUE,"
        "  name TEXT NOT NULL,"
        "  description TEXT NOT NULL,"
        "  noise_models TEXT NOT NULL,"
        "  rank_by TEXT NOT NULL,"
        "  webhook_url TEXT,"
        "  metadata TEXT NOT NULL,"
        "  version BIGINT NOT NULL DEFAULT 1,"
        "  has_probe_dumps INTEGER NOT NULL DEFAULT 0,"
        "  created_at TEXT NOT NULL);"
        "CREATE TABLE input_sets ("
        "  study_id TEXT NOT NULL REFERENCES studies(id) ON DELETE CASCADE,"
        "  split TEXT NOT NULL CHECK (split IN ('fit', 'probe')),"
        "  digest TEXT NOT NULL,"
        "  n BIGINT,"
        "  updated_at TEXT NOT NULL,"
        "  PRIMARY KEY (study_id, split));"
        "CREATE TABLE blobs ("
        "  digest TEXT PRIMARY KEY,"
        "  size BIGINT NOT NULL,"
        "  created_at TEXT NOT NULL);"
        "CREATE TABLE candidates ("
        "  seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
        "  id TEXT NOT NULL UNIQUE,"
        "  study_id TEXT NOT NULL REFERENCES studies(id) ON DELETE CASCADE,"
        "  name TEXT NOT NULL,"
        "  metadata TEXT NOT NULL,"
        "  source_kind TEXT NOT NULL CHECK (source_kind IN ('model', 'jacobian')),"
        "  source TEXT NOT NULL,"
        "  train_loss DOUBLE PRECISION,"
        "  epoch DOUBLE PRECISION,"
        "  run TEXT,"
        "  state TEXT NOT NULL,"
        "  stability TEXT,"
        "  job_id TEXT,"
        "  created_at TEXT NOT NULL,"
        "  UNIQUE (study_id, name));"
        "CREATE INDEX candidates_by_study ON candidates (study_id, seq);"
        "CREATE TABLE jobs ("
        "  seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
        "  id TEXT NOT NULL UNIQUE,"
        "  kind TEXT NOT NULL CHECK (kind IN ('score', 'jbr')),"
        "  study_id TEXT NOT NULL REFERENCES studies(id) ON DELETE CASCADE,"
        "  candidate_id TEXT NOT NULL REFERENCES candidates(id) ON DELETE CASCADE,"
        "  state TEXT NOT NULL CHECK (state IN ('queued','running','succeeded','failed','canceled')),"
        "  progress DOUBLE PRECISION NOT NULL DEFAULT 0,"
        "  attempts INTEGER NOT NULL DEFAULT 0,"
        "  params TEXT,"
        "  result TEXT,"
        "  error_code TEXT,"
        "  error_message TEXT,"
        "  cancel_requested INTEGER NOT NULL DEFAULT 0,"
        "  lease_owner TEXT,"
        "  lease_expires DOUBLE PRECISION,"
        "  created_at TEXT NOT NULL,"
        "  started_at TEXT,"
        "  finished_at TEXT);"
        "CREATE INDEX jobs_by_state ON jobs (state, seq);"
        /* PostgreSQL does not index the referencing side of a foreign key: without these a
         * cascading delete of a study or candidate scans every job or outbox row. */
        "CREATE INDEX jobs_by_study ON jobs (study_id);"
        "CREATE INDEX jobs_by_candidate ON jobs (candidate_id);"
        "CREATE TABLE scores ("
        "  candidate_id TEXT NOT NULL REFERENCES candidates(id) ON DELETE CASCADE,"
        "  noise TEXT NOT NULL,"
        "  kind TEXT NOT NULL,"
        "  split TEXT NOT NULL CHECK (split IN ('fit', 'probe')),"
        "  value DOUBLE PRECISION,"
        "  stderr DOUBLE PRECISION,"
        "  estimator TEXT,"
        "  samples BIGINT,"
        "  seed BIGINT,"
        "  wall_seconds DOUBLE PRECISION,"
        "  details TEXT,"
        "  PRIMARY KEY (candidate_id, noise, split));"
        "CREATE TABLE tokens ("
        "  id TEXT PRIMARY KEY,"
        "  name TEXT NOT NULL,"
        "  hash TEXT NOT NULL UNIQUE,"
        "  role TEXT NOT NULL CHECK (role IN ('read', 'write', 'admin')),"
        "  created_at TEXT NOT NULL,"
        "  revoked_at TEXT);"
        "CREATE TABLE idempotency_keys ("
        "  scope TEXT NOT NULL,"
        "  key TEXT NOT NULL,"
        "  request_hash TEXT NOT NULL,"
        "  status INTEGER NOT NULL,"
        "  body TEXT NOT NULL,"
        "  location TEXT,"
        "  created_at TEXT NOT NULL,"
        "  PRIMARY KEY (scope, key));"
        "CREATE TABLE webhook_outbox ("
        "  seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
        "  study_id TEXT NOT NULL REFERENCES studies(id) ON DELETE CASCADE,"
        "  event TEXT NOT NULL,"
        "  payload TEXT NOT NULL,"
        "  attempts INTEGER NOT NULL DEFAULT 0,"
        "  next_attempt_at DOUBLE PRECISION NOT NULL,"
        "  delivered_at TEXT,"
        "  created_at TEXT NOT NULL);"
        "CREATE INDEX webhook_outbox_due ON webhook_outbox (delivered_at, next_attempt_at);"
        "CREATE INDEX webhook_outbox_by_study ON webhook_outbox (study_id);",
    },
    /* 2 -> 3: webhook delivery.  The study's signing secret (generated at creation, returned once)
     * and the outbox rows' end state: delivered_at, or failed_at after the last attempt. */
    {
        .version = 3,
        .what = "webhook delivery: signing secret, outbox end states",
        .sqlite =
        "ALTER TABLE studies ADD COLUMN webhook_secret TEXT;"
        "ALTER TABLE webhook_outbox ADD COLUMN failed_at TEXT;"
        "ALTER TABLE webhook_outbox ADD COLUMN last_error TEXT;"
        "DROP INDEX webhook_outbox_due;"
        "CREATE INDEX webhook_outbox_pending ON webhook_outbox (next_attempt_at) "
        "  WHERE delivered_at IS NULL AND failed_at IS NULL;",
        .postgres =
        "ALTER TABLE studies ADD COLUMN webhook_secret TEXT;"
        "ALTER TABLE webhook_outbox ADD COLUMN failed_at TEXT;"
        "ALTER TABLE webhook_outbox ADD COLUMN last_error TEXT;"
        "DROP INDEX webhook_outbox_due;"
        "CREATE INDEX webhook_outbox_pending ON webhook_outbox (next_attempt_at) "
        "  WHERE delivered_at IS NULL AND failed_at IS NULL;",
    },
    /* 3 -> 4: lifecycle.  Outbox rows outlive their study (a deleted study's webhook is told,
     * with the URL and secret copied into the row), and blobs remember when they last lost a
     * reference (garbage collection grace).  SQLite cannot drop a foreign key: the table is
     * rebuilt with the same columns in the same order as PostgreSQL's after its ALTERs. */
    {
        .version = 4,
        .what = "lifecycle: outbox rows outlive their study, blob release times",
        .sqlite =
        "CREATE TABLE webhook_outbox_next ("
        "  seq INTEGER PRIMARY KEY AUTOINCREMENT,"
        "  study_id TEXT NOT NULL,"
        "  event TEXT NOT NULL,"
        "  payload TEXT NOT NULL,"
        "  attempts INTEGER NOT NULL DEFAULT 0,"
        "  next_attempt_at REAL NOT NULL,"
        "  delivered_at TEXT,"
        "  created_at TEXT NOT NULL,"
        "  failed_at TEXT,"
        "  last_error TEXT,"
        "  url TEXT,"
        "  secret TEXT) STRICT;"
        "INSERT INTO webhook_outbox_next (seq, study_id, event, payload, attempts, next_attempt_at,"
        "  delivered_at, created_at, failed_at, last_error) SELECT seq, study_id, event, payload,"
        "  attempts, next_attempt_at, delivered_at, created_at, failed_at, last_error"
        "  FROM webhook_outbox;"
        "DROP TABLE webhook_outbox;"
        "ALTER TABLE webhook_outbox_next RENAME TO webhook_outbox;"
        "CREATE INDEX webhook_outbox_pending ON webhook_outbox (next_attempt_at) "
        "  WHERE delivered_at IS NULL AND failed_at IS NULL;"
        "CREATE INDEX webhook_outbox_by_study ON webhook_outbox (study_id);"
        "ALTER TABLE blobs ADD COLUMN released_at TEXT;",
        .postgres =
        "ALTER TABLE webhook_outbox DROP CONSTRAINT webhook_outbox_study_id_fkey;"
        "ALTER TABLE webhook_outbox ADD COLUMN url TEXT;"
        "ALTER TABLE webhook_outbox ADD COLUMN secret TEXT;"
        "ALTER TABLE blobs ADD COLUMN released_at TEXT;",
    },
    /* 4 -> 5: a candidate's metrics, the labelled numbers its user has (val_loss, ...; the
     * agreement report, DESIGN.md section 5): a JSON object text of finite numbers, NULL when it
     * has none.  A column rather than a table so that the numbers come back with the spelling
     * they were given in (json_patch and jsonb keep it) and the candidate shape reads them with
     * its row. */
    {
        .version = 5,
        .what = "candidate metrics",
        .sqlite =
        "ALTER TABLE candidates ADD COLUMN metrics TEXT;",
        .postgres =
        "ALTER TABLE candidates ADD COLUMN metrics TEXT;",
    },
    /* 5 -> 6: confidence (DESIGN.md section 5).  Each score keeps its per-input contributions as
     * little-endian float64 (n_inputs = length / 8) and the standard error of their mean; rows
     * written before this step have neither (NULL), which rankings report as null. */
    {
        .version = 6,
        .what = "confidence: per-input contributions and stderr_inputs on scores",
        .sqlite =
        "ALTER TABLE scores ADD COLUMN stderr_inputs REAL;"
        "ALTER TABLE scores ADD COLUMN contributions BLOB;",
        .postgres =
        "ALTER TABLE scores ADD COLUMN stderr_inputs DOUBLE PRECISION;"
        "ALTER TABLE scores ADD COLUMN contributions BYTEA;",
    },
    /* 6 -> 7: a candidate's jobs by creation order, for its JBR jobs (the candidate shape's
     * jbr_jobs, newest first, read with every candidate and list page) and for the cascading
     * delete of a candidate, which scanned every job on SQLite.  PostgreSQL had the index on
     * candidate_id alone (step 2); it gets the same two columns. */
    {
        .version = 7,
        .what = "jobs by candidate and creation order",
        .sqlite =
        "CREATE INDEX jobs_by_candidate ON jobs (candidate_id, seq);",
        .postgres =
        "DROP INDEX jobs_by_candidate;"
        "CREATE INDEX jobs_by_candidate ON jobs (candidate_id, seq);",
    },
};

const struct schema_step *schema_steps(size_t *n)
{
    *n = sizeof steps / sizeof steps[0];
    return steps;
}
