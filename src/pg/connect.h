/* Opening a PostgreSQL connection from POSTGRES_DSN, with the settings
 * sluice relies on (UTF8 client encoding for binary COPY of text). */
#ifndef SLUICE_PG_CONNECT_H
#define SLUICE_PG_CONNECT_H

#include <libpq-fe.h>

#include "config.h"

/* Blocking connect; returns NULL after logging why, naming POSTGRES_DSN. */
PGconn *pg_connect(const struct config *cfg);

#endif
