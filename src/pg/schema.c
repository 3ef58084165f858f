/* Table creation and introspection for the envelope table. Runs before the
 * shards start, so concurrent CREATE TABLE IF NOT EXISTS races between
 * shards cannot happen. */
#include "pg/schema.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "log.h"
#include "row/envelope.h"

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
		buf_put_str(&out, part);
		buf_put_u8(&out, '.');
		PQfreemem(part);
		table = dot + 1;
	}
	part = PQescapeIdentifier(conn, table, strlen(table));
	if (!part)
		goto fail;
	buf_put_str(&out, part);
	PQfreemem(part);
	buf_put_u8(&out, 0);
	return (char *)out.data;
fail:
	buf_free(&out);
	return NULL;
}

static PGresult *schema_query(PGconn *conn, const char *sql, const char *param)
{
	PGresult *res = PQexecParams(conn, sql, param ? 1 : 0, NULL, &param, NULL, NULL, 0);
	ExecStatusType st = PQresultStatus(res);
	if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK) {
		const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
		const char *hint = "preparing the table named by SLUICE_TABLE";
		if (state && strcmp(state, "42501") == 0)
			hint = "grant the role in POSTGRES_DSN the privilege";
		else if (state && strcmp(state, "3F000") == 0)
			hint = "the schema in SLUICE_TABLE does not exist";
		log_error("PostgreSQL: %s (SQLSTATE %s; %s)", PQresultErrorMessage(res),
			  state ? state : "none", hint);
		PQclear(res);
		return NULL;
	}
	return res;
}

static bool schema_create(PGconn *conn, const char *qname, const struct config *cfg)
{
	struct buf sql = {0};
	buf_put_str(&sql, "CREATE TABLE IF NOT EXISTS ");
	buf_put_str(&sql, qname);
	buf_put_str(&sql, " (");
	for (int i = 0; i < ENV_NCOLS; i++) {
		buf_put_str(&sql, i ? ", " : "");
		buf_put_str(&sql, env_columns[i].name);
		buf_put_u8(&sql, ' ');
		buf_put_str(&sql, env_column_type(i, (enum body_type)cfg->body_type));
		if (strcmp(env_columns[i].name, "ingested_at") == 0)
			buf_put_str(&sql, " NOT NULL DEFAULT now()");
	}
	buf_put_str(&sql, ")");
	buf_put_u8(&sql, 0);
	PGresult *res = schema_query(conn, (char *)sql.data, NULL);
	buf_free(&sql);
	if (!res)
		return false;
	PQclear(res);
	log_info("created table %s (body %s)", qname,
		 config_body_type_name((enum body_type)cfg->body_type));
	return true;
}

/* Compare the table's columns with the envelope's; log every problem at
 * once so one run tells the user everything to fix. */
static bool schema_check(PGresult *cols, const char *qname, const struct config *cfg)
{
	struct buf missing = {0};
	bool ok = true;

	for (int i = 0; i < ENV_NCOLS; i++) {
		const char *want = env_column_type(i, (enum body_type)cfg->body_type);
		int row = -1;
		for (int r = 0; r < PQntuples(cols); r++)
			if (strcmp(PQgetvalue(cols, r, 0), env_columns[i].name) == 0)
				row = r;
		if (row < 0) {
			buf_put_str(&missing, missing.len ? ", " : "");
			buf_put_str(&missing, env_columns[i].name);
			buf_put_u8(&missing, ' ');
			buf_put_str(&missing, want);
			continue;
		}
		const char *have = PQgetvalue(cols, row, 1);
		bool accepted = false;
		for (int k = 0; k < 3 && env_columns[i].types[k]; k++)
			accepted |= strcmp(have, env_columns[i].types[k]) == 0;
		if (!env_columns[i].types[0])
			accepted = strcmp(have, want) == 0;
		if (!accepted) {
			log_error("table %s: column %s is %s, expected %s%s", qname,
				  env_columns[i].name, have, want,
				  env_columns[i].types[0] ? "" : " (SLUICE_BODY_TYPE)");
			ok = false;
		}
	}
	if (missing.len) {
		buf_put_u8(&missing, 0);
		log_error("table %s lacks envelope columns: %s (SLUICE_TABLE names the table; "
			  "add the columns or point it at another table)",
			  qname, (char *)missing.data);
		ok = false;
	}
	buf_free(&missing);

	for (int r = 0; r < PQntuples(cols); r++) {
		if (strcmp(PQgetvalue(cols, r, 2), "t") != 0)
			continue;
		bool ours = false;
		for (int i = 0; i < ENV_NCOLS; i++)
			ours |= strcmp(PQgetvalue(cols, r, 0), env_columns[i].name) == 0;
		if (!ours) {
			log_error("table %s: column %s is NOT NULL without a default, and sluice "
				  "does not write it (SLUICE_TABLE)",
				  qname, PQgetvalue(cols, r, 0));
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

char *schema_prepare(PGconn *conn, const struct config *cfg)
{
	char *qname = schema_qualified_name(conn, cfg->table);
	char *copy_sql = NULL;
	PGresult *exists = NULL, *cols = NULL;

	if (!qname) {
		log_error("SLUICE_TABLE: cannot quote table name: %s", PQerrorMessage(conn));
		return NULL;
	}
	exists = schema_query(conn, "SELECT to_regclass($1) IS NOT NULL", qname);
	if (!exists)
		goto out;
	if (strcmp(PQgetvalue(exists, 0, 0), "t") != 0) {
		if (cfg->no_create) {
			log_error("table %s does not exist and --no-create is set "
				  "(SLUICE_TABLE, SLUICE_NO_CREATE)", qname);
			goto out;
		}
		if (!schema_create(conn, qname, cfg))
			goto out;
	}
	cols = schema_query(conn, columns_sql, qname);
	if (!cols || !schema_check(cols, qname, cfg))
		goto out;

	struct buf sql = {0};
	buf_put_str(&sql, "COPY ");
	buf_put_str(&sql, qname);
	buf_put_str(&sql, " (");
	for (int i = 0; i < ENV_NCOLS; i++) {
		buf_put_str(&sql, i ? ", " : "");
		buf_put_str(&sql, env_columns[i].name);
	}
	buf_put_str(&sql, ") FROM STDIN (FORMAT binary)");
	buf_put_u8(&sql, 0);
	copy_sql = (char *)sql.data;
out:
	PQclear(exists);
	PQclear(cols);
	free(qname);
	return copy_sql;
}
