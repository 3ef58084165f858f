/* PostgreSQL connection set-up; see connect.h. libpq applies keywords in
 * order, so the DSN (expanded from "dbname") overrides connect_timeout but
 * not client_encoding: binary COPY sends text in the client encoding, and
 * our bytes are UTF-8. */
#include "pg/connect.h"

#include "log.h"

PGconn *pg_connect(const struct config *cfg)
{
	const char *keys[] = {"connect_timeout", "dbname", "fallback_application_name",
			      "client_encoding", NULL};
	const char *vals[] = {"10", cfg->postgres_dsn, "sluice", "UTF8", NULL};
	PGconn *pg = PQconnectdbParams(keys, vals, 1);
	if (PQstatus(pg) != CONNECTION_OK) {
		log_error("PostgreSQL: %s (POSTGRES_DSN)", PQerrorMessage(pg));
		PQfinish(pg);
		return NULL;
	}
	return pg;
}
