/* Table creation and introspection. Runs before the shards start, so
 * concurrent CREATE TABLE IF NOT EXISTS races between shards cannot happen. */
#include "pg/schema.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "log.h"
#include "pg/deadletter.h"
#include "row/envelope.h"

#define SCHEMA_MAX_COLS 16
#define LOAD_TABLE "pg_temp.sluice_load"

/* One table sluice writes: its columns and the setting that names it. */
struct table_spec {
	const char *name;    /* as configured */
	const char *setting; /* "SLUICE_TABLE" */
	struct column_def cols[SCHEMA_MAX_COLS];
	int ncols;
};

static char *str_done(struct buf *b)
{
	buf_put_u8(b, 0);
	return (char *)b->data;
}

static void put_fmt(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void put_fmt(struct buf *b, const char *fmt, ...)
{
	va_list ap, ap2;
	va_start(ap, fmt);
	va_copy(ap2, ap);
	int n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	vsnprintf((char *)buf_reserve(b, (size_t)n + 1), (size_t)n + 1, fmt, ap2);
	va_end(ap2);
	b->len += (size_t)n;
}

/* "name" or "schema"."name", each part quoted exactly as written. */
static char *schema_qualified_name(PGconn *conn, const char *table)
{
	struct buf out = {0};
	const char *dot = strchr(table, '.');
	char *part;

	if (dot) {
		part = PQescapeIdentifier(conn, table, (size_t)(dot - table));
		if (!part)
			goto fail;
		put_fmt(&out, "%s.", part);
		PQfreemem(part);
		table = dot + 1;
	}
	part = PQescapeIdentifier(conn, table, strlen(table));
	if (!part)
		goto fail;
	buf_put_str(&out, part);
	PQfreemem(part);
	return str_done(&out);
fail:
	buf_free(&out);
	return NULL;
}

static PGresult *schema_query(PGconn *conn, const char *sql, const char *param,
			      const char *setting)
{
	PGresult *res = PQexecParams(conn, sql, param ? 1 : 0, NULL, &param, NULL, NULL, 0);
	ExecStatusType st = PQresultStatus(res);
	if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK) {
		const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
		const char *hint = "preparing the table named by";
		if (state && strcmp(state, "42501") == 0)
			hint = "grant the role in POSTGRES_DSN the privilege; see";
		else if (state && strcmp(state, "3F000") == 0)
			hint = "the schema does not exist; see";
		log_error("PostgreSQL: %s (SQLSTATE %s; %s %s)", PQresultErrorMessage(res),
			  state ? state : "none", hint, setting);
		PQclear(res);
		return NULL;
	}
	return res;
}

static const char *col_type(const struct column_def *c, const struct config *cfg)
{
	return c->types[0] ? c->types[0] : config_body_type_name((enum body_type)cfg->body_type);
}

static void put_columns(struct buf *b, const struct table_spec *t)
{
	for (int i = 0; i < t->ncols; i++)
		put_fmt(b, "%s%s", i ? ", " : "", t->cols[i].name);
}

static bool schema_create(PGconn *conn, const char *qname, const struct table_spec *t,
			  const struct config *cfg)
{
	struct buf sql = {0};
	put_fmt(&sql, "CREATE TABLE IF NOT EXISTS %s (", qname);
	for (int i = 0; i < t->ncols; i++) {
		const struct column_def *c = &t->cols[i];
		put_fmt(&sql, "%s%s %s%s%s", i ? ", " : "", c->name, col_type(c, cfg),
			c->create_extra ? " " : "", c->create_extra ? c->create_extra : "");
	}
	buf_put_str(&sql, ")");
	PGresult *res = schema_query(conn, str_done(&sql), NULL, t->setting);
	buf_free(&sql);
	if (!res)
		return false;
	PQclear(res);
	log_info("created table %s", qname);
	return true;
}

/* format_type() spells a type with a modifier as "name(n)": varchar(64)
 * takes the same binary input as varchar. */
