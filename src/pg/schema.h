/* Target table preparation, once at start-up on a blocking connection:
 * create the envelope table if allowed, check an existing one has the
 * columns and types the envelope writes, and build the COPY statement. */
#ifndef SLUICE_PG_SCHEMA_H
#define SLUICE_PG_SCHEMA_H

#include <libpq-fe.h>
#include <stdbool.h>

#include "config.h"

/* Returns the COPY statement (caller frees), or NULL after logging an error
 * that names the setting to fix. */
char *schema_prepare(PGconn *conn, const struct config *cfg);

#endif
