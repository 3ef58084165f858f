/* PostgreSQL connection set-up and error classes; see connect.h. libpq
 * applies keywords in order, so the DSN (expanded from "dbname") overrides
 * sslrootcert but not client_encoding: binary COPY sends text in the client
 * encoding, and our bytes are UTF-8. */
#include "pg/connect.h"

#include <poll.h>
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

enum pg_class pg_classify(const char *sqlstate)
{
	/* Per-row: 22 data exception (bad JSON, bad UTF-8, NUL, out of
	 * range), 23 integrity constraint, 54 program limit (a value too
	 * large), P0 a trigger's RAISE. Configuration: 28 authorization,
	 * 3D/3F missing database or schema, 42 missing table, column or
	 * privilege, 0A feature not supported (e.g. a type binary COPY cannot
	 * write). Everything else (08 connection, 40 rollback, 53 resources,
	 * 55 lock not available, 57 operator intervention, 58 system, XX) is
	 * treated as transient: retrying never loses data. */
	static const char *const row[] = {"22", "23", "54", "P0"};
	static const char *const config[] = {"28", "3D", "3F", "42", "0A"};
	if (!sqlstate || strlen(sqlstate) != 5)
		return PG_TRANSIENT;
	for (size_t i = 0; i < sizeof(row) / sizeof(row[0]); i++)
		if (strncmp(sqlstate, row[i], 2) == 0)
			return PG_ROW;
	for (size_t i = 0; i < sizeof(config) / sizeof(config[0]); i++)
		if (strncmp(sqlstate, config[i], 2) == 0)
			return PG_CONFIG;
	return PG_TRANSIENT;
}

/* Server notices (a WARNING before an immediate shutdown, say) go to our
 * log rather than libpq's default of raw lines on stderr. */
static void pg_notice(void *arg, const PGresult *res)
{
	(void)arg;
	const char *sev = PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED);
	const char *msg = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
	if (sev && strcmp(sev, "WARNING") == 0)
		log_warn("PostgreSQL: %s", msg ? msg : "(no message)");
	else
		log_debug("PostgreSQL %s: %s", sev ? sev : "notice", msg ? msg : "(no message)");
}

PGconn *pg_connect_start(const struct config *cfg)
{
	/* A NULL value leaves the keyword to libpq's defaults. */
	const char *keys[] = {"sslrootcert", "dbname", "fallback_application_name",
			      "client_encoding", NULL};
	const char *vals[] = {pg_default_rootcert(cfg->postgres_dsn), cfg->postgres_dsn,
			      "sluice", "UTF8", NULL};
	PGconn *pg = PQconnectStartParams(keys, vals, 1);
	/* Verbose errors carry the SQLSTATE of a server's refusal
	 * ("FATAL:  28P01: password authentication failed ..."): the only
	 * place libpq shows it for a failed connection. */
	if (pg) {
		PQsetErrorVerbosity(pg, PQERRORS_VERBOSE);
		PQsetNoticeReceiver(pg, pg_notice, NULL);
	}
	return pg;
}

/* The SQLSTATE in a verbose message: "SEVERITY:  XXXXX: text". */
static bool pg_message_sqlstate(const char *msg, char out[6])
{
	for (const char *p = strstr(msg, ":  "); p; p = strstr(p + 1, ":  ")) {
		const char *code = p + 3;
		size_t n = strspn(code, "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ");
		if (n == 5 && code[5] == ':') {
			memcpy(out, code, 5);
			out[5] = '\0';
			return true;
		}
	}
	return false;
}

enum pg_class pg_connect_error(PGconn *pg, char *msg, size_t len)
{
	const char *raw = pg ? PQerrorMessage(pg) : "out of memory";
	char state[6];
	bool has_state = pg_message_sqlstate(raw, state);

	/* One line: drop the LOCATION lines verbose mode adds, join the rest. */
	size_t o = 0;
	for (const char *line = raw; *line && o + 1 < len;) {
		size_t n = strcspn(line, "\n");
		if (strncmp(line, "LOCATION:", 9) != 0 && n > 0) {
			o += (size_t)snprintf(msg + o, len - o, "%s%.*s", o ? "; " : "", (int)n,
					      line);
			if (o >= len)
				o = len - 1;
		}
		line += n + (line[n] == '\n');
	}
	msg[o] = '\0';
	for (char *p = msg; *p; p++)
		if (*p == '\t')
			*p = ' ';
	return has_state ? pg_classify(state) : PG_TRANSIENT;
}

PGconn *pg_connect(const struct config *cfg, enum pg_class *cls, char *msg, size_t len)
{
	PGconn *pg = pg_connect_start(cfg);
	/* Until the first PQconnectPoll, act as if it had said "writing". */
	PostgresPollingStatusType st = pg && PQstatus(pg) != CONNECTION_BAD
					       ? PGRES_POLLING_WRITING
					       : PGRES_POLLING_FAILED;
	while (st == PGRES_POLLING_READING || st == PGRES_POLLING_WRITING) {
		struct pollfd pfd = {.fd = PQsocket(pg),
				     .events = st == PGRES_POLLING_READING ? POLLIN : POLLOUT};
		if (poll(&pfd, 1, PG_CONNECT_TIMEOUT_MS) == 0) {
			snprintf(msg, len, "no answer from the server in %d s",
				 PG_CONNECT_TIMEOUT_MS / 1000);
			*cls = PG_TRANSIENT;
			PQfinish(pg);
			return NULL;
		}
		st = PQconnectPoll(pg);
	}
	if (st != PGRES_POLLING_OK) {
		*cls = pg_connect_error(pg, msg, len);
		PQfinish(pg);
		return NULL;
	}
	PQsetErrorVerbosity(pg, PQERRORS_DEFAULT);
	return pg;
}