static bool type_matches(const char *have, const char *want)
{
	size_t n = strlen(want);
	return strncmp(have, want, n) == 0 && (have[n] == '\0' || have[n] == '(');
}

/* Compare the table's columns with ours; log every problem at once so one
 * run tells the user everything to fix. */
static bool schema_check(PGresult *cols, const char *qname, const struct table_spec *t,
			 const struct config *cfg)
{
	struct buf missing = {0};
	bool ok = true;

	for (int i = 0; i < t->ncols; i++) {
		const struct column_def *c = &t->cols[i];
		const char *want = col_type(c, cfg);
		int row = -1;
		for (int r = 0; r < PQntuples(cols); r++)
			if (strcmp(PQgetvalue(cols, r, 0), c->name) == 0)
				row = r;
		if (row < 0) {
			put_fmt(&missing, "%s%s %s", missing.len ? ", " : "", c->name, want);
			continue;
		}
		const char *have = PQgetvalue(cols, row, 1);
		bool accepted = !c->types[0] && strcmp(have, want) == 0;
		for (int k = 0; k < 3 && c->types[k]; k++)
			accepted |= type_matches(have, c->types[k]);
		if (!accepted) {
			log_error("table %s: column %s is %s, expected %s%s", qname, c->name,
				  have, want, c->types[0] ? "" : " (SLUICE_BODY_TYPE)");
			ok = false;
		}
	}
	if (missing.len) {
		log_error("table %s lacks columns: %s (%s names the table; add the columns "
			  "or point it at another table)",
			  qname, str_done(&missing), t->setting);
		ok = false;
	}
	buf_free(&missing);

	for (int r = 0; r < PQntuples(cols); r++) {
		if (strcmp(PQgetvalue(cols, r, 2), "t") != 0)
			continue;
		bool ours = false;
		for (int i = 0; i < t->ncols; i++)
			ours |= strcmp(PQgetvalue(cols, r, 0), t->cols[i].name) == 0;
		if (!ours) {
			log_error("table %s: column %s is NOT NULL without a default, and sluice "
				  "does not write it (%s)",
				  qname, PQgetvalue(cols, r, 0), t->setting);
			ok = false;
		}
	}
	return ok;
}

static const char columns_sql[] =
	"SELECT a.attname, format_type(a.atttypid, a.atttypmod),"
	"       a.attnotnull AND NOT a.atthasdef AND a.attidentity = '' AND a.attgenerated = ''"
	"  FROM pg_attribute a"
	" WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped";

/* ON CONFLICT (dedupe_key) needs a unique index on exactly that column. */
static const char dedupe_index_sql[] =
	"SELECT count(*) FROM pg_index i"
	"  JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]"
	" WHERE i.indrelid = to_regclass($1) AND i.indisunique AND i.indnkeyatts = 1"
	"   AND i.indpred IS NULL AND i.indexprs IS NULL AND a.attname = 'dedupe_key'";

/* Create the table if it is missing (and allowed), then check it. Returns
 * its quoted name, or NULL after logging. */
static char *schema_table(PGconn *conn, const struct table_spec *t, const struct config *cfg)
{
	char *qname = schema_qualified_name(conn, t->name);
	PGresult *exists = NULL, *cols = NULL;
	bool ok = false;

	if (!qname) {
		log_error("%s: cannot quote the table name: %s", t->setting, PQerrorMessage(conn));
		return NULL;
	}
	exists = schema_query(conn, "SELECT to_regclass($1) IS NOT NULL", qname, t->setting);
	if (!exists)
		goto out;
	if (strcmp(PQgetvalue(exists, 0, 0), "t") != 0) {
		if (cfg->no_create) {
			log_error("table %s does not exist and --no-create is set (%s, "
				  "SLUICE_NO_CREATE)", qname, t->setting);
			goto out;
		}
		if (!schema_create(conn, qname, t, cfg))
			goto out;
	}
	cols = schema_query(conn, columns_sql, qname, t->setting);
	ok = cols && schema_check(cols, qname, t, cfg);
out:
	PQclear(exists);
	PQclear(cols);
	if (!ok) {
		free(qname);
		return NULL;
	}
	return qname;
}

