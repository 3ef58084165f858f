/* PostgreSQL connection set-up; see connect.h. libpq applies keywords in
 * order, so the DSN (expanded from "dbname") overrides connect_timeout and
 * sslrootcert but not client_encoding: binary COPY sends text in the client
 * encoding, and our bytes are UTF-8. */
#include "pg/connect.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"

int pg_dsn_check(const char *dsn, char *err, size_t errlen)
{
	char *why = NULL;
	PQconninfoOption *opts = PQconninfoParse(dsn, &why);
	if (opts) {
		PQconninfoFree(opts);
		return 0;
	}
	/* Keep libpq's words, drop what it quotes (the token may be a password,
	 * and may itself contain '"'): everything from the first quote to the
	 * last one goes. */
	const char *msg = why ? why : "out of memory";
	const char *q1 = strchr(msg, '"'), *q2 = strrchr(msg, '"');
	size_t head = q1 ? (size_t)(q1 - msg) : strcspn(msg, "\n");
	const char *tail = q1 && q2 > q1 ? q2 + 1 : "";
	char clean[256];
	snprintf(clean, sizeof(clean), "%.*s%s%.*s", (int)head, msg, q1 ? "\"...\"" : "",
		 (int)strcspn(tail, "\n"), tail);
	PQfreemem(why);
	snprintf(err, errlen, "POSTGRES_DSN is not a valid connection string or URI: %s", clean);
	return -1;
}

const char *pg_default_rootcert(const char *dsn)
{
	const char *bundle = getenv("SSL_CERT_FILE");
	const char *mode = getenv("PGSSLMODE");
	bool has_root = getenv("PGSSLROOTCERT") != NULL;
	if (!bundle || !bundle[0])
		return NULL;

	PQconninfoOption *opts = PQconninfoParse(dsn, NULL);
	for (PQconninfoOption *o = opts; o && o->keyword; o++) {
		if (!o->val)
			continue;
		if (strcmp(o->keyword, "sslmode") == 0)
			mode = o->val;
		else if (strcmp(o->keyword, "sslrootcert") == 0)
			has_root = true;
	}
	bool verify = mode && strncmp(mode, "verify-", 7) == 0;
	PQconninfoFree(opts);
	if (!verify || has_root)
		return NULL;

	/* libpq's own default, ~/.postgresql/root.crt, wins where it exists. */
	const char *home = getenv("HOME");
	char path[4096];
	if (home && snprintf(path, sizeof(path), "%s/.postgresql/root.crt", home) <
			    (int)sizeof(path) &&
	    access(path, R_OK) == 0)
		return NULL;
	return bundle;
}

PGconn *pg_connect(const struct config *cfg)
{
	/* A NULL value leaves the keyword to libpq's defaults. */
	const char *keys[] = {"connect_timeout", "sslrootcert", "dbname",
			      "fallback_application_name", "client_encoding", NULL};
	const char *vals[] = {"10", pg_default_rootcert(cfg->postgres_dsn), cfg->postgres_dsn,
			      "sluice", "UTF8", NULL};
	PGconn *pg = PQconnectdbParams(keys, vals, 1);
	if (PQstatus(pg) != CONNECTION_OK) {
		log_error("PostgreSQL: %s (POSTGRES_DSN)", PQerrorMessage(pg));
		PQfinish(pg);
		return NULL;
	}
	return pg;
}
