/* Table preparation, once at start-up on a blocking connection: create
 * the target and dead-letter tables if allowed, check that existing ones
 * have the columns and types sluice writes (and, with --dedupe-key, the
 * unique index), and build the statements the shards run. */
#ifndef SLUICE_PG_SCHEMA_H
#define SLUICE_PG_SCHEMA_H

#include <libpq-fe.h>
#include <stdbool.h>

#include "config.h"

/* The statements of one sluice run; NULL where a feature is off. */
struct sql_plan {
	char *setup;	/* once per connection (the dedupe temp table) */
	char *load;	/* loads one batch: a COPY, or with dedupe a COPY into
			 * the temp table and INSERT ... ON CONFLICT DO NOTHING */
	char *piece_end; /* after load when isolating rows in one transaction:
			  * empties the temp table for the next piece */
	char *dead;	/* COPY into the dead-letter table */
};

/* Prepare the tables and fill plan; false after logging an error that
 * names the setting to fix. */
bool schema_prepare(PGconn *conn, const struct config *cfg, struct sql_plan *plan);
void sql_plan_free(struct sql_plan *plan);

#endif