static bool schema_dedupe_index(PGconn *conn, const char *qname)
{
	PGresult *res = schema_query(conn, dedupe_index_sql, qname, "SLUICE_TABLE");
	if (!res)
		return false;
	bool ok = strcmp(PQgetvalue(res, 0, 0), "0") != 0;
	PQclear(res);
	if (!ok)
		log_error("table %s has no unique index on dedupe_key, which --dedupe-key "
			  "(SLUICE_DEDUPE_KEY) needs: CREATE UNIQUE INDEX ON %s (dedupe_key)",
			  qname, qname);
	return ok;
}

static void spec_add(struct table_spec *t, const struct column_def *cols, int n)
{
	for (int i = 0; i < n; i++)
		t->cols[t->ncols++] = cols[i];
}

bool schema_prepare(PGconn *conn, const struct config *cfg, struct sql_plan *plan)
{
	struct table_spec target = {.name = cfg->table, .setting = "SLUICE_TABLE"};
	struct table_spec dead = {.name = cfg->dead_letter_table,
				  .setting = "SLUICE_DEAD_LETTER_TABLE"};
	spec_add(&target, env_columns, ENV_NCOLS);
	if (cfg->dedupe != DEDUPE_NONE)
		spec_add(&target, &env_dedupe_column, 1);
	spec_add(&dead, dl_columns, DL_NCOLS);

	*plan = (struct sql_plan){0};
	char *qtarget = schema_table(conn, &target, cfg), *qdead = NULL;
	bool ok = qtarget != NULL;
	if (ok && cfg->dedupe != DEDUPE_NONE)
		ok = schema_dedupe_index(conn, qtarget);
	if (ok && cfg->dead_letter == DEAD_LETTER_TABLE)
		ok = (qdead = schema_table(conn, &dead, cfg)) != NULL;
	if (!ok)
		goto out;

	struct buf b = {0};
	if (cfg->dedupe == DEDUPE_NONE) {
		put_fmt(&b, "COPY %s (", qtarget);
		put_columns(&b, &target);
		buf_put_str(&b, ") FROM STDIN (FORMAT binary)");
		plan->load = str_done(&b);
	} else {
		/* Only our columns, with the target's types and no constraints:
		 * those apply in the INSERT. Emptied by each commit. */
		b = (struct buf){0};
		put_fmt(&b, "CREATE TEMP TABLE sluice_load ON COMMIT DELETE ROWS AS SELECT ");
		put_columns(&b, &target);
		put_fmt(&b, " FROM %s WITH NO DATA", qtarget);
		plan->setup = str_done(&b);

		b = (struct buf){0};
		put_fmt(&b, "COPY " LOAD_TABLE " (");
		put_columns(&b, &target);
		put_fmt(&b, ") FROM STDIN (FORMAT binary); INSERT INTO %s (", qtarget);
		put_columns(&b, &target);
		buf_put_str(&b, ") SELECT ");
		put_columns(&b, &target);
		buf_put_str(&b, " FROM " LOAD_TABLE " ON CONFLICT (dedupe_key) DO NOTHING");
		plan->load = str_done(&b);

		plan->piece_end = strdup("DELETE FROM " LOAD_TABLE);
	}
	if (qdead) {
		b = (struct buf){0};
		put_fmt(&b, "COPY %s (", qdead);
		put_columns(&b, &dead);
		buf_put_str(&b, ") FROM STDIN (FORMAT binary)");
		plan->dead = str_done(&b);
	}
out:
	free(qtarget);
	free(qdead);
	return ok;
}

void sql_plan_free(struct sql_plan *plan)
{
	free(plan->setup);
	free(plan->load);
	free(plan->piece_end);
	free(plan->dead);
	*plan = (struct sql_plan){0};
}
