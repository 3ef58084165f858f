/* PostgreSQL connection set-up; see connect.h. libpq applies keywords in
 * order, so the DSN (expanded from "dbname") overrides connect_timeout but
 * not client_encoding: binary COPY sends text in the client encoding, and
 * our bytes are UTF-8. */
#include "pg/connect.h"

#include <stdio.h>

#include "log.h"

int pg_dsn_check(const char *dsn, char *err, size_t errlen)
{
	char *why = NULL;
	PQconninfoOption *opts = PQconninfoParse(dsn, &why);
	if (opts) {
		PQconninfoFree(opts);
		return 0;
	}
	/* Keep libpq's words, drop what it quotes (the token may be a password). */
	char clean[256];
	size_t n = 0;
	bool quoted = false;
	for (const char *p = why ? why : "out of memory"; *p && *p != '\n' && n + 8 < sizeof(clean);
	     p++) {
		if (*p == '"') {
			if (!quoted)
				n += (size_t)snprintf(clean + n, sizeof(clean) - n, "\"...\"");
			quoted = !quoted;
		} else if (!quoted) {
			clean[n++] = *p;
		}
	}
	clean[n] = '\0';
	PQfreemem(why);
	snprintf(err, errlen, "POSTGRES_DSN is not a valid connection string or URI: %s", clean);
	return -1;
}

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
