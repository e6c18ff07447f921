/* store_sqlite.h: the SQLite backend (storage/store_sqlite*.c), for the dispatcher (store.c). */
#ifndef TPV_STORE_SQLITE_H
#define TPV_STORE_SQLITE_H

#include "storage/store_ops.h"

extern const struct store_ops store_sqlite_ops;

#endif
